"""The value table seam: KVPRecord, the acceptance rule, MemoryKVPTable."""

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from p2pnet import ids
from p2pnet.dht.limits import Limits, prefix_key, source_key
from p2pnet.dht.table import IKVPTable, KVPRecord, MemoryKVPTable, Usage, acceptable
from p2pnet.models import MAX_VALUE_SIZE

KEY = ids.key_for(b"key")
IDX = ids.key_for(b"value")


def rec(size: int = 5, ts: float = 10.0, **kw: object) -> KVPRecord:
    return KVPRecord(KEY, IDX, size, ts, **kw)  # type: ignore[arg-type]


class RecordTests(SynchronousTestCase):
    def test_validation(self) -> None:
        self.assertRaises(ValueError, KVPRecord, b"short", IDX, 1, 1.0)
        self.assertRaises(TypeError, KVPRecord, "text" * 5, IDX, 1, 1.0)
        self.assertRaises(ValueError, rec, size=-1)
        self.assertRaises(ValueError, rec, size=MAX_VALUE_SIZE + 1)
        self.assertEqual(rec(ts=3).timestamp, 3.0)
        for bad in (float("nan"), float("inf"), -1.0):
            self.assertRaises(ValueError, rec, ts=bad)
            self.assertRaises(ValueError, rec, last_update=bad)
            self.assertRaises(ValueError, rec, expires_at=bad)

    def test_expiry(self) -> None:
        self.assertFalse(rec().is_expired(1e12))  # no expiry: an original
        r = rec(expires_at=100.0)
        self.assertFalse(r.is_expired(99.9))
        self.assertTrue(r.is_expired(100.0))
        self.assertEqual(r.kvpid, (KEY, IDX))


class AcceptableTests(SynchronousTestCase):
    def test_rules(self) -> None:
        held = rec(size=10, ts=50.0)
        self.assertTrue(acceptable(None, 10, 1.0, 0, 100))
        self.assertTrue(acceptable(held, 10, 51.0, 10, 100))  # newer
        self.assertFalse(acceptable(held, 10, 50.0, 10, 100))  # same timestamp
        self.assertFalse(acceptable(held, 10, 49.0, 10, 100))  # would roll back
        self.assertFalse(acceptable(None, MAX_VALUE_SIZE + 1, 1.0, 0, 1 << 30))
        self.assertFalse(acceptable(None, 11, 1.0, 90, 100))  # over the quota
        self.assertTrue(acceptable(held, 20, 51.0, 90, 100))  # the old copy's bytes free up


class MemoryTableTests(SynchronousTestCase):
    def test_provides_interface(self) -> None:
        self.assertTrue(verifyObject(IKVPTable, MemoryKVPTable()))

    def test_put_read_update_delete(self) -> None:
        t = MemoryKVPTable(max_bytes=100)
        self.successResultOf(t.put(rec(), b"abcde"))
        self.assertEqual(t.total_bytes, 5)
        self.assertEqual(len(t), 1)
        self.assertEqual(self.successResultOf(t.read(KEY, IDX, 1, 3)), b"bcd")
        self.assertEqual(self.successResultOf(t.read(KEY, IDX, 2)), b"cde")
        self.assertEqual(t.records_for_key(KEY), [rec()])
        self.assertEqual(list(t.records()), [rec()])
        self.assertFalse(t.is_acceptable(KEY, IDX, 5, 10.0))
        self.assertTrue(t.is_acceptable(KEY, IDX, 5, 11.0))
        self.successResultOf(t.update_record(rec(last_update=7.0)))
        self.assertEqual(t.get_record(KEY, IDX).last_update, 7.0)  # type: ignore[union-attr]
        self.successResultOf(t.delete(KEY, IDX))
        self.successResultOf(t.delete(KEY, IDX))  # absent: not an error
        self.assertEqual((len(t), t.total_bytes, t.records_for_key(KEY)), (0, 0, []))
        self.failureResultOf(t.read(KEY, IDX), KeyError)

    def test_errors(self) -> None:
        t = MemoryKVPTable()
        self.failureResultOf(t.put(rec(size=3), b"abcde"), ValueError)
        self.failureResultOf(t.update_record(rec()), KeyError)
        self.successResultOf(t.put(rec(), b"abcde"))
        self.failureResultOf(t.update_record(rec(size=4)), ValueError)

    def test_replacing_keeps_byte_total(self) -> None:
        t = MemoryKVPTable()
        self.successResultOf(t.put(rec(size=5), b"abcde"))
        self.successResultOf(t.put(rec(size=2, ts=11.0), b"ab"))
        self.assertEqual((t.total_bytes, len(t)), (2, 1))


