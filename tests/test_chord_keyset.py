"""Tests for :mod:`p2pnet.chord.keyset`: the merge rule, events, bounds, the entry codec."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.chord.errors import RecordError
from p2pnet.chord.keyset import (
    MAX_ENTRIES,
    Entry,
    KeySet,
    Outcome,
    chunk_entries,
    decode_entries,
    encode_entries,
)


def entry(key: bytes, t: float, present: bool = True, d: int = 0) -> Entry:
    return Entry(key, t, bytes([d]) * 20, present)


entries = st.builds(
    Entry,
    st.sampled_from([b"a", b"b", b"c", b""]),
    st.sampled_from([0.0, 1.0, 2.0, 3.5]),
    st.binary(min_size=20, max_size=20).map(lambda b: b[:1] * 20),  # few digests: ties
    st.booleans(),
)


def state(ks: KeySet) -> dict[bytes, Entry]:
    return {e.key: e for e in ks.entries()}


class MergeTests(SynchronousTestCase):
    def test_newer_wins_then_digest(self) -> None:
        ks = KeySet()
        self.assertEqual(ks.apply(entry(b"k", 1.0)), Outcome.ADDED)
        self.assertEqual(ks.apply(entry(b"k", 1.0)), Outcome.STALE)  # duplicate
        self.assertEqual(ks.apply(entry(b"k", 0.5, False)), Outcome.STALE)  # older
        self.assertEqual(ks.apply(entry(b"k", 1.0, d=2)), Outcome.UPDATED)  # tie: digest
        self.assertEqual(ks.apply(entry(b"k", 2.0, False)), Outcome.DELETED)
        self.assertNotIn(b"k", ks)
        self.assertEqual(ks.apply(entry(b"k", 3.0, False)), Outcome.UPDATED)
        self.assertEqual(ks.apply(entry(b"k", 4.0)), Outcome.ADDED)
        self.assertEqual(ks.keys(), [b"k"])
        self.assertEqual(len(ks), 1)

    def test_unknown_tombstone_is_kept(self) -> None:
        ks = KeySet()
        self.assertEqual(ks.apply(entry(b"k", 5.0, False)), Outcome.UPDATED)
        self.assertEqual(ks.apply(entry(b"k", 4.0)), Outcome.STALE)  # cannot come back
        self.assertEqual(len(ks), 0)
        self.assertEqual(ks.size, 1)

    def test_keys_in_order_of_becoming_present(self) -> None:
        ks = KeySet()
        for i, k in enumerate([b"x", b"y", b"z"]):
            ks.apply(entry(k, float(i)))
        ks.apply(entry(b"x", 10.0, False))
        ks.apply(entry(b"x", 11.0))
        self.assertEqual(ks.keys(), [b"y", b"z", b"x"])
        self.assertEqual(list(ks), [b"y", b"z", b"x"])

    @given(st.lists(entries, max_size=30), st.randoms(use_true_random=False))
    def test_any_order_and_duplicates_converge(self, es: list[Entry], rnd) -> None:  # type: ignore[no-untyped-def]
        a, b = KeySet(), KeySet()
        for e in es:
            a.apply(e)
        shuffled = es + es[: len(es) // 2]
        rnd.shuffle(shuffled)
        for e in shuffled:
            b.apply(e)
        self.assertEqual(state(a), state(b))
        self.assertEqual(sorted(a.keys()), sorted(b.keys()))
        # and the state is the maximum by rank of each key's entries
        best: dict[bytes, Entry] = {}
        for e in es:
            if e.key not in best or e.rank > best[e.key].rank:
                best[e.key] = e
        self.assertEqual(state(a), best)

    @given(st.lists(entries, max_size=40))
    def test_events_follow_presence(self, es: list[Entry]) -> None:
        """ADDED and DELETED alternate per key, starting with ADDED, and say exactly when
        the key's presence changed: the events a node fires match its set."""
        ks = KeySet()
        present: set[bytes] = set()
        for e in es:
            before = e.key in ks
            outcome = ks.apply(e)
            after = e.key in ks
            if outcome is Outcome.ADDED:
                self.assertNotIn(e.key, present)
                present.add(e.key)
            elif outcome is Outcome.DELETED:
                self.assertIn(e.key, present)
                present.discard(e.key)
            else:
                self.assertEqual(before, after)
            self.assertEqual(outcome.won, outcome is not Outcome.STALE)
        self.assertEqual(present, set(ks.keys()))


