"""Key spaces: prefix views of one LevelDB database, and the in-memory twin."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest
from zope.interface.verify import verifyObject

from p2pnet.store.keyspace import IKeySpace, KeySpace, MemoryKeySpace, check_prefix, key_space
from p2pnet.store.leveldb import DBManager
from p2pnet.store.pool import StoreExecutor


class _Contract:
    """The behaviour both implementations share."""

    def make(self) -> Any:
        raise NotImplementedError

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IKeySpace, self.make()))  # type: ignore[attr-defined]

    def test_put_get_delete_items(self) -> None:
        t: Any = self
        ks = self.make()
        t.successResultOf(ks.d_put(b"b", b"2"))
        t.successResultOf(ks.d_put(b"a", b"1"))
        t.successResultOf(ks.d_put(b"a", b"one"))  # replaces
        t.assertEqual(t.successResultOf(ks.d_get(b"a")), b"one")
        t.assertIsNone(t.successResultOf(ks.d_get(b"zz")))
        t.assertEqual(t.successResultOf(ks.d_items()), [(b"a", b"one"), (b"b", b"2")])
        t.successResultOf(ks.d_delete(b"a"))
        t.successResultOf(ks.d_delete(b"never"))  # not an error
        t.assertEqual(t.successResultOf(ks.d_items()), [(b"b", b"2")])

    def test_type_errors_are_failures(self) -> None:
        t: Any = self
        ks = self.make()
        for d in (ks.d_put("a", b"1"), ks.d_put(b"a", "1"), ks.d_get(1), ks.d_delete(None)):
            t.failureResultOf(d, TypeError)
        t.assertEqual(t.successResultOf(ks.d_items()), [])


class MemoryKeySpaceTests(_Contract, unittest.SynchronousTestCase):
    def make(self) -> Any:
        return MemoryKeySpace()


class KeySpaceTests(_Contract, unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.db = DBManager(self.mktemp(), executor=StoreExecutor.inline())
        self.addCleanup(self.db.close)

    def make(self) -> Any:
        return KeySpace(self.db, b"test/")

    def test_spaces_share_one_database_apart(self) -> None:
        sync, chord = KeySpace(self.db, b"sync/"), KeySpace(self.db, b"chord/")
        self.successResultOf(sync.d_put(b"k", b"s"))
        self.successResultOf(chord.d_put(b"k", b"c"))
        self.assertEqual(self.successResultOf(sync.d_items()), [(b"k", b"s")])
        self.assertEqual(self.successResultOf(chord.d_items()), [(b"k", b"c")])
        self.assertEqual(self.db.raw.get(b"sync/k"), b"s")
        self.successResultOf(sync.d_delete(b"k"))
        self.assertEqual(self.successResultOf(chord.d_get(b"k")), b"c")

    def test_persists(self) -> None:
        path = self.mktemp()
        with DBManager(path, executor=StoreExecutor.inline()) as db:
            self.successResultOf(KeySpace(db, b"s/").d_put(b"k", b"v"))
        with DBManager(path, executor=StoreExecutor.inline()) as db:
            self.assertEqual(self.successResultOf(KeySpace(db, b"s/").d_items()), [(b"k", b"v")])

    def test_prefix_checked(self) -> None:
        for bad in (b"", "s/", None):
            self.assertRaises(ValueError, check_prefix, bad)
            self.assertRaises(ValueError, KeySpace, self.db, bad)
        self.assertIsInstance(key_space(None, b"x/"), MemoryKeySpace)
        self.assertIsInstance(key_space(self.db, b"x/"), KeySpace)
