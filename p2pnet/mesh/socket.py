# -*- test-case-name: tests.test_mesh_socket -*-
"""The mesh socket over ZeroMQ: peers, a handshake, direct sends and floods.

:class:`MeshSocket` is an ``IService`` providing :class:`~p2pnet.mesh.interfaces.IMesh`.
Starting binds a ZeroMQ ROUTER on ``tcp://host:port`` (see
:mod:`p2pnet.mesh.zmqtransport`, imported only then, since txzmq imports the global
reactor) and dials the peers the :class:`~p2pnet.store.peerstore.PeerStore` knows.

- **Handshake.**  The dialling side sends a hello (peer id, listening address, protocol
  version, network id); the other side answers with its own (a hello-ack) or refuses with
  a reason (wrong network, wrong version, itself, too many peers), which fails the
  dialler's :meth:`MeshSocket.connect` Deferred with
  :class:`~p2pnet.mesh.errors.HandshakeRefusedError`.  Both sides then record the other
  in the peer book (:mod:`p2pnet.mesh.peers`), which retries lost peers with back-off.
- **One link per peer.**  When two nodes dial each other at once, both keep the link
  dialled by the lower id and close the other without a ``'disconnect'``.  A peer that
  dials again later (it restarted, maybe without a bye) replaces its old link: a
  ``'disconnect'`` then a ``'connect'``.
- **Floods.**  :meth:`MeshSocket.broadcast` sends to every neighbour with a hop limit
  (``MeshLimits.max_hops``); a node relays a broadcast it has not seen to every neighbour
  but the sender (the frames as they came, the hop limit less one) and delivers it once
  (:mod:`p2pnet.mesh.flood`).  No clock is compared: nodes whose clocks disagree flood to
  each other alike.
- **Bad input.**  Frames are decoded strictly (:mod:`p2pnet.mesh.codec`); a malformed
  one is dropped and counted in :attr:`MeshSocket.stats`, and the link stays up.
- **Bounds.**  Everything is bounded by :class:`~p2pnet.mesh.limits.MeshLimits`: peers,
  the per-peer send queue (ZeroMQ's high-water mark, then our own overflow; a peer whose
  overflow fills stopped reading and is disconnected), the ``recv()`` inbox, the
  seen-cache.  A link silent for ``ping_interval`` is pinged and one silent for
  ``peer_timeout`` dropped.
"""

from __future__ import annotations

import os
import uuid
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from p2pnet.dht.limits import RefusalCounter
from p2pnet.mesh import codec
from p2pnet.mesh.codec import (
    Broadcast,
    Bye,
    Direct,
    Hello,
    Ping,
    Pong,
    Refusal,
    Refuse,
    check_channel,
)
from p2pnet.mesh.errors import (
    DecodeError,
    HandshakeRefusedError,
    HandshakeTimeoutError,
    MeshError,
    MeshStoppedError,
    PeerNotConnectedError,
)
from p2pnet.mesh.flood import Flood
from p2pnet.mesh.interfaces import IMesh, MeshMessage
from p2pnet.mesh.limits import MeshLimits
from p2pnet.mesh.peers import Backoff, PeerBook
from p2pnet.observer import EventEmitter, OneShotObserver
from p2pnet.store.peer import Peer
from p2pnet.store.peerstore import PeerStore
from p2pnet.timers import Periodic

if TYPE_CHECKING:
    from p2pnet.mesh.zmqtransport import Dialer, ZmqTransport

log = Logger()

#: Seconds between tries to empty the overflow of a peer whose pipe was full.
DRAIN_INTERVAL = 0.005

EVENTS = ("connect", "disconnect", "message")


class _Link:
    """One connection with a peer: ``dialer`` for one we dialled, ``routing_id`` for one
    that dialled us (through the ROUTER)."""

    __slots__ = ("routing_id", "dialer", "peer_id", "hello", "connector", "seq",
                 "overflow", "last_seen", "closed", "connect_d", "timeout", "up_at")

    def __init__(self, *, routing_id: bytes | None = None, dialer: Dialer | None = None,
                 now: float = 0.0) -> None:
        self.routing_id = routing_id
        self.dialer = dialer
        self.peer_id: bytes | None = None
        self.hello: Hello | None = None
        self.connector = b""
        self.seq = 0
        self.overflow: deque[list[bytes]] = deque()
        self.last_seen = now
        self.closed = False
        self.connect_d: defer.Deferred[bytes] | None = None
        self.timeout: IDelayedCall | None = None
        self.up_at = now  # when the handshake completed (set by _link_up)

    @property
    def outgoing(self) -> bool:
        return self.dialer is not None


