# -*- test-case-name: tests.test_store_keyspace -*-
"""Key spaces: one LevelDB database per data directory, shared by the stores through prefixes.

A node keeps one :class:`~p2pnet.store.leveldb.DBManager` in its data directory; each
store that needs one gets a :class:`KeySpace`, a view of the keys under its own bytes
prefix (``b"sync/"``, ``b"chord/"``, ...).  The view speaks raw bytes (the DHT value
table, the sync socket and chord store bytes), runs on the database's store thread, and
its calls made in one reactor turn share one thread hop.

:class:`MemoryKeySpace` is the same interface in a dict, for tests and ``--memory`` nodes.
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import Interface, implementer

from p2pnet.store.leveldb import DBManager


class IKeySpace(Interface):
    """Bytes keys to bytes values, persisted; every call returns a Deferred."""

    def d_put(key: bytes, value: bytes) -> defer.Deferred[None]:
        """Store ``value`` under ``key`` (replacing what was there)."""

    def d_get(key: bytes) -> defer.Deferred[bytes | None]:
        """The value under ``key``, or None."""

    def d_delete(key: bytes) -> defer.Deferred[None]:
        """Delete ``key``; a missing key is not an error."""

    def d_items() -> defer.Deferred[list[tuple[bytes, bytes]]]:
        """Every ``(key, value)`` of the space, in key order."""


def _check(value: object, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def check_prefix(prefix: object) -> bytes:
    """A key-space prefix: non-empty bytes."""
    if not isinstance(prefix, bytes) or not prefix:
        raise ValueError("a key space prefix must be non-empty bytes")
    return prefix


@implementer(IKeySpace)
class KeySpace:
    """The keys of ``db`` under ``prefix`` (the prefix is not part of the caller's keys).

    Prefixes of two spaces of one database must not be prefixes of each other (use a
    terminator such as ``/``).  The database must be started (its Deferred API works).
    """

    def __init__(self, db: DBManager, prefix: bytes) -> None:
        self.db = db
        self.prefix = check_prefix(prefix)

    def __repr__(self) -> str:
        return f"KeySpace({self.db.db_path!r}, {self.prefix!r})"

    # -- the store thread's side --------------------------------------------------------

    def _get(self, key: bytes) -> bytes | None:
        result: bytes | None = self.db.raw.get(self.prefix + key)
        return result

    def _items(self) -> list[tuple[bytes, bytes]]:
        cut = len(self.prefix)
        with self.db.raw.iterator(prefix=self.prefix) as it:
            return [(k[cut:], v) for k, v in it]

    # -- IKeySpace ----------------------------------------------------------------------

    def d_put(self, key: bytes, value: bytes) -> defer.Deferred[None]:
        try:
            k = self.prefix + _check(key, "key")
            v = _check(value, "value")
        except TypeError as e:
            return defer.fail(e)
        return self.db.executor.submit(self.db.write_raw, [(k, v)])

    def d_get(self, key: bytes) -> defer.Deferred[bytes | None]:
        try:
            _check(key, "key")
        except TypeError as e:
            return defer.fail(e)
        return self.db.executor.submit(self._get, key)

    def d_delete(self, key: bytes) -> defer.Deferred[None]:
        try:
            k = self.prefix + _check(key, "key")
        except TypeError as e:
            return defer.fail(e)
        return self.db.executor.submit(self.db.write_raw, (), [k])

    def d_items(self) -> defer.Deferred[list[tuple[bytes, bytes]]]:
        return self.db.executor.submit(self._items)


@implementer(IKeySpace)
class MemoryKeySpace:
    """:class:`IKeySpace` in a dict (each call fires at once)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def d_put(self, key: bytes, value: bytes) -> defer.Deferred[None]:
        try:
            self.data[_check(key, "key")] = _check(value, "value")
        except TypeError as e:
            return defer.fail(e)
        return defer.succeed(None)

    def d_get(self, key: bytes) -> defer.Deferred[bytes | None]:
        try:
            return defer.succeed(self.data.get(_check(key, "key")))
        except TypeError as e:
            return defer.fail(e)

    def d_delete(self, key: bytes) -> defer.Deferred[None]:
        try:
            self.data.pop(_check(key, "key"), None)
        except TypeError as e:
            return defer.fail(e)
        return defer.succeed(None)

    def d_items(self) -> defer.Deferred[list[tuple[bytes, bytes]]]:
        return defer.succeed(sorted(self.data.items()))


def key_space(db: DBManager | None, prefix: bytes) -> KeySpace | MemoryKeySpace:
    """A :class:`KeySpace` of ``db``, or a :class:`MemoryKeySpace` when ``db`` is None."""
    check_prefix(prefix)
    return MemoryKeySpace() if db is None else KeySpace(db, prefix)


__all__ = ["IKeySpace", "KeySpace", "MemoryKeySpace", "check_prefix", "key_space"]
