"""MeshSocket over real loopback ZeroMQ (txzmq runs on the global reactor)."""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
import zmq
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from p2pnet.mesh import codec
from p2pnet.mesh.codec import Hello, Refusal, Refuse
from p2pnet.mesh.errors import (
    HandshakeRefusedError,
    HandshakeTimeoutError,
    MeshStoppedError,
    PeerNotConnectedError,
)
from p2pnet.mesh.interfaces import IMesh, MeshMessage
from p2pnet.mesh.limits import MeshLimits
from p2pnet.mesh.memory import SkewedClock
from p2pnet.mesh.socket import MeshSocket
from p2pnet.store.peer import PeerState
from p2pnet.store.peerstore import SQLITE_PEERS_TABLE, PeerStore

clock: Any = reactor


async def turn(seconds: float = 0.005) -> None:
    await task.deferLater(clock, seconds, lambda: None)


async def wait_until(cond: Callable[[], bool], timeout: float = 3.0, what: str = "") -> None:
    """Poll ``cond`` until true; fail after ``timeout`` seconds."""
    deadline = clock.seconds() + timeout
    while not cond():
        if clock.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await turn()


async def crash(sock: MeshSocket) -> None:
    """Stop ``sock`` as a crash would: its sockets close, no peer gets a bye."""
    for link in list(sock._incoming.values()) + list(sock._outgoing.values()):
        link.closed = True
    sock._incoming.clear()
    sock._by_peer.clear()
    await sock.stopService()


class MeshTestCase(TestCase):
    timeout = 20

    async def node(self, **kw: Any) -> MeshSocket:
        kw.setdefault("limits", MeshLimits(handshake_timeout=2.0))
        sock = MeshSocket("127.0.0.1", kw.pop("port", 0), **kw)
        sock.startService()
        self.addCleanup(self.stop, sock)
        await sock.when_ready()
        return sock

    @staticmethod
    def stop(sock: MeshSocket) -> defer.Deferred[None]:
        if sock.running:
            return sock.stopService()
        return defer.succeed(None)

    async def nodes(self, n: int, **kw: Any) -> list[MeshSocket]:
        return [await self.node(**kw) for _ in range(n)]

    async def link(self, a: MeshSocket, b: MeshSocket) -> None:
        assert b.address is not None
        self.assertEqual(await a.connect(*b.address), b.peer_id)

    def raw_dealer(self, sock: MeshSocket) -> zmq.Socket[bytes]:
        ctx = zmq.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        assert sock.address is not None
        dealer.connect("tcp://{}:{}".format(*sock.address))

        def close() -> None:
            dealer.close()
            ctx.term()
        self.addCleanup(close)
        return dealer

    async def raw_recv(self, dealer: zmq.Socket[bytes]) -> list[bytes]:
        for _ in range(600):
            try:
                return dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                await turn()
        raise AssertionError("no answer")


