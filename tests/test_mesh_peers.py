"""Tests of p2pnet.mesh.peers: states, back-off retries, the PeerStore."""

from __future__ import annotations

import random
import threading

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.mesh import peers
from p2pnet.mesh.errors import HandshakeRefusedError, HandshakeTimeoutError
from p2pnet.mesh.peers import Backoff, PeerBook
from p2pnet.store.peer import Peer, PeerState
from p2pnet.store.peerstore import PeerStore


class FakeDialer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, defer.Deferred[bytes]]] = []

    def __call__(self, host: str, port: int) -> defer.Deferred[bytes]:
        d: defer.Deferred[bytes] = defer.Deferred()
        self.calls.append((host, port, d))
        return d


class BackoffTests(SynchronousTestCase):
    @given(st.integers(0, 40), st.integers(0, 2**32))
    def test_delay_within_jitter_and_cap(self, failures: int, seed: int) -> None:
        b = Backoff(initial=0.5, factor=2, maximum=60, jitter=0.25)
        delay = b.delay(failures, random.Random(seed))
        base = min(60, 0.5 * 2**failures)
        self.assertGreaterEqual(delay, base * 0.75)
        self.assertLessEqual(delay, base * 1.25)

    def test_grows(self) -> None:
        b = Backoff(jitter=0)
        rng = random.Random(1)
        self.assertEqual([b.delay(n, rng) for n in range(4)], [0.5, 1.0, 2.0, 4.0])


class PeerBookTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.dial = FakeDialer()
        self.book = PeerBook(self.clock, self.dial, own_id=b"me",
                             backoff=Backoff(jitter=0, max_failures=3), rng=random.Random(0))
        self.book.start()

    def test_connected_then_lost_retries_with_backoff(self) -> None:
        self.book.connected(b"p", "127.0.0.1", 5000)
        self.assertEqual(self.book.state(b"p"), PeerState.CONNECTED)
        self.book.lost(b"p")
        self.assertEqual(self.book.state(b"p"), PeerState.NO_CONNECTION)
        self.clock.advance(0.49)
        self.assertEqual(self.dial.calls, [])
        self.clock.advance(0.01)
        self.assertEqual([c[:2] for c in self.dial.calls], [("127.0.0.1", 5000)])
        self.assertEqual(self.book.state(b"p"), PeerState.CONNECTING)
        self.dial.calls[0][2].errback(HandshakeTimeoutError("127.0.0.1", 5000, 5))
        self.assertEqual(self.book.state(b"p"), PeerState.NO_CONNECTION)
        self.clock.advance(0.99)
        self.assertEqual(len(self.dial.calls), 1)
        self.clock.advance(0.01)  # 0.5 * 2**1
        self.assertEqual(len(self.dial.calls), 2)
        self.dial.calls[1][2].errback(HandshakeTimeoutError("127.0.0.1", 5000, 5))
        self.clock.advance(2.0)
        self.assertEqual(len(self.dial.calls), 3)
        self.dial.calls[2][2].errback(HandshakeTimeoutError("127.0.0.1", 5000, 5))
        self.assertEqual(self.book.state(b"p"), PeerState.UNREACHABLE)
        self.assertFalse(self.book.retry_pending(b"p"))
        self.clock.advance(1000)
        self.assertEqual(len(self.dial.calls), 3)

    def test_success_resets_failures(self) -> None:
        self.book.connected(b"p", "h", 1)
        self.book.lost(b"p")
        self.clock.advance(0.5)
        self.dial.calls[0][2].errback(HandshakeTimeoutError("h", 1, 5))
        self.assertEqual(self.book.failures(b"p"), 1)
        self.clock.advance(1.0)
        self.dial.calls[1][2].callback(b"p")
        self.book.connected(b"p", "h", 1)  # the socket reports the handshake
        self.assertEqual(self.book.failures(b"p"), 0)
        self.assertEqual(self.book.state(b"p"), PeerState.CONNECTED)

    def test_refused_is_unreachable_at_once(self) -> None:
        self.book.connected(b"p", "h", 1)
        self.book.lost(b"p")
        self.clock.advance(0.5)
        self.dial.calls[0][2].errback(HandshakeRefusedError(1, "wrong network"))
        self.assertEqual(self.book.state(b"p"), PeerState.UNREACHABLE)
        self.assertFalse(self.book.retry_pending(b"p"))

    def test_refusal_reason_logged_as_a_warning(self) -> None:
        events: list[dict[str, object]] = []
        self.patch(peers, "log", Logger(observer=events.append))
        self.book.connected(b"p", "h", 1)
        self.book.lost(b"p")
        self.clock.advance(0.5)
        self.dial.calls[0][2].errback(
            HandshakeRefusedError(1, "network id b'x' is not this node's network id"))
        (event,) = [e for e in events if e["log_level"] >= LogLevel.warn]  # type: ignore[operator]
        self.assertIn("network id b'x' is not", formatEvent(event))
        self.assertIn("unreachable", formatEvent(event))

    def test_connecting_back_cancels_retry(self) -> None:
        self.book.connected(b"p", "h", 1)
        self.book.lost(b"p")
        self.assertTrue(self.book.retry_pending(b"p"))
        self.book.connected(b"p", "h", 2)
        self.assertFalse(self.book.retry_pending(b"p"))
        self.assertEqual(self.book.get(b"p").port, 2)  # type: ignore[union-attr]
        self.clock.advance(10)
        self.assertEqual(self.dial.calls, [])

    def test_routed_while_heard_through_others(self) -> None:
        self.book.connected(b"p", "h", 1)
        self.book.heard_from(b"p")
        self.assertEqual(self.book.state(b"p"), PeerState.CONNECTED)
        self.book.lost(b"p")
        self.book.heard_from(b"p")
        self.assertEqual(self.book.state(b"p"), PeerState.ROUTED)
        self.assertTrue(self.book.retry_pending(b"p"))
        self.book.heard_from(b"stranger")  # unknown origins are not recorded
        self.assertIsNone(self.book.state(b"stranger"))
        self.clock.advance(0.5)
        self.assertEqual(self.book.state(b"p"), PeerState.CONNECTING)

    def test_stop_cancels_retries(self) -> None:
        self.book.connected(b"p", "h", 1)
        self.book.lost(b"p")
        self.book.stop()
        self.clock.advance(100)
        self.assertEqual(self.dial.calls, [])

    def test_other_peer_at_address(self) -> None:
        self.book.connected(b"p", "h", 1)
        self.book.lost(b"p")
        self.clock.advance(0.5)
        self.dial.calls[0][2].callback(b"q")
        self.assertEqual(self.book.state(b"p"), PeerState.UNREACHABLE)