class BoundTests(SynchronousTestCase):
    def test_key_size(self) -> None:
        ks = KeySet(max_key_size=4)
        self.assertEqual(ks.apply(entry(b"12345", 1.0)), Outcome.REFUSED_KEY_SIZE)
        self.assertEqual(ks.apply(entry(b"12345", 1.0, False)), Outcome.REFUSED_KEY_SIZE)
        self.assertEqual(ks.apply(entry(b"1234", 1.0)), Outcome.ADDED)
        self.assertEqual(ks.refused["key_too_large"], 2)

    def test_full_evicts_oldest_tombstone_then_refuses(self) -> None:
        ks = KeySet(max_keys=3)
        ks.apply(entry(b"a", 1.0))
        ks.apply(entry(b"b", 1.0, False))
        ks.apply(entry(b"c", 1.0, False))
        self.assertIsNone(ks.check_new(b"d"))
        self.assertEqual(ks.apply(entry(b"d", 1.0)), Outcome.ADDED)  # evicts b
        self.assertIsNone(ks.get(b"b"))
        self.assertIsNotNone(ks.get(b"c"))
        self.assertEqual(ks.apply(entry(b"e", 1.0)), Outcome.ADDED)  # evicts c
        self.assertEqual(ks.check_new(b"f"), Outcome.REFUSED_FULL)
        self.assertEqual(ks.apply(entry(b"f", 1.0)), Outcome.REFUSED_FULL)
        self.assertEqual(ks.size, 3)
        self.assertEqual(ks.refused["keyset_full"], 1)
        self.assertEqual(ks.refused["tombstone_evicted"], 2)
        # a key already held can still change
        self.assertEqual(ks.apply(entry(b"a", 2.0, False)), Outcome.DELETED)

    def test_prune_old_tombstones(self) -> None:
        ks = KeySet(tombstone_ttl=100.0)
        ks.apply(entry(b"old", 1.0, False))
        ks.apply(entry(b"new", 150.0, False))
        ks.apply(entry(b"live", 1.0))
        self.assertEqual(ks.prune(200.0), 1)
        self.assertIsNone(ks.get(b"old"))
        self.assertIsNotNone(ks.get(b"new"))
        self.assertEqual(ks.keys(), [b"live"])

    def test_future_timestamps_refused(self) -> None:
        ks = KeySet(max_future=300.0)
        self.assertEqual(ks.apply(entry(b"k", 1000.0), now=500.0), Outcome.REFUSED_FUTURE)
        self.assertEqual(ks.apply(entry(b"k", 800.0), now=500.0), Outcome.ADDED)
        self.assertEqual(ks.apply(entry(b"k", 1e15, False)), Outcome.DELETED)  # no clock
        self.assertEqual(ks.refused["future_timestamp"], 1)

    def test_bad_bounds(self) -> None:
        self.assertRaises(ValueError, KeySet, max_keys=0)


class EntryCodecTests(SynchronousTestCase):
    @given(st.lists(st.builds(Entry, st.binary(max_size=50),
                              st.floats(0, 1e12, allow_nan=False),
                              st.binary(min_size=20, max_size=20), st.booleans()),
                    max_size=20))
    def test_round_trip(self, es: list[Entry]) -> None:
        self.assertEqual(decode_entries(encode_entries(es)), es)

    @given(st.binary(max_size=200))
    def test_decoder_is_total(self, data: bytes) -> None:
        try:
            es = decode_entries(data)
        except RecordError:
            return
        self.assertEqual(encode_entries(es), data)

    def test_malformed(self) -> None:
        good = encode_entries([entry(b"k", 1.0)])
        cases = {
            "empty": b"",
            "count too big": struct.pack("!H", MAX_ENTRIES + 1),
            "truncated": good[:-1],
            "trailing": good + b"x",
            "flags": good[:-1] + b"\x02",
            "nan": good[:5] + struct.pack("!d", float("nan")) + good[13:],
        }
        for name, data in cases.items():
            with self.subTest(name):
                self.assertRaises(RecordError, decode_entries, data)
        self.assertRaises(RecordError, decode_entries, None)  # type: ignore[arg-type]
        self.assertRaises(ValueError, encode_entries, [entry(b"k", 1.0)] * (MAX_ENTRIES + 1))

    def test_chunks(self) -> None:
        es = [entry(str(i).encode() * 50, float(i)) for i in range(3000)]
        chunks = list(chunk_entries(es, chunk_bytes=10_000))
        self.assertTrue(all(len(c) <= 10_000 for c in chunks))
        back = [e for c in chunks for e in decode_entries(c)]
        self.assertEqual(back, es)
        big = [entry(b"x" * 20_000, 1.0)]
        self.assertEqual(len(list(chunk_entries(big, chunk_bytes=10_000))), 1)
        self.assertEqual(list(chunk_entries([])), [])
        many = [entry(b"k", float(i)) for i in range(MAX_ENTRIES * 2 + 1)]
        self.assertEqual(len(list(chunk_entries(many))), 3)

    def test_entry_checks(self) -> None:
        self.assertRaises(ValueError, Entry, b"k", 1.0, b"short", True)
        self.assertRaises(ValueError, Entry, b"k", float("inf"), b"x" * 20, True)
        self.assertRaises(TypeError, Entry, "k", 1.0, b"x" * 20, True)