class SourceFieldTests(SynchronousTestCase):
    def test_published_and_source(self) -> None:
        r = rec(published=3.0, source=("10.0.0.1", 4000))
        self.assertEqual((r.published, r.source), (3.0, ("10.0.0.1", 4000)))
        for bad in (float("nan"), -1.0):
            self.assertRaises(ValueError, rec, published=bad)
        for source in (("h", -1), ("h", 65536), ("h", "1"), ["h", 1], ("h",), ("\ud800", 1),
                       ("x" * 256, 1), (1, 1)):
            self.assertRaises(ValueError, rec, source=source)


class QuotaTests(SynchronousTestCase):
    """RecordIndex.refusal: records and bytes, in total, per source and per prefix."""

    A = ("10.1.1.1", 4000)
    A2 = ("10.1.1.1", 4001)  # same IP: the same source
    B = ("10.1.1.2", 4000)  # same /24
    C = ("10.2.2.2", 4000)  # elsewhere
    L1, L2 = ("127.0.0.1", 5000), ("127.0.0.1", 5001)  # loopback: keyed on the port

    def hold(self, t: MemoryKVPTable, n: int, size: int, source: tuple[str, int]) -> None:
        value = b"x" * size
        key = ids.key_for(b"%d" % n + source[0].encode() + b"%d" % source[1])
        self.successResultOf(t.put(KVPRecord(key, ids.key_for(value), size, 1.0,
                                             source=source), value))

    def refusal(self, t: MemoryKVPTable, size: int, source: tuple[str, int] | None,
                limits: Limits, n: int = 10**6) -> str | None:
        value = b"x" * size
        return t.refusal(ids.key_for(b"new%d" % n), ids.key_for(value), size, 5.0, source,
                         limits)

    def test_records_per_source_prefix_and_total(self) -> None:
        limits = Limits(store_source_max_records=2, store_prefix_max_records=3,
                        store_max_records=5)
        t = MemoryKVPTable()
        self.hold(t, 0, 0, self.A)
        self.hold(t, 1, 0, self.A2)
        self.assertEqual(self.refusal(t, 0, self.A, limits), "store_source_quota_records")
        self.assertIsNone(self.refusal(t, 0, self.B, limits))
        self.hold(t, 2, 0, self.B)
        self.assertEqual(self.refusal(t, 0, self.B, limits), "store_prefix_quota_records")
        self.assertIsNone(self.refusal(t, 0, self.C, limits))
        self.hold(t, 3, 0, self.C)
        self.hold(t, 4, 0, self.L1)
        self.assertEqual(self.refusal(t, 0, self.L2, limits), "store_quota_records")
        self.assertEqual(self.refusal(t, 0, None, limits), "store_quota_records")
        self.assertEqual(len(t.by_source), 4)  # A (both ports), B, C, L1
        self.assertEqual(t.by_prefix["10.1.1.0/24"].records, 3)
        self.assertEqual(t.by_prefix["127.0.0.1:5000"].records, 1)

    def test_bytes_with_a_charge_per_record(self) -> None:
        limits = Limits(store_record_overhead=100, store_source_max_bytes=1000,
                        store_prefix_max_bytes=10**6)
        t = MemoryKVPTable(max_bytes=2000)
        self.hold(t, 0, 400, self.A)  # charged 500
        self.assertIsNone(self.refusal(t, 400, self.A, limits))  # 1000: fits exactly
        self.assertEqual(self.refusal(t, 401, self.A, limits), "store_source_quota_bytes")
        self.hold(t, 1, 0, self.A)  # empty, but charged 100
        self.assertEqual(self.refusal(t, 400, self.A, limits), "store_source_quota_bytes")
        self.assertIsNone(self.refusal(t, 300, self.A, limits))
        # total: 600 charged; 1400 free
        self.assertIsNone(self.refusal(t, 1300, None, limits))
        self.assertEqual(self.refusal(t, 1301, None, limits), "store_quota_bytes")
        self.assertEqual(self.refusal(t, 1301, self.C, limits), "store_quota_bytes")
        # Limits.store_max_bytes caps the total too (the smaller of the two applies)
        smaller = attrs.evolve(limits, store_max_bytes=1000)
        self.assertIsNone(self.refusal(t, 300, None, smaller))
        self.assertEqual(self.refusal(t, 301, None, smaller), "store_quota_bytes")

    def test_replacing_a_copy_frees_its_share(self) -> None:
        limits = Limits(store_source_max_records=1, store_record_overhead=0,
                        store_source_max_bytes=10)
        t = MemoryKVPTable()
        value = b"v" * 10
        r = KVPRecord(KEY, ids.key_for(value), 10, 1.0, source=self.A)
        self.successResultOf(t.put(r, value))
        # a newer timestamp of the same value from the same source replaces it: fits
        self.assertIsNone(t.refusal(KEY, r.index, 10, 2.0, self.A, limits))
        self.assertEqual(t.refusal(KEY, r.index, 10, 1.0, self.A, limits), "store_not_newer")
        self.assertEqual(t.refusal(KEY, r.index, MAX_VALUE_SIZE + 1, 2.0, self.A, limits),
                         "store_too_large")
        # from another source: the other source's quota is not freed by the replacement
        self.assertIsNone(t.refusal(KEY, r.index, 10, 2.0, self.C, limits))

    def test_counters_follow_puts_updates_and_deletes(self) -> None:
        t = MemoryKVPTable()
        self.hold(t, 0, 10, self.A)
        self.hold(t, 1, 20, self.B)
        (ra,) = [r for r in t.records() if r.source == self.A]
        self.successResultOf(t.update_record(attrs.evolve(ra, last_update=5.0)))
        self.assertEqual(t.by_source[("10.1.1.1", 0)], Usage(1, 10))
        self.assertEqual(t.by_prefix["10.1.1.0/24"], Usage(2, 30))
        self.successResultOf(t.delete(ra.key, ra.index))
        self.assertNotIn(("10.1.1.1", 0), t.by_source)
        self.assertEqual(t.by_prefix["10.1.1.0/24"], Usage(1, 20))
        for r in t.records():
            self.successResultOf(t.delete(r.key, r.index))
        self.assertEqual((t.by_source, t.by_prefix, t.total_bytes), ({}, {}, 0))


