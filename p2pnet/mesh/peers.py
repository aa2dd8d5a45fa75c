# -*- test-case-name: tests.test_mesh_peers -*-
"""Peer bookkeeping of a mesh node: states, retries with back-off, the PeerStore.

:class:`PeerBook` knows every peer this node has been connected to (from either side,
with the address it listens on).  The states are :class:`~p2pnet.store.peer.PeerState`:
``INITIAL`` (known, not dialled yet, e.g. loaded from the store), ``CONNECTING`` (a dial is
under way), ``CONNECTED`` (handshake done), ``ROUTED`` (no link, but its broadcasts reach us through
other peers; retries go on), ``NO_CONNECTION`` (lost or a dial failed; a retry is
scheduled) and ``UNREACHABLE`` (``max_failures`` dials in a row failed, or the
peer refused us: no more retries until it connects again or someone dials it).

Retries wait ``initial * factor**(failures)`` seconds, capped at ``maximum``, times a
random factor in ``[1 - jitter, 1 + jitter]`` so restarted nodes do not dial in step.

With a :class:`~p2pnet.store.peerstore.PeerStore`, the peers live in the store's
``peers`` (the same :class:`~p2pnet.store.peer.Peer` objects) and a new or moved peer
triggers a sync, so a restarted node dials the peers it knew without being told.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pnet.mesh import limits
from p2pnet.mesh.errors import HandshakeRefusedError
from p2pnet.store.peer import Peer, PeerState
from p2pnet.store.peerstore import PeerStore

log = Logger()

Dial = Callable[[str, int], "defer.Deferred[bytes]"]


@attrs.frozen
class Backoff:
    """The retry delays."""

    initial: float = limits.RETRY_INITIAL
    factor: float = limits.RETRY_FACTOR
    maximum: float = limits.RETRY_MAX
    jitter: float = limits.RETRY_JITTER
    max_failures: int = limits.RETRY_MAX_FAILURES

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait before the retry after ``failures`` failures in a row."""
        base = min(self.maximum, self.initial * self.factor ** max(0, failures))
        return float(base * (1 + self.jitter * (2 * rng.random() - 1)))


@attrs.define(eq=False)
class _Entry:
    peer: Peer
    failures: int = 0
    timer: IDelayedCall | None = None
    dialling: bool = False


