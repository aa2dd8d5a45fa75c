"""Tests for :mod:`p2pnet.chord.record`: the value/tombstone codec stored in the DHT."""

from __future__ import annotations

import math
import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.chord import record
from p2pnet.chord.errors import RecordError
from p2pnet.chord.record import Kind, Record

times = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
keys = st.binary(max_size=300)
records = st.one_of(
    st.builds(Record.value_of, keys, st.binary(max_size=300), times),
    st.builds(Record.tombstone, keys, times),
)


class RecordTests(SynchronousTestCase):
    @given(records)
    def test_round_trip(self, rec: Record) -> None:
        data = record.encode(rec)
        self.assertEqual(record.decode(data), rec)
        self.assertEqual(len(data), record.HEADER_SIZE + len(rec.key) + len(rec.value))

    @given(st.binary(max_size=200))
    def test_decoder_is_total(self, data: bytes) -> None:
        try:
            rec = record.decode(data)
        except RecordError:
            return
        self.assertEqual(record.encode(rec), data)

    @given(records, st.data())
    def test_mutations_decode_or_raise_recorderror(self, rec: Record, data: st.DataObject
                                                   ) -> None:
        raw = bytearray(record.encode(rec))
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(raw)))
        for candidate in (bytes(raw), bytes(raw[:cut])):
            try:
                record.decode(candidate)
            except RecordError:
                pass

    def test_tombstone_is_absent_and_empty(self) -> None:
        t = Record.tombstone(b"k", 5.0)
        self.assertFalse(t.present)
        self.assertTrue(Record.value_of(b"k", b"", 5.0).present)
        self.assertEqual(record.decode(record.encode(t)).kind, Kind.TOMBSTONE)

    def test_bad_records_refused(self) -> None:
        good = record.encode(Record.value_of(b"key", b"value", 1.0))
        cases = {
            "short": good[:5],
            "magic": b"XX" + good[2:],
            "kind": good[:2] + b"\x07" + good[3:],
            "nan": good[:3] + struct.pack("!d", math.nan) + good[11:],
            "negative": good[:3] + struct.pack("!d", -1.0) + good[11:],
            "keylen": good[:11] + struct.pack("!H", 500) + good[13:],
            "tombstone with value": record.encode(Record.tombstone(b"key", 1.0)) + b"x",
        }
        for name, data in cases.items():
            with self.subTest(name):
                self.assertRaises(RecordError, record.decode, data)
        self.assertRaises(RecordError, record.decode, "text")  # type: ignore[arg-type]

    def test_constructor_checks(self) -> None:
        self.assertRaises(ValueError, Record, Kind.TOMBSTONE, 1.0, b"k", b"v")
        self.assertRaises(ValueError, Record.value_of, b"k", b"v", math.inf)
        self.assertRaises(ValueError, Record.value_of, b"k", b"v", -1)
        self.assertRaises(TypeError, Record.value_of, "k", b"v", 1)
        self.assertRaises(ValueError, Record.value_of, b"k" * 70000, b"v", 1)

    def test_digest_and_dht_key(self) -> None:
        raw = record.encode(Record.value_of(b"k", b"v", 1.0))
        self.assertEqual(len(record.digest(raw)), 20)
        self.assertEqual(len(record.dht_key(b"k")), 20)
        self.assertNotEqual(record.dht_key(b"k"), record.dht_key(b"k2"))
        # namespaced: not the SHA-1 of the bare key, which DHTNetwork.put("k") would use
        import hashlib
        self.assertNotEqual(record.dht_key(b"k"), hashlib.sha1(b"k").digest())
        self.assertEqual(record.max_value_size(b"abc", 100), 100 - record.HEADER_SIZE - 3)