_SOURCES = [("10.1.1.1", 4000), ("10.1.1.1", 4001), ("10.1.1.2", 4000), ("10.2.2.2", 4000),
            ("127.0.0.1", 5000), ("127.0.0.1", 5001), None]
_KEYS = [ids.key_for(b"k%d" % i) for i in range(3)]


def model_refusal(t: MemoryKVPTable, key: bytes, index: bytes, size: int, ts: float,
                  source: tuple[str, int] | None, lim: Limits) -> str | None:
    """The quota rules, recounted from the records themselves."""
    if not 0 <= size <= MAX_VALUE_SIZE:
        return "store_too_large"
    held = t.get_record(key, index)
    if held is not None and ts <= held.timestamp:
        return "store_not_newer"
    others = [r for r in t.records() if r.kvpid != (key, index)]

    def over(records: list[KVPRecord], max_records: int, max_bytes: int) -> str | None:
        n = len(records) + 1
        if n > max_records:
            return "records"
        if sum(r.size for r in records) + size + n * lim.store_record_overhead > max_bytes:
            return "bytes"
        return None

    kind = over(others, lim.store_max_records, min(t.max_bytes, lim.store_max_bytes))
    if kind:
        return f"store_quota_{kind}"
    if source is None:
        return None
    for name, keyed, max_records, max_bytes in (
            ("source", source_key, lim.store_source_max_records, lim.store_source_max_bytes),
            ("prefix", prefix_key, lim.store_prefix_max_records, lim.store_prefix_max_bytes)):
        # a held copy from the same holder frees its share; from another it stays charged
        mine = [r for r in t.records() if r.source and keyed(r.source) == keyed(source)
                and (r.kvpid != (key, index))]
        kind = over(mine, max_records, max_bytes)
        if kind:
            return f"store_{name}_quota_{kind}"
    return None


class QuotaModelTests(SynchronousTestCase):
    @given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 40),
                              st.integers(1, 4), st.integers(0, len(_SOURCES) - 1)),
                    max_size=25),
           st.integers(1, 6), st.integers(0, 120), st.integers(0, 30))
    def test_refusal_vs_recounting(self, ops: list[tuple[int, int, int, int, int]],
                                   max_records: int, max_bytes: int, overhead: int) -> None:
        """Every store offered is judged as recounting the held records judges it, and
        the ones taken are held (so the counters the rule reads follow the records)."""
        lim = Limits(store_source_max_records=max_records, store_source_max_bytes=max_bytes,
                     store_prefix_max_records=max_records + 1,
                     store_prefix_max_bytes=max_bytes + 40, store_max_records=3 * max_records,
                     store_max_bytes=4 * max_bytes, store_record_overhead=overhead)
        t = MemoryKVPTable(max_bytes=10**6)
        for k, i, size, ts, s in ops:
            key, index, source = _KEYS[k], _KEYS[i], _SOURCES[s]
            got = t.refusal(key, index, size, float(ts), source, lim)
            self.assertEqual(got, model_refusal(t, key, index, size, float(ts), source, lim))
            if got is None:
                value = b"v" * size
                self.successResultOf(t.put(KVPRecord(key, index, size, float(ts),
                                                     source=source), value))