class BoundTests(SynchronousTestCase):
    def test_book_bounded_unreachable_evicted_first(self) -> None:
        clock = task.Clock()
        store = PeerStore(None, app_uuid=b"self", reactor=clock, inline=True)
        store.start_db()
        dial = FakeDialer()
        book = PeerBook(clock, dial, own_id=b"self", store=store, max_known=3,
                        backoff=Backoff(jitter=0, max_failures=1))
        book.start()
        book.connected(b"a", "h", 1)
        book.connected(b"b", "h", 2)
        book.connected(b"c", "h", 3)
        book.lost(b"b")
        clock.advance(0.5)
        dial.calls[0][2].errback(HandshakeTimeoutError("h", 2, 1))
        self.assertEqual(book.state(b"b"), PeerState.UNREACHABLE)
        book.lost(b"c")  # c: NO_CONNECTION, retry pending
        book.connected(b"d", "h", 4)
        self.assertIsNone(book.get(b"b"))
        self.assertNotIn(b"b", store.peers)
        book.connected(b"e", "h", 5)
        self.assertIsNone(book.get(b"c"))
        self.assertFalse(book.retry_pending(b"c"))
        self.assertEqual(sorted(p.uuid for p in book.known()), [b"a", b"d", b"e"])
        self.assertEqual(book.evicted, 2)
        # all connected: nothing to evict, the bound waits
        book.connected(b"f", "h", 6)
        self.assertEqual(len(book.known()), 4)
        store.terminate_db()


class SlowStore:
    """A PeerStore stand-in whose syncs finish when the test says."""

    running = True

    def __init__(self) -> None:
        self.peers: dict[bytes, Peer] = {}
        self.peers_lock = threading.Lock()
        self.syncs: list[tuple[set[bytes], defer.Deferred[None]]] = []

    def add_peer(self, peer: Peer) -> None:
        self.peers[peer.uuid] = peer

    def d_sync_database(self, force: bool = False) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.syncs.append((set(self.peers), d))  # what this sync writes
        return d


class FlushTests(SynchronousTestCase):
    def test_peer_met_during_a_sync_is_synced_after_it(self) -> None:
        store = SlowStore()
        book = PeerBook(task.Clock(), FakeDialer(), own_id=b"me", store=store)  # type: ignore[arg-type]
        book.start()
        book.connected(b"p1", "h", 1)
        book.connected(b"p2", "h", 2)  # while the first sync runs
        book.connected(b"p3", "h", 3)
        self.assertEqual([s[0] for s in store.syncs], [{b"p1"}])  # one at a time
        store.syncs[0][1].callback(None)
        self.assertEqual([s[0] for s in store.syncs], [{b"p1"}, {b"p1", b"p2", b"p3"}])
        store.syncs[1][1].callback(None)
        self.assertEqual(len(store.syncs), 2)  # nothing changed since


class PeerStoreTests(SynchronousTestCase):
    def test_restart_dials_known_peers(self) -> None:
        path = self.mktemp()
        clock = task.Clock()
        store = PeerStore(path, app_uuid=b"node-a", reactor=clock, inline=True)
        store.start_db()
        book = PeerBook(clock, FakeDialer(), own_id=b"node-a", store=store)
        book.start()
        book.connected(b"node-b", "127.0.0.1", 4001)
        book.connected(b"node-c", "127.0.0.1", 4002)
        self.assertIs(store.peers[b"node-b"], book.get(b"node-b"))
        store.terminate_db()

        again = PeerStore(path, reactor=clock, inline=True)
        again.start_db()
        self.assertEqual(again.uuid, b"node-a")
        dial = FakeDialer()
        book2 = PeerBook(clock, dial, own_id=b"node-a", store=again)
        book2.start()
        clock.advance(0)
        self.assertEqual(sorted(c[:2] for c in dial.calls),
                         [("127.0.0.1", 4001), ("127.0.0.1", 4002)])
        self.assertEqual(book2.state(b"node-b"), PeerState.CONNECTING)
        again.terminate_db()

    def test_own_id_never_dialled(self) -> None:
        clock = task.Clock()
        store = PeerStore(None, app_uuid=b"node-a", reactor=clock, inline=True)
        store.start_db()
        store.add_peer(Peer(uuid=b"node-a", host="127.0.0.1", port=1))
        dial = FakeDialer()
        PeerBook(clock, dial, own_id=b"node-a", store=store).start()
        clock.advance(0)
        self.assertEqual(dial.calls, [])
        store.terminate_db()
