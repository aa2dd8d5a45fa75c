"""Tests for :mod:`p2pnet.sync.socket` on :class:`~p2pnet.mesh.memory.MemoryMesh` and
``task.Clock``."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.mesh.interfaces import MeshMessage
from p2pnet.mesh.memory import MemoryMeshNetwork
from p2pnet.store.keyspace import KeySpace, MemoryKeySpace
from p2pnet.store.leveldb import DBManager
from p2pnet.store.pool import StoreExecutor
from p2pnet.sync import codec
from p2pnet.sync.merge import Entry, Lease, LeaseError, SyncLimits, SyncRefused
from p2pnet.sync.socket import CHANNEL, SyncSocket

START = 1_700_000_000.0  # a UTC time, so lease timestamps look real


class Net:
    """n sync sockets on a memory mesh sharing one task.Clock."""

    def __init__(self, n: int = 0, shape: str = "line", *, leasing: bool = True,
                 **mesh_kw: Any) -> None:
        self.clock = task.Clock()
        self.clock.advance(START)
        self.net = MemoryMeshNetwork(self.clock, latency=0.01, **mesh_kw)
        self.socks: list[SyncSocket] = []
        for _ in range(n):
            self.add(leasing=leasing)
        names = [s.peer_id for s in self.socks]
        if shape == "line":
            self.net.link_all(zip(names, names[1:], strict=False))
        elif shape == "ring":
            self.net.link_all(zip(names, names[1:] + names[:1], strict=False))
        elif shape == "star":
            self.net.link_all((names[0], other) for other in names[1:])
        self.flush()

    def add(self, *, leasing: bool = True, peer_id: bytes | None = None,
            **kw: Any) -> SyncSocket:
        pid = peer_id or b"node%02d" % len(self.socks)
        sock = SyncSocket(self.net.node(pid), leasing=leasing, clock=self.clock, **kw)
        self.socks.append(sock)
        return sock

    def flush(self) -> None:
        self.net.flush()

    def dicts(self) -> list[dict[bytes, Any]]:
        return [s.copy() for s in self.socks]


class Events:
    def __init__(self, sock: SyncSocket) -> None:
        self.log: list[tuple[Any, ...]] = []
        sock.on("update", lambda s, k, v, lease: self.log.append(("update", k, v, lease)))
        sock.on("delete", lambda s, k: self.log.append(("delete", k)))


class DictApiTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.n = Net(3)
        self.a, self.b, self.c = self.n.socks

    def test_set_reaches_every_node(self) -> None:
        self.a["k"] = "v"
        self.assertEqual(self.a[b"k"], b"v")  # local at once
        self.assertNotIn(b"k", self.c)
        self.n.flush()
        for s in self.n.socks:
            self.assertEqual(s[b"k"], b"v")
            self.assertEqual(s["k"], b"v")
            self.assertEqual(s.get(bytearray(b"k")), b"v")

    def test_key_and_value_conversion(self) -> None:
        self.a.set("测试", "test")
        self.a[bytearray(b"ba")] = memoryview(b"mv")
        self.n.flush()
        self.assertEqual(self.c["测试".encode()], b"test")
        self.assertEqual(self.c[b"ba"], b"mv")
        self.assertRaises(TypeError, self.a.__setitem__, 1, b"v")
        self.assertRaises(TypeError, self.a.__setitem__, b"k", 1.5)
        self.assertRaises(TypeError, self.a.get, 3)
        self.assertFalse(3 in self.a)

    def test_missing_key(self) -> None:
        self.assertRaises(KeyError, self.a.__getitem__, b"nope")
        self.assertIsNone(self.a.get(b"nope"))
        self.assertEqual(self.a.get(b"nope", b"d"), b"d")
        self.assertRaises(KeyError, self.a.__delitem__, b"nope")

    def test_views(self) -> None:
        self.a.update({"x": "1", b"y": b"2"}, z="3")
        self.n.flush()
        for s in self.n.socks:
            self.assertEqual(len(s), 3)
            self.assertEqual(sorted(s), [b"x", b"y", b"z"])
            self.assertEqual(sorted(s.keys()), [b"x", b"y", b"z"])
            self.assertEqual(sorted(s.values()), [b"1", b"2", b"3"])
            self.assertEqual(sorted(s.items()), [(b"x", b"1"), (b"y", b"2"), (b"z", b"3")])
            self.assertIn("x", s)
            self.assertEqual(s.copy(), {b"x": b"1", b"y": b"2", b"z": b"3"})

    def test_update_is_one_message(self) -> None:
        before = self.n.net.sent
        self.a.update({b"k%d" % i: b"v" for i in range(20)})
        self.assertEqual(self.n.net.sent - before, 1)  # a's one neighbour, one message
        self.n.flush()
        self.assertEqual(len(self.c), 20)

    def test_delete_everywhere(self) -> None:
        self.a[b"k"] = b"v"
        self.n.flush()
        del self.a[b"k"]
        self.n.flush()
        self.assertEqual(self.n.dicts(), [{}, {}, {}])
        for s in self.n.socks:  # the tombstone left behind is no value
            self.assertNotIn(b"k", s)
            self.assertEqual((len(s), list(s), s.get(b"k")), (0, [], None))
            self.assertRaises(KeyError, s.__getitem__, b"k")

    def test_pop_and_popitem(self) -> None:
        self.a[b"k"] = b"v"
        self.b[b"j"] = b"w"
        self.n.flush()
        self.n.clock.advance(1)  # in the same second the lower id (a) could take j over
        self.assertEqual(self.a.pop(b"k"), b"v")
        self.assertEqual(self.a.pop(b"k", b"d"), b"d")
        self.assertRaises(KeyError, self.a.pop, b"k")
        self.assertRaises(LeaseError, self.a.pop, b"j")  # b's key
        self.assertEqual(self.a[b"j"], b"w")  # still there
        self.assertRaises(KeyError, self.a.popitem)  # the only key is leased to b
        self.assertEqual(self.b.popitem(), (b"j", b"w"))
        self.assertRaises(KeyError, self.b.popitem)  # empty
        self.n.flush()
        self.assertEqual(self.n.dicts(), [{}, {}, {}])

    def test_apply_delta(self) -> None:
        self.a.apply_delta(b"m", {"x": "1"})
        self.a.apply_delta(b"m", {b"y": b"2"})
        self.n.flush()
        self.assertEqual(self.c[b"m"], {b"x": b"1", b"y": b"2"})
        self.a[b"plain"] = b"v"
        self.assertRaises(TypeError, self.a.apply_delta, b"plain", {b"x": b"1"})
        self.assertRaises(TypeError, self.a.apply_delta, b"m", [b"x"])
        self.a[b"n"] = {"p": "q"}
        self.n.flush()
        self.assertEqual(self.b.copy()[b"n"], {b"p": b"q"})
        got = self.b[b"n"]
        got[b"mutated"] = b"1"  # a copy: the replica does not change
        self.assertEqual(self.b[b"n"], {b"p": b"q"})

    def test_events_on_every_node_local_and_remote(self) -> None:
        logs = [Events(s) for s in self.n.socks]
        self.a[b"k"] = b"v"
        self.n.flush()
        for log in logs:
            self.assertEqual(log.log, [("update", b"k", b"v", Lease(b"node00", int(START)))])
        del self.a[b"k"]
        self.n.flush()
        for log in logs:
            self.assertEqual(log.log[1:], [("delete", b"k")])

    def test_decorator_events(self) -> None:
        got = []

        @self.c.on("update")
        def seen(sock: SyncSocket, key: bytes, value: bytes, lease: Lease) -> None:
            got.append((sock, key))

        self.a[b"k"] = b"v"
        self.n.flush()
        self.assertEqual(got, [(self.c, b"k")])
        self.assertRaises(ValueError, self.c.on, "updated", lambda *a: None)

    def test_lease_and_may_set(self) -> None:
        self.a[b"k"] = b"v"
        self.n.flush()
        self.assertEqual(self.b.lease(b"k"), Lease(b"node00", int(START)))
        self.assertIsNone(self.b.lease(b"none"))
        self.assertTrue(self.a.may_set(b"k"))
        self.assertFalse(self.b.may_set(b"k"))

    def test_size_bounds_on_local_writes(self) -> None:
        n = Net(0)
        s = SyncSocket(n.net.node(b"small"), clock=n.clock,
                       limits=SyncLimits(max_key_bytes=4, max_value_bytes=8))
        self.assertRaises(SyncRefused, s.__setitem__, b"toolong", b"v")
        self.assertRaises(SyncRefused, s.__setitem__, b"k", b"x" * 9)
        self.assertRaises(SyncRefused, s.update, {b"k": b"v", b"toolong": b"v"})
        self.assertEqual(len(s), 0)  # update: all or nothing

    def test_update_bounded_by_max_keys_as_a_whole(self) -> None:
        n = Net(0)
        s = SyncSocket(n.net.node(b"small"), clock=n.clock, limits=SyncLimits(max_keys=3))
        s[b"a"] = b"1"
        del s[b"a"]  # a tombstone counts as a key
        with self.assertRaises(SyncRefused) as caught:
            s.update({b"b": b"1", b"c": b"1", b"d": b"1"})  # 1 + 3 new > 3
        self.assertIn("too_many_keys", str(caught.exception))
        self.assertEqual((len(s), len(s._state.entries)), (0, 1))  # nothing written
        s.update({b"a": b"2", b"b": b"2", b"c": b"2"})  # a is not new: 3 keys, at the bound
        self.assertEqual(s.copy(), {b"a": b"2", b"b": b"2", b"c": b"2"})
        s.update({b"a": b"3", b"c": b"3"})  # no new key: fine when full
        self.assertRaises(SyncRefused, s.update, {b"a": b"4", b"e": b"4"})
        self.assertEqual(s.copy(), {b"a": b"3", b"b": b"2", b"c": b"3"})
        n.clock.advance(s.limits.tombstone_seconds + 1)
        del s[b"c"]
        self.assertRaises(SyncRefused, s.update, {b"e": b"5"})  # c's tombstone is young


class LeaseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.n = Net(3)
        self.a, self.b, self.c = self.n.socks

    def test_other_nodes_key_raises_until_expiry(self) -> None:
        self.a[b"k"] = b"v"
        self.n.flush()
        with self.assertRaises(KeyError) as cm:
            self.b[b"k"] = b"mine"
        self.assertIn("leased to node b'node00'", str(cm.exception))
        self.assertRaises(LeaseError, self.c.__delitem__, b"k")
        self.assertRaises(LeaseError, self.c.update, {b"k": b"x"})
        self.n.clock.advance(3600)
        self.assertRaises(LeaseError, self.b.__setitem__, b"k", b"mine")  # 3600 s: not yet
        self.n.clock.advance(1)
        self.b[b"k"] = b"mine"
        self.n.flush()
        self.assertEqual({s[b"k"] for s in self.n.socks}, {b"mine"})
        self.assertEqual(self.a.lease(b"k").owner, b"node01")  # type: ignore[union-attr]
        self.n.clock.advance(1)
        self.assertRaises(LeaseError, self.a.__setitem__, b"k", b"back")

    def test_owner_renews(self) -> None:
        self.a[b"k"] = b"v"
        self.n.clock.advance(3000)
        self.a[b"k"] = b"v2"  # renews
        self.n.flush()
        self.n.clock.advance(1000)  # 4000 s after the first write, 1000 after the renewal
        self.assertRaises(LeaseError, self.b.__setitem__, b"k", b"x")
        self.n.clock.advance(2601)
        self.b[b"k"] = b"x"

    def test_delete_gives_the_lease_up(self) -> None:
        self.a[b"k"] = b"v"
        self.n.flush()
        del self.a[b"k"]
        self.n.flush()
        self.c[b"k"] = b"c's now"  # same second, higher id: the key is free
        self.n.flush()
        self.assertEqual({s.get(b"k") for s in self.n.socks}, {b"c's now"})

    def test_same_second_tie_lower_id_wins_everywhere(self) -> None:
        # concurrent writes in one second: each node first sees its own
        self.c[b"k"] = b"from c"
        self.b[b"k"] = b"from b"
        self.a[b"k"] = b"from a"
        self.n.flush()
        self.assertEqual({s[b"k"] for s in self.n.socks}, {b"from a"})
        self.assertEqual({s.lease(b"k") for s in self.n.socks},  # type: ignore[misc]
                         {Lease(b"node00", int(START))})

    def test_same_second_lower_id_may_take_over(self) -> None:
        self.c[b"k"] = b"from c"
        self.n.flush()
        self.a[b"k"] = b"from a"  # lower id, same second: allowed
        self.n.flush()
        self.assertRaises(LeaseError, self.c.__setitem__, b"k", b"c again")
        self.assertEqual({s[b"k"] for s in self.n.socks}, {b"from a"})

    def test_concurrent_writes_across_seconds_newer_wins(self) -> None:
        self.n.net.partition([b"node00"], [b"node01", b"node02"])
        self.a[b"k"] = b"old"
        self.n.clock.advance(5)
        self.c[b"k"] = b"new"
        self.n.flush()
        self.n.net.link(b"node00", b"node01")
        self.n.flush()
        self.assertEqual({s[b"k"] for s in self.n.socks}, {b"new"})

    def test_leasing_off(self) -> None:
        n = Net(2, leasing=False)
        a, b = n.socks
        a[b"k"] = b"a"
        n.flush()
        b[b"k"] = b"b"  # no lease
        n.flush()
        self.assertEqual(n.dicts(), [{b"k": b"b"}, {b"k": b"b"}])
        del a[b"k"]
        n.flush()
        self.assertEqual(n.dicts(), [{}, {}])


class ConvergenceTests(SynchronousTestCase):
    def test_late_joiner_gets_the_state(self) -> None:
        n = Net(3, "ring")
        a = n.socks[0]
        a.update({b"x": b"1", b"y": b"2"})
        a[b"gone"] = b"v"
        del a[b"gone"]
        n.flush()
        late = n.add()
        log = Events(late)
        n.net.link(late.peer_id, b"node01")
        n.flush()
        self.assertEqual(late.copy(), {b"x": b"1", b"y": b"2"})
        self.assertEqual(sorted(e[1] for e in log.log), [b"x", b"y"])
        self.assertIn(b"gone", late._state.entries)  # the tombstone came too
        self.assertRaises(LeaseError, late.__setitem__, b"x", b"mine")

    def test_late_joiner_on_an_already_connected_mesh(self) -> None:
        n = Net(2)
        n.socks[0][b"k"] = b"v"
        n.flush()
        mesh = n.net.node(b"zz")
        n.net.link(b"zz", b"node00")  # linked before its sync socket exists
        late = SyncSocket(mesh, clock=n.clock)
        n.flush()
        self.assertEqual(late.copy(), {b"k": b"v"})

    def test_healed_partition_converges_both_ways(self) -> None:
        n = Net(6, "line")
        s = n.socks
        s[0][b"shared"] = b"before"
        n.flush()
        n.net.partition([b"node00", b"node01", b"node02"], [b"node03", b"node04", b"node05"])
        s[0][b"left"] = b"L"
        s[5][b"right"] = b"R"
        n.flush()
        n.clock.advance(3601)  # the lease on 'shared' ran out on both sides
        s[1][b"shared"] = b"left side"
        n.clock.advance(1)
        s[4][b"shared"] = b"right side"  # a second later: newer, wins everywhere
        del s[0][b"left"]
        n.flush()
        self.assertNotEqual(s[0].copy(), s[5].copy())
        n.net.link(b"node02", b"node03")
        n.flush()
        want = {b"right": b"R", b"shared": b"right side"}
        self.assertEqual(n.dicts(), [want] * 6)
        self.assertEqual({x.lease(b"shared") for x in s},  # type: ignore[misc]
                         {Lease(b"node04", int(START) + 3602)})

    def test_reconnecting_node_converges(self) -> None:
        n = Net(3, "star")
        hub, a, b = n.socks
        n.net.unlink(b"node00", b"node02")
        a[b"k"] = b"while b was away"
        n.flush()
        self.assertNotIn(b"k", b)
        n.net.link(b"node00", b"node02")
        n.flush()
        self.assertEqual(b[b"k"], b"while b was away")

    def test_messages_in_flight_lost_then_relink(self) -> None:
        n = Net(2)
        a, b = n.socks
        a[b"k"] = b"v"
        n.net.unlink(b"node00", b"node01")  # lost in flight
        n.flush()
        self.assertNotIn(b"k", b)
        n.net.link(b"node00", b"node01")
        n.flush()
        self.assertEqual(b[b"k"], b"v")

    def test_tombstone_beats_a_stale_copy_after_healing(self) -> None:
        n = Net(2)
        a, b = n.socks
        a[b"k"] = b"v"
        n.flush()
        n.net.unlink(b"node00", b"node01")
        n.clock.advance(10)
        del a[b"k"]
        n.net.link(b"node00", b"node01")  # b's dump still holds the value
        n.flush()
        self.assertEqual(n.dicts(), [{}, {}])

    def test_tombstones_expire(self) -> None:
        n = Net(2)
        a, b = n.socks
        a[b"k"] = b"v"
        del a[b"k"]
        n.flush()
        self.assertIn(b"k", b._state.entries)
        n.clock.advance(3601)
        b[b"other"] = b"x"  # any write purges
        self.assertNotIn(b"k", b._state.entries)

    def test_anti_entropy_repairs_a_dropped_broadcast(self) -> None:
        n = Net(3)
        a, b, c = n.socks
        a[b"k"] = b"v"
        self.assertGreater(n.net.drop_in_flight(), 0)  # the broadcast is lost
        n.flush()
        self.assertEqual(n.dicts(), [{b"k": b"v"}, {}, {}])
        self.assertNotEqual(a._state.digest, b._state.digest)
        for s in n.socks:
            s.sync_round()
        n.flush()
        self.assertEqual(n.dicts(), [{b"k": b"v"}] * 3)
        self.assertEqual({s._state.digest for s in n.socks}, {a._state.digest})
        self.assertGreater(b.stats["digest_mismatch"], 0)
        before = sum(s.stats["dumps_sent"] for s in n.socks)
        for s in n.socks:
            s.sync_round()
        n.flush()
        self.assertEqual(sum(s.stats["dumps_sent"] for s in n.socks), before)  # all equal

    def test_anti_entropy_runs_while_the_service_runs(self) -> None:
        n = Net(2)
        a, b = n.socks
        for s in n.socks:
            s.startService()
        a[b"k"] = b"v"
        n.clock.advance(61)  # dropped as too old; the next round repairs it
        n.flush()
        n.clock.advance(60)
        n.flush()
        self.assertEqual(b[b"k"], b"v")
        rounds = a.stats["digest_rounds"]
        for s in n.socks:
            self.successResultOf(s.stopService())
        n.clock.advance(600)
        self.assertEqual(a.stats["digest_rounds"], rounds)

    def test_digest_is_order_free(self) -> None:
        n = Net(2, leasing=False, jitter=0.05, duplicate=0.5, seed=7)
        a, b = n.socks
        for i in range(30):
            (a if i % 2 else b)[b"k%d" % (i % 7)] = b"%d" % i
            n.clock.advance(0.01)
        n.flush()
        self.assertEqual(a._state.digest, b._state.digest)
        self.assertEqual(a.copy(), b.copy())

    @settings(max_examples=25)
    @given(
        ops=st.lists(
            st.one_of(
                st.tuples(st.just("set"), st.integers(0, 3), st.sampled_from("kj"),
                          st.sampled_from([b"1", b"2"])),
                st.tuples(st.just("del"), st.integers(0, 3), st.sampled_from("kj")),
                st.tuples(st.just("tick"), st.sampled_from([0.005, 1.0, 61.0, 3601.0])),
            ),
            max_size=25,
        ),
        seed=st.integers(0, 1000),
    )
    def test_lossy_deliveries_converge_after_a_round(self, ops: list[tuple[Any, ...]],
                                                     seed: int) -> None:
        """Clock jumps drop broadcasts in flight as too old; one anti-entropy round
        brings every node to the same state."""
        n = Net(4, "ring", jitter=0.02, duplicate=0.2, seed=seed)
        for op in ops:
            if op[0] == "tick":
                n.clock.advance(op[1])
                continue
            sock = n.socks[op[1]]
            try:
                if op[0] == "set":
                    sock[op[2]] = op[3]
                else:
                    del sock[op[2]]
            except KeyError:
                pass
        n.flush()
        for s in n.socks:
            s.sync_round()
        n.flush()
        first = n.socks[0]
        for s in n.socks[1:]:
            self.assertEqual(s._state.entries, first._state.entries)
            self.assertEqual(s.copy(), first.copy())

    @settings(max_examples=60)
    @given(
        n_nodes=st.integers(2, 5),
        leasing=st.booleans(),
        ops=st.lists(
            st.one_of(
                st.tuples(st.just("set"), st.integers(0, 4), st.sampled_from("kjl"),
                          st.sampled_from([b"1", b"2", b"3"])),
                st.tuples(st.just("del"), st.integers(0, 4), st.sampled_from("kjl")),
                st.tuples(st.just("tick"), st.sampled_from([0.0, 0.003, 0.5, 1.0])),
                st.tuples(st.just("wait"), st.sampled_from([1900.0, 3601.0])),
                st.tuples(st.just("unlink"), st.integers(0, 4), st.integers(0, 4)),
                st.tuples(st.just("link"), st.integers(0, 4), st.integers(0, 4)),
            ),
            max_size=30,
        ),
        seed=st.integers(0, 1000),
    )
    def test_random_interleavings_converge(self, n_nodes: int, leasing: bool,
                                           ops: list[tuple[Any, ...]], seed: int) -> None:
        """Sets and deletes on several nodes, with reordered and duplicated deliveries,
        links cut and made: once the mesh is connected and quiet, every node holds the
        same dict (and the same entries, tombstones included)."""
        n = Net(n_nodes, "line", leasing=leasing, jitter=0.02, duplicate=0.3, seed=seed)
        socks, ids = n.socks, [s.peer_id for s in n.socks]
        for op in ops:
            kind = op[0]
            if kind in ("set", "del"):
                sock = socks[op[1] % n_nodes]
                try:
                    if kind == "set":
                        sock[op[2]] = op[3]
                    else:
                        del sock[op[2]]
                except KeyError:
                    pass  # a lease held elsewhere, or nothing to delete
            elif kind == "tick":
                n.clock.advance(op[1])
            elif kind == "wait":  # a quiet network, then time passes (leases run out)
                n.flush()
                n.clock.advance(op[1])
            else:
                i, j = op[1] % n_nodes, op[2] % n_nodes
                if i != j:
                    (n.net.unlink if kind == "unlink" else n.net.link)(ids[i], ids[j])
        n.net.link_all((a, b) for a, b in zip(ids, ids[1:], strict=False)
                       if not n.net.linked(a, b))
        n.flush()
        first = socks[0]
        for s in socks[1:]:
            self.assertEqual(s.copy(), first.copy())
            self.assertEqual(s._state.entries, first._state.entries)


class ProtocolTests(SynchronousTestCase):
    def test_leasing_and_free_refuse_each_other(self) -> None:
        n = Net(0)
        a = n.add(leasing=True)
        b = n.add(leasing=False)
        a[b"k"] = b"v"
        b[b"j"] = b"w"
        n.net.link(a.peer_id, b.peer_id)
        n.flush()
        self.assertEqual(a.copy(), {b"k": b"v"})
        self.assertEqual(b.copy(), {b"j": b"w"})
        self.assertEqual(a.refused["leasing_mismatch"], 1)
        self.assertEqual(b.refused["leasing_mismatch"], 1)
        self.assertEqual(a.stats["refused_by_peer"], 1)
        self.assertIn("leasing off", a.incompatible[b.peer_id])
        self.assertIn("do not sync", b.incompatible[a.peer_id])
        a[b"k2"] = b"v"  # a broadcast of the other mode is dropped
        n.flush()
        self.assertNotIn(b"k2", b)
        self.assertEqual(b.refused["mode_mismatch"], 1)

    def test_malformed_dropped_and_counted(self) -> None:
        n = Net(2)
        a, b = n.socks
        mesh_a = n.net.nodes[a.peer_id]
        for parts in [(b"junk",), (b"\x01LW", b"\x00\x01"), (b"\x01LH", b"x")]:
            mesh_a.send(b.peer_id, *parts, channel=CHANNEL)
        mesh_a.broadcast(b"\x09", channel=CHANNEL)
        n.flush()
        self.assertEqual(b.refused["malformed"], 4)
        a[b"k"] = b"still works"
        n.flush()
        self.assertEqual(b[b"k"], b"still works")

    @given(st.lists(st.binary(max_size=60), min_size=1, max_size=3),
           st.sampled_from([b"\x01LW", b"\x01LD", b"\x01LG", b"\x01LR", b"\x01FW", b""]))
    def test_fuzzed_messages_never_raise(self, parts: list[bytes], head: bytes) -> None:
        n = Net(2)
        a, b = n.socks
        a[b"k"] = b"v"
        n.flush()
        if head:
            parts = [head] + parts[1:]
        msg = MeshMessage(a.peer_id, a.peer_id, CHANNEL, tuple(parts), None, START)
        b._received(msg)  # dropped and counted, or merged: never an exception
        n.flush()
        self.assertEqual(b.get(b"k") is None, b"k" in b._state.entries
                         and b._state.entries[b"k"].deleted)
        self.assertEqual(len(b), len(b._state.values))

    def test_refused_entries_counted_not_fatal(self) -> None:
        n = Net(2)
        a, b = n.socks
        b.limits.max_value_bytes = 4
        b.limits.max_keys = 2
        a[b"big"] = b"12345"
        a.update({b"k1": b"v", b"k2": b"v", b"k3": b"v"})
        future = Entry(b"v", a.peer_id, int(START) + 10_000)
        n.net.nodes[a.peer_id].broadcast(
            *codec.encode_entries(True, codec.WRITES, [(b"f", future)])[0], channel=CHANNEL)
        n.flush()
        self.assertEqual(b.refused["value_too_large"], 1)
        self.assertEqual(b.refused["too_many_keys"], 1)
        self.assertEqual(b.refused["from_future"], 1)
        self.assertEqual(len(b), 2)

    def test_send_to_a_vanished_peer(self) -> None:
        n = Net(2)
        a, b = n.socks
        a[b"k"] = b"v"
        n.net.unlink(a.peer_id, b.peer_id)
        a._dump(b.peer_id)  # the peer went away in between: counted, no error
        self.assertEqual(a.stats["peer_gone"], 1)

    def test_dumps_to_one_peer_bounded(self) -> None:
        n = Net(2)
        a, b = n.socks
        a[b"k"] = b"v"
        mesh_b = n.net.nodes[b.peer_id]
        for _ in range(30):  # a peer asking for our whole state again and again
            mesh_b.send(a.peer_id, *codec.encode_hello(True), channel=CHANNEL)
        n.flush()
        self.assertEqual(a.stats["dumps_sent"], a.limits.max_dumps_per_minute)
        self.assertEqual(a.refused["dump_rate"], 31 - a.limits.max_dumps_per_minute)
        n.clock.advance(60)
        mesh_b.send(a.peer_id, *codec.encode_hello(True), channel=CHANNEL)
        n.flush()
        self.assertEqual(a.stats["dumps_sent"], a.limits.max_dumps_per_minute + 1)

    def test_peer_id_read_from_the_mesh_when_writing(self) -> None:
        n = Net(0)
        mesh = n.net.node(b"x")
        mesh.peer_id = b""  # a MeshSocket with a PeerStore learns its id on start
        sock = SyncSocket(mesh, clock=n.clock)
        self.assertRaises(RuntimeError, sock.__setitem__, b"k", b"v")
        mesh.peer_id = b"x"
        sock[b"k"] = b"v"
        self.assertEqual(sock.lease(b"k"), Lease(b"x", int(START)))

    def test_disconnect_forgets_the_peer(self) -> None:
        n = Net(0)
        a, b = n.add(), n.add(leasing=False)
        n.net.link(a.peer_id, b.peer_id)
        n.flush()
        self.assertIn(b.peer_id, a.incompatible)
        n.net.unlink(a.peer_id, b.peer_id)
        self.assertNotIn(b.peer_id, a.incompatible)


class PersistenceTests(SynchronousTestCase):
    def test_restart_does_not_start_empty(self) -> None:
        n = Net(0)
        store = MemoryKeySpace()
        a = n.add(peer_id=b"a", store=store)
        a.startService()
        self.assertIsNone(self.successResultOf(a.when_ready()))
        b = n.add(peer_id=b"b")
        n.net.link(b"a", b"b")
        a[b"mine"] = b"1"
        b[b"theirs"] = b"2"
        a[b"gone"] = b"x"
        del a[b"gone"]
        n.flush()
        self.successResultOf(a.stopService())
        n.net.remove(b"a")
        self.assertEqual(len(store.data), 3)  # a tombstone is persisted too

        n.clock.advance(1)  # past the second in which 'a' < 'b' could take b's key
        again = SyncSocket(n.net.node(b"a"), clock=n.clock, store=store)
        d = again.when_ready()
        self.assertNoResult(d)
        again.startService()
        self.successResultOf(d)
        self.assertEqual(again.copy(), {b"mine": b"1", b"theirs": b"2"})
        self.assertRaises(LeaseError, again.__setitem__, b"theirs", b"x")
        again[b"mine"] = b"renewed"  # the same id still owns its key

    def test_leveldb_restart(self) -> None:
        """The same, in a LevelDB key space closed and opened again."""
        path = self.mktemp()
        n = Net(2)
        with DBManager(path, executor=StoreExecutor.inline()) as db:
            a = n.add(peer_id=b"a", store=KeySpace(db, b"sync/"))
            a.startService()
            n.net.link(b"a", b"node00")
            n.flush()
            a[b"k"] = b"v"
            a.apply_delta(b"m", {b"x": b"1"})
            n.flush()
            self.successResultOf(a.stopService())
        n.net.remove(b"a")
        n.clock.advance(5)
        with DBManager(path, executor=StoreExecutor.inline()) as db:
            again = SyncSocket(n.net.node(b"a"), clock=n.clock, store=KeySpace(db, b"sync/"))
            again.startService()
            self.successResultOf(again.when_ready())
            self.assertEqual(again.copy(), {b"k": b"v", b"m": {b"x": b"1"}})
            self.assertEqual(again.lease(b"k"), Lease(b"a", int(START)))
            self.successResultOf(again.stopService())

    def test_loaded_state_reaches_the_mesh(self) -> None:
        n = Net(2)
        store = MemoryKeySpace()
        entry = Entry(b"from disk", b"old-node", int(START))
        store.data[b"k"] = codec.encode_entry(b"k", entry)
        store.data[b"bad"] = b"garbage"
        store.data[b"other"] = codec.encode_entry(b"mismatch", entry)
        late = n.add(peer_id=b"late", store=store)
        n.net.link(b"late", b"node00")
        late.startService()
        n.flush()
        self.assertEqual(late.refused["bad_stored_entry"], 2)
        self.assertEqual([s.get(b"k") for s in n.socks], [b"from disk"] * 3)

    def test_purged_tombstone_deleted_from_store(self) -> None:
        n = Net(0)
        store = MemoryKeySpace()
        a = n.add(store=store)
        a.startService()
        a[b"k"] = b"v"
        del a[b"k"]
        self.assertIn(b"k", store.data)
        n.clock.advance(3601)
        a[b"j"] = b"w"
        self.assertNotIn(b"k", store.data)