@implementer(IMesh)
class MeshSocket(service.Service):
    """A mesh node over ZeroMQ (see the module docstring).

    ``peer_id`` defaults to the PeerStore's uuid (so a restart keeps it; known once
    :meth:`when_ready` fired), or a random one without a store.  ``advertise_host`` is the
    host sent in the hello (default: ``host``; give it when binding ``0.0.0.0``).
    ``reactor`` is the clock of the timers; txzmq itself always uses the global reactor.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        peer_id: bytes | None = None,
        network_id: bytes = b"p2pnet",
        peer_store: PeerStore | None = None,
        reactor: Any = None,
        limits: MeshLimits | None = None,
        advertise_host: str | None = None,
        zmq_factory: Any = None,
        rng: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self.host = host
        self.port = port
        self.advertise_host = advertise_host or host
        if not 1 <= len(network_id) <= codec.MAX_NETWORK_ID:
            raise ValueError(f"network id must be 1..{codec.MAX_NETWORK_ID} bytes")
        self.network_id = network_id
        self.peer_store = peer_store
        self.limits = limits or MeshLimits()
        self._zmq_factory = zmq_factory
        self._rng = rng
        self._given_id = peer_id
        if peer_id is None and peer_store is not None:
            peer_id = peer_store.uuid
        if peer_id is None and peer_store is None:
            peer_id = uuid.uuid4().hex.encode("ascii")
        if peer_id is not None:
            _check_id(peer_id)
        #: This node's id (with a store that has not started yet: set by startService).
        self.peer_id: bytes = peer_id or b""
        self.address: tuple[str, int] | None = None
        #: Counters of drops, refusals and disconnects, by kind.
        self.stats = RefusalCounter()
        self._events = EventEmitter(EVENTS)
        self._handlers: dict[bytes, Callable[[MeshMessage], None]] = {}
        self._inbox: deque[MeshMessage] = deque()
        self._flood = Flood(self._clock, self.limits.seen_ttl, self.limits.seen_max,
                            self.limits.max_hops)
        self._incoming: dict[bytes, _Link] = {}
        self._outgoing: dict[Dialer, _Link] = {}
        self._by_peer: dict[bytes, list[_Link]] = {}
        self._blocked: set[_Link] = set()
        self._drain_call: IDelayedCall | None = None
        self._seq = 0
        self._transport: ZmqTransport | None = None
        self._hello: Hello | None = None
        self._book: PeerBook | None = None
        self._keepalive: Periodic | None = None
        self._ready: OneShotObserver[None] = OneShotObserver()

    def __repr__(self) -> str:
        return f"<MeshSocket {self.peer_id!r} at {self.address}>"

    # -- IMesh -----------------------------------------------------------------------

    def on(self, event: str, callback: Callable[..., Any] | None = None) -> Any:
        """``'connect'``/``'disconnect'`` ``(mesh, peer_id)``, ``'message'``
        ``(mesh, MeshMessage)``; as a call or a decorator."""
        return self._events.on(event, callback)

    def handle(self, channel: bytes, callback: Callable[[MeshMessage], None]) -> None:
        """Deliver every message on ``channel`` to ``callback`` (instead of ``recv``); see
        :meth:`p2pnet.mesh.interfaces.IMesh.handle` for the errors."""
        check_channel(channel)
        if channel in self._handlers:
            raise ValueError(f"channel {channel!r} already has a handler")
        self._handlers[channel] = callback

    def send(self, peer_id: bytes, *parts: bytes, channel: bytes = b"") -> None:
        """Send ``parts`` to a connected peer (:class:`PeerNotConnectedError`, a
        ``KeyError``, when it is not)."""
        frames = codec.encode(Direct(channel, parts))
        links = self._by_peer.get(peer_id)
        if not links:
            raise PeerNotConnectedError(peer_id)
        self._transmit(links[0], frames)

    def broadcast(self, *parts: bytes, channel: bytes = b"") -> bytes:
        """Flood ``parts`` to every node of the mesh; returns the message id."""
        if self._transport is None:
            raise MeshStoppedError("the mesh socket is not running")
        msg_id = os.urandom(codec.MSG_ID_BYTES)
        sent_at = max(0.0, self._clock.seconds())  # information only (see flood.py)
        frames = codec.encode(Broadcast(msg_id, self.peer_id, sent_at, channel, parts,
                                        self._flood.max_hops))
        self._flood.originate(msg_id)
        self.stats["broadcast_sent"] += 1
        for links in list(self._by_peer.values()):
            self._transmit(links[0], frames)
        return msg_id

    def peers(self) -> list[bytes]:
        """The ids of the peers connected now."""
        return list(self._by_peer)

    # -- py2p-style extras -------------------------------------------------------------

    def recv(self, n: int = 1) -> MeshMessage | list[MeshMessage] | None:
        """The oldest unhandled message (``None`` when there is none); with ``n > 1`` a
        list of up to ``n`` of them."""
        if n == 1:
            return self._inbox.popleft() if self._inbox else None
        out: list[MeshMessage] = []
        while self._inbox and len(out) < n:
            out.append(self._inbox.popleft())
        return out

    def known_peers(self) -> list[Peer]:
        """Every peer of the peer book, with its state."""
        return self._book.known() if self._book else []

    @property
    def peer_book(self) -> PeerBook | None:
        return self._book

    @property
    def transport(self) -> ZmqTransport | None:
        return self._transport

    # -- connecting --------------------------------------------------------------------

    def connect(self, host: str, port: int) -> defer.Deferred[bytes]:
        """Dial ``host:port``; fires with the peer's id once the handshake is done.

        Fails with :class:`HandshakeRefusedError` (the reason the other side gave, or
        ours when its hello is wrong), :class:`HandshakeTimeoutError`, or
        :class:`MeshStoppedError`.  An address we are connected to fires at once.
        """
        transport = self._transport
        if transport is None or not self.running:
            return defer.fail(MeshStoppedError("the mesh socket is not running"))
        for peer_id, links in self._by_peer.items():
            hello = links[0].hello
            if hello is not None and (hello.host, hello.port) == (host, port):
                return defer.succeed(peer_id)
        try:
            dialer = transport.dial(host, port)
        except Exception as e:
            return defer.fail(MeshError(f"cannot dial {host}:{port}: {e}"))
        link = _Link(dialer=dialer, now=self._clock.seconds())
        self._outgoing[dialer] = link

        def cancel(_: defer.Deferred[bytes]) -> None:
            link.connect_d = None
            self._close_link(link, reason="cancelled", flush=False)

        link.connect_d = defer.Deferred(cancel)
        d = link.connect_d
        assert self._hello is not None
        link.timeout = self._clock.callLater(
            self.limits.handshake_timeout, self._dial_timed_out, link, host, port)
        self._transmit(link, codec.encode(self._hello))
        return d

    def when_ready(self) -> defer.Deferred[None]:
        """A new Deferred firing once the socket is bound (``address`` is set)."""
        return self._ready.when_fired()

    # -- service -------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self._ready.fired:
            self._ready = OneShotObserver()
        store = self.peer_store
        d = store.when_ready() if store is not None else defer.succeed(None)
        d.addCallback(lambda _: self._start())
        d.addErrback(self._ready.fire_if_unfired)

    def _start(self) -> None:
        if not self.running:
            return
        if not self.peer_id:
            store_id = self.peer_store.uuid if self.peer_store is not None else None
            self.peer_id = store_id or uuid.uuid4().hex.encode("ascii")
            _check_id(self.peer_id)
        from p2pnet.mesh.zmqtransport import ZmqTransport

        limits = self.limits
        self._transport = ZmqTransport(
            self._incoming_frames, self._outgoing_frames, hwm=limits.hwm,
            sndbuf=limits.sndbuf, rcvbuf=limits.rcvbuf, max_frame=codec.MAX_FRAME,
            factory=self._zmq_factory)
        port = self._transport.bind(self.host, self.port)
        self.address = (self.host, port)
        self._hello = Hello(self.network_id, self.peer_id, self.advertise_host, port)
        self._book = PeerBook(
            self._clock, self.connect, own_id=self.peer_id, store=self.peer_store,
            backoff=Backoff(limits.retry_initial, limits.retry_factor, limits.retry_max,
                            limits.retry_jitter, limits.retry_max_failures),
            rng=self._rng, max_known=limits.max_known)
        interval = min(limits.ping_interval, limits.peer_timeout / 3)
        self._keepalive = Periodic(self._clock, interval, self._keepalive_round,
                                   name="mesh keepalive")
        self._keepalive.start()
        self._book.start()
        log.info("mesh {peer!r} listening on {host}:{port}", peer=self.peer_id,
                 host=self.host, port=port)
        self._ready.fire(None)

    def stopService(self) -> defer.Deferred[None]:
        """Say bye to every peer, close every socket; fires when all are closed."""
        super().stopService()
        self._ready.fire_if_unfired(Failure(MeshStoppedError("stopped before it started")))
        if self._keepalive is not None:
            self._keepalive.stop()
            self._keepalive = None
        if self._book is not None:
            self._book.stop()
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._drain_call = None
        for link in list(self._incoming.values()) + list(self._outgoing.values()):
            up = link.peer_id is not None  # a dial still waiting gets no linger
            self._close_link(link, reason="stopping", bye=up, flush=up)
        if self._transport is not None:
            self._transport.shutdown()
            self._transport = None
        return defer.succeed(None)

    # -- receiving -------------------------------------------------------------------

    def _decode(self, frames: list[bytes]) -> codec.Message | None:
        try:
            return codec.decode(frames)
        except DecodeError as e:
            self.stats["malformed"] += 1
            log.debug("dropped malformed frames: {e}", e=e)
            return None

    def _incoming_frames(self, routing_id: bytes, frames: list[bytes]) -> None:
        msg = self._decode(frames)
        if msg is None:
            return
        link = self._incoming.get(routing_id)
        if link is None:
            if isinstance(msg, Hello) and not msg.ack:
                self._accept(routing_id, msg)
            elif not isinstance(msg, Bye | Refuse):
                # A stale link (we dropped it, or it came back): tell it to dial again.
                self.stats["unknown_link"] += 1
                self._send_routed_quietly(routing_id, codec.encode(Bye()))
            return
        link.last_seen = self._clock.seconds()
        self._established(link, msg, frames)

    def _outgoing_frames(self, dialer: Dialer, frames: list[bytes]) -> None:
        link = self._outgoing.get(dialer)
        if link is None:
            return
        msg = self._decode(frames)
        if msg is None:
            return
        link.last_seen = self._clock.seconds()
        if link.peer_id is not None:
            self._established(link, msg, frames)
        elif isinstance(msg, Hello) and msg.ack:
            self._acked(link, msg)
        elif isinstance(msg, Refuse):
            self.stats["refused_by_peer"] += 1
            self._close_link(link, reason="refused", flush=False,
                             error=HandshakeRefusedError(msg.code, msg.reason))
        else:
            self.stats["unexpected"] += 1

    def _refusal(self, hello: Hello) -> tuple[Refusal, str] | None:
        if hello.version != codec.VERSION:
            return (Refusal.WRONG_VERSION, f"protocol version {hello.version} is not "
                    f"supported; this node speaks version {codec.VERSION}")
        if hello.network_id != self.network_id:
            return (Refusal.WRONG_NETWORK, f"network id {hello.network_id!r} is not this "
                    f"node's network id {self.network_id!r}")
        if hello.peer_id == self.peer_id:
            return (Refusal.SELF, "this is the node itself (same peer id)")
        if not self.running:
            return (Refusal.STOPPING, "the node is stopping")
        return None

    def _refuse_counted(self, code: Refusal, reason: str) -> Refuse:
        self.stats["refused"] += 1
        self.stats[f"refused_{code.name.lower()}"] += 1
        log.info("refused a peer: {reason}", reason=reason)
        return Refuse(code, reason)

    def _accept(self, routing_id: bytes, hello: Hello) -> None:
        refusal = self._refusal(hello)
        if refusal is None and hello.peer_id not in self._by_peer and (
                len(self._by_peer) >= self.limits.max_peers):
            refusal = (Refusal.TOO_MANY_PEERS,
                       f"this node has its maximum of {self.limits.max_peers} peers")
        if refusal is not None:
            refuse = self._refuse_counted(*refusal)
            self._send_routed_quietly(routing_id, codec.encode(refuse))
            return
        link = _Link(routing_id=routing_id, now=self._clock.seconds())
        self._incoming[routing_id] = link
        assert self._hello is not None
        self._transmit(link, codec.encode(_as_ack(self._hello)))
        self._link_up(link, hello, connector=hello.peer_id)

    def _acked(self, link: _Link, ack: Hello) -> None:
        refusal = self._refusal(ack)
        if refusal is not None:
            refuse = self._refuse_counted(*refusal)
            self._transmit(link, codec.encode(refuse))
            self._close_link(link, reason="refused", error=HandshakeRefusedError(*refusal))
            return
        if link.timeout is not None and link.timeout.active():
            link.timeout.cancel()
        link.timeout = None
        d, link.connect_d = link.connect_d, None
        self._link_up(link, ack, connector=self.peer_id)
        if d is not None:
            d.callback(ack.peer_id)

    def _dial_timed_out(self, link: _Link, host: str, port: int) -> None:
        link.timeout = None
        self.stats["handshake_timeout"] += 1
        self._close_link(link, reason="handshake_timeout", flush=False,
                         error=HandshakeTimeoutError(host, port,
                                                     self.limits.handshake_timeout))

    def _link_up(self, link: _Link, hello: Hello, connector: bytes) -> None:
        peer_id = hello.peer_id
        now = self._clock.seconds()
        for old in list(self._by_peer.get(peer_id, ())):
            if now - old.up_at >= self.limits.handshake_timeout:
                # Not two dials at once: the peer dialled again, so it lost that link
                # (it restarted, maybe without a bye; ZeroMQ does not tell us).
                self._close_link(old, reason="replaced")
        link.peer_id = peer_id
        link.hello = hello
        link.connector = connector
        link.up_at = now
        self._seq += 1
        link.seq = self._seq
        links = self._by_peer.setdefault(peer_id, [])
        links.append(link)
        assert self._book is not None
        self._book.connected(peer_id, hello.host, hello.port)
        if len(links) == 1:
            log.debug("mesh {me!r} connected to {peer!r}", me=self.peer_id, peer=peer_id)
            self._events.emit("connect", self, peer_id)
            return
        # Two links to one peer (both dialled at once, or it dialled again): keep the
        # newest of those dialled by the lower id, on both sides alike.
        preferred = min(self.peer_id, peer_id)
        keep = max(links, key=lambda k: (k.connector == preferred, k.seq))
        for other in [k for k in links if k is not keep]:
            self.stats["duplicate_link"] += 1
            self._close_link(other, reason="duplicate")

    def _established(self, link: _Link, msg: codec.Message, frames: list[bytes]) -> None:
        peer_id = link.peer_id
        assert peer_id is not None
        if isinstance(msg, Broadcast):
            decision = self._flood.receive(msg.msg_id, msg.hops, peer_id, self._by_peer)
            if not decision.deliver:
                self.stats[f"broadcast_{decision.dropped}"] += 1
                return
            if decision.expired:
                self.stats["broadcast_last_hop"] += 1
            if decision.relay_to:
                relayed = codec.with_hops(frames, decision.hops)
                for target in decision.relay_to:
                    links = self._by_peer.get(target)  # a relay may drop a slow peer
                    if links:
                        self._transmit(links[0], relayed)
            if msg.origin != peer_id and self._book is not None:
                self._book.heard_from(msg.origin)
            self._dispatch(MeshMessage(msg.origin, peer_id, msg.channel, msg.parts,
                                       msg.msg_id, msg.sent_at))
        elif isinstance(msg, Direct):
            self._dispatch(MeshMessage(peer_id, peer_id, msg.channel, msg.parts))
        elif isinstance(msg, Ping):
            self._transmit(link, codec.encode(Pong()))
        elif isinstance(msg, Pong):
            pass
        elif isinstance(msg, Bye):
            self._close_link(link, reason="bye", bye=False)
        elif isinstance(msg, Refuse):
            self._close_link(link, reason="refused", bye=False)
        else:
            self.stats["unexpected"] += 1

    def _dispatch(self, msg: MeshMessage) -> None:
        handler = self._handlers.get(msg.channel)
        if handler is not None:
            try:
                handler(msg)
            except Exception:
                self.stats["handler_failed"] += 1
                log.failure("mesh handler for channel {channel!r} failed",
                            channel=msg.channel)
            return
        if len(self._inbox) >= self.limits.inbox_limit:
            self._inbox.popleft()
            self.stats["inbox_dropped"] += 1
        self._inbox.append(msg)
        self._events.emit("message", self, msg)

    # -- sending -----------------------------------------------------------------------

    def _raw_send(self, link: _Link, frames: list[bytes]) -> None:
        if link.dialer is not None:
            link.dialer.send_frames(frames)
        else:
            assert self._transport is not None and link.routing_id is not None
            self._transport.send_routed(link.routing_id, frames)

    def _send_routed_quietly(self, routing_id: bytes, frames: list[bytes]) -> None:
        from p2pnet.mesh.zmqtransport import SendBlocked, Unroutable

        if self._transport is None:
            return
        try:
            self._transport.send_routed(routing_id, frames)
        except (SendBlocked, Unroutable):
            pass

    def _transmit(self, link: _Link, frames: list[bytes]) -> None:
        """Send on a link, through its bounded overflow when ZeroMQ's pipe is full."""
        from p2pnet.mesh.zmqtransport import SendBlocked, Unroutable

        if link.closed:
            return
        if link.overflow:
            if len(link.overflow) >= self.limits.queue_limit:
                self.stats["dropped_full_queue"] += 1
                log.info("mesh {me!r}: peer {peer!r} stopped reading; disconnected",
                         me=self.peer_id, peer=link.peer_id)
                self._close_link(link, reason="slow", bye=False, flush=False)
                return
            link.overflow.append(frames)
            return
        try:
            self._raw_send(link, frames)
        except SendBlocked:
            link.overflow.append(frames)
            self._blocked.add(link)
            self._schedule_drain()
        except Unroutable:
            self._close_link(link, reason="unroutable", bye=False, flush=False)

    def _schedule_drain(self) -> None:
        if self._drain_call is None or not self._drain_call.active():
            self._drain_call = self._clock.callLater(DRAIN_INTERVAL, self._drain)

    def _drain(self) -> None:
        from p2pnet.mesh.zmqtransport import SendBlocked, Unroutable

        self._drain_call = None
        for link in list(self._blocked):
            while link.overflow and not link.closed:
                try:
                    self._raw_send(link, link.overflow[0])
                except SendBlocked:
                    break
                except Unroutable:
                    self._close_link(link, reason="unroutable", bye=False, flush=False)
                    break
                link.overflow.popleft()
            if not link.overflow or link.closed:
                self._blocked.discard(link)
        if self._blocked:
            self._schedule_drain()

    # -- links -------------------------------------------------------------------------

    def _close_link(self, link: _Link, *, reason: str, bye: bool = True, flush: bool = True,
                    error: Exception | None = None) -> None:
        """Forget a link (saying bye when asked) and tell whom it concerns."""
        if link.closed:
            return
        if bye and link.peer_id is not None and not link.overflow:
            try:
                self._raw_send(link, codec.encode(Bye()))
            except Exception:
                pass
        link.closed = True
        link.overflow.clear()
        self._blocked.discard(link)
        if link.timeout is not None and link.timeout.active():
            link.timeout.cancel()
        link.timeout = None
        if link.dialer is not None:
            self._outgoing.pop(link.dialer, None)
            if self._transport is not None:
                self._transport.close_dialer(link.dialer, flush)
        elif link.routing_id is not None:
            self._incoming.pop(link.routing_id, None)
        d, link.connect_d = link.connect_d, None
        if d is not None:
            d.errback(error or MeshStoppedError(f"link closed ({reason})"))
        peer_id = link.peer_id
        if peer_id is None:
            return
        if reason not in ("duplicate", "stopping"):
            self.stats[f"disconnect_{reason}"] += 1
        links = self._by_peer.get(peer_id, [])
        if link in links:
            links.remove(link)
        if links:
            return
        self._by_peer.pop(peer_id, None)
        log.debug("mesh {me!r} lost {peer!r} ({reason})", me=self.peer_id, peer=peer_id,
                  reason=reason)
        if self._book is not None:
            self._book.lost(peer_id)
        self._events.emit("disconnect", self, peer_id)

    def _keepalive_round(self) -> None:
        now = self._clock.seconds()
        limits = self.limits
        ping = codec.encode(Ping())
        for links in list(self._by_peer.values()):
            for link in list(links):
                silent = now - link.last_seen
                if silent >= limits.peer_timeout:
                    self._close_link(link, reason="timeout", flush=False)
                elif silent >= limits.ping_interval:
                    self._transmit(link, ping)


def _as_ack(hello: Hello) -> Hello:
    """Our hello as the answer to someone else's."""
    return Hello(hello.network_id, hello.peer_id, hello.host, hello.port, hello.version,
                 ack=True)


def _check_id(peer_id: bytes) -> None:
    if not isinstance(peer_id, bytes) or not 1 <= len(peer_id) <= codec.MAX_ID:
        raise ValueError(f"peer id must be 1..{codec.MAX_ID} bytes")