class FloodTopologyTests(MeshTestCase):
    async def check_flood(self, nodes: list[MeshSocket], edges: list[tuple[int, int]],
                          senders: list[int]) -> None:
        for a, b in edges:
            await self.link(nodes[a], nodes[b])
        for a, b in edges:
            await wait_until(lambda a=a, b=b: nodes[a].peer_id in nodes[b].peers(),
                             what="both ends of every link")
        got: list[Counter[bytes]] = [Counter() for _ in nodes]
        for i, sock in enumerate(nodes):
            sock.handle(b"t", lambda m, i=i: got[i].update([m.msg_id]))
        ids = [nodes[s].broadcast(b"payload %d" % s, channel=b"t") for s in senders]
        expected = [Counter({mid: 1 for mid, s in zip(ids, senders, strict=True) if s != i})
                    for i in range(len(nodes))]
        await wait_until(lambda: all(set(g) == set(e) for g, e in zip(got, expected,
                                                                     strict=True)),
                         what="every broadcast at every node")
        await turn(0.1)  # late duplicates would arrive now
        self.assertEqual(got, expected)
        for sock in nodes:
            self.assertEqual(sock.stats["malformed"], 0)

    async def test_line_of_ten(self) -> None:
        nodes = await self.nodes(10)
        await self.check_flood(nodes, [(i, i + 1) for i in range(9)], [0, 9, 4])

    async def test_ring_of_six(self) -> None:
        nodes = await self.nodes(6)
        edges = [(i, (i + 1) % 6) for i in range(6)]
        await self.check_flood(nodes, edges, [0, 3])
        # in a ring every node hears each broadcast twice and drops one as seen
        self.assertGreater(sum(s.stats["broadcast_seen"] for s in nodes), 0)

    async def test_star_of_seven(self) -> None:
        nodes = await self.nodes(7)
        await self.check_flood(nodes, [(i, 0) for i in range(1, 7)], [0, 1, 6])

    async def test_random_mesh_of_eight(self) -> None:
        rng = random.Random(12)
        nodes = await self.nodes(8)
        edges = {(i, rng.randrange(i)) for i in range(1, 8)}
        edges |= {(a, b) for a, b in ((rng.randrange(8), rng.randrange(8)) for _ in range(8))
                  if a != b and (b, a) not in edges}
        await self.check_flood(nodes, sorted(edges), [0, 5, 7])

    async def test_clocks_ten_minutes_apart(self) -> None:
        # n1 runs 10 minutes ahead, n3 10 minutes behind (their timers still run on the
        # reactor): in a ring of five every broadcast still reaches every node once.
        nodes = [await self.node(reactor=SkewedClock(reactor, offset))
                 for offset in (0.0, 600.0, 0.0, -600.0, 0.0)]
        await self.check_flood(nodes, [(i, (i + 1) % 5) for i in range(5)], [0, 1, 3, 4])
        for sock in nodes:
            self.assertEqual(sock.stats["broadcast_hop_limit"], 0)

    async def test_hop_limit_decremented_at_each_relay(self) -> None:
        a = await self.node(limits=MeshLimits(max_hops=2))
        b, c, d = await self.nodes(3)
        for x, y in ((a, b), (b, c), (c, d)):
            await self.link(x, y)
        await wait_until(lambda: len(c.peers()) == 2 and len(d.peers()) == 1)
        got: list[list[MeshMessage]] = [[], [], []]
        for i, sock in enumerate((b, c, d)):
            sock.handle(b"t", got[i].append)
        a.broadcast(b"two hops", channel=b"t")
        await wait_until(lambda: len(got[1]) == 1, what="the second hop")
        await turn(0.1)
        self.assertEqual([len(g) for g in got], [1, 1, 0])
        self.assertEqual((c.stats["broadcast_last_hop"], d.stats["broadcast_seen"]), (1, 0))


