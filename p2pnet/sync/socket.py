# -*- test-case-name: tests.test_sync_socket -*-
"""SyncSocket: a dict replicated on every node of a mesh, with py2p's leases.

::

    sock = SyncSocket(mesh)                 # any IMesh: MeshSocket or MemoryMesh
    sock["colour"] = "blue"                 # str -> UTF-8 bytes; flooded to every node
    sock[b"colour"]                         # b'blue', read from the local dict, O(1)
    sock.on("update", lambda s, key, value, lease: ...)

Keys and values are ``bytes`` (``str`` is encoded as UTF-8, ``bytearray`` and
``memoryview`` copied to bytes); a ``dict`` value is a mapping value (its keys and
values converted the same way), read back as a new ``dict`` and changed in place with
:meth:`SyncSocket.apply_delta`.

**Leases** (on by default; SEMANTICS §4 and :mod:`p2pnet.sync.merge`): a key written by
another node raises :class:`~p2pnet.sync.merge.LeaseError` (a ``KeyError``) here until
its lease runs out, 3600 s after the owner's last write by this node's clock; the owner
may change the key (renewing the lease) or delete it (giving the lease up); in the same
UTC second the lower id wins.  ``leasing=False`` turns leases off: the newest write wins.
Lease time comes from ``clock`` (an ``IReactorTime``, default the reactor).

**Replication**: every write goes to every node by ``mesh.broadcast`` on channel
``b"sync"``; each node merges it with the one rule of :mod:`p2pnet.sync.merge`.  When a
peer connects, both sides say hello with their mode; a peer of the same mode is sent the
whole state (tombstones included), and what that dump changes is flooded on, so a late
joiner and both sides of a healed partition converge.  Every ``anti_entropy`` seconds
(while the service runs) each node sends its peers a 16-byte digest of its whole state;
a peer whose digest differs swaps full dumps with it, which repairs what lost messages
left behind (a link cut while a write was in flight, a broadcast dropped as too old).
A peer of the other mode is refused with a reason sent to it
(``refused['leasing_mismatch']``) and never synced with.
Malformed messages are dropped (``refused['malformed']``), as are entries over the
bounds of :class:`~p2pnet.sync.merge.SyncLimits`.

**Persistence** (optional): with ``store`` (an
:class:`~p2pnet.store.keyspace.IKeySpace`), every entry is written there, and
``startService`` loads it back, merged like a dump, so a restarted node does not start
empty; :meth:`SyncSocket.when_ready` fires once it is loaded.

Events (py2p's): ``'update'`` ``(sock, key, value, lease)`` and ``'delete'``
``(sock, key)``, on every node, for local and remote changes alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pnet.dht.limits import RefusalCounter
from p2pnet.ids import to_bytes
from p2pnet.mesh.errors import MeshStoppedError
from p2pnet.mesh.interfaces import IMesh, MeshMessage
from p2pnet.observer import EventEmitter, OneShotObserver
from p2pnet.store.keyspace import IKeySpace
from p2pnet.sync import codec
from p2pnet.sync.merge import (
    KIND_BYTES,
    KIND_MAP,
    LEASE_SECONDS,
    Change,
    Entry,
    Lease,
    LeaseError,
    SyncLimits,
    SyncRefused,
    SyncState,
    decode_map,
    encode_map,
    may_write,
)
from p2pnet.timers import Periodic

log = Logger(namespace="p2pnet.sync")

CHANNEL = b"sync"
EVENTS = ("update", "delete")

_MISSING: Any = object()

__all__ = ["Lease", "LeaseError", "SyncLimits", "SyncRefused", "SyncSocket"]

Value = bytes | dict[bytes, bytes]


def to_value(data: object) -> tuple[bytes, int]:
    """A value's stored form: ``(bytes, KIND_BYTES)`` or, for a mapping,
    ``(encoded mapping, KIND_MAP)``."""
    if isinstance(data, Mapping):
        return encode_map({to_bytes(k, "mapping key"): to_bytes(v, "mapping value")
                           for k, v in data.items()}), KIND_MAP
    return to_bytes(data, "value"), KIND_BYTES


class SyncSocket(Service):
    """A dict replicated over ``mesh`` (see the module doc).

    :param mesh: the node's :class:`~p2pnet.mesh.interfaces.IMesh`.
    :param leasing: py2p's leases (default on).
    :param clock: the ``IReactorTime`` of lease time (default: the reactor).
    :param store: an ``IKeySpace`` to persist the dict in (loaded on ``startService``).
    :param limits: the bounds of what peers can make us hold.
    :param lease_seconds: how long a lease lasts (3600 s, as py2p).
    :param anti_entropy: seconds between digest rounds while the service runs (None: no
        rounds; :meth:`sync_round` runs one by hand).
    """

    def __init__(self, mesh: IMesh, *, leasing: bool = True,
                 clock: IReactorTime | None = None, store: IKeySpace | None = None,
                 limits: SyncLimits | None = None,
                 lease_seconds: int = LEASE_SECONDS,
                 anti_entropy: float | None = 60.0) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        assert clock is not None
        self.mesh = mesh
        self.leasing = bool(leasing)
        self.clock = clock
        self.store = store
        self.lease_seconds = lease_seconds
        #: refusals and drops by kind: malformed, leasing_mismatch, mode_mismatch,
        #: key_too_large, value_too_large, too_many_keys, from_future, ...
        self.refused = RefusalCounter()
        self._state = SyncState(limits, self.refused)
        self.limits = self._state.limits
        #: dumps_sent, dumps_received, writes_received, reflooded, refused_by_peer, ...
        self.stats: Counter[str] = Counter()
        #: peers that refused us, or that we refused: peer id -> reason
        self.incompatible: dict[bytes, str] = {}
        self._events = EventEmitter(EVENTS)
        self._hello_sent: set[bytes] = set()
        self._synced: set[bytes] = set()
        self._dumped: dict[bytes, list[float]] = {}  # peer -> times of recent dumps
        self._pending: set[defer.Deferred[Any]] = set()
        self._ready: OneShotObserver[None] = OneShotObserver()
        self._rounds = (Periodic(clock, anti_entropy, self.sync_round, "sync anti-entropy")
                        if anti_entropy else None)
        if store is None:
            self._ready.fire(None)
        mesh.handle(CHANNEL, self._received)
        mesh.on("connect", self._connected)
        mesh.on("disconnect", self._disconnected)
        for peer in mesh.peers():
            self._hello(peer)

    @property
    def peer_id(self) -> bytes:
        """This node's id: the mesh's (a MeshSocket with a PeerStore knows it once
        started, so it is read at each write, not when the socket is made)."""
        peer_id: bytes = self.mesh.peer_id
        return peer_id

    def _writer(self) -> bytes:
        peer_id = self.peer_id
        if not peer_id:
            raise RuntimeError("the mesh has no peer id yet: start it (when_ready) "
                               "before writing")
        return peer_id

    def __repr__(self) -> str:
        return (f"<SyncSocket {self.peer_id!r} keys={len(self)} "
                f"leasing={self.leasing}>")

    # -- service ------------------------------------------------------------------------

    def startService(self) -> None:  # noqa: N802 - IService
        super().startService()
        if self._rounds is not None:
            self._rounds.start()
        if self.store is not None and not self._ready.fired:
            d = self.store.d_items()
            d.addCallback(self._loaded)
            d.addErrback(self._load_failed)

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802 - IService
        super().stopService()
        waits = list(self._pending)
        if self._rounds is not None:
            waits.append(self._rounds.stop())
        d: defer.Deferred[Any] = defer.DeferredList(waits, consumeErrors=True)
        return d.addCallback(lambda _: None)

    def when_ready(self) -> defer.Deferred[None]:
        """Fires once the persisted state is loaded (at once without a store)."""
        return self._ready.when_fired()

    def _loaded(self, items: list[tuple[bytes, bytes]]) -> None:
        now = self._now()
        loaded: list[tuple[bytes, Entry]] = []
        for key, blob in items:
            try:
                (stored_key, entry), = codec.decode_entries(blob)
            except ValueError:
                self.refused["bad_stored_entry"] += 1
                continue
            if stored_key != key:
                self.refused["bad_stored_entry"] += 1
                continue
            loaded.append((key, entry))
        changed = self._merge(loaded, now, persist=False)
        self._flood(changed)  # what we knew and the mesh did not
        self.stats["loaded"] += len(loaded)
        self._ready.fire_if_unfired(None)

    def _load_failed(self, failure: Failure) -> None:
        log.failure("sync: loading the persisted state failed", failure)
        self._ready.fire_if_unfired(failure)

    # -- events -------------------------------------------------------------------------

    def on(self, event: str, callback: Callable[..., Any] | None = None) -> Any:
        """``'update'`` ``(sock, key, value, lease)`` / ``'delete'`` ``(sock, key)``; as a
        call or, without ``callback``, as a decorator."""
        return self._events.on(event, callback)

    # -- reading ------------------------------------------------------------------------

    def _read(self, key: bytes, value: bytes) -> Value:
        if self._state.entries[key].kind == KIND_MAP:
            return decode_map(value)
        return value

    def __getitem__(self, key: object) -> Value:
        k = to_bytes(key)
        return self._read(k, self._state.values[k])

    def get(self, key: object, default: Any = None) -> Any:
        k = to_bytes(key)
        value = self._state.values.get(k, _MISSING)
        if value is _MISSING:
            return default
        return self._read(k, value)

    def __contains__(self, key: object) -> bool:
        try:
            return to_bytes(key) in self._state.values
        except TypeError:
            return False

    def __len__(self) -> int:
        return len(self._state.values)

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._state.values))

    def keys(self) -> Iterator[bytes]:
        return iter(list(self._state.values))

    def values(self) -> Iterator[Value]:
        return iter([self._read(k, v) for k, v in self._state.values.items()])

    def items(self) -> Iterator[tuple[bytes, Value]]:
        return iter([(k, self._read(k, v)) for k, v in self._state.values.items()])

    def copy(self) -> dict[bytes, Value]:
        """A plain ``dict`` of the current values."""
        return dict(self.items())

    def lease(self, key: object) -> Lease | None:
        """The lease record ``(owner, timestamp)`` of a key that has a value, or None."""
        entry = self._state.entries.get(to_bytes(key))
        if entry is None or entry.deleted:
            return None
        return entry.lease

    def may_set(self, key: object) -> bool:
        """Whether this node may write ``key`` now (the lease rule)."""
        return may_write(self._state.entries.get(to_bytes(key)), self.peer_id,
                         self._now(), leasing=self.leasing,
                         lease_seconds=self.lease_seconds)

    # -- writing ------------------------------------------------------------------------

    def _now(self) -> int:
        return int(self.clock.seconds())

    def _write(self, key: bytes, value: bytes | None, kind: int = KIND_BYTES) -> None:
        now = self._now()
        self._purge(now)
        entry, change = self._state.write(key, self._writer(), now, value, kind=kind,
                                          leasing=self.leasing,
                                          lease_seconds=self.lease_seconds)
        self._persist(key, entry)
        self._broadcast([(key, entry)])
        if change is not None:
            self._emit(change)

    def __setitem__(self, key: object, value: object) -> None:
        """Set ``key`` on every node (``LeaseError`` if another node holds its lease;
        :class:`~p2pnet.sync.merge.SyncRefused` when over a bound)."""
        k = to_bytes(key)
        v, kind = to_value(value)
        self._write(k, v, kind)

    set = __setitem__

    def __delitem__(self, key: object) -> None:
        """Delete ``key`` on every node (``KeyError`` when it has no value,
        ``LeaseError`` if another node holds its lease)."""
        self._write(to_bytes(key), None)

    def update(self, mapping: Mapping[Any, Any] | Iterable[tuple[Any, Any]] = (),
               **kwargs: Any) -> None:
        """Set many keys at once, in one message: all or none (a key leased to another
        node raises ``LeaseError``, and keys past ``max_keys`` for the whole update
        :class:`~p2pnet.sync.merge.SyncRefused`, before anything is written)."""
        pairs = list(mapping.items() if isinstance(mapping, Mapping) else mapping)
        pairs += list(kwargs.items())
        now = self._now()
        self._purge(now)
        todo: dict[bytes, tuple[bytes, int]] = {}
        for key, value in pairs:
            todo[to_bytes(key)] = to_value(value)
        state = self._state
        new_keys = sum(1 for k in todo if k not in state.entries)
        if new_keys and len(state.entries) + new_keys > self.limits.max_keys:
            # (each key alone would pass the check below: the update as a whole must)
            raise SyncRefused(f"refused to write {len(todo)} keys: too_many_keys "
                              f"({len(state.entries)} held and {new_keys} new, at most "
                              f"{self.limits.max_keys}; tombstones count)")
        writer = self._writer()
        prepared = [  # every key checked before any is written
            (k, state.prepare(k, writer, now, v, kind=kind, leasing=self.leasing,
                              lease_seconds=self.lease_seconds))
            for k, (v, kind) in todo.items()
        ]
        written: list[tuple[bytes, Entry]] = []
        changes: list[Change] = []
        for k, entry in prepared:
            change = state.commit(k, entry)
            self._persist(k, entry)
            written.append((k, entry))
            if change is not None:
                changes.append(change)
        self._broadcast(written)
        for change in changes:
            self._emit(change)

    def pop(self, key: object, default: Any = _MISSING) -> Any:
        """Remove ``key`` everywhere and return its value (``default``, or ``KeyError``,
        when it has none; ``LeaseError`` if another node holds its lease)."""
        k = to_bytes(key)
        if k not in self._state.values:
            if default is _MISSING:
                raise KeyError(k)
            return default
        value = self[k]
        del self[k]
        return value

    def popitem(self) -> tuple[bytes, Value]:
        """Remove and return a ``(key, value)`` this node may delete (``KeyError`` when
        there is none)."""
        for k in self._state.values:
            if self.may_set(k):
                return k, self.pop(k)
        raise KeyError("popitem(): no key that this node may delete"
                       if self._state.values else "popitem(): the dict is empty")

    def apply_delta(self, key: object, delta: Mapping[Any, Any]) -> None:
        """Merge ``delta`` into the mapping value at ``key`` (a new mapping when the key
        has no value); ``TypeError`` if the value is not a mapping.  The result is
        written as a whole: two nodes' concurrent deltas do not combine (with leases,
        only the owner writes anyway)."""
        if not isinstance(delta, Mapping):
            raise TypeError("a delta must be a mapping")
        k = to_bytes(key)
        current = self.get(k)
        if current is not None and not isinstance(current, dict):
            raise TypeError(f"cannot apply a delta to key {k!r}: its value is not a mapping")
        merged = dict(current or {})
        merged.update({to_bytes(a, "mapping key"): to_bytes(b, "mapping value")
                       for a, b in delta.items()})
        self._write(k, encode_map(merged), KIND_MAP)

    # -- the mesh -----------------------------------------------------------------------

    def _send(self, peer: bytes, *parts: bytes) -> None:
        try:
            self.mesh.send(peer, *parts, channel=CHANNEL)
        except KeyError:
            self.stats["peer_gone"] += 1  # disconnected in between

    def _hello(self, peer: bytes) -> None:
        self._hello_sent.add(peer)
        self._send(peer, *codec.encode_hello(self.leasing))

    def _connected(self, mesh: IMesh, peer: bytes) -> None:
        self._hello(peer)

    def _disconnected(self, mesh: IMesh, peer: bytes) -> None:
        self._hello_sent.discard(peer)
        self._synced.discard(peer)
        self._dumped.pop(peer, None)
        self.incompatible.pop(peer, None)

    def _broadcast(self, items: list[tuple[bytes, Entry]]) -> None:
        for parts in codec.encode_entries(self.leasing, codec.WRITES, items):
            try:
                self.mesh.broadcast(*parts, channel=CHANNEL)
            except MeshStoppedError:
                # written here (and in the store); peers get it in our dump when the
                # mesh is back
                self.stats["unsent_mesh_stopped"] += 1

    def _flood(self, changed: list[tuple[bytes, Entry]]) -> None:
        if changed:
            self.stats["reflooded"] += len(changed)
            self._broadcast(changed)

    def _dump(self, peer: bytes) -> None:
        now = self.clock.seconds()
        recent = [t for t in self._dumped.get(peer, ()) if now - t < 60.0]
        if len(recent) >= self.limits.max_dumps_per_minute:
            self.refused["dump_rate"] += 1
            return
        recent.append(now)
        self._dumped[peer] = recent
        items = sorted(self._state.entries.items())
        for parts in codec.encode_entries(self.leasing, codec.DUMP, items):
            self._send(peer, *parts)
        self.stats["dumps_sent"] += 1

    def sync_round(self) -> None:
        """Send every peer we sync with the digest of our state (anti-entropy)."""
        parts = codec.encode_digest(self.leasing, self._state.digest_bytes)
        for peer in sorted(self._synced):
            self._send(peer, *parts)
        self.stats["digest_rounds"] += 1

    def _mode_text(self, leasing: bool) -> str:
        return "leasing on" if leasing else "leasing off (leasing=False)"

    def _received(self, msg: MeshMessage) -> None:
        try:
            m = codec.decode(msg.parts)
        except codec.SyncDecodeError as e:
            self.refused["malformed"] += 1
            log.debug("sync: malformed message from {peer!r}: {why}", peer=msg.via, why=e)
            return
        peer = msg.via
        if m.type == codec.REFUSE:
            self.stats["refused_by_peer"] += 1
            self.incompatible[peer] = m.reason
            log.warn("sync: peer {peer!r} refused us: {reason}", peer=peer, reason=m.reason)
            return
        if m.leasing != self.leasing:
            if m.type == codec.HELLO:
                reason = (f"sync sockets with {self._mode_text(self.leasing)} and with "
                          f"{self._mode_text(m.leasing)} do not sync with each other "
                          f"(node {self.peer_id!r} runs {self._mode_text(self.leasing)})")
                self.refused["leasing_mismatch"] += 1
                self.incompatible[peer] = reason
                self._send(peer, *codec.encode_refuse(self.leasing, reason))
                log.warn("sync: refused peer {peer!r}: {reason}", peer=peer, reason=reason)
            else:
                self.refused["mode_mismatch"] += 1
            return
        if m.type == codec.DIGEST:
            self._purge(self._now())
            if m.digest != self._state.digest_bytes:
                self.stats["digest_mismatch"] += 1
                self._hello(peer)   # the peer answers with its dump
                self._dump(peer)
            return
        if m.type == codec.HELLO:
            if peer not in self._hello_sent:
                self._hello(peer)
            self._synced.add(peer)
            self._dump(peer)
            return
        now = self._now()
        self._purge(now)
        if m.type == codec.DUMP:
            self.stats["dumps_received"] += 1
            self._flood(self._merge(m.entries, now))
        else:
            self.stats["writes_received"] += 1
            self._merge(m.entries, now)

    def _merge(self, entries: Iterable[tuple[bytes, Entry]], now: int, *,
               persist: bool = True) -> list[tuple[bytes, Entry]]:
        """Merge remote entries; fire events; returns the entries that won here."""
        changed: list[tuple[bytes, Entry]] = []
        events: list[Change] = []
        state = self._state
        for key, entry in entries:
            before = state.entries.get(key)
            change = state.apply(key, entry, now)
            if state.entries.get(key) is before:
                continue
            changed.append((key, entry))
            if persist:
                self._persist(key, entry)
            if change is not None:
                events.append(change)
        for change in events:
            self._emit(change)
        return changed

    def _emit(self, change: Change) -> None:
        if change.value is None:
            self._events.emit("delete", self, change.key)
        else:
            value: Value = (decode_map(change.value) if change.entry.kind == KIND_MAP
                            else change.value)
            self._events.emit("update", self, change.key, value, change.entry.lease)

    # -- persistence --------------------------------------------------------------------

    def _track(self, d: defer.Deferred[Any], what: str) -> None:
        self._pending.add(d)

        def done(result: Any) -> None:
            self._pending.discard(d)
            if isinstance(result, Failure):
                self.stats["store_failed"] += 1
                log.failure("sync: {what} failed", result, what=what)

        d.addBoth(done)

    def _persist(self, key: bytes, entry: Entry) -> None:
        if self.store is not None:
            self._track(self.store.d_put(key, codec.encode_entry(key, entry)), "store put")

    def _purge(self, now: int) -> None:
        for key in self._state.purge(now):
            if self.store is not None:
                self._track(self.store.d_delete(key), "store delete")
