# -*- test-case-name: tests.test_mesh_memory -*-
"""An in-memory mesh on an injected clock: :class:`IMesh` without sockets, for tests.

A :class:`MemoryMeshNetwork` makes nodes (:class:`MemoryMesh`, providing
:class:`~p2pnet.mesh.interfaces.IMesh`) and the links between them::

    clock = task.Clock()
    net = MemoryMeshNetwork(clock, latency=0.01)
    a, b, c = net.node(b"a"), net.node(b"b"), net.node(b"c")
    net.link(a.peer_id, b.peer_id)      # 'connect' fires on a and b
    net.link(b.peer_id, c.peer_id)
    a.broadcast(b"hello", channel=b"app")
    net.flush()                         # advance the clock until nothing is in flight

Every message travels one link after ``latency`` seconds of ``clock`` (plus a random
``jitter`` in ``[0, jitter)``, which reorders messages, and a copy sent again with
probability ``duplicate``; both draw from ``random.Random(seed)``, so a run is
reproducible).  A message in flight on a link that is unlinked before it arrives is lost,
as on a closed connection.

Flooding is the real mesh's rule, :class:`p2pnet.mesh.flood.Flood` (SEMANTICS §6): a
broadcast carries a message id, a hop limit (``max_hops`` at its origin) and the origin's
send time (information only); a node that has not seen the id delivers it and relays it,
its hop limit less one, to every neighbour but the one it came from; a seen id, or a
spent hop limit, is dropped.  The seen-cache keeps ids for ``seen_ttl`` seconds of the
node's own clock and at most ``seen_size`` ids.  So every node reachable from the sender
(within ``max_hops`` links) receives a broadcast once, the sender never.

Each node may run on its own clock (``net.node(peer_id, clock=...)``, e.g. a
:class:`SkewedClock` ahead of or behind the network's): it stamps its sends and its
seen-cache with it, while messages still travel on the network's clock.

This is public test API: applications test their own code on the sync and chord sockets
over it, on ``task.Clock``, the way p2pnet's own tests do.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from p2pnet.mesh import flood
from p2pnet.mesh.codec import check_channel
from p2pnet.mesh.flood import Flood
from p2pnet.mesh.interfaces import IMesh, MeshMessage
from p2pnet.observer import EventEmitter

log = Logger(namespace="p2pnet.mesh.memory")

MESH_EVENTS = ("connect", "disconnect", "message")


def _link_key(a: bytes, b: bytes) -> tuple[bytes, bytes]:
    return (a, b) if a <= b else (b, a)


class SkewedClock:
    """``clock`` read ``offset`` seconds ahead (behind, when negative): a node whose clock
    disagrees with the others'.  Delayed calls run on ``clock`` after the same delays
    (their ``getTime()`` is on ``clock``)."""

    def __init__(self, clock: IReactorTime, offset: float) -> None:
        self.clock = clock
        self.offset = offset

    def seconds(self) -> float:
        return self.clock.seconds() + self.offset

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any,
                  **kw: Any) -> IDelayedCall:
        return self.clock.callLater(delay, callable, *args, **kw)

    def getDelayedCalls(self) -> list[IDelayedCall]:
        return list(self.clock.getDelayedCalls())


class MemoryMeshNetwork:
    """The nodes and links of an in-memory mesh, and the messages in flight between them."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        latency: float = 0.001,
        jitter: float = 0.0,
        duplicate: float = 0.0,
        seed: int = 0,
        seen_ttl: float = flood.TTL,
        seen_size: int = flood.MAX_ENTRIES,
        max_hops: int = flood.MAX_HOPS,
        max_age: float | None = None,
    ) -> None:
        """``max_age`` is the former name of ``seen_ttl`` (the seen-cache's ttl; no
        broadcast is dropped for its age any more)."""
        if latency <= 0 or jitter < 0:
            # (a zero latency would let messages that answer each other run for ever
            # inside one step of a task.Clock)
            raise ValueError("latency must be positive and jitter not negative")
        if not 0.0 <= duplicate < 1.0:
            raise ValueError("duplicate must be a probability in [0, 1)")
        self.clock = clock
        self.latency = latency
        self.jitter = jitter
        self.duplicate = duplicate
        self.seen_ttl = seen_ttl if max_age is None else max_age
        self.seen_size = seen_size
        self.max_hops = max_hops
        self.random = random.Random(seed)
        self.nodes: dict[bytes, MemoryMesh] = {}
        #: link -> its epoch (a message sent on an earlier epoch of a link is lost)
        self._links: dict[tuple[bytes, bytes], int] = {}
        self._epoch = 0
        #: messages scheduled and not yet delivered or lost
        self.in_flight = 0
        # Messages in flight: one heap and one timer (a task.Clock sorts its calls on
        # every callLater, which would make a busy network quadratic).
        self._queue: list[tuple[float, int, tuple[bytes, bytes], int, bytes,
                                MeshMessage, int]] = []
        self._order = 0
        self._timer: IDelayedCall | None = None
        #: messages put on a link (copies included) / lost on a link unlinked in flight
        self.sent = 0
        self.lost = 0

    # -- nodes and links ----------------------------------------------------------------

    def node(self, peer_id: bytes, clock: IReactorTime | None = None) -> MemoryMesh:
        """Make a new node (``ValueError`` if the id is taken; see :meth:`remove`), on
        its own ``clock`` if given (else the network's)."""
        if not isinstance(peer_id, bytes):
            raise TypeError(f"peer_id must be bytes, not {type(peer_id).__name__}")
        if peer_id in self.nodes:
            raise ValueError(f"node {peer_id!r} already exists")
        mesh = MemoryMesh(self, peer_id, clock)
        self.nodes[peer_id] = mesh
        return mesh

    def remove(self, peer_id: bytes) -> None:
        """Take a node off the network (unlinking it first); its id can be used again."""
        mesh = self.nodes[peer_id]
        for other in list(mesh._neighbours):
            self.unlink(peer_id, other)
        del self.nodes[peer_id]

    def _get(self, peer_id: bytes) -> MemoryMesh:
        try:
            return self.nodes[peer_id]
        except KeyError:
            raise KeyError(f"no node {peer_id!r} on this network") from None

    def link(self, a: bytes, b: bytes) -> bool:
        """Connect ``a`` and ``b``; ``'connect'`` fires on both.  False if already linked."""
        if a == b:
            raise ValueError("a node cannot link to itself")
        na, nb = self._get(a), self._get(b)
        key = _link_key(a, b)
        if key in self._links:
            return False
        self._epoch += 1
        self._links[key] = self._epoch
        na._neighbours.add(b)
        nb._neighbours.add(a)
        na._events.emit("connect", na, b)
        nb._events.emit("connect", nb, a)
        return True

    def unlink(self, a: bytes, b: bytes) -> bool:
        """Cut the link; ``'disconnect'`` fires on both.  False if they were not linked."""
        key = _link_key(a, b)
        if self._links.pop(key, None) is None:
            return False
        na, nb = self.nodes[a], self.nodes[b]
        na._neighbours.discard(b)
        nb._neighbours.discard(a)
        na._events.emit("disconnect", na, b)
        nb._events.emit("disconnect", nb, a)
        return True

    def linked(self, a: bytes, b: bytes) -> bool:
        return _link_key(a, b) in self._links

    def links(self) -> list[tuple[bytes, bytes]]:
        return sorted(self._links)

    def link_all(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        for a, b in pairs:
            self.link(a, b)

    def partition(self, *groups: Iterable[bytes]) -> list[tuple[bytes, bytes]]:
        """Cut every link between different groups; returns the links cut (to heal)."""
        where: dict[bytes, int] = {}
        for i, group in enumerate(groups):
            for peer_id in group:
                where[peer_id] = i
        cut = [
            (a, b) for a, b in self.links()
            if a in where and b in where and where[a] != where[b]
        ]
        for a, b in cut:
            self.unlink(a, b)
        return cut

    # -- delivery -----------------------------------------------------------------------

    def _transmit(self, src: bytes, dst: bytes, msg: MeshMessage, hops: int = 0) -> None:
        key = _link_key(src, dst)
        epoch = self._links[key]
        copies = 2 if self.duplicate and self.random.random() < self.duplicate else 1
        for _ in range(copies):
            delay = self.latency
            if self.jitter:
                delay += self.random.random() * self.jitter
            self.in_flight += 1
            self.sent += 1
            self._order += 1
            heapq.heappush(self._queue, (self.clock.seconds() + delay, self._order, key,
                                         epoch, dst, msg, hops))
        self._schedule()

    def _schedule(self) -> None:
        if not self._queue:
            return
        due = self._queue[0][0]
        timer = self._timer
        if timer is not None and timer.active():
            if timer.getTime() <= due:
                return
            timer.cancel()
        self._timer = self.clock.callLater(max(0.0, due - self.clock.seconds()),
                                           self._run)

    def _run(self) -> None:
        """Deliver every message that is due."""
        self._timer = None
        now = self.clock.seconds()
        queue = self._queue
        while queue and queue[0][0] <= now:
            _, _, key, epoch, dst, msg, hops = heapq.heappop(queue)
            self._arrive(key, epoch, dst, msg, hops)
        self._schedule()

    def _arrive(self, key: tuple[bytes, bytes], epoch: int, dst: bytes,
                msg: MeshMessage, hops: int) -> None:
        self.in_flight -= 1
        if self._links.get(key) != epoch or dst not in self.nodes:
            self.lost += 1
            return
        self.nodes[dst]._receive(msg, hops)

    def drop_in_flight(self) -> int:
        """Lose every message in flight (a glitch of the whole network; counted in
        :attr:`lost`); returns how many were lost."""
        dropped = len(self._queue)
        self._queue.clear()
        self.in_flight -= dropped
        self.lost += dropped
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return dropped

    @property
    def max_delay(self) -> float:
        return self.latency + self.jitter

    def flush(self, max_rounds: int = 100_000) -> int:
        """Advance the clock until no message is in flight; returns the rounds it took.

        Raises ``RuntimeError`` if messages are still in flight after ``max_rounds``
        (a loop that keeps sending).  Only works on a ``task.Clock``.
        """
        step = self.max_delay
        rounds = 0
        while self.in_flight:
            if rounds >= max_rounds:
                raise RuntimeError(f"{self.in_flight} messages still in flight "
                                   f"after {max_rounds} rounds")
            self.clock.advance(step)  # type: ignore[attr-defined]
            rounds += 1
        return rounds


@implementer(IMesh)
class MemoryMesh:
    """One node of a :class:`MemoryMeshNetwork` (make it with ``net.node(peer_id)``);
    ``clock`` is its own clock (the network's by default)."""

    def __init__(self, network: MemoryMeshNetwork, peer_id: bytes,
                 clock: IReactorTime | None = None) -> None:
        self.network = network
        self.peer_id = peer_id
        self.clock: IReactorTime = clock if clock is not None else network.clock
        self._neighbours: set[bytes] = set()
        self._events = EventEmitter(MESH_EVENTS)
        self._handlers: dict[bytes, Callable[[MeshMessage], None]] = {}
        self.flood = Flood(self.clock, network.seen_ttl, network.seen_size,
                           network.max_hops)
        self._counter = 0
        #: delivered, relayed, seen (duplicates), hop_limit (arrived spent), last_hop
        #: (delivered, not relayed further: hop limit), handler_failed, unhandled
        self.stats: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<MemoryMesh {self.peer_id!r} peers={len(self._neighbours)}>"

    # -- IMesh --------------------------------------------------------------------------

    def on(self, event: str, callback: Callable[..., Any] | None = None) -> Any:
        return self._events.on(event, callback)

    def handle(self, channel: bytes, callback: Callable[[MeshMessage], None]) -> None:
        check_channel(channel)
        if channel in self._handlers:
            raise ValueError(f"channel {channel!r} already has a handler")
        self._handlers[channel] = callback

    def send(self, peer_id: bytes, *parts: bytes, channel: bytes = b"") -> None:
        if peer_id not in self._neighbours:
            raise KeyError(f"peer {peer_id!r} is not connected")
        self._check_parts(parts, channel)
        msg = MeshMessage(origin=self.peer_id, via=self.peer_id, channel=channel,
                          parts=tuple(parts), msg_id=None,
                          sent_at=self.clock.seconds())
        self.network._transmit(self.peer_id, peer_id, msg)

    def broadcast(self, *parts: bytes, channel: bytes = b"") -> bytes:
        self._check_parts(parts, channel)
        self._counter += 1
        msg_id = self.peer_id + b":" + str(self._counter).encode()
        hops = self.flood.originate(msg_id)
        msg = MeshMessage(origin=self.peer_id, via=self.peer_id, channel=channel,
                          parts=tuple(parts), msg_id=msg_id, sent_at=self.clock.seconds())
        for peer_id in sorted(self._neighbours):
            self.network._transmit(self.peer_id, peer_id, msg, hops)
        return msg_id

    def peers(self) -> list[bytes]:
        return sorted(self._neighbours)

    # -- inside -------------------------------------------------------------------------

    @staticmethod
    def _check_parts(parts: tuple[bytes, ...], channel: bytes) -> None:
        if not isinstance(channel, bytes):
            raise TypeError("channel must be bytes")
        for part in parts:
            if not isinstance(part, bytes):
                raise TypeError(f"message parts must be bytes, not {type(part).__name__}")

    def _receive(self, msg: MeshMessage, hops: int) -> None:
        if msg.msg_id is not None:
            decision = self.flood.receive(msg.msg_id, hops, msg.via,
                                          sorted(self._neighbours))
            if not decision.deliver:
                self.stats[decision.dropped or "dropped"] += 1
                return
            if decision.expired:
                self.stats["last_hop"] += 1
            relay = MeshMessage(origin=msg.origin, via=self.peer_id, channel=msg.channel,
                                parts=msg.parts, msg_id=msg.msg_id, sent_at=msg.sent_at)
            for peer_id in decision.relay_to:
                if peer_id != msg.origin:
                    self.network._transmit(self.peer_id, peer_id, relay, decision.hops)
                    self.stats["relayed"] += 1
        self.stats["delivered"] += 1
        handler = self._handlers.get(msg.channel)
        if handler is None:
            self.stats["unhandled"] += 1
            self._events.emit("message", self, msg)
            return
        try:
            handler(msg)
        except Exception:
            self.stats["handler_failed"] += 1
            log.failure("handler for channel {channel!r} failed", channel=msg.channel)