class MessagingTests(MeshTestCase):
    async def test_provides_imesh(self) -> None:
        sock = await self.node()
        verifyObject(IMesh, sock)

    async def test_send_recv_and_events(self) -> None:
        a, b = await self.nodes(2)
        events: list[tuple[str, bytes]] = []
        b.on("connect", lambda m, pid: events.append(("connect", pid)))
        b.on("disconnect", lambda m, pid: events.append(("disconnect", pid)))
        seen: list[MeshMessage] = []

        @b.on("message")
        def message(mesh: MeshSocket, msg: MeshMessage) -> None:
            seen.append(msg)

        await self.link(a, b)
        await wait_until(lambda: b.peers() == [a.peer_id])
        self.assertEqual(events, [("connect", a.peer_id)])
        a.send(b.peer_id, b"one", b"two")
        a.send(b.peer_id, b"three", channel=b"x")
        await wait_until(lambda: len(seen) == 2)
        first = b.recv()
        assert isinstance(first, MeshMessage)
        self.assertEqual((first.origin, first.via, first.parts, first.broadcast),
                         (a.peer_id, a.peer_id, (b"one", b"two"), False))
        self.assertEqual(b.recv(5), [seen[1]])
        self.assertIsNone(b.recv())
        # b answers over the same link
        b.send(a.peer_id, b"back")
        await wait_until(lambda: len(a._inbox) == 1)
        await a.stopService()
        await wait_until(lambda: ("disconnect", a.peer_id) in events,
                         what="disconnect after bye")
        self.assertEqual(b.peers(), [])
        self.assertEqual(b.stats["disconnect_bye"], 1)

    async def test_connect_and_disconnect_as_decorators(self) -> None:
        a, b = await self.nodes(2)
        events: list[tuple[str, bytes]] = []

        @a.on("connect")
        def connected(mesh: MeshSocket, pid: bytes) -> None:
            events.append(("connect", pid))

        @a.on("disconnect")
        def disconnected(mesh: MeshSocket, pid: bytes) -> None:
            events.append(("disconnect", pid))

        self.assertTrue(callable(connected) and callable(disconnected))
        await self.link(a, b)
        await b.stopService()
        await wait_until(lambda: len(events) == 2, what="the disconnect")
        self.assertEqual(events, [("connect", b.peer_id), ("disconnect", b.peer_id)])
        self.assertRaises(ValueError, a.on, "conect")

    async def test_handled_channel_not_queued(self) -> None:
        a, b = await self.nodes(2)
        await self.link(a, b)
        got: list[bytes] = []
        b.handle(b"sync", lambda m: got.append(m.parts[0]))
        a.send(b.peer_id, b"s", channel=b"sync")
        a.broadcast(b"f", channel=b"sync")
        await wait_until(lambda: len(got) == 2)
        self.assertEqual(sorted(got), [b"f", b"s"])
        self.assertIsNone(b.recv())

    async def test_inbox_bounded(self) -> None:
        a = await self.node()
        b = await self.node(limits=MeshLimits(inbox_limit=3))
        await self.link(a, b)
        for i in range(5):
            a.send(b.peer_id, b"%d" % i)
        await wait_until(lambda: b.stats["inbox_dropped"] == 2)
        self.assertEqual([m.parts for m in b.recv(10)], [(b"2",), (b"3",), (b"4",)])  # type: ignore[union-attr]

    async def test_burst_arrives_whole_and_in_order(self) -> None:
        a, b = await self.nodes(2)
        await self.link(a, b)
        got: list[bytes] = []
        b.handle(b"n", lambda m: got.append(m.parts[0]))
        for i in range(700):  # more than one read batch
            a.send(b.peer_id, b"%d" % i, channel=b"n")
        await wait_until(lambda: len(got) == 700)
        self.assertEqual(got, [b"%d" % i for i in range(700)])

    async def test_failing_handler_counted_socket_goes_on(self) -> None:
        a, b = await self.nodes(2)
        await self.link(a, b)

        def boom(msg: MeshMessage) -> None:
            raise RuntimeError("handler bug")
        b.handle(b"bad", boom)
        a.send(b.peer_id, b"1", channel=b"bad")
        a.send(b.peer_id, b"2")
        await wait_until(lambda: len(b._inbox) == 1)
        self.assertEqual(b.stats["handler_failed"], 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_send_to_unknown_peer(self) -> None:
        a = await self.node()
        self.assertRaises(PeerNotConnectedError, a.send, b"nobody", b"x")
        self.assertRaises(KeyError, a.send, b"nobody", b"x")
        self.assertRaises(ValueError, a.send, b"nobody", b"x", channel=b"c" * 65)

    async def test_not_running(self) -> None:
        sock = MeshSocket()
        self.assertRaises(MeshStoppedError, sock.broadcast, b"x")
        with self.assertRaises(MeshStoppedError):
            await sock.connect("127.0.0.1", 1)

    async def test_connect_twice_gives_same_peer(self) -> None:
        a, b = await self.nodes(2)
        await self.link(a, b)
        await self.link(a, b)
        self.assertEqual(a.peers(), [b.peer_id])

    async def test_both_dial_at_once_one_link_remains(self) -> None:
        a, b = await self.nodes(2)
        assert a.address and b.address
        ids = await defer.gatherResults([a.connect(*b.address), b.connect(*a.address)])
        self.assertEqual(ids, [b.peer_id, a.peer_id])
        await wait_until(lambda: all(len(s._incoming) + len(s._outgoing) == 1
                                     for s in (a, b)), what="one link left")
        self.assertEqual((a.peers(), b.peers()), ([b.peer_id], [a.peer_id]))
        self.assertGreaterEqual(a.stats["duplicate_link"] + b.stats["duplicate_link"], 1)
        a.send(b.peer_id, b"x")
        await wait_until(lambda: len(b._inbox) == 1)


class HandshakeTests(MeshTestCase):
    async def test_wrong_network_refused_with_reason(self) -> None:
        a = await self.node(network_id=b"net-a")
        b = await self.node(network_id=b"net-b")
        assert b.address is not None
        with self.assertRaises(HandshakeRefusedError) as caught:
            await a.connect(*b.address)
        self.assertEqual(caught.exception.code, Refusal.WRONG_NETWORK)
        self.assertIn("net-a", caught.exception.reason)
        self.assertIn("net-b", caught.exception.reason)
        self.assertEqual(b.stats["refused_wrong_network"], 1)
        self.assertEqual((a.peers(), b.peers()), ([], []))
        self.assertEqual(a._outgoing, {})

    async def test_wrong_version_refused_with_reason(self) -> None:
        a, b = await self.nodes(2)
        assert a._hello is not None and b.address is not None
        a._hello = attrs.evolve(a._hello, version=7)
        with self.assertRaises(HandshakeRefusedError) as caught:
            await a.connect(*b.address)
        self.assertEqual(caught.exception.code, Refusal.WRONG_VERSION)
        self.assertIn("version 7", caught.exception.reason)
        self.assertEqual(b.stats["refused_wrong_version"], 1)

    async def test_raw_hello_of_other_version_gets_refuse_frame(self) -> None:
        b = await self.node()
        dealer = self.raw_dealer(b)
        dealer.send_multipart(codec.encode(Hello(b"p2pnet", b"raw", "127.0.0.1", 9,
                                                version=codec.VERSION - 1)))
        answer = codec.decode(await self.raw_recv(dealer))
        assert isinstance(answer, Refuse)
        self.assertEqual(answer.code, Refusal.WRONG_VERSION)

    async def test_connect_to_self_refused(self) -> None:
        a = await self.node()
        assert a.address is not None
        with self.assertRaises(HandshakeRefusedError) as caught:
            await a.connect(*a.address)
        self.assertEqual(caught.exception.code, Refusal.SELF)

    async def test_too_many_peers(self) -> None:
        hub = await self.node(limits=MeshLimits(max_peers=2))
        spokes = await self.nodes(3)
        await self.link(spokes[0], hub)
        await self.link(spokes[1], hub)
        assert hub.address is not None
        with self.assertRaises(HandshakeRefusedError) as caught:
            await spokes[2].connect(*hub.address)
        self.assertEqual(caught.exception.code, Refusal.TOO_MANY_PEERS)

    async def test_nobody_listening_times_out(self) -> None:
        a = await self.node(limits=MeshLimits(handshake_timeout=0.2))
        b = await self.node()
        assert b.address is not None
        port = b.address[1]
        await b.stopService()
        with self.assertRaises(HandshakeTimeoutError):
            await a.connect("127.0.0.1", port)
        self.assertEqual(a._outgoing, {})


class BadInputTests(MeshTestCase):
    async def test_malformed_frames_counted_and_link_survives(self) -> None:
        a, b, c = await self.nodes(3)
        await self.link(a, b)
        await self.link(c, b)
        (dialer,) = a._outgoing
        v = bytes((codec.VERSION,))
        junk = [[b""], [b"\xff\xff"], [v + b"\x05short"], [v + b"\x04\x01", b"x"] + [b""] * 70,
                [v + b"\x06", b"extra"], [b"\x01\x06"]]
        for frames in junk:
            dialer.send_frames(frames)
        raw = self.raw_dealer(b)  # and from a stranger, before any hello
        raw.send_multipart([b"garbage"])
        await wait_until(lambda: b.stats["malformed"] == len(junk) + 1)
        a.send(b.peer_id, b"still here")
        c.broadcast(b"flood")
        await wait_until(lambda: len(b._inbox) == 2 and len(a._inbox) == 1)
        self.assertEqual(sorted(b.peers()), sorted([a.peer_id, c.peer_id]))

    async def test_malformed_frames_from_a_dialled_peer_link_survives(self) -> None:
        # the other direction: junk arriving on a link we dialled (read by a DEALER)
        a, b, c = await self.nodes(3)
        await self.link(a, b)
        await self.link(a, c)
        (routing_id,) = b._incoming
        assert b.transport is not None
        v = bytes((codec.VERSION,))
        junk = [[b""], [b"\xff\xff"], [v + b"\x05short"], [v + b"\x06", b"extra"]]
        for frames in junk:
            b.transport.send_routed(routing_id, frames)
        await wait_until(lambda: a.stats["malformed"] == len(junk))
        b.send(a.peer_id, b"still here")
        c.send(a.peer_id, b"and here")
        await wait_until(lambda: len(a._inbox) == 2)
        self.assertEqual(sorted(a.peers()), sorted([b.peer_id, c.peer_id]))
        self.assertEqual(a.stats["disconnect_refused"] + a.stats["disconnect_bye"], 0)

    async def test_stranger_without_hello_gets_bye(self) -> None:
        b = await self.node()
        raw = self.raw_dealer(b)
        raw.send_multipart(codec.encode(codec.Direct(b"", (b"hi",))))
        self.assertEqual(codec.decode(await self.raw_recv(raw)), codec.Bye())
        self.assertEqual(b.stats["unknown_link"], 1)
        self.assertEqual(b.peers(), [])


class SlowPeerTests(MeshTestCase):
    limits = MeshLimits(hwm=4, queue_limit=16, sndbuf=16384, rcvbuf=16384)

    async def check_slow(self, slow_dials: bool) -> None:
        a = await self.node(limits=self.limits)
        slow = await self.node(limits=self.limits)
        other = await self.node()
        if slow_dials:
            await self.link(slow, a)  # a reaches it through its ROUTER
        else:
            await self.link(a, slow)  # a reaches it through a DEALER
        await self.link(other, a)
        lost: list[bytes] = []
        a.on("disconnect", lambda m, pid: lost.append(pid))
        assert slow.transport is not None
        slow.transport.pause_reading()
        big = b"x" * 65536
        sent = 0
        while slow.peer_id in a.peers() and sent < 3000:
            a.send(slow.peer_id, big)
            sent += 1
            for links in a._by_peer.values():
                self.assertLessEqual(len(links[0].overflow), self.limits.queue_limit)
            if sent % 8 == 0:
                await turn(0.001)
        self.assertEqual(lost, [slow.peer_id])
        self.assertEqual(a.stats["dropped_full_queue"], 1)
        self.assertEqual(a.stats["disconnect_slow"], 1)
        # the others are not hurt
        a.send(other.peer_id, b"fine")
        await wait_until(lambda: len(other._inbox) == 1)
        self.assertEqual(a.peers(), [other.peer_id])

    async def test_slow_dialled_peer_disconnected(self) -> None:
        await self.check_slow(slow_dials=False)

    async def test_slow_dialling_peer_disconnected(self) -> None:
        await self.check_slow(slow_dials=True)

    async def test_silent_peer_times_out(self) -> None:
        limits = MeshLimits(ping_interval=0.05, peer_timeout=0.3)
        a = await self.node(limits=limits)
        b = await self.node(limits=limits)
        await self.link(a, b)
        await turn(0.4)  # pings keep a live link up
        self.assertEqual(a.peers(), [b.peer_id])
        assert b.transport is not None and b._keepalive is not None
        b.transport.pause_reading()  # b hangs: reads nothing, pings nobody
        b._keepalive.stop()
        await wait_until(lambda: a.peers() == [], what="timeout of a silent peer")
        self.assertEqual(a.stats["disconnect_timeout"], 1)


class ReconnectTests(MeshTestCase):
    async def store(self, path: str) -> PeerStore:
        store = PeerStore(path)
        store.startService()
        self.addCleanup(lambda: store.stopService() if store.running else None)
        await store.when_ready()
        return store

    async def test_restarted_node_reconnects_from_peerstore(self) -> None:
        path = self.mktemp()
        store = await self.store(path)
        a = await self.node(peer_store=store)
        b, c = await self.nodes(2)
        self.assertEqual(a.peer_id, store.uuid)
        await self.link(a, b)
        await self.link(c, a)  # c dialled a: a learns c's address from its hello

        def on_disk() -> set[bytes]:
            try:
                with contextlib.closing(sqlite3.connect(path)) as db:
                    rows = db.execute(f"SELECT uuid FROM {SQLITE_PEERS_TABLE}").fetchall()
            except sqlite3.OperationalError:  # busy: the store is writing
                return set()
            return {r[0] if isinstance(r[0], bytes) else r[0].encode() for r in rows}
        # in the file as soon as met, not only at a clean stop (a crash keeps them)
        await wait_until(lambda: {b.peer_id, c.peer_id} <= on_disk(), what="peers on disk")
        await a.stopService()
        await store.stopService()
        await wait_until(lambda: b.peers() == [] and c.peers() == [])

        store2 = await self.store(path)
        self.assertEqual(sorted(store2.peers), sorted([b.peer_id, c.peer_id]))
        a2 = await self.node(peer_store=store2)
        self.assertEqual(a2.peer_id, a.peer_id)
        await wait_until(lambda: sorted(a2.peers()) == sorted([b.peer_id, c.peer_id]),
                         what="reconnect to the stored peers")
        self.assertEqual(b.peers(), [a.peer_id])
        book = a2.peer_book
        assert book is not None
        self.assertEqual(book.state(b.peer_id), PeerState.CONNECTED)
        # a2 dialled them itself (it listens on a new port that b and c never learnt)
        self.assertEqual(len(a2._outgoing), 2)
        self.assertGreaterEqual(book.dials, 2)

    async def test_crashed_peer_back_on_a_new_port_replaces_its_dead_link(self) -> None:
        # a dialled b, so a's link is the one the lower id dialled; b dies without a bye
        # and comes back on a new port: a must not keep the dead link (ZeroMQ does not
        # tell it the TCP connection went) for peer_timeout seconds
        a = await self.node(peer_id=b"a-low", limits=MeshLimits(handshake_timeout=0.3))
        b = await self.node(peer_id=b"b-high")
        await self.link(a, b)
        events: list[tuple[str, bytes]] = []
        a.on("connect", lambda m, pid: events.append(("connect", pid)))
        a.on("disconnect", lambda m, pid: events.append(("disconnect", pid)))
        await crash(b)
        await turn(0.35)  # longer than a handshake: not two dials at once
        b2 = await self.node(peer_id=b"b-high")
        await self.link(b2, a)
        got: list[MeshMessage] = []
        b2.handle(b"t", got.append)
        a.send(b"b-high", b"to the new b", channel=b"t")
        await wait_until(lambda: len(got) == 1, what="a's send reaching the new b")
        self.assertEqual((a.peers(), b2.peers()), ([b"b-high"], [b"a-low"]))
        self.assertEqual(len(a._incoming) + len(a._outgoing), 1)
        self.assertEqual(events, [("disconnect", b"b-high"), ("connect", b"b-high")])
        self.assertEqual(a.stats["disconnect_replaced"], 1)

    async def test_lost_peer_retried_with_backoff(self) -> None:
        limits = MeshLimits(retry_initial=0.05, retry_max=0.2, handshake_timeout=0.3)
        a = await self.node(limits=limits)
        b = await self.node(peer_id=b"bee")
        assert b.address is not None
        port = b.address[1]
        await self.link(a, b)
        await b.stopService()
        await wait_until(lambda: a.peers() == [])
        book = a.peer_book
        assert book is not None
        self.assertIn(book.state(b"bee"), (PeerState.NO_CONNECTION, PeerState.CONNECTING))
        await wait_until(lambda: book.dial_failures >= 1, what="a failed retry")
        b2 = await self.node(peer_id=b"bee", port=port)  # back on its address
        await wait_until(lambda: a.peers() == [b"bee"], what="retry succeeding")
        self.assertEqual(b2.peers(), [a.peer_id])
        self.assertEqual(book.state(b"bee"), PeerState.CONNECTED)

    async def test_peer_heard_through_others_is_routed(self) -> None:
        a = await self.node(limits=MeshLimits(retry_initial=5.0))
        b, c = await self.nodes(2)
        await self.link(a, b)
        await self.link(b, c)
        await self.link(a, c)
        a._close_link(a._by_peer[c.peer_id][0], reason="test")  # only the a-c link goes
        await wait_until(lambda: a.peer_id not in c.peers())
        book = a.peer_book
        assert book is not None
        self.assertEqual(book.state(c.peer_id), PeerState.NO_CONNECTION)
        c.broadcast(b"via b")
        await wait_until(lambda: len(a._inbox) == 1)
        self.assertEqual(book.state(c.peer_id), PeerState.ROUTED)

    async def test_unreachable_after_failures(self) -> None:
        limits = MeshLimits(retry_initial=0.02, retry_max=0.05, handshake_timeout=0.1,
                            retry_max_failures=2)
        a = await self.node(limits=limits)
        b = await self.node()
        await self.link(a, b)
        await b.stopService()
        book = a.peer_book
        assert book is not None
        await wait_until(lambda: book.state(b.peer_id) == PeerState.UNREACHABLE,
                         what="unreachable")
        self.assertEqual(book.failures(b.peer_id), 2)