class PeerBook:
    """The known peers of one node, their states and their retry timers."""

    def __init__(
        self,
        clock: IReactorTime,
        dial: Dial,
        *,
        own_id: bytes,
        store: PeerStore | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        max_known: int = 1024,
    ) -> None:
        self.clock = clock
        self.max_known = max_known
        self.dial = dial
        self.own_id = own_id
        self.store = store
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self._entries: dict[bytes, _Entry] = {}
        self._running = False
        self._flush_pending = False
        self._flush_again = False
        #: dials made by retries, and how many failed
        self.dials = 0
        self.dial_failures = 0
        #: peers forgotten because the book was full
        self.evicted = 0

    # -- queries ---------------------------------------------------------------------

    def get(self, peer_id: bytes) -> Peer | None:
        entry = self._entries.get(peer_id)
        return entry.peer if entry else None

    def state(self, peer_id: bytes) -> PeerState | None:
        entry = self._entries.get(peer_id)
        return entry.peer.conn_state if entry else None

    def known(self) -> list[Peer]:
        return [e.peer for e in self._entries.values()]

    def failures(self, peer_id: bytes) -> int:
        return self._entries[peer_id].failures

    def retry_pending(self, peer_id: bytes) -> bool:
        entry = self._entries.get(peer_id)
        return entry is not None and entry.timer is not None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Load the peers the store knows and dial each of them now."""
        self._running = True
        if self.store is not None:
            with self.store.peers_lock:
                stored = list(self.store.peers.values())
            for peer in stored:
                if peer.uuid == self.own_id or peer.uuid in self._entries:
                    continue
                peer.conn_state = PeerState.INITIAL
                self._entries[peer.uuid] = _Entry(peer)
        for peer_id, entry in self._entries.items():
            if entry.peer.host and entry.peer.port and entry.peer.conn_state in (
                PeerState.INITIAL, PeerState.NO_CONNECTION, PeerState.UNREACHABLE,
                PeerState.ROUTED,
            ):
                self._schedule(peer_id, 0.0)

    def stop(self) -> None:
        """Cancel every scheduled retry (dials under way finish on their own)."""
        self._running = False
        for entry in self._entries.values():
            self._cancel(entry)

    # -- events from the socket ---------------------------------------------------------

    def connected(self, peer_id: bytes, host: str, port: int) -> Peer:
        """A handshake with ``peer_id`` (listening on ``host:port``) completed."""
        entry = self._entries.get(peer_id)
        changed = False
        if entry is None:
            peer = None
            if self.store is not None:
                with self.store.peers_lock:
                    peer = self.store.peers.get(peer_id)
            if peer is None:
                peer = Peer(uuid=peer_id, host=host, port=port)
                if self.store is not None:
                    self.store.add_peer(peer)
                changed = True
            entry = self._entries[peer_id] = _Entry(peer)
        peer = entry.peer
        if (peer.host, peer.port) != (host, port):
            peer.host, peer.port = host, port
            changed = True
        peer.conn_state = PeerState.CONNECTED
        entry.failures = 0
        self._cancel(entry)
        self._evict()
        if changed:
            self._flush()
        return peer

    def lost(self, peer_id: bytes) -> None:
        """The last link to ``peer_id`` went: retry it after a back-off."""
        entry = self._entries.get(peer_id)
        if entry is None:
            return
        entry.peer.conn_state = PeerState.NO_CONNECTION
        if self._running:
            self._schedule(peer_id, self.backoff.delay(entry.failures, self.rng))

    def heard_from(self, origin: bytes) -> None:
        """A broadcast from ``origin`` reached us through the mesh: a known peer we have
        no link to is ``ROUTED`` (reachable through others; retries go on)."""
        entry = self._entries.get(origin)
        if entry is not None and entry.peer.conn_state in (
                PeerState.NO_CONNECTION, PeerState.UNREACHABLE, PeerState.INITIAL):
            entry.peer.conn_state = PeerState.ROUTED

    def retry_now(self, peer_id: bytes) -> None:
        """Dial a known peer now, whatever its state (e.g. after it was unreachable)."""
        if peer_id in self._entries:
            self._schedule(peer_id, 0.0)

    # -- internals -------------------------------------------------------------------

    _EVICT_ORDER = (PeerState.UNREACHABLE, PeerState.NO_CONNECTION, PeerState.INITIAL)

    def _evict(self) -> None:
        """Forget peers past ``max_known`` (unreachable first, never a connected one):
        peers that come and go under new ids cannot grow the book or the store."""
        while len(self._entries) > self.max_known:
            victim = next((pid for state in self._EVICT_ORDER
                           for pid, e in self._entries.items()
                           if e.peer.conn_state == state and not e.dialling), None)
            if victim is None:
                return
            entry = self._entries.pop(victim)
            self._cancel(entry)
            self.evicted += 1
            if self.store is not None:
                try:
                    self.store.take_peer(victim)
                except KeyError:
                    pass

    def _cancel(self, entry: _Entry) -> None:
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        entry.timer = None

    def _schedule(self, peer_id: bytes, delay: float) -> None:
        entry = self._entries[peer_id]
        self._cancel(entry)
        entry.timer = self.clock.callLater(delay, self._attempt, peer_id)

    def _attempt(self, peer_id: bytes) -> None:
        entry = self._entries.get(peer_id)
        if entry is None:
            return
        entry.timer = None
        peer = entry.peer
        if (not self._running or entry.dialling or peer.conn_state == PeerState.CONNECTED
                or not peer.host or not peer.port):
            return
        peer.conn_state = PeerState.CONNECTING
        entry.dialling = True
        self.dials += 1
        d = defer.maybeDeferred(self.dial, peer.host, peer.port)
        d.addBoth(self._dialled, peer_id)

    def _dialled(self, result: Any, peer_id: bytes) -> None:
        entry = self._entries[peer_id]
        entry.dialling = False
        if isinstance(result, Failure):
            self.dial_failures += 1
            if entry.peer.conn_state == PeerState.CONNECTED:
                return  # it connected to us meanwhile
            entry.failures += 1
            refused = result.check(HandshakeRefusedError) is not None
            if refused:
                log.warn("peer {peer!r} at {host}:{port} refused us: {why}; marked "
                         "unreachable", peer=peer_id, host=entry.peer.host,
                         port=entry.peer.port, why=result.getErrorMessage())
            else:
                log.debug("dial of {peer!r} failed ({n}): {why}", peer=peer_id,
                          n=entry.failures, why=result.getErrorMessage())
            if refused or entry.failures >= self.backoff.max_failures:
                entry.peer.conn_state = PeerState.UNREACHABLE
                return
            entry.peer.conn_state = PeerState.NO_CONNECTION
            if self._running:
                self._schedule(peer_id, self.backoff.delay(entry.failures, self.rng))
            return
        if result != peer_id and entry.peer.conn_state != PeerState.CONNECTED:
            # Someone else answers at that address now.
            entry.failures += 1
            entry.peer.conn_state = PeerState.UNREACHABLE

    def _flush(self) -> None:
        """Write the peers to the store soon: one sync at a time, and one more after it
        when peers changed while it ran (it may have read them before the change)."""
        store = self.store
        if store is None or not store.running:
            return
        if self._flush_pending:
            self._flush_again = True
            return
        self._flush_pending = True
        self._flush_again = False

        def done(result: object) -> None:
            self._flush_pending = False
            if isinstance(result, Failure):
                log.failure("peer store sync failed", result)
            if self._flush_again:
                self._flush()

        store.d_sync_database(force=True).addBoth(done)
