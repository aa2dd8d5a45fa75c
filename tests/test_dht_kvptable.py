"""Tests for :mod:`p2pnet.dht.kvptable`: the DHT's persistent value table."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import threading
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.python.monkey import MonkeyPatcher
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from p2pnet.dht.kvptable import (
    SMALL_ENTRY_COST,
    SMALL_VALUE,
    VALUE_CHUNK,
    LevelDBKVPTable,
    decode_record,
    encode_record,
)
from p2pnet.dht.table import IKVPTable, KVPRecord, MemoryKVPTable
from p2pnet.models import MAX_VALUE_SIZE
from p2pnet.store import leveldb
from p2pnet.store.appointments import AppointmentsDBM
from p2pnet.store.errors import DatabaseLockedError
from p2pnet.store.leveldb import DBManager
from p2pnet.store.pool import StoreExecutor


def key(n: int) -> bytes:
    return hashlib.sha1(b"key%d" % n).digest()


def record_for(value: bytes, k: int = 0, timestamp: float = 1000.0, **kwargs: Any) -> KVPRecord:
    return KVPRecord(
        key=key(k),
        index=hashlib.sha1(value).digest(),
        size=len(value),
        timestamp=timestamp,
        **kwargs,
    )


def inline_table(path: str, max_bytes: int = 1 << 20) -> LevelDBKVPTable:
    db = DBManager(path, executor=StoreExecutor.inline())
    return LevelDBKVPTable(db, max_bytes, owns_db=True)


times = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
records = st.builds(
    KVPRecord,
    key=st.binary(min_size=20, max_size=20),
    index=st.binary(min_size=20, max_size=20),
    size=st.integers(0, MAX_VALUE_SIZE),
    timestamp=times,
    is_original=st.booleans(),
    last_update=times,
    expires_at=st.none() | times,
    published=st.none() | times,
    source=st.none() | st.tuples(
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
        st.integers(0, 65535)),
)


class RecordCodecTests(unittest.SynchronousTestCase):
    @given(records)
    def test_round_trip(self, record: KVPRecord) -> None:
        self.assertEqual(decode_record(record.key, record.index, encode_record(record)), record)

    def test_compact(self) -> None:
        self.assertEqual(len(encode_record(record_for(b"v"))), 44)
        with_source = attrs.evolve(record_for(b"v"), source=("10.0.0.1", 4000))
        self.assertEqual(len(encode_record(with_source)), 44 + len("10.0.0.1"))

    def test_reads_version_1(self) -> None:
        """Records written by version 1 (no published time, no source) still load."""
        v1 = struct.pack("<BQdBdBd", 1, 1, 1000.0, 1, 5.0, 1, 99.0)
        self.assertEqual(decode_record(key(0), key(1), v1),
                         KVPRecord(key(0), key(1), 1, 1000.0, is_original=True,
                                   last_update=5.0, expires_at=99.0))
        for bad in (v1[:-1], v1 + b"x", v1[:17] + b"\x02" + v1[18:]):
            self.assertRaises(ValueError, decode_record, key(0), key(1), bad)

    @given(st.binary(max_size=64))
    def test_garbage_is_value_error(self, data: bytes) -> None:
        try:
            decode_record(key(0), key(1), data)
        except ValueError:
            pass

    def test_bad_encodings(self) -> None:
        good = encode_record(record_for(b"v"))
        for bad in (b"", good[:-1], good + b"x", b"\x03" + good[1:],
                    good[:17] + b"\x10" + good[18:]):
            self.assertRaises(ValueError, decode_record, key(0), key(1), bad)
        self.assertRaises(ValueError, decode_record, b"short", key(1), good)


class InlineTableTests(unittest.SynchronousTestCase):
    """The table's logic on an inline executor: every Deferred has fired on return."""

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.table = inline_table(self.path)
        self.addCleanup(lambda: self.successResultOf(self.table.stop()))

    def reopen(self) -> LevelDBKVPTable:
        self.successResultOf(self.table.stop())
        self.table = inline_table(self.path)
        return self.table

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IKVPTable, self.table))

    def test_put_read(self) -> None:
        t = self.table
        rec = record_for(b"hello world")
        self.assertTrue(t.is_acceptable(rec.key, rec.index, rec.size, rec.timestamp))
        self.successResultOf(t.put(rec, b"hello world"))
        self.assertEqual(t.get_record(rec.key, rec.index), rec)
        self.assertEqual(t.records_for_key(rec.key), [rec])
        self.assertEqual(list(t.records()), [rec])
        self.assertEqual(t.total_bytes, 11)
        self.assertEqual(len(t), 1)
        self.assertEqual(self.successResultOf(t.read(rec.key, rec.index)), b"hello world")
        self.assertEqual(self.successResultOf(t.read(rec.key, rec.index, 6)), b"world")
        self.assertEqual(self.successResultOf(t.read(rec.key, rec.index, 2, 3)), b"llo")
        self.failureResultOf(t.read(rec.key, key(9)), KeyError)
        self.failureResultOf(t.put(rec, b"wrong size"), ValueError)
        self.failureResultOf(t.put(record_for(b"\0" * 5), 5), TypeError)  # type: ignore[arg-type]
        self.successResultOf(t.put(record_for(b"ba", k=1), bytearray(b"ba")))
        self.assertEqual(t.total_bytes, 13)
        self.successResultOf(t.delete(key(1), record_for(b"ba").index))
        self.assertEqual(t.total_bytes, 11)

    def test_one_write_batch_per_put(self) -> None:
        t = self.table
        calls: list[tuple[Any, ...]] = []
        real = t._db.write_raw

        def spy(*args: Any) -> None:
            calls.append(args)
            real(*args)

        self.patch(t._db, "write_raw", spy)
        rec = record_for(b"v")
        self.successResultOf(t.put(rec, b"v"))
        self.assertEqual(len(calls), 1)
        puts = list(calls[0][0])
        self.assertEqual(len(puts), 2)
        self.assertEqual({k[:5] for k, _ in puts}, {b"kvp/r", b"kvp/c"})
        self.successResultOf(t.delete(rec.key, rec.index))
        self.assertEqual(len(calls), 2)
        self.assertEqual({k[:5] for k in calls[1][1]}, {b"kvp/r", b"kvp/c", b"kvp/v"})

    def test_update_record(self) -> None:
        t = self.table
        rec = record_for(b"value")
        self.failureResultOf(t.update_record(rec), KeyError)
        self.successResultOf(t.put(rec, b"value"))
        newer = record_for(b"value", is_original=True, last_update=5.0, expires_at=99.0)
        self.successResultOf(t.update_record(newer))
        self.assertEqual(t.get_record(rec.key, rec.index), newer)
        bigger = KVPRecord(key=rec.key, index=rec.index, size=6, timestamp=rec.timestamp)
        self.failureResultOf(t.update_record(bigger), ValueError)
        self.reopen()
        self.assertEqual(self.table.get_record(rec.key, rec.index), newer)

    def test_delete(self) -> None:
        t = self.table
        a, b = record_for(b"a"), record_for(b"bb")
        self.successResultOf(t.put(a, b"a"))
        self.successResultOf(t.put(b, b"bb"))
        self.assertEqual(len(t.records_for_key(a.key)), 2)
        self.successResultOf(t.delete(a.key, a.index))
        self.successResultOf(t.delete(a.key, a.index))  # absent: fine
        self.assertEqual(t.records_for_key(a.key), [b])
        self.assertEqual(t.total_bytes, 2)
        self.failureResultOf(t.read(a.key, a.index), KeyError)
        self.reopen()
        self.assertEqual(list(self.table.records()), [b])

    def test_is_acceptable(self) -> None:
        t = inline_table(self.mktemp(), max_bytes=10)
        self.addCleanup(t.stop)
        rec = record_for(b"12345678")
        self.successResultOf(t.put(rec, b"12345678"))
        self.assertFalse(t.is_acceptable(rec.key, rec.index, 8, rec.timestamp))  # same
        self.assertFalse(t.is_acceptable(rec.key, rec.index, 8, rec.timestamp - 1))  # older
        self.assertTrue(t.is_acceptable(rec.key, rec.index, 10, rec.timestamp + 1))  # replaces
        self.assertFalse(t.is_acceptable(key(5), key(6), 3, 1.0))  # over quota
        self.assertTrue(t.is_acceptable(key(5), key(6), 2, 1.0))
        self.assertFalse(t.is_acceptable(key(5), key(6), MAX_VALUE_SIZE + 1, 1.0))

    def test_survives_restart(self) -> None:
        t = self.table
        recs = {}
        for i in range(20):
            value = b"value %d " % i * (i + 1)
            rec = record_for(value, k=i % 4, timestamp=float(i), is_original=i % 2 == 0)
            self.successResultOf(t.put(rec, value))
            recs[rec.kvpid] = (rec, value)
        total = t.total_bytes
        t = self.reopen()
        self.assertEqual({r.kvpid: r for r in t.records()}, {k: r for k, (r, _) in recs.items()})
        self.assertEqual(t.total_bytes, total)
        self.assertEqual(len(t.records_for_key(key(1))), 5)
        for rec, value in recs.values():
            self.assertEqual(self.successResultOf(t.read(rec.key, rec.index)), value)

    def test_failed_write_rolls_back_memory(self) -> None:
        t = self.table
        old = record_for(b"old", timestamp=1.0)
        self.successResultOf(t.put(old, b"old"))

        def broken(*args: Any) -> None:
            raise OSError("disk full")

        self.patch(t._db, "write_raw", broken)
        new = record_for(b"old", timestamp=2.0)
        self.failureResultOf(t.put(new, b"old"), OSError)
        self.assertEqual(t.get_record(old.key, old.index), old)
        other = record_for(b"other")
        self.failureResultOf(t.put(other, b"other"), OSError)
        self.assertIsNone(t.get_record(other.key, other.index))
        self.assertEqual(t.total_bytes, 3)
        self.failureResultOf(t.update_record(new), OSError)
        self.assertEqual(t.get_record(old.key, old.index), old)
        self.failureResultOf(t.delete(old.key, old.index), OSError)
        self.assertEqual(t.get_record(old.key, old.index), old)

    def test_small_values_kept_in_memory(self) -> None:
        """Values up to SMALL_VALUE bytes answer peek and reads without the disk, within
        the cache's byte bound, oldest out first; deletes, failed writes and a reopen
        leave nothing stale behind."""
        path = self.path + "-small"
        t = inline_table(path)
        entry = 40 + SMALL_ENTRY_COST  # what a 40-byte value is charged
        t._small_max = 2 * entry + 10  # room for two
        self.addCleanup(lambda: None if t._db.closed else self.successResultOf(t.stop()))
        recs = [record_for(bytes([n]) * 40, k=n) for n in range(3)]
        for n, r in enumerate(recs):
            self.successResultOf(t.put(r, bytes([n]) * 40))
        self.assertIsNone(t.peek(recs[0].key, recs[0].index))  # three do not fit: oldest out
        self.assertEqual(t.peek(recs[2].key, recs[2].index), b"\x02" * 40)
        self.assertEqual(t._small_bytes, 2 * entry)
        no_disk = MonkeyPatcher((DBManager, "raw", property(lambda _: self.fail("disk read"))))
        got = no_disk.runWithPatches(t.read, recs[1].key, recs[1].index, 38)
        self.assertEqual(self.successResultOf(got), b"\x01\x01")
        big = b"b" * (SMALL_VALUE + 1)
        rec_big = record_for(big, k=9)
        self.successResultOf(t.put(rec_big, big))
        self.assertIsNone(t.peek(rec_big.key, rec_big.index))
        self.successResultOf(t.delete(recs[2].key, recs[2].index))
        self.assertIsNone(t.peek(recs[2].key, recs[2].index))
        self.assertEqual(t._small_bytes, entry)

        def broken(*args: Any) -> None:
            raise OSError("disk full")

        other = record_for(b"other", k=7)
        failing = MonkeyPatcher((t._db, "write_raw", broken))
        self.failureResultOf(failing.runWithPatches(t.put, other, b"other"), OSError)
        self.assertIsNone(t.peek(other.key, other.index))
        # a reopened table holds none in memory until it read them once, whole
        self.successResultOf(t.stop())
        t2 = inline_table(path)
        self.addCleanup(lambda: self.successResultOf(t2.stop()))
        self.assertIsNone(t2.peek(recs[1].key, recs[1].index))
        self.assertEqual(self.successResultOf(t2.read(recs[1].key, recs[1].index, 1, 2)),
                         b"\x01\x01")
        self.assertIsNone(t2.peek(recs[1].key, recs[1].index))
        self.assertEqual(self.successResultOf(t2.read(recs[1].key, recs[1].index)), b"\x01" * 40)
        self.assertEqual(t2.peek(recs[1].key, recs[1].index), b"\x01" * 40)

    def test_failed_put_undone_despite_a_metadata_update_since(self) -> None:
        """A value write that fails is undone even when the record's metadata was
        updated meanwhile (the disk has no value behind it); a delete made meanwhile
        stays a delete."""
        db = DBManager(self.mktemp(), executor=StoreExecutor.inline())
        t = LevelDBKVPTable(db, owns_db=True)
        self.addCleanup(lambda: self.successResultOf(t.stop()))
        queued: list[Any] = []
        real_submit = db.executor.submit
        self.addCleanup(setattr, db.executor, "submit", real_submit)  # (before the stop)

        def held(fn: Any, *args: Any) -> defer.Deferred[Any]:  # writes wait to be run
            d: defer.Deferred[Any] = defer.Deferred()
            queued.append((d, fn, args))
            return d

        def run(fail: bool) -> None:
            while queued:
                d, fn, args = queued.pop(0)
                if fail:
                    d.errback(OSError("disk full"))
                else:
                    real_submit(fn, *args).chainDeferred(d)

        db.executor.submit = held  # type: ignore[method-assign]
        rec = record_for(b"value")
        put = t.put(rec, b"value")
        updated = t.update_record(attrs.evolve(rec, last_update=5.0))
        run(fail=True)
        self.failureResultOf(put, OSError)
        self.failureResultOf(updated, OSError)
        self.assertIsNone(t.get_record(rec.key, rec.index))
        self.assertIsNone(t.peek(rec.key, rec.index))
        # a put in flight, then a delete: the failed put brings nothing back
        old = record_for(b"old", k=1)
        put = t.put(old, b"old")
        run(fail=False)
        self.successResultOf(put)
        again = t.put(attrs.evolve(old, timestamp=2000.0), b"old")
        deleted = t.delete(old.key, old.index)
        queued.pop(0)[0].errback(OSError("disk full"))  # the second put fails
        run(fail=False)  # the delete is written
        self.failureResultOf(again, OSError)
        self.successResultOf(deleted)
        self.assertIsNone(t.get_record(old.key, old.index))
        self.assertIsNone(t.peek(old.key, old.index))
        self.assertEqual(t._puts, {})

    def test_a_read_of_a_value_deleted_meanwhile_is_not_kept(self) -> None:
        """A disk read that completes after its value was deleted is not cached."""
        db = DBManager(self.mktemp(), executor=StoreExecutor.inline())
        t = LevelDBKVPTable(db, owns_db=True)
        self.addCleanup(lambda: self.successResultOf(t.stop()))
        rec = record_for(b"small")
        self.successResultOf(t.put(rec, b"small"))
        t._small.clear()  # as after a reopen: the next read goes to the disk
        t._small_bytes = 0
        reads: list[defer.Deferred[bytes]] = []
        real_submit = db.executor.submit
        self.addCleanup(setattr, db.executor, "submit", real_submit)  # (before the stop)

        def submit(fn: Any, *args: Any) -> defer.Deferred[Any]:
            if fn == t._read:  # the read stays on its way
                reads.append(defer.Deferred())
                return reads[-1]
            return real_submit(fn, *args)

        db.executor.submit = submit  # type: ignore[method-assign]
        read = t.read(rec.key, rec.index)
        self.successResultOf(t.delete(rec.key, rec.index))
        reads.pop().callback(b"small")
        self.assertEqual(self.successResultOf(read), b"small")
        self.assertIsNone(t.peek(rec.key, rec.index))
        self.assertEqual(t._small_bytes, 0)

    def test_read_loads_only_the_chunks_asked_for(self) -> None:
        """Issue 11 #15: a 16 KiB getval of a 1 MiB value reads one or two 16 KiB chunks,
        not the whole value (version 1 read the whole value for every chunk)."""
        t = self.table
        value = os.urandom(MAX_VALUE_SIZE)
        rec = record_for(value)
        self.successResultOf(t.put(rec, value))
        real = t._db.raw
        loaded: list[int] = []

        class Counting:
            def get(self, k: bytes) -> bytes | None:
                v: bytes | None = real.get(k)
                loaded.append(len(v) if v is not None else 0)
                return v

        self.patch(DBManager, "raw", property(lambda _self: Counting()))
        for offset, length in [(0, 16384), (5000, 16384), (MAX_VALUE_SIZE - 10, 16384),
                               (123457, 60 * 1024), (0, 0), (MAX_VALUE_SIZE, 10)]:
            del loaded[:]
            got = self.successResultOf(t.read(rec.key, rec.index, offset, length))
            self.assertEqual(got, value[offset:offset + length])
            self.assertLessEqual(sum(loaded), length + 2 * VALUE_CHUNK)
            self.assertLessEqual(len(loaded), length // VALUE_CHUNK + 2)
        del loaded[:]
        self.assertEqual(self.successResultOf(t.read(rec.key, rec.index)), value)
        self.assertEqual(len(loaded), MAX_VALUE_SIZE // VALUE_CHUNK)

    def test_quota_counters_survive_a_restart(self) -> None:
        t = self.table
        for n, source in enumerate([("10.0.0.1", 1), ("10.0.0.1", 2), ("10.0.0.9", 1)]):
            value = b"v%d" % n
            rec = attrs.evolve(record_for(value, k=n), source=source, published=5.0)
            self.successResultOf(t.put(rec, value))
        before = (dict(t.by_source), dict(t.by_prefix))
        t = self.reopen()
        self.assertEqual((t.by_source, t.by_prefix), before)
        self.assertEqual(t.by_source[("10.0.0.1", 0)].records, 2)
        self.assertEqual(t.by_prefix["10.0.0.0/24"].records, 3)

    def test_version_1_values_still_read_and_replaced(self) -> None:
        t = self.table
        value = os.urandom(40000)
        rec = record_for(value)
        kvpid = rec.key + rec.index
        v1 = struct.pack("<BQdBdBd", 1, len(value), rec.timestamp, 0, 0.0, 0, 0.0)
        t._db.raw.put(b"kvp/r" + kvpid, v1)
        t._db.raw.put(b"kvp/v" + kvpid, value)
        t = self.reopen()
        self.assertEqual(t.get_record(rec.key, rec.index), rec)
        self.assertEqual(self.successResultOf(t.read(rec.key, rec.index, 20000, 100)),
                         value[20000:20100])
        newer = record_for(value, timestamp=2000.0)
        self.successResultOf(t.put(newer, value))
        self.assertIsNone(t._db.raw.get(b"kvp/v" + kvpid))  # rewritten in chunks
        self.assertEqual(self.successResultOf(t.read(rec.key, rec.index)), value)
        self.successResultOf(t.delete(rec.key, rec.index))
        self.assertEqual(list(t._db.raw.iterator(prefix=b"kvp/")), [])

    def test_bad_and_orphan_records_skipped_on_load(self) -> None:
        t = self.table
        good = record_for(b"good")
        self.successResultOf(t.put(good, b"good"))
        raw = t._db.raw
        raw.put(b"kvp/r" + key(7) + key(8), b"garbage")  # bad encoding
        raw.put(b"kvp/r" + key(7) + key(9), encode_record(record_for(b"x", k=7)))  # no value
        raw.put(b"kvp/rshort", encode_record(good))  # bad key
        t = self.reopen()
        self.assertEqual(list(t.records()), [good])
        self.assertEqual(t.total_bytes, 4)

    def test_shares_a_database(self) -> None:
        """The namespace keeps the table apart from the appointments in one database."""
        db = AppointmentsDBM(self.mktemp(), executor=StoreExecutor.inline())
        self.addCleanup(db.close)
        db.store_watcher_appointment("u", {"a": 1})
        t = LevelDBKVPTable(db)
        rec = record_for(b"v")
        self.successResultOf(t.put(rec, b"v"))
        self.assertEqual(db.load_watcher_appointments(), {"u": {"a": 1}})
        self.successResultOf(t.stop())  # not owned: the database stays open
        self.assertFalse(db.closed)
        self.assertEqual(list(LevelDBKVPTable(db).records()), [rec])

    @settings(max_examples=30)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["put", "update", "delete", "read", "peek"]),
                st.integers(0, 2),
                st.integers(0, 2),
                st.binary(max_size=8),
                st.integers(0, 5),
            ),
            max_size=25,
        )
    )
    def test_same_as_memory_table(self, ops: list[tuple[str, int, int, bytes, int]]) -> None:
        """Any sequence of calls leaves this table and MemoryKVPTable alike, reopen included."""
        path = tempfile.mkdtemp(prefix="p2pnet-kvp-")
        try:
            disk, memory = inline_table(path + "/db"), MemoryKVPTable(1 << 20)
            for op, k, i, value, ts in ops:
                kk, ii = key(k), key(10 + i)
                if op == "put":
                    rec = KVPRecord(key=kk, index=ii, size=len(value), timestamp=ts)
                    if memory.is_acceptable(kk, ii, len(value), ts):
                        self.assertTrue(disk.is_acceptable(kk, ii, len(value), ts))
                        self.successResultOf(memory.put(rec, value))
                        self.successResultOf(disk.put(rec, value))
                    else:
                        self.assertFalse(disk.is_acceptable(kk, ii, len(value), ts))
                elif op == "update":
                    held = memory.get_record(kk, ii)
                    if held is None:
                        rec = KVPRecord(key=kk, index=ii, size=0, timestamp=ts)
                        self.failureResultOf(disk.update_record(rec), KeyError)
                    else:
                        rec = KVPRecord(
                            key=kk, index=ii, size=held.size, timestamp=ts, last_update=ts
                        )
                        self.successResultOf(memory.update_record(rec))
                        self.successResultOf(disk.update_record(rec))
                elif op == "delete":
                    self.successResultOf(memory.delete(kk, ii))
                    self.successResultOf(disk.delete(kk, ii))
                elif op == "peek":
                    held = disk.peek(kk, ii)  # None, or exactly what is held
                    if held is not None:
                        self.assertEqual(held, memory.peek(kk, ii))
                else:
                    m, d = memory.read(kk, ii, ts), disk.read(kk, ii, ts)
                    if memory.get_record(kk, ii) is None:
                        self.failureResultOf(m, KeyError)
                        self.failureResultOf(d, KeyError)
                    else:
                        self.assertEqual(self.successResultOf(d), self.successResultOf(m))
            self.successResultOf(disk.stop())
            disk = inline_table(path + "/db")
            self.assertEqual(
                sorted(disk.records(), key=lambda r: r.kvpid),
                sorted(memory.records(), key=lambda r: r.kvpid),
            )
            self.assertEqual(disk.total_bytes, memory.total_bytes)
            for r in memory.records():
                self.assertEqual(
                    self.successResultOf(disk.read(r.key, r.index)),
                    self.successResultOf(memory.read(r.key, r.index)),
                )
            self.successResultOf(disk.stop())
        finally:
            shutil.rmtree(path, ignore_errors=True)


