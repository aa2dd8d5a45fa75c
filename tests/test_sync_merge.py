"""Tests for :mod:`p2pnet.sync.merge` (pure: merge order, lease rule, state, bounds)
and :mod:`p2pnet.sync.codec`."""

from __future__ import annotations

import itertools
import random

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.sync import codec
from p2pnet.sync.merge import (
    KIND_BYTES,
    KIND_MAP,
    KIND_TOMBSTONE,
    Entry,
    Lease,
    LeaseError,
    SyncLimits,
    SyncRefused,
    SyncState,
    decode_map,
    encode_map,
    lease_holder,
    may_write,
    merge,
    next_entry,
    wins,
)

A, B, C = b"a", b"b", b"c"

owners = st.sampled_from([b"a", b"b", b"c", b"ab"])
entries = st.builds(
    lambda value, owner, ts, seq, is_map: (
        Entry.tombstone(owner, ts, seq) if value is None
        else Entry(value, owner, ts, seq, KIND_MAP if is_map else KIND_BYTES)),
    st.none() | st.sampled_from([b"", b"x", b"y", b"xy"]),
    owners, st.integers(0, 3), st.integers(0, 2), st.booleans(),
)


class OrderTests(SynchronousTestCase):
    def test_newer_timestamp_wins(self) -> None:
        self.assertTrue(wins(Entry(b"x", B, 11), Entry(b"y", A, 10)))
        self.assertFalse(wins(Entry(b"y", A, 10), Entry(b"x", B, 11)))

    def test_same_second_lower_id_wins(self) -> None:
        self.assertTrue(wins(Entry(b"x", A, 10), Entry(b"y", B, 10)))
        self.assertFalse(wins(Entry(b"y", B, 10), Entry(b"x", A, 10)))
        # bytes compare, not length: b"ab" < b"b"
        self.assertTrue(wins(Entry(b"x", b"ab", 10), Entry(b"y", B, 10)))

    def test_seq_orders_one_second(self) -> None:
        self.assertTrue(wins(Entry(b"x", B, 10, 1), Entry(b"y", A, 10, 0)))

    def test_tombstone_merges_like_a_value(self) -> None:
        dead = Entry.tombstone(B, 12)
        self.assertTrue(wins(dead, Entry(b"x", A, 11)))
        self.assertFalse(wins(dead, Entry(b"x", A, 13)))

    def test_merge_keeps_current_on_tie(self) -> None:
        e = Entry(b"x", A, 10)
        self.assertIs(merge(e, Entry(b"x", A, 10)), e)
        self.assertIs(merge(None, e), e)

    def test_entry_validation(self) -> None:
        self.assertRaises(ValueError, Entry, None, A, 1, 0, KIND_BYTES)
        self.assertRaises(ValueError, Entry, b"x", A, 1, 0, KIND_TOMBSTONE)
        self.assertRaises(ValueError, Entry, b"x", A, 1, 0, 7)
        self.assertRaises(ValueError, Entry, b"x", A, -1)

    @given(entries, entries)
    def test_total_order(self, a: Entry, b: Entry) -> None:
        if a == b:
            self.assertFalse(wins(a, b))
        else:
            self.assertNotEqual(wins(a, b), wins(b, a))

    @given(entries, entries, entries)
    def test_transitive(self, a: Entry, b: Entry, c: Entry) -> None:
        if wins(a, b) and wins(b, c):
            self.assertTrue(wins(a, c))

    @given(st.lists(entries, min_size=1, max_size=8), st.randoms(use_true_random=False))
    def test_merge_order_free(self, es: list[Entry], rnd: random.Random) -> None:
        """Any order and repetition of deliveries ends on the same entry."""
        def fold(seq: list[Entry]) -> Entry | None:
            cur: Entry | None = None
            for e in seq:
                cur = merge(cur, e)
            return cur

        want = fold(es)
        shuffled = es + rnd.choices(es, k=len(es))
        rnd.shuffle(shuffled)
        self.assertEqual(fold(shuffled), want)
        # batching: merge two halves separately, then each other
        half = len(shuffled) // 2
        left, right = fold(shuffled[:half]), fold(shuffled[half:])
        both = [e for e in (left, right) if e is not None]
        self.assertEqual(fold(both), want)


