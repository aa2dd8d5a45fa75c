"""The value table seam: KVPRecord, the acceptance rule, MemoryKVPTable."""

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from p2pnet import ids
from p2pnet.dht.table import IKVPTable, KVPRecord, MemoryKVPTable, acceptable
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