class ThreadedTableTests(unittest.TestCase):
    """The table on its own thread with the real reactor."""

    @defer.inlineCallbacks
    def test_open_put_restart(self) -> Any:
        path = self.mktemp()
        table = yield LevelDBKVPTable.open(path, reactor=reactor)
        self.assertTrue(verifyObject(IKVPTable, table))
        values = [b"v%d" % i * 10 for i in range(100)]
        recs = [record_for(v, k=i % 7) for i, v in enumerate(values)]
        yield defer.gatherResults([table.put(r, v) for r, v in zip(recs, values)])
        read = yield defer.gatherResults([table.read(r.key, r.index) for r in recs])
        self.assertEqual(read, values)
        self.assertLess(table._db.executor.hops, 5)
        ident = yield table._db.submit(threading.get_ident)
        self.assertNotEqual(ident, threading.get_ident())
        yield table.stop()
        self.assertTrue(table._db.closed)
        again = yield LevelDBKVPTable.open(path, reactor=reactor)
        self.addCleanup(again.stop)
        self.assertEqual(len(again), 100)
        self.assertEqual((yield again.read(recs[42].key, recs[42].index)), values[42])

    @defer.inlineCallbacks
    def test_read_after_put_in_the_same_turn(self) -> Any:
        table = yield LevelDBKVPTable.open(self.mktemp(), reactor=reactor)
        self.addCleanup(table.stop)
        fresh = b"fresh" * 300  # over SMALL_VALUE: the read goes to the disk
        rec = record_for(fresh)
        put = table.put(rec, fresh)
        self.assertEqual(table.get_record(rec.key, rec.index), rec)  # metadata at once
        value = yield table.read(rec.key, rec.index)
        self.assertTrue(put.called)  # the read queued behind the write
        self.assertEqual(value, fresh)
        small = record_for(b"small", k=1)
        put = table.put(small, b"small")
        self.assertEqual(table.peek(small.key, small.index), b"small")  # memory at once
        self.assertEqual((yield table.read(small.key, small.index)), b"small")
        yield put
        deleted = table.delete(rec.key, rec.index)
        yield self.assertFailure(table.read(rec.key, rec.index), KeyError)
        yield deleted

    @defer.inlineCallbacks
    def test_service(self) -> Any:
        table = LevelDBKVPTable.open_blocking(self.mktemp(), reactor=reactor)
        table.startService()
        yield table.put(record_for(b"x"), b"x")
        yield table.stopService()
        self.assertTrue(table._db.closed)

    @defer.inlineCallbacks
    def test_open_failing_load_releases_everything(self) -> Any:
        path = self.mktemp()

        def broken(self: LevelDBKVPTable) -> None:
            raise RuntimeError("load failed")

        self.patch(LevelDBKVPTable, "_load", broken)
        yield self.assertFailure(LevelDBKVPTable.open(path, reactor=reactor), RuntimeError)
        self.assertNotIn(os.path.realpath(path), leveldb.open_paths())
        self.assertEqual([t for t in threading.enumerate() if "kvptable" in t.name], [])
        DBManager(path).close()  # the path is free again

    @defer.inlineCallbacks
    def test_open_locked_path_fails_cleanly(self) -> Any:
        path = self.mktemp()
        holder = DBManager(path)
        self.addCleanup(holder.close)
        before = {t.name for t in threading.enumerate()}
        yield self.assertFailure(LevelDBKVPTable.open(path, reactor=reactor), DatabaseLockedError)
        leftover = {t.name for t in threading.enumerate()} - before
        self.assertEqual({n for n in leftover if "kvptable" in n}, set())
