"""SyncSocket over real loopback ZeroMQ meshes (MeshSocket; the global reactor).

Lease time comes from a ``task.Clock`` shared by the sync sockets, so "the same UTC
second" and "an hour later" are exact while the messages travel for real.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from p2pnet.mesh.limits import MeshLimits
from p2pnet.mesh.socket import MeshSocket
from p2pnet.store.keyspace import MemoryKeySpace
from p2pnet.sync.merge import Lease, LeaseError
from p2pnet.sync.socket import SyncSocket
from tests.test_mesh_socket import crash

clock: Any = reactor
START = 1_700_000_000


async def turn(seconds: float = 0.005) -> None:
    await task.deferLater(clock, seconds, lambda: None)


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = clock.seconds() + timeout
    while not cond():
        if clock.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await turn()


def line(n: int) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(n - 1)]


def ring(n: int) -> list[tuple[int, int]]:
    return [(i, (i + 1) % n) for i in range(n)]


def star(n: int) -> list[tuple[int, int]]:
    return [(0, i) for i in range(1, n)]


class SyncZmqTestCase(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.lease_clock = task.Clock()
        self.lease_clock.advance(START)

    async def mesh(self, **kw: Any) -> MeshSocket:
        kw.setdefault("limits", MeshLimits(handshake_timeout=2.0))
        mesh = MeshSocket("127.0.0.1", 0, **kw)
        mesh.startService()
        self.addCleanup(self.stop, mesh)
        await mesh.when_ready()
        return mesh

    @staticmethod
    def stop(mesh: MeshSocket) -> defer.Deferred[None]:
        return mesh.stopService() if mesh.running else defer.succeed(None)

    def sync(self, mesh: MeshSocket, **kw: Any) -> SyncSocket:
        kw.setdefault("clock", self.lease_clock)
        return SyncSocket(mesh, **kw)

    async def link(self, a: MeshSocket, b: MeshSocket) -> None:
        assert b.address is not None
        self.assertEqual(await a.connect(*b.address), b.peer_id)
        await wait_until(lambda: a.peer_id in b.peers(), what="both ends linked")

    async def network(self, n: int, edges: list[tuple[int, int]],
                      **kw: Any) -> tuple[list[MeshSocket], list[SyncSocket]]:
        meshes = [await self.mesh() for _ in range(n)]
        socks = [self.sync(m, **kw) for m in meshes]
        for a, b in edges:
            await self.link(meshes[a], meshes[b])
        # every link has said hello both ways
        await wait_until(lambda: all(len(s._synced) == len(m.peers())
                                     for s, m in zip(socks, meshes, strict=True)),
                         what="sync hellos")
        return meshes, socks

    async def converged(self, socks: list[SyncSocket], want: dict[bytes, Any],
                        what: str = "convergence") -> None:
        await wait_until(lambda: all(s.copy() == want for s in socks), what=what)


class SetEverywhereTests(SyncZmqTestCase):
    async def check(self, n: int, edges: list[tuple[int, int]]) -> None:
        meshes, socks = await self.network(n, edges)
        socks[0][b"first"] = b"1"
        socks[-1]["last"] = "2"
        socks[n // 2].update({b"a": b"x", b"b": b"y"})
        want = {b"first": b"1", b"last": b"2", b"a": b"x", b"b": b"y"}
        await self.converged(socks, want)
        for s in socks:
            self.assertEqual(s[b"first"], b"1")
            self.assertEqual(s.refused["malformed"], 0)
        del socks[0][b"first"]
        del want[b"first"]
        await self.converged(socks, want, "the delete everywhere")

    async def test_line_of_ten(self) -> None:
        await self.check(10, line(10))

    async def test_ring_of_six(self) -> None:
        await self.check(6, ring(6))

    async def test_star_of_eight(self) -> None:
        await self.check(8, star(8))

    async def test_events_fire_on_every_node(self) -> None:
        meshes, socks = await self.network(4, line(4))
        seen: list[tuple[bytes, bytes, bytes, Lease]] = []
        for s in socks:
            s.on("update", lambda sock, k, v, lease: seen.append((sock.peer_id, k, v, lease)))
        socks[1][b"k"] = b"v"
        await wait_until(lambda: len(seen) == 4, what="an update event on each node")
        await turn(0.1)  # a second event would come now
        self.assertEqual(sorted(x[0] for x in seen), sorted(m.peer_id for m in meshes))
        self.assertEqual({x[3] for x in seen}, {Lease(meshes[1].peer_id, START)})


class LeaseTests(SyncZmqTestCase):
    async def test_lease_conflict_raises_on_every_other_node(self) -> None:
        meshes, socks = await self.network(5, ring(5))
        socks[2][b"k"] = b"mine"
        await self.converged(socks, {b"k": b"mine"})
        self.lease_clock.advance(1)  # past the same-second tie
        for i, s in enumerate(socks):
            if i != 2:
                self.assertRaises(LeaseError, s.__setitem__, b"k", b"theirs")
                self.assertRaises(LeaseError, s.__delitem__, b"k")
        socks[2][b"k"] = b"renewed"
        await self.converged(socks, {b"k": b"renewed"})
        self.lease_clock.advance(3601)
        socks[4][b"k"] = b"after expiry"
        await self.converged(socks, {b"k": b"after expiry"})
        self.assertEqual({s.lease(b"k") for s in socks},  # type: ignore[misc]
                         {Lease(meshes[4].peer_id, START + 3602)})

    async def test_same_second_tie_goes_to_the_lower_id_everywhere(self) -> None:
        meshes, socks = await self.network(6, line(6))
        for s in socks:  # all in the same lease-clock second, before any arrives
            s[b"tie"] = b"from " + s.peer_id
        lowest = min(m.peer_id for m in meshes)
        await self.converged(socks, {b"tie": b"from " + lowest})
        self.assertEqual({s.lease(b"tie") for s in socks},  # type: ignore[misc]
                         {Lease(lowest, START)})

    async def test_leasing_and_free_nodes_refuse_each_other(self) -> None:
        a_mesh, b_mesh = await self.mesh(), await self.mesh()
        a = self.sync(a_mesh)
        b = self.sync(b_mesh, leasing=False)
        await self.link(a_mesh, b_mesh)
        await wait_until(lambda: a.refused["leasing_mismatch"] and b.stats["refused_by_peer"],
                         what="refusals")
        self.assertIn("do not sync", b.incompatible[a_mesh.peer_id])
        a[b"k"] = b"v"
        await turn(0.1)
        self.assertNotIn(b"k", b)


class LateJoinerTests(SyncZmqTestCase):
    async def test_late_joiner_converges(self) -> None:
        meshes, socks = await self.network(5, star(5))
        socks[3].update({b"x": b"1", b"y": b"2"})
        socks[1][b"gone"] = b"v"
        del socks[1][b"gone"]
        await self.converged(socks, {b"x": b"1", b"y": b"2"})
        late_mesh = await self.mesh()
        late = self.sync(late_mesh)
        await self.link(late_mesh, meshes[4])  # joins at a leaf
        await self.converged([late], {b"x": b"1", b"y": b"2"}, "the late joiner")
        self.lease_clock.advance(1)  # past the second where a lower id could take over
        self.assertRaises(LeaseError, late.__setitem__, b"x", b"no")
        late[b"z"] = b"3"  # and its own writes reach the rest
        await self.converged(socks + [late], {b"x": b"1", b"y": b"2", b"z": b"3"})

    async def test_reconnecting_node_converges(self) -> None:
        meshes, socks = await self.network(4, line(4))
        store = MemoryKeySpace()
        node_id = b"reconnecting-node"
        mesh = await self.mesh(peer_id=node_id)
        sock = self.sync(mesh, store=store, anti_entropy=None)
        sock.startService()
        await self.link(mesh, meshes[0])
        sock[b"own"] = b"before"
        await self.converged(socks + [sock], {b"own": b"before"})
        await mesh.stopService()
        sock[b"offline"] = b"written while the mesh was down"  # kept, sent later
        self.assertEqual(sock.stats["unsent_mesh_stopped"], 1)
        await sock.stopService()
        await wait_until(lambda: node_id not in meshes[0].peers(), what="the node gone")

        socks[3][b"meanwhile"] = b"changed"
        await self.converged(socks, {b"own": b"before", b"meanwhile": b"changed"})

        mesh2 = await self.mesh(peer_id=node_id)
        sock2 = self.sync(mesh2, store=store, anti_entropy=None)
        sock2.startService()
        await sock2.when_ready()
        offline = {b"offline": b"written while the mesh was down"}
        self.assertEqual(sock2.copy(), {b"own": b"before", **offline})  # from its store
        await self.link(mesh2, meshes[2])
        await self.converged(socks + [sock2],
                             {b"own": b"before", b"meanwhile": b"changed", **offline})
        self.lease_clock.advance(1)
        sock2[b"own"] = b"after"  # still the owner after the restart
        await self.converged(socks + [sock2],
                             {b"own": b"after", b"meanwhile": b"changed", **offline})
        await sock2.stopService()

    async def test_crashed_node_back_on_a_new_port_converges(self) -> None:
        """No bye: the survivor learns of the crash only when the node dials again."""
        a_mesh = await self.mesh(peer_id=b"a-low", limits=MeshLimits(handshake_timeout=0.3))
        a = self.sync(a_mesh, anti_entropy=None)
        store = MemoryKeySpace()
        b_mesh = await self.mesh(peer_id=b"b-high")
        b = self.sync(b_mesh, store=store, anti_entropy=None)
        b.startService()
        await self.link(a_mesh, b_mesh)  # the lower id dialled: the link it prefers
        b[b"k"] = b"1"
        await self.converged([a, b], {b"k": b"1"})
        await crash(b_mesh)
        b[b"offline"] = b"kept in the store"
        await b.stopService()
        a[b"meanwhile"] = b"2"
        await turn(0.35)  # longer than a handshake

        b2_mesh = await self.mesh(peer_id=b"b-high")
        b2 = self.sync(b2_mesh, store=store, anti_entropy=None)
        b2.startService()
        await b2.when_ready()
        await self.link(b2_mesh, a_mesh)
        await self.converged([a, b2], {b"k": b"1", b"offline": b"kept in the store",
                                       b"meanwhile": b"2"})
        await b2.stopService()
