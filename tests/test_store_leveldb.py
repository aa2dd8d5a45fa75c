"""Tests for :mod:`p2pnet.store.leveldb` (teos's DBManager) and :mod:`p2pnet.store.errors`."""

from __future__ import annotations

import os
import threading
from typing import Any

from twisted.application.service import IService
from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from p2pnet.store import leveldb
from p2pnet.store.errors import (
    DatabaseClosedError,
    DatabaseCorruptError,
    DatabaseLockedError,
    StoreError,
)
from p2pnet.store.leveldb import DBManager
from p2pnet.store.pool import ExecutorStopped, StoreExecutor


class BlockingAPITests(unittest.SynchronousTestCase):
    def open(self, path: str | None = None) -> DBManager:
        db = DBManager(path or self.mktemp())
        self.addCleanup(db.close)
        return db

    def test_path_must_be_str(self) -> None:
        for bad in (None, 42, b"path", ["p"]):
            self.assertRaises(ValueError, DBManager, bad)

    def test_creates_fresh_database(self) -> None:
        path = self.mktemp()
        self.assertFalse(os.path.exists(path))
        db = self.open(path)
        self.assertTrue(os.path.isdir(path))
        self.assertTrue(os.path.exists(os.path.join(path, "CURRENT")))
        self.assertIsNone(db.load_entry("anything"))

    def test_create_load_delete(self) -> None:
        db = self.open()
        db.create_entry("key", "value")
        self.assertEqual(db.load_entry("key"), b"value")
        db.create_entry("key", "other")
        self.assertEqual(db.load_entry("key"), b"other")
        db.delete_entry("key")
        self.assertIsNone(db.load_entry("key"))
        db.delete_entry("key")  # absent: not an error

    def test_prefix_is_part_of_the_key(self) -> None:
        db = self.open()
        db.create_entry("k", "with prefix", prefix="p")
        self.assertEqual(db.load_entry("pk"), b"with prefix")
        self.assertEqual(db.load_entry("k", prefix="p"), b"with prefix")
        self.assertIsNone(db.load_entry("k"))
        db.delete_entry("k", prefix="p")
        self.assertIsNone(db.load_entry("pk"))

    def test_utf8_on_disk(self) -> None:
        db = self.open()
        db.create_entry("clé", "välue", prefix="é")
        self.assertEqual(db.raw.get("éclé".encode()), "välue".encode())

    def test_type_errors(self) -> None:
        db = self.open()
        self.assertRaises(TypeError, db.create_entry, b"key", "value")
        self.assertRaises(TypeError, db.create_entry, "key", b"value")
        self.assertRaises(TypeError, db.create_entry, "key", 42)
        self.assertRaises(TypeError, db.create_entry, "key", "value", prefix=b"p")
        self.assertRaises(TypeError, db.load_entry, 42)
        self.assertRaises(TypeError, db.load_entry, "k", prefix=1)
        self.assertRaises(TypeError, db.delete_entry, None)
        self.assertRaises(TypeError, db.delete_entry, "k", prefix=b"p")
        self.assertRaises(TypeError, lambda: list(db.iter_prefix(b"p")))  # type: ignore[arg-type]
        self.assertEqual(list(db.raw.iterator()), [])

    def test_iter_prefix(self) -> None:
        db = self.open()
        db.create_entry("1", "a", prefix="w")
        db.create_entry("2", "b", prefix="w")
        db.create_entry("1", "c", prefix="x")
        db.create_entry("w", "whole key")
        db.raw.put(b"w\xff\xfe", b"not utf-8 key")
        self.assertEqual(list(db.iter_prefix("w")), [("", b"whole key"), ("1", b"a"), ("2", b"b")])
        self.assertEqual(db.scan_prefix("x"), [("1", b"c")])
        self.assertEqual(db.scan_prefix("nothing"), [])
        self.assertEqual(len(db.scan_prefix("")), 4)

    def test_write_batch(self) -> None:
        db = self.open()
        db.create_entry("old", "1", prefix="p")
        db.write_batch(puts=[("a", "1"), ("b", "2")], deletes=["old"], prefix="p")
        self.assertEqual(db.scan_prefix("p"), [("a", b"1"), ("b", b"2")])

    def test_write_batch_all_or_nothing(self) -> None:
        db = self.open()
        db.create_entry("keep", "1")
        self.assertRaises(TypeError, db.write_batch, puts=[("a", "1"), ("b", 2)])
        self.assertRaises(TypeError, db.write_batch, puts=[("a", "1")], deletes=["keep", 3])
        self.assertRaises(TypeError, db.write_batch, deletes="keep")
        self.assertEqual(db.scan_prefix(""), [("keep", b"1")])

    def test_close_idempotent_and_persistent(self) -> None:
        path = self.mktemp()
        db = DBManager(path)
        db.create_entry("k", "v")
        db.close()
        db.close()
        self.assertTrue(db.closed)
        self.assertRaises(DatabaseClosedError, db.load_entry, "k")
        self.assertRaises(DatabaseClosedError, db.create_entry, "k", "v")
        with DBManager(path) as again:
            self.assertEqual(again.load_entry("k"), b"v")
        self.assertTrue(again.closed)

    def test_second_handle_in_process_refused(self) -> None:
        """One handle per path: the second DBManager fails before plyvel is asked."""
        path = self.mktemp()
        db = self.open(path)
        calls: list[Any] = []
        real = leveldb.plyvel.DB

        def spy(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            return real(*args, **kwargs)

        self.patch(leveldb.plyvel, "DB", spy)
        e = self.assertRaises(DatabaseLockedError, DBManager, path)
        self.assertIn(path, str(e))
        self.assertIn("already open in this process", str(e))
        self.assertEqual(e.path, path)
        self.assertIsInstance(e, StoreError)
        # the same directory by another spelling: absolute path, a symlink
        self.assertRaises(DatabaseLockedError, DBManager, os.path.abspath(path))
        link = self.mktemp()
        os.symlink(os.path.abspath(path), link)
        self.assertRaises(DatabaseLockedError, DBManager, link)
        self.assertEqual(calls, [])
        # the first handle still works
        db.create_entry("k", "v")
        self.assertEqual(db.load_entry("k"), b"v")
        self.assertIn(os.path.realpath(path), leveldb.open_paths())
        db.close()
        self.assertNotIn(os.path.realpath(path), leveldb.open_paths())
        self.open(link).close()

    def test_failed_open_releases_the_path(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("a file, not a directory")
        e = self.assertRaises(StoreError, DBManager, path)
        self.assertNotIsInstance(e, DatabaseLockedError)
        self.assertNotIn(os.path.realpath(path), leveldb.open_paths())

    def test_corrupt_database(self) -> None:
        path = self.mktemp()
        DBManager(path).close()
        with open(os.path.join(path, "CURRENT"), "w") as f:
            f.write("garbage without newline")
        e = self.assertRaises(DatabaseCorruptError, DBManager, path)
        self.assertIn(path, str(e))
        self.assertNotIn(os.path.realpath(path), leveldb.open_paths())

    def test_lock_message_wrapped(self) -> None:
        """A plyvel lock error from another process becomes DatabaseLockedError."""

        def locked(*args: Any, **kwargs: Any) -> Any:
            raise leveldb.plyvel.IOError(b"IO error: lock x/LOCK: Resource temporarily unavailable")

        self.patch(leveldb.plyvel, "DB", locked)
        path = self.mktemp()
        e = self.assertRaises(DatabaseLockedError, DBManager, path)
        self.assertIn("another process holds it", str(e))
        self.assertIn(path, str(e))
        self.assertNotIn("b'", str(e))
        self.assertNotIn(os.path.realpath(path), leveldb.open_paths())

    def test_raw_handle_elsewhere_in_process(self) -> None:
        path = self.mktemp()
        raw = leveldb.plyvel.DB(path, create_if_missing=True)
        self.addCleanup(raw.close)
        e = self.assertRaises(DatabaseLockedError, DBManager, path)
        self.assertIn("already open in this process outside DBManager", str(e))


class InlineDeferredAPITests(unittest.SynchronousTestCase):
    """The Deferred twins on an inline executor (no threads, no reactor)."""

    def setUp(self) -> None:
        self.db = DBManager(self.mktemp(), executor=StoreExecutor.inline())
        self.addCleanup(self.db.close)

    def test_twins(self) -> None:
        db = self.db
        self.assertIsNone(self.successResultOf(db.d_create_entry("k", "v", prefix="p")))
        self.assertEqual(self.successResultOf(db.d_load_entry("k", "p")), b"v")
        self.assertEqual(self.successResultOf(db.d_scan_prefix("p")), [("k", b"v")])
        self.successResultOf(db.d_write_batch(puts=[("a", "1")], deletes=["k"], prefix="p"))
        self.assertEqual(db.scan_prefix("p"), [("a", b"1")])
        self.successResultOf(db.d_delete_entry("a", prefix="p"))
        self.assertEqual(db.scan_prefix("p"), [])
        self.successResultOf(db.d_write_raw([(b"r", b"1")], []))
        self.assertEqual(db.load_entry("r"), b"1")

    def test_errors_as_failures(self) -> None:
        self.failureResultOf(self.db.d_create_entry("k", 1), TypeError)  # type: ignore[arg-type]
        self.db.close()
        self.failureResultOf(self.db.d_load_entry("k"), DatabaseClosedError)

    def test_load_entries(self) -> None:
        db = self.db
        db.write_batch(puts=[("a", "1"), ("c", "3")], prefix="p")
        self.assertEqual(db.load_entries(["a", "b", "c"], prefix="p"), [b"1", None, b"3"])
        self.assertEqual(self.successResultOf(db.d_load_entries(iter(["c"]), "p")), [b"3"])
        self.assertEqual(db.load_entries([]), [])
        self.assertRaises(TypeError, db.load_entries, "abc")
        self.assertRaises(TypeError, db.load_entries, ["a", 1])

    def test_twin_cached_and_overridable(self) -> None:
        """A twin is bound once per instance and runs the instance's own method."""

        class Custom(DBManager):
            def load_entry(self, key: str, prefix: str | None = None) -> bytes | None:
                return b"custom:" + key.encode()

        db = Custom(self.mktemp(), executor=StoreExecutor.inline())
        self.addCleanup(db.close)
        self.assertIs(db.d_load_entry, db.d_load_entry)
        self.assertIn("d_load_entry", vars(db))
        self.assertEqual(self.successResultOf(db.d_load_entry("k")), b"custom:k")
        self.assertNotIn("d_load_entry", vars(self.db))

    def test_twin_is_documented_on_the_class(self) -> None:
        twin = DBManager.__dict__["d_load_entry"]
        self.assertIsInstance(twin, leveldb.deferred_twin)
        self.assertIn("load_entry", twin.__doc__)


class ThreadedDeferredAPITests(unittest.TestCase):
    """The Deferred twins on the store's own thread, with the real reactor."""

    def setUp(self) -> None:
        self.db = DBManager(self.mktemp(), reactor=reactor)

        def cleanup() -> defer.Deferred[None]:
            return self.db.stop().addCallback(lambda _: self.db.close())

        self.addCleanup(cleanup)

    def test_needs_start(self) -> None:
        self.failureResultOf(self.db.d_load_entry("k"), ExecutorStopped)

    @defer.inlineCallbacks
    def test_runs_off_the_reactor_thread(self) -> Any:
        self.db.start()
        ident = yield self.db.submit(threading.get_ident)
        self.assertNotEqual(ident, threading.get_ident())

    @defer.inlineCallbacks
    def test_coalesced_calls(self) -> Any:
        db = self.db
        db.start()
        puts = [db.d_create_entry(f"{i:03d}", str(i), prefix="n") for i in range(100)]
        bad = db.d_create_entry("x", 5)  # type: ignore[arg-type]
        loads = [db.d_load_entry(f"{i:03d}", prefix="n") for i in range(100)]
        yield defer.gatherResults(puts)
        yield self.assertFailure(bad, TypeError)
        values = yield defer.gatherResults(loads)
        self.assertEqual(values, [str(i).encode() for i in range(100)])
        self.assertEqual(db.executor.hops, 1)
        scan = yield db.d_scan_prefix("n")
        self.assertEqual(len(scan), 100)

    @defer.inlineCallbacks
    def test_service(self) -> Any:
        db = self.db
        self.assertTrue(verifyObject(IService, db))
        db.startService()
        self.assertTrue(db.running)
        yield db.d_create_entry("k", "v")
        yield db.stopService()
        self.assertFalse(db.running)
        self.failureResultOf(db.d_load_entry("k"), ExecutorStopped)
        self.assertEqual(db.load_entry("k"), b"v")  # the blocking API still works

    @defer.inlineCallbacks
    def test_stop_drains(self) -> Any:
        db = self.db
        db.start()
        ds = [db.d_create_entry(str(i), "v") for i in range(20)]
        yield db.stop()
        self.assertTrue(all(d.called for d in ds))
        self.assertEqual(len(db.scan_prefix("")), 20)

    @defer.inlineCallbacks
    def test_close_with_calls_in_flight(self) -> Any:
        db = self.db
        db.start()
        d = db.d_create_entry("k", "v")
        self.assertRaises(StoreError, db.close)
        self.assertFalse(db.closed)
        yield d
        yield db.stop()
        db.close()
        self.assertTrue(db.closed)

    @defer.inlineCallbacks
    def test_stop_twice_then_close(self) -> Any:
        """A second stop() waits for the first one's drain; close() refuses until then."""
        db = self.db
        db.start()
        ds = [db.d_create_entry(str(i), "v") for i in range(5)]
        first, second = db.stop(), db.stop()
        self.assertFalse(second.called)
        self.assertRaises(StoreError, db.close)
        yield second
        self.assertTrue(first.called)
        self.assertTrue(all(d.called for d in ds))
        db.close()
        self.assertTrue(db.closed)

    @defer.inlineCallbacks
    def test_d_close(self) -> Any:
        """d_close: earlier calls run, the handle closes off the reactor, later calls fail."""
        db = self.db
        db.start()
        before = [db.d_create_entry(str(i), "v") for i in range(10)]
        closing = db.d_close()
        after = db.d_load_entry("1")
        yield closing
        self.assertTrue(db.closed)
        self.assertFalse(db.executor.running)
        self.assertTrue(all(d.called for d in before))
        yield self.assertFailure(after, DatabaseClosedError)
        self.assertNotIn(os.path.realpath(db.db_path), leveldb.open_paths())
        with DBManager(db.db_path) as again:
            self.assertEqual(len(again.scan_prefix("")), 10)
        yield db.d_close()  # idempotent

    @defer.inlineCallbacks
    def test_d_close_not_started(self) -> Any:
        yield self.db.d_close()
        self.assertTrue(self.db.closed)

    @defer.inlineCallbacks
    def test_close_when_idle_stops_the_thread(self) -> Any:
        db = self.db
        db.start()
        yield db.d_create_entry("k", "v")
        db.close()
        self.assertTrue(db.closed)
        self.assertFalse(db.executor.running)


class _Boom(Exception):
    pass


class _FailingBatch:
    """A write batch whose write() fails (after taking every put and delete)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def put(self, key: bytes, value: bytes) -> None:
        self.real.put(key, value)

    def delete(self, key: bytes) -> None:
        self.real.delete(key)

    def write(self) -> None:
        raise _Boom("disk full")


class _CountingDB:
    """Stands in for the plyvel handle: counts write batches and single puts."""

    def __init__(self, real: Any, fail: bool = False) -> None:
        self.real = real
        self.fail = fail
        self.batches = 0
        self.puts = 0

    def write_batch(self, *args: Any, **kwargs: Any) -> Any:
        self.batches += 1
        batch = self.real.write_batch(*args, **kwargs)
        return _FailingBatch(batch) if self.fail else batch

    def put(self, *args: Any, **kwargs: Any) -> Any:
        self.puts += 1
        return self.real.put(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class WriteCoalescingTests(unittest.TestCase):
    """Consecutive d_create_entry / d_delete_entry calls of a hop share one write batch."""

    def setUp(self) -> None:
        self.db = DBManager(self.mktemp(), reactor=reactor)
        self.db.start()

        def cleanup() -> defer.Deferred[None]:
            return self.db.stop().addCallback(lambda _: self.db.close())

        self.addCleanup(cleanup)

    def counting(self, fail: bool = False) -> _CountingDB:
        real = self.db._db
        counting = _CountingDB(real, fail)
        self.db._db = counting  # type: ignore[assignment]

        def restore() -> None:
            if self.db._db is counting:
                self.db._db = real

        self.addCleanup(restore)
        return counting

    @defer.inlineCallbacks
    def test_one_turn_one_write_batch(self) -> Any:
        db = self.db
        raw = self.counting()
        ds = [db.d_create_entry(f"{i:03d}", f"v{i}", prefix="p") for i in range(100)]
        ds += [db.d_delete_entry(f"{i:03d}", prefix="p") for i in range(0, 100, 10)]
        ds.append(db.d_create_entry("000", "again", "p"))
        results = yield defer.gatherResults(ds)
        self.assertEqual(results, [None] * len(ds))
        self.assertEqual((raw.batches, raw.puts, db.executor.hops), (1, 0, 1))
        stored = dict(db.scan_prefix("p"))
        self.assertEqual(len(stored), 91)
        self.assertEqual(stored["000"], b"again")
        self.assertNotIn("010", stored)
        self.assertEqual(stored["011"], b"v11")

    @defer.inlineCallbacks
    def test_reads_see_earlier_writes_of_the_hop(self) -> Any:
        """A read between writes of one hop sees exactly the writes made before it."""
        db = self.db
        raw = self.counting()
        calls = [
            db.d_create_entry("k", "a"),
            db.d_load_entry("k"),
            db.d_create_entry("k", "b"),
            db.d_load_entries(["k"]),
            db.d_delete_entry("k"),
            db.d_load_entry("k"),
            db.d_create_entry("k", "c"),
            db.d_scan_prefix(""),
        ]
        results = yield defer.gatherResults(calls)
        self.assertEqual(
            results, [None, b"a", None, [b"b"], None, None, None, [("k", b"c")]]
        )
        self.assertEqual((raw.batches, db.executor.hops), (4, 1))

    @defer.inlineCallbacks
    def test_failing_batch_fails_each_write(self) -> Any:
        db = self.db
        db.create_entry("old", "1")
        self.counting(fail=True)
        puts = [db.d_create_entry(f"k{i}", "v") for i in range(5)]
        bad = db.d_create_entry("k5", 5)  # type: ignore[arg-type]
        delete = db.d_delete_entry("old")
        read = db.d_load_entry("old")
        for d in [*puts, delete]:
            e = yield self.assertFailure(d, _Boom)
            self.assertEqual(str(e), "disk full")
        yield self.assertFailure(bad, TypeError)
        self.assertEqual((yield read), b"1")  # nothing of the failed batch was written
        self.assertEqual(db.scan_prefix("k"), [])
        self.assertEqual(db.executor.hops, 1)

    @defer.inlineCallbacks
    def test_argument_errors_are_the_methods_own(self) -> Any:
        """A bad call fails alone, with the error the blocking method raises."""
        db = self.db
        calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
            ("create_entry", ("k",), {}),
            ("create_entry", ("k", "v"), {"prefx": "p"}),
            ("create_entry", (1, "v"), {}),
            ("create_entry", ("k", "v", b"p"), {}),
            ("delete_entry", (), {}),
            ("delete_entry", (b"k",), {}),
            ("load_entry", (None,), {}),
            ("load_entry", ("k", "p", "extra"), {}),
        ]
        ds = []
        for i, (name, args, kwargs) in enumerate(calls):
            ds.append(db.d_create_entry(f"ok{i}", "v"))
            ds.append(getattr(db, f"d_{name}")(*args, **kwargs))
        for i, (name, args, kwargs) in enumerate(calls):
            self.assertIsNone((yield ds[2 * i]))
            e = yield self.assertFailure(ds[2 * i + 1], TypeError)
            with self.assertRaises(TypeError) as blocking:
                getattr(db, name)(*args, **kwargs)
            self.assertEqual(str(e), str(blocking.exception))
        self.assertEqual(len(db.scan_prefix("ok")), len(calls))
        self.assertEqual(db.executor.hops, 1)

    @defer.inlineCallbacks
    def test_closed_database_fails_each_call(self) -> Any:
        db = self.db
        closing = db.submit(db._close_handle)
        ds = [db.d_create_entry("k", "v"), db.d_load_entry("k"), db.d_delete_entry("k")]
        yield closing
        for d in ds:
            yield self.assertFailure(d, DatabaseClosedError)

    @defer.inlineCallbacks
    def test_override_runs_call_by_call(self) -> Any:
        """A subclass that overrides create_entry gets its own method for every call."""
        seen: list[str] = []

        class Custom(DBManager):
            def create_entry(self, key: str, value: str, prefix: str | None = None) -> None:
                seen.append(key)
                super().create_entry(key, value.upper(), prefix)

        db = Custom(self.mktemp(), reactor=reactor)
        db.start()
        try:
            yield defer.gatherResults([db.d_create_entry(f"k{i}", "v") for i in range(5)])
            self.assertEqual(seen, [f"k{i}" for i in range(5)])
            self.assertEqual(db.load_entry("k3"), b"V")
        finally:
            yield db.stop()
            db.close()

    def test_inline_executor_runs_each_call(self) -> None:
        db = DBManager(self.mktemp(), executor=StoreExecutor.inline())
        self.addCleanup(db.close)
        self.successResultOf(db.d_create_entry("k", "v"))
        self.assertEqual(self.successResultOf(db.d_load_entry("k")), b"v")
        self.successResultOf(db.d_delete_entry("k"))
        self.assertIsNone(self.successResultOf(db.d_load_entry("k")))
        self.failureResultOf(db.d_create_entry("k", 1), TypeError)  # type: ignore[arg-type]


def _events_with(events: Any, text: str) -> list[dict[str, Any]]:
    from twisted.logger import formatEvent

    return [e for e in events if text in formatEvent(e)]


def _fill(path: str, n: int = 1000, *, compact: bool = False) -> None:
    with DBManager(path) as db:
        db.write_batch([(f"k{i:05d}", "v" * 100) for i in range(n)])
        if compact:
            db.raw.compact_range()


class DamageTests(unittest.SynchronousTestCase):
    """Issue 11 #18: plyvel errors are StoreErrors; damage found on open is logged."""

    def setUp(self) -> None:
        from twisted.internet.testing import EventLoggingObserver
        from twisted.logger import globalLogPublisher

        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_clean_reopen_logs_nothing(self) -> None:
        path = self.mktemp()
        _fill(path, 50)
        with DBManager(path) as db:
            self.assertEqual(db.damage, {"entries": 50, "entries_at_last_close": 50,
                                         "dropped_bytes": 0, "repaired": False})
        self.assertEqual([e for e in self.events if e["log_level"].name in ("warn", "error")],
                         [])

    def test_log_cut_in_half_is_counted(self) -> None:
        """A clean close leaves the entries in LevelDB's log; cutting it loses the tail
        silently in LevelDB, but the open compares with the count of the last close."""
        path = self.mktemp()
        _fill(path, 1000)
        log_file = next(f for f in os.listdir(path) if f.endswith(".log"))
        full = os.path.getsize(os.path.join(path, log_file))
        with open(os.path.join(path, log_file), "r+b") as f:
            f.truncate(full // 2)
        with DBManager(path) as db:
            kept = db.damage["entries"]
            self.assertLess(kept, 1000)
            self.assertEqual(len(db.scan_prefix("k")), kept)
        [event] = _events_with(self.events, "lost entries")
        self.assertEqual((event["count"], event["expected"], event["lost"]),
                         (kept, 1000, 1000 - kept))

    def _garble_log(self, path: str) -> None:
        log_file = next(f for f in os.listdir(path) if f.endswith(".log"))
        with open(os.path.join(path, log_file), "r+b") as f:
            f.seek(os.path.getsize(os.path.join(path, log_file)) // 2)
            f.write(b"\xff" * 64)

    def test_garbage_in_the_log_refused(self) -> None:
        """Paranoid checks: a damaged log is an error, not a silent drop."""
        path = self.mktemp()
        _fill(path, 1000)
        self._garble_log(path)
        e = self.assertRaises(DatabaseCorruptError, DBManager, path)
        self.assertIn("checksum mismatch", str(e))

    def test_garbage_in_the_log_repaired(self) -> None:
        path = self.mktemp()
        _fill(path, 1000)
        self._garble_log(path)
        with DBManager(path, repair=True) as db:
            self.assertTrue(db.damage["repaired"])
            kept = db.damage["entries"]
            self.assertLess(kept, 1000)
            self.assertEqual(db.damage["entries_at_last_close"], 1000)
        [event] = _events_with(self.events, "repaired:")
        self.assertEqual(event["count"], kept)
        self.assertIn("(1000 at its last clean close)", event["was"])
        [event] = _events_with(self.events, "lost entries")
        self.assertEqual(event["lost"], 1000 - kept)

    def test_unclean_shutdown_is_logged(self) -> None:
        path = self.mktemp()
        _fill(path, 10)
        os.unlink(os.path.join(path, leveldb.CLEAN_MARKER))  # as if killed
        with DBManager(path) as db:
            self.assertIsNone(db.damage["entries_at_last_close"])
        self.assertEqual(len(_events_with(self.events, "was not closed cleanly")), 1)

    def _damage_table(self, path: str) -> None:
        table = next(f for f in os.listdir(path) if f.endswith(".ldb"))
        size = os.path.getsize(os.path.join(path, table))
        with open(os.path.join(path, table), "r+b") as f:
            f.seek(size // 3)
            f.write(b"\xff" * 64)

    def test_damaged_table_refused_on_open(self) -> None:
        path = self.mktemp()
        _fill(path, 1000, compact=True)
        self._damage_table(path)
        e = self.assertRaises(DatabaseCorruptError, DBManager, path)
        self.assertIn(path, str(e))
        self.assertNotIn(os.path.realpath(path), leveldb.open_paths())

    def test_damaged_table_repaired_on_open(self) -> None:
        path = self.mktemp()
        _fill(path, 1000, compact=True)
        self._damage_table(path)
        with DBManager(path, repair=True) as db:
            self.assertTrue(db.damage["repaired"])
            kept = db.damage["entries"]
            self.assertLess(kept, 1000)
            self.assertEqual(len(db.scan_prefix("")), kept)
        [event] = _events_with(self.events, "repaired:")
        self.assertEqual(event["count"], kept)

    def test_damage_after_open_is_a_store_error(self) -> None:
        path = self.mktemp()
        _fill(path, 1000, compact=True)
        db = DBManager(path)
        self.addCleanup(db._close_handle)
        self._damage_table(path)
        errors = []
        for call in (lambda: db.load_entry("k00400"), lambda: db.scan_prefix("k"),
                     lambda: list(db.iter_prefix("k")),
                     lambda: db.load_entries([f"k{i:05d}" for i in range(1000)])):
            try:
                call()
            except StoreError as e:
                errors.append(e)
        self.assertTrue(errors)
        for e in errors:
            self.assertIsInstance(e, DatabaseCorruptError)
            self.assertIsInstance(e.__cause__, leveldb.plyvel.Error)

    def test_translate(self) -> None:
        e = leveldb.translate_plyvel(leveldb.plyvel.CorruptionError(b"bad block"), "/p")
        self.assertIsInstance(e, DatabaseCorruptError)
        self.assertIn("bad block", str(e))
        e = leveldb.translate_plyvel(leveldb.plyvel.IOError(b"disk"), "/p")
        self.assertIsInstance(e, StoreError)
        mine = StoreError("x")
        self.assertIs(leveldb.translate_plyvel(mine, "/p"), mine)

    def test_deferred_api_translates(self) -> None:
        db = DBManager(self.mktemp(), executor=StoreExecutor.inline())
        self.addCleanup(db.close)

        def boom() -> None:
            raise leveldb.plyvel.CorruptionError(b"checksum mismatch")

        f = self.failureResultOf(db.submit(boom), DatabaseCorruptError)
        self.assertIn("checksum mismatch", str(f.value))


class LazyLifecycleTests(unittest.TestCase):
    """``lazy=True``: opened on the store's thread at start; ``when_ready``; stop closes."""

    timeout = 10

    @defer.inlineCallbacks
    def test_start_ready_stop(self) -> Any:
        path = self.mktemp()
        db = DBManager(path, reactor=reactor, lazy=True)
        self.assertTrue(db.closed)
        self.assertNotIn(os.path.realpath(path), leveldb.open_paths())
        ready = db.when_ready()
        self.assertFalse(ready.called)
        opened_in: list[str] = []
        real = DBManager._open_checked

        def spy(self_: DBManager) -> Any:
            opened_in.append(threading.current_thread().name)
            return real(self_)

        self.patch(DBManager, "_open_checked", spy)
        db.startService()
        yield ready
        self.assertNotEqual(opened_in, [threading.current_thread().name])
        self.assertFalse(db.closed)
        yield db.d_create_entry("k", "v")
        self.assertEqual((yield db.d_load_entry("k")), b"v")
        yield db.stopService()
        self.assertTrue(db.closed)
        self.assertNotIn(os.path.realpath(path), leveldb.open_paths())

    @defer.inlineCallbacks
    def test_open_failure_fails_ready(self) -> Any:
        path = self.mktemp()
        holder = DBManager(path)
        self.addCleanup(holder.close)
        db = DBManager(path, reactor=reactor, lazy=True)
        db.startService()
        yield self.assertFailure(db.when_ready(), DatabaseLockedError)
        yield db.stopService()  # safe after a failed start
        self.assertIs(leveldb._registry[os.path.realpath(path)], holder)

    @defer.inlineCallbacks
    def test_path_failure_fails_ready(self) -> Any:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a directory")
        db = DBManager(path, reactor=reactor, lazy=True)
        db.startService()
        yield self.assertFailure(db.when_ready(), StoreError)
        self.flushLoggedErrors(StoreError)
        yield db.stopService()
        self.assertNotIn(os.path.realpath(path), leveldb.open_paths())