class LeaseRuleTests(SynchronousTestCase):
    def test_no_entry_or_tombstone(self) -> None:
        self.assertTrue(may_write(None, A, 100))
        self.assertTrue(may_write(Entry.tombstone(B, 100), A, 100))

    def test_owner_renews(self) -> None:
        self.assertTrue(may_write(Entry(b"x", B, 100), B, 200))

    def test_other_node_refused_for_an_hour(self) -> None:
        e = Entry(b"x", B, 100)
        self.assertFalse(may_write(e, C, 101))
        self.assertFalse(may_write(e, C, 3700))   # exactly 3600 s old: still leased
        self.assertTrue(may_write(e, C, 3701))    # older than 3600 s
        self.assertEqual(lease_holder(e, 3700), B)
        self.assertIsNone(lease_holder(e, 3701))

    def test_same_second_lower_id(self) -> None:
        e = Entry(b"x", B, 100)
        self.assertTrue(may_write(e, A, 100))
        self.assertFalse(may_write(e, C, 100))
        self.assertFalse(may_write(e, A, 101))

    def test_clock_behind_the_owner(self) -> None:
        self.assertFalse(may_write(Entry(b"x", A, 200), B, 100))

    def test_leasing_off(self) -> None:
        self.assertTrue(may_write(Entry(b"x", B, 100), C, 101, leasing=False))

    def test_custom_lease_period(self) -> None:
        e = Entry(b"x", B, 100)
        self.assertTrue(may_write(e, C, 111, lease_seconds=10))

    @given(st.none() | entries, owners, st.integers(0, 5),
           st.none() | st.sampled_from([b"v", b"w"]))
    def test_next_entry_beats_current(self, cur: Entry | None, writer: bytes, now: int,
                                      value: bytes | None) -> None:
        e = next_entry(cur, writer, now, value)
        if cur is not None:
            self.assertTrue(wins(e, cur))
            self.assertGreaterEqual(e.timestamp, cur.timestamp)
        self.assertGreaterEqual(e.timestamp, now)
        self.assertEqual(e.owner, writer)
        self.assertEqual(e.deleted, value is None)

    def test_allowed_writes_win_the_merge(self) -> None:
        """A write the lease rule allows is never lost to the entry it replaced."""
        for cur, writer, now in [
            (Entry(b"x", B, 100), A, 100),               # same-second tie, lower id
            (Entry(b"x", B, 100, 3), A, 100),
            (Entry(b"x", B, 100), B, 100),               # owner renews in the same second
            (Entry(b"x", B, 100), C, 3701),              # expired
            (Entry.tombstone(A, 100), C, 100),           # after a delete, higher id
        ]:
            self.assertTrue(may_write(cur, writer, now))
            self.assertTrue(wins(next_entry(cur, writer, now, b"new"), cur))

    def test_lease_record(self) -> None:
        self.assertEqual(Entry(b"x", B, 100).lease, Lease(B, 100))
        self.assertEqual(Lease(B, 100).expires(), 3700)


class MapCodecTests(SynchronousTestCase):
    @given(st.dictionaries(st.binary(max_size=5), st.binary(max_size=5), max_size=6))
    def test_round_trip(self, m: dict[bytes, bytes]) -> None:
        self.assertEqual(decode_map(encode_map(m)), m)

    def test_canonical(self) -> None:
        self.assertEqual(encode_map({b"b": b"1", b"a": b"2"}),
                         encode_map({b"a": b"2", b"b": b"1"}))

    @given(st.binary(max_size=40))
    def test_decoder_total(self, data: bytes) -> None:
        try:
            m = decode_map(data)
        except ValueError:
            return
        self.assertEqual(encode_map(m), data)


class StateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state = SyncState()

    def test_local_write_and_delete(self) -> None:
        entry, change = self.state.write(b"k", A, 100, b"v")
        self.assertEqual(change.value if change else None, b"v")
        self.assertEqual(self.state.values, {b"k": b"v"})
        entry, change = self.state.write(b"k", A, 100, None)
        self.assertTrue(entry.deleted)
        self.assertEqual((entry.timestamp, entry.seq), (100, 1))
        self.assertIsNotNone(change)
        self.assertEqual(self.state.values, {})
        self.assertIn(b"k", self.state.entries)  # the tombstone
        self.assertRaises(KeyError, self.state.write, b"k", A, 100, None)

    def test_lease_error_is_a_key_error_with_a_message(self) -> None:
        self.state.write(b"k", B, 100, b"v")
        with self.assertRaises(KeyError) as cm:
            self.state.write(b"k", C, 200, b"w")
        self.assertIsInstance(cm.exception, LeaseError)
        self.assertIn("leased to node b'b'", str(cm.exception))
        self.assertIn("free after 3700", str(cm.exception))

    def test_remote_apply_reports_changes(self) -> None:
        s = self.state
        self.assertIsNone(s.apply(b"k", Entry.tombstone(A, 10), 10))  # nothing visible
        change = s.apply(b"k", Entry(b"v", B, 11), 11)
        self.assertEqual(change.value if change else None, b"v")
        self.assertIsNone(s.apply(b"k", Entry(b"old", A, 5), 11))  # loses
        self.assertEqual(s.values[b"k"], b"v")
        change = s.apply(b"k", Entry.tombstone(C, 12), 12)
        self.assertIsNotNone(change)
        self.assertIsNone(change.value if change else b"x")
        self.assertNotIn(b"k", s.values)

    def test_tombstone_keeps_a_missed_delete_dead(self) -> None:
        s = self.state
        s.apply(b"k", Entry.tombstone(A, 100), 100)
        self.assertIsNone(s.apply(b"k", Entry(b"stale", B, 90), 100))
        self.assertNotIn(b"k", s.values)

    def test_tombstones_purged_after_lease_period(self) -> None:
        s = SyncState(SyncLimits(tombstone_seconds=60))
        s.write(b"k", A, 100, b"v")
        s.write(b"k", A, 100, None)
        s.write(b"j", A, 100, b"v")
        self.assertEqual(s.purge(159), [])
        self.assertEqual(s.purge(160), [b"k"])
        self.assertEqual(set(s.entries), {b"j"})

    def test_tombstone_replaced_by_value_not_purged(self) -> None:
        s = SyncState(SyncLimits(tombstone_seconds=60))
        s.write(b"k", A, 100, b"v")
        s.write(b"k", A, 100, None)
        s.write(b"k", A, 120, b"again")
        self.assertEqual(s.purge(1000), [])
        self.assertEqual(s.values, {b"k": b"again"})

    def test_tombstone_heap_bounded_under_churn(self) -> None:
        s = SyncState()
        for i in range(2000):
            s.write(b"k", A, 100 + i, b"v")
            s.write(b"k", A, 100 + i, None)
        self.assertLess(len(s._tombstones), 200)

    def test_bounds_refused_and_counted(self) -> None:
        s = SyncState(SyncLimits(max_key_bytes=4, max_value_bytes=4, max_keys=2,
                                 max_clock_skew=10))
        now = 100
        cases = [
            (b"toolong", Entry(b"v", A, now), "key_too_large"),
            (b"k", Entry(b"12345", A, now), "value_too_large"),
            (b"k", Entry(b"v", b"x" * 65, now), "bad_owner"),
            (b"k", Entry(b"v", A, now + 11), "from_future"),
            (b"k", Entry(b"\x00", A, now, 0, KIND_MAP), "bad_mapping"),
        ]
        for key, entry, kind in cases:
            self.assertIsNone(s.apply(key, entry, now))
            self.assertEqual(s.refused[kind], 1, kind)
        self.assertIsNotNone(s.apply(b"k", Entry(b"v", A, now + 10), now))
        s.apply(b"j", Entry(b"v", A, now), now)
        self.assertIsNone(s.apply(b"i", Entry(b"v", A, now), now))
        self.assertEqual(s.refused["too_many_keys"], 1)
        self.assertIsNotNone(s.apply(b"j", Entry(b"w", A, now + 1), now))  # old key: fine
        self.assertEqual(s.entries.keys(), {b"k", b"j"})
        self.assertRaises(SyncRefused, s.write, b"i", A, now, b"v")
        self.assertRaises(SyncRefused, s.write, b"toolong", A, now, b"v")

    def test_too_many_keys_purges_first(self) -> None:
        s = SyncState(SyncLimits(max_keys=1, tombstone_seconds=10))
        s.write(b"k", A, 100, b"v")
        s.write(b"k", A, 100, None)
        self.assertIsNotNone(s.apply(b"j", Entry(b"v", A, 200), 200))

    @given(st.lists(st.tuples(st.sampled_from([b"k", b"j"]), entries), max_size=12),
           st.randoms(use_true_random=False))
    def test_replicas_converge_in_any_order(self, writes: list[tuple[bytes, Entry]],
                                            rnd: random.Random) -> None:
        replicas = [SyncState() for _ in range(3)]
        for r in replicas:
            order = writes + rnd.choices(writes, k=len(writes)) if writes else []
            rnd.shuffle(order)
            for key, entry in order:
                r.apply(key, entry, 10)
        first = replicas[0]
        for r in replicas[1:]:
            self.assertEqual(r.entries, first.entries)
            self.assertEqual(r.values, first.values)


class CodecTests(SynchronousTestCase):
    @given(st.lists(st.tuples(st.binary(max_size=8), entries), max_size=6), st.booleans(),
           st.sampled_from([codec.WRITES, codec.DUMP]))
    def test_entries_round_trip(self, items: list[tuple[bytes, Entry]], leasing: bool,
                                type_: bytes) -> None:
        msgs = codec.encode_entries(leasing, type_, items, max_batch=40)
        got: list[tuple[bytes, Entry]] = []
        for parts in msgs:
            m = codec.decode(parts)
            self.assertEqual((m.leasing, m.type), (leasing, type_))
            got += m.entries
        self.assertEqual(got, items)

    def test_batches_bounded(self) -> None:
        items = [(b"k%d" % i, Entry(b"x" * 100, A, 1)) for i in range(50)]
        msgs = codec.encode_entries(True, codec.WRITES, items, max_batch=1000)
        self.assertGreater(len(msgs), 5)
        self.assertTrue(all(len(body) <= 1000 for _, body in msgs))

    def test_hello_and_refuse(self) -> None:
        m = codec.decode(codec.encode_hello(False))
        self.assertEqual((m.leasing, m.type), (False, codec.HELLO))
        m = codec.decode(codec.encode_refuse(True, "no thanks é"))
        self.assertEqual((m.type, m.reason), (codec.REFUSE, "no thanks é"))
        long = codec.decode(codec.encode_refuse(True, "é" * 2000))
        self.assertLessEqual(len(long.reason.encode()), codec.MAX_REASON)

    def test_malformed(self) -> None:
        good = codec.encode_entries(True, codec.WRITES, [(b"k", Entry(b"v", A, 1))])[0]
        bad = [
            (), (b"",), (b"\x02LH",), (b"\x01XH",), (b"\x01LZ",), (b"\x01LH", b""),
            (good[0],), (good[0], good[1][:-1]), (good[0], good[1] + b"\x00"),
            (b"\x01LR", b"\xff"), (b"\x01LR", b"x" * 2000), ("str",),
            (good[0], good[1][:16] + b"\x07" + good[1][17:]),  # unknown kind
        ]
        for parts in bad:
            self.assertRaises(codec.SyncDecodeError, codec.decode, parts)

    @given(st.lists(st.binary(max_size=40), min_size=0, max_size=3))
    def test_decoder_total(self, parts: list[bytes]) -> None:
        try:
            codec.decode(parts)
        except codec.SyncDecodeError:
            pass

    @given(st.binary(min_size=1, max_size=60))
    def test_entry_decoder_total(self, body: bytes) -> None:
        try:
            out = codec.decode_entries(body)
        except codec.SyncDecodeError:
            return
        again = b"".join(codec.encode_entry(k, e) for k, e in out)
        self.assertEqual(again, body)

    def test_permutations_of_a_batch(self) -> None:
        items = [(b"k", Entry(b"v", A, 1)), (b"k", Entry.tombstone(B, 2)),
                 (b"j", Entry(b"w", C, 1, 2))]
        for perm in itertools.permutations(items):
            parts = codec.encode_entries(True, codec.DUMP, list(perm))[0]
            self.assertEqual(list(codec.decode(parts).entries), list(perm))
