# -*- test-case-name: tests.test_chord_socket -*-
"""ChordSocket: the whole ``dict`` API over the DHT, with the keys known on every node.

Values live in the Kademlia DHT (:class:`~p2pnet.dht.network.DHTNetwork`): a write of
``key`` publishes a :mod:`record <p2pnet.chord.record>` under the SHA-1 of the key, on
the k closest nodes, which replicate it and hand it on when holders go; a read fetches
the newest record under it.  Both take one iterative lookup, O(log n) hops, counted per
operation (:attr:`ChordSocket.last_hops`, :attr:`ChordSocket.stats`).  The DHT has no
delete: a delete publishes a newer *tombstone*, and a read that finds one answers
``KeyError``.

The keys are kept on every node in a :class:`~p2pnet.chord.keyset.KeySet`: each write is
flooded over the mesh as a notice (channel ``b"chord"``), a node that connects is sent
the whole set and sends its own (a socket made on a mesh that is already connected asks
its peers for theirs), and what a set teaches a node is passed on to its other peers --
so ``keys()``, ``len()``, ``in`` and ``iter()`` need no lookup.  A read agrees with the
key set: when the set names a newer write than the DHT answered with, that record is
fetched by its index.  ``values()`` and
``items()`` fetch each value: a key whose holders are all gone (or that was deleted
meanwhile) makes them raise ``KeyError``, as in py2p.

Events (``sock.on('add', f)``, ``sock.on('delete', f)``, called ``f(sock, key)``) fire
when a key enters or leaves this node's key set: once per change on every node, the
writer's included (after its write is stored).  Overwriting a present key is not an
``'add'``.

Two APIs:

- reactor side, Deferreds: ``d_get``, ``d_set``, ``d_delete``, ``d_update``, ``d_keys``,
  ``d_values``, ``d_items``, ``d_pop``, ``d_popitem``, ``d_setdefault``, ``d_contains``,
  ``d_len``, ``d_copy``, ``d_clear``;
- the blocking ``dict`` API (``sock[k]``, ``sock.get(k)``, ``del sock[k]``, ...) for
  threads other than the reactor's, through ``blockingCallFromThread``.  Called on the
  reactor thread (where it would deadlock) it raises
  :class:`~p2pnet.chord.errors.ReactorThreadError`.  ``keys()``, ``len()``, ``in`` and
  ``iter()`` read the local set and work on any thread.

Keys and values are bytes; ``str`` is encoded as UTF-8, so ``sock['k']`` is
``sock[b'k']``.  A missing key is ``KeyError``; an operation that runs out of time
(``timeout``, 10 s by default) fails with
:class:`~p2pnet.chord.errors.ChordTimeoutError`, which is not a ``KeyError``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import attrs
from twisted.application import service
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python import threadable
from twisted.python.failure import Failure

from p2pnet.chord import record
from p2pnet.chord.errors import (
    ChordTimeoutError,
    CorruptRecordError,
    KeySetFullError,
    ReactorThreadError,
    RecordError,
    SocketClosedError,
)
from p2pnet.chord.keyset import Entry, KeySet, Outcome, chunk_entries, decode_entries
from p2pnet.dht.errors import LookupTimeoutError, ValueNotFoundError, ValueUnreachableError
from p2pnet.dht.limits import Limits, RefusalCounter
from p2pnet.dht.lookup import LookupStats
from p2pnet.ids import to_bytes
from p2pnet.mesh.interfaces import IMesh, MeshMessage
from p2pnet.models import MAX_VALUE_SIZE
from p2pnet.observer import EventEmitter

log = Logger()

T = TypeVar("T")

CHANNEL = b"chord"
#: Message kinds: a flooded notice of one write, and (part of) a set sent to one peer.
NOTICE = b"N"
SET = b"S"
#: "Send me your set": sent to the peers a socket finds already connected when it is
#: made (a peer connecting later triggers the exchange itself).
SET_REQUEST = b"Q"
#: Seconds before a peer's set request is answered again (a set can be large: a peer
#: must not make us send it in a loop); at most this many peers are remembered.
SET_REQUEST_INTERVAL = 10.0
SET_REQUEST_MEMORY = 1024
EVENTS = ("add", "delete")
#: Single-key operations a bulk call (update, values, items, copy, clear) runs at once.
BULK_PARALLELISM = 8
#: Seconds between two prunings of old tombstones from the key set.
PRUNE_EVERY = 60.0

_MISSING: Any = object()

KeyLike = bytes | bytearray | memoryview | str


@attrs.define
class ChordStats:
    """Operations, failures and hops by operation name (``'get'``, ``'set'``, ...).

    ``hops[op]`` sums the hops of the operations that made a lookup; ``lookups[op]``
    counts those (a read of a key this node holds may finish with no remote hop).
    """

    ops: Counter[str] = attrs.field(factory=Counter)
    failures: Counter[str] = attrs.field(factory=Counter)
    hops: Counter[str] = attrs.field(factory=Counter)
    lookups: Counter[str] = attrs.field(factory=Counter)
    max_hops: Counter[str] = attrs.field(factory=Counter)

    def record(self, op: str, stats: LookupStats, ok: bool) -> None:
        self.ops[op] += 1
        if not ok:
            self.failures[op] += 1
        if stats.lookups:
            self.lookups[op] += 1
            self.hops[op] += stats.hops
            self.max_hops[op] = max(self.max_hops[op], stats.hops)

    def mean_hops(self, op: str) -> float:
        """Mean hops of the ``op`` operations that made a lookup (0.0 when none)."""
        n = self.lookups[op]
        return self.hops[op] / n if n else 0.0


class ChordSocket(service.Service):
    """A ``dict`` of bytes to bytes shared by every node of a mesh; see the module doc.

    ``mesh`` provides :class:`~p2pnet.mesh.interfaces.IMesh` (a real
    :class:`~p2pnet.mesh.socket.MeshSocket`, or a
    :class:`~p2pnet.mesh.memory.MemoryMesh` in tests); ``dht`` is the node's
    :class:`~p2pnet.dht.network.DHTNetwork` (or a service holding one as ``.network``).
    ``reactor`` defaults to the DHT's clock.  ``limits`` (default: the DHT's) bounds the
    key set (``chord_max_keys``, ``chord_max_key_size``, ``chord_tombstone_ttl``).

    As a service it only matters at the end: :meth:`stopService` fails every operation
    still outstanding with :class:`~p2pnet.chord.errors.SocketClosedError`.
    """

    def __init__(self, mesh: IMesh, dht: Any, *, reactor: Any = None,
                 timeout: float = 10.0, limits: Limits | None = None) -> None:
        dht = getattr(dht, "network", dht)
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.mesh = mesh
        self.dht = dht
        self._reactor: Any = reactor if reactor is not None else dht.clock
        self.timeout = timeout
        self.limits: Limits = limits or dht.limits
        self.keyset = KeySet(self.limits.chord_max_keys, self.limits.chord_max_key_size,
                             self.limits.chord_tombstone_ttl,
                             self.limits.store_max_future_seconds)
        #: refusals and drops by kind: malformed messages, keys too large, key set full
        self.refused: RefusalCounter = self.keyset.refused
        self.stats = ChordStats()
        #: hops of the last operation that made a lookup (None before the first)
        self.last_hops: int | None = None
        #: notices and sets received, entries they taught this node, entries passed on
        self.counters: Counter[str] = Counter()
        self._events = EventEmitter(EVENTS)
        self._pending: set[defer.Deferred[Any]] = set()
        self._closed = False
        self._last_prune = self._reactor.seconds()
        self._answered: dict[bytes, float] = {}
        mesh.handle(CHANNEL, self._received)
        mesh.on("connect", self._connected)
        for peer in mesh.peers():  # peers that were there before us: ask for their sets
            self._request_set(peer)

    def __repr__(self) -> str:
        return f"<ChordSocket {len(self.keyset)} keys, {len(self._pending)} pending>"

    # -- events ------------------------------------------------------------------------------

    def on(self, event: str, callback: Callable[..., Any] | None = None) -> Any:
        """Register ``callback(sock, key)`` for ``'add'`` or ``'delete'`` (or decorate)."""
        return self._events.on(event, callback)

    def off(self, event: str, callback: Callable[..., Any]) -> None:
        self._events.off(event, callback)

    # -- lifecycle ---------------------------------------------------------------------------

    def startService(self) -> None:
        self._closed = False
        super().startService()

    def stopService(self) -> defer.Deferred[None]:
        """Fail every outstanding operation; later ones fail at once until restarted."""
        self._closed = True
        for d in list(self._pending):
            d.cancel()
        super().stopService()
        return defer.succeed(None)

    # -- running one operation ---------------------------------------------------------------

    def _run(self, op: str, make: Callable[[LookupStats], Coroutine[Any, Any, T]]
             ) -> defer.Deferred[T]:
        """Run one operation with its own deadline and hop count."""
        if self._closed:
            return defer.fail(SocketClosedError(f"{op}: the chord socket is stopped"))
        stats = LookupStats()
        d = defer.Deferred.fromCoroutine(make(stats))
        if d.called:  # finished at once (a local read, a bad argument)
            return d.addBoth(self._finish, op, stats, None, [])
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            d.cancel()

        timer = self._reactor.callLater(self.timeout, expire)
        self._pending.add(d)

        def untrack(result: Any) -> Any:
            self._pending.discard(d)
            return result

        return d.addBoth(untrack).addBoth(self._finish, op, stats, timer, expired)

    def _finish(self, result: Any, op: str, stats: LookupStats, timer: Any,
                expired: list[bool]) -> Any:
        if timer is not None and timer.active():
            timer.cancel()
        failed = isinstance(result, Failure)
        self.stats.record(op, stats, not failed)
        if stats.lookups:
            self.last_hops = stats.hops
        if not failed:
            return result
        if result.check(defer.CancelledError):
            if expired:
                return Failure(ChordTimeoutError(
                    f"{op} did not finish in {self.timeout:g}s"))
            if self._closed:
                return Failure(SocketClosedError(f"{op}: the chord socket was stopped"))
        if result.check(LookupTimeoutError):
            return Failure(ChordTimeoutError(f"{op}: {result.value}"))
        if result.check(ValueUnreachableError):
            return Failure(ChordTimeoutError(f"{op}: {result.value}", holders_silent=True))
        return result

    # -- the pieces every operation is made of -----------------------------------------------

    def _key(self, key: object) -> bytes:
        k = to_bytes(key)
        if len(k) > self.keyset.max_key_size:
            raise ValueError(f"key is {len(k)} bytes, over {self.keyset.max_key_size}")
        return k

    async def _fetch(self, k: bytes, stats: LookupStats) -> record.Record:
        """The newest record under ``k`` (a value or a tombstone); ``KeyError`` when the
        DHT has none.

        When this node's key set names a newer write than the DHT answered with (a
        holder that missed it, or equal timestamps that the DHT ordered another way),
        exactly that record is fetched by its index (its SHA-1), so a read agrees with
        the key set and with the notices this node has seen.
        """
        dkey = record.dht_key(k)
        try:
            raw = await self.dht.get(dkey, stats=stats)
        except ValueNotFoundError:
            raise KeyError(k) from None
        rec, entry = self._decode(k, raw)
        held = self.keyset.get(k)
        if held is not None and held.rank > entry.rank:
            try:
                raw = await self.dht.get_value(dkey, held.digest, stats=stats)
            except ValueNotFoundError:
                self.counters["newer_record_missing"] += 1
            else:
                self.counters["newer_record_fetched"] += 1
                rec, entry = self._decode(k, raw)
        # A read may find a write whose notice this node missed: take it (events fire).
        self._apply(entry)
        return rec

    def _decode(self, k: bytes, raw: bytes) -> tuple[record.Record, Entry]:
        try:
            rec = record.decode(raw)
        except RecordError as e:
            self.refused["corrupt_record"] += 1
            raise CorruptRecordError(f"the DHT's record for {k!r} is bad: {e}") from None
        if rec.key != k:
            self.refused["corrupt_record"] += 1
            raise CorruptRecordError(f"the DHT's record for {k!r} is for another key")
        return rec, Entry(k, rec.timestamp, record.digest(raw), rec.present)

    async def _value(self, k: bytes, stats: LookupStats) -> bytes:
        rec = await self._fetch(k, stats)
        if not rec.present:
            raise KeyError(k)
        return rec.value

    def _next_time(self, k: bytes, after: float | None = None) -> float:
        """A timestamp for a new write of ``k``: now, or just past any write known."""
        ts = self._reactor.seconds()
        held = self.keyset.get(k)
        for t in (held.timestamp if held is not None else None, after):
            if t is not None and ts <= t:
                ts = math.nextafter(t, math.inf)
        return ts

    async def _write(self, rec: record.Record, stats: LookupStats) -> None:
        """Publish ``rec``, then take it into the key set and flood its notice.

        A write that no other node took (while this node knows others) is not done: it
        would die with this node.  It fails with :class:`ChordTimeoutError` and sends no
        notice (the copy kept here may still be republished later, as for any timeout
        the outcome is unknown).
        """
        raw = record.encode(rec)
        took = await self.dht.put(record.dht_key(rec.key), raw, rec.timestamp, stats=stats)
        if not took and self.dht.routing_table.num_contacts:
            self.counters["not_stored"] += 1
            raise ChordTimeoutError(f"no other node stored the write of {rec.key!r} "
                                    f"(none answered in time, or all refused)")
        entry = Entry(rec.key, rec.timestamp, record.digest(raw), rec.present)
        if self._apply(entry).won:
            self._broadcast(entry)

    async def _set(self, k: bytes, v: bytes, stats: LookupStats) -> None:
        limit = record.max_value_size(k, MAX_VALUE_SIZE)
        if len(v) > limit:
            raise ValueError(f"value is {len(v)} bytes, over {limit} for this key")
        if self.keyset.check_new(k) is Outcome.REFUSED_FULL:
            raise KeySetFullError(f"the key set holds {self.keyset.size} entries, "
                                  f"its bound (chord_max_keys)")
        await self._write(record.Record.value_of(k, v, self._next_time(k)), stats)

    async def _delete(self, k: bytes, stats: LookupStats) -> bytes:
        """Tombstone ``k``; returns the value it had.  ``KeyError`` when absent."""
        rec = await self._fetch(k, stats)
        if not rec.present:
            raise KeyError(k)
        await self._write(record.Record.tombstone(k, self._next_time(k, rec.timestamp)),
                          stats)
        return rec.value

    # -- the Deferred API --------------------------------------------------------------------

    def d_get(self, key: KeyLike, default: Any = _MISSING) -> defer.Deferred[Any]:
        """The value of ``key``; fails with ``KeyError`` when absent, unless a
        ``default`` is given (then fires with it)."""
        async def get(stats: LookupStats) -> Any:
            k = self._key(key)
            try:
                return await self._value(k, stats)
            except KeyError:
                if default is _MISSING:
                    raise
                return default
        return self._run("get", get)

    def d_set(self, key: KeyLike, value: KeyLike) -> defer.Deferred[None]:
        """Store ``value`` under ``key``; fires when the DHT holds it."""
        async def set_(stats: LookupStats) -> None:
            await self._set(self._key(key), to_bytes(value, "value"), stats)
        return self._run("set", set_)

    def d_delete(self, key: KeyLike) -> defer.Deferred[None]:
        """Delete ``key`` (a tombstone); fails with ``KeyError`` when absent."""
        async def delete(stats: LookupStats) -> None:
            await self._delete(self._key(key), stats)
        return self._run("delete", delete)

    def d_pop(self, key: KeyLike, default: Any = _MISSING) -> defer.Deferred[Any]:
        """Delete ``key`` and fire with its value (or ``default``; else ``KeyError``)."""
        async def pop(stats: LookupStats) -> Any:
            k = self._key(key)
            try:
                return await self._delete(k, stats)
            except KeyError:
                if default is _MISSING:
                    raise
                return default
        return self._run("pop", pop)

    def d_setdefault(self, key: KeyLike, default: KeyLike | None = None
                     ) -> defer.Deferred[bytes]:
        """The value of ``key``; when absent, store ``default`` and fire with it
        (``TypeError`` when it is None: values are bytes)."""
        async def setdefault(stats: LookupStats) -> bytes:
            k = self._key(key)
            try:
                return await self._value(k, stats)
            except KeyError:
                if default is None:
                    raise TypeError("setdefault of an absent key needs a bytes default"
                                    ) from None
                v = to_bytes(default, "value")
                await self._set(k, v, stats)
                return v
        return self._run("setdefault", setdefault)

    def d_popitem(self) -> defer.Deferred[tuple[bytes, bytes]]:
        """Delete some key (the last added that is still there) and fire with
        ``(key, value)``; ``KeyError`` when the set is empty."""
        async def popitem(stats: LookupStats) -> tuple[bytes, bytes]:
            for k in reversed(self.keyset.keys()):
                try:
                    return (k, await self._delete(k, stats))
                except KeyError:
                    continue  # gone meanwhile: try the next one
            raise KeyError("popitem(): dictionary is empty")
        return self._run("popitem", popitem)

    def d_contains(self, key: KeyLike) -> defer.Deferred[bool]:
        """Whether ``key`` is in the key set (no lookup)."""
        return defer.maybeDeferred(self.__contains__, key)

    def d_len(self) -> defer.Deferred[int]:
        return defer.succeed(len(self.keyset))

    def d_keys(self) -> defer.Deferred[list[bytes]]:
        """The keys of the key set (no lookup), oldest first."""
        return defer.succeed(self.keyset.keys())

    def d_update(self, other: Mapping[Any, Any] | Iterable[tuple[Any, Any]] = (),
                 **kwargs: Any) -> defer.Deferred[None]:
        """Set every pair of ``other`` and ``kwargs`` (``BULK_PARALLELISM`` at a time);
        fails with the first error after all writes ended.  A key given twice (``"k"``
        and ``b"k"`` are one key) gets its last value, as with ``dict.update``."""
        try:
            pairs = list(other.items() if isinstance(other, Mapping) else other)
            pairs += list(kwargs.items())
            latest: dict[bytes, Any] = {}
            for pair in pairs:
                if len(pair) != 2:
                    raise ValueError("update needs (key, value) pairs")
                latest[to_bytes(pair[0])] = pair[1]  # the writes run in parallel
        except (TypeError, ValueError) as e:
            return defer.fail(e)
        d = self._bulk([(self.d_set, (k, v)) for k, v in latest.items()])
        return d.addCallback(lambda _: None)

    def d_values(self) -> defer.Deferred[list[bytes]]:
        """The value of every key in the key set; ``KeyError`` for a key whose holders
        are gone (or that was deleted meanwhile)."""
        return self._bulk([(self._d_listed_value, (k,)) for k in self.keyset.keys()])

    def d_items(self) -> defer.Deferred[list[tuple[bytes, bytes]]]:
        """``(key, value)`` for every key in the key set; ``KeyError`` as
        :meth:`d_values`."""
        keys = self.keyset.keys()
        d = self._bulk([(self._d_listed_value, (k,)) for k in keys])
        return d.addCallback(lambda values: list(zip(keys, values, strict=True)))

    def _d_listed_value(self, key: bytes) -> defer.Deferred[bytes]:
        """The value of a listed key: as :meth:`d_get`, except that a key whose holders
        are gone is ``KeyError`` (py2p's documented ``values()``/``items()`` rule)."""
        def gone(failure: Failure) -> Failure:
            err = failure.value
            if isinstance(err, ChordTimeoutError) and err.holders_silent:
                return Failure(KeyError(key))
            return failure
        return self.d_get(key).addErrback(gone)

    def d_copy(self) -> defer.Deferred[dict[bytes, bytes]]:
        """A plain ``dict`` of every item (``KeyError`` as :meth:`d_values`)."""
        return self.d_items().addCallback(dict)

    def d_clear(self) -> defer.Deferred[None]:
        """Delete every key of the key set (a key already gone is skipped)."""
        def one(k: bytes) -> defer.Deferred[None]:
            return self.d_delete(k).addErrback(lambda f: f.trap(KeyError) and None)
        return self._bulk([(one, (k,)) for k in self.keyset.keys()]).addCallback(
            lambda _: None)

    def _bulk(self, calls: list[tuple[Callable[..., defer.Deferred[Any]], tuple[Any, ...]]]
              ) -> defer.Deferred[list[Any]]:
        sem = defer.DeferredSemaphore(BULK_PARALLELISM)
        ds = [sem.run(f, *args) for f, args in calls]
        d = defer.gatherResults(ds, consumeErrors=True)
        return d.addErrback(lambda f: f.value.subFailure)  # the first error, unwrapped

    # -- the blocking dict API (threads other than the reactor's) ---------------------------

    def _blocking(self, name: str, f: Callable[..., defer.Deferred[Any]], *args: Any
                  ) -> Any:
        if not hasattr(self._reactor, "callFromThread"):
            raise ReactorThreadError(
                f"{name} blocks, and this socket's reactor runs no threads; "
                f"use d_{name}() and its Deferred")
        if threadable.isInIOThread():
            raise ReactorThreadError(
                f"{name} would block the reactor thread (a deadlock); "
                f"on the reactor thread use d_{name}() and its Deferred")
        if not getattr(self._reactor, "running", False):
            raise ReactorThreadError(f"{name} needs the reactor running in another thread")
        return threads.blockingCallFromThread(self._reactor, f, *args)

    def _local(self, f: Callable[[], T]) -> T:
        """A local read: direct on the reactor thread, else a snapshot taken there."""
        if (not hasattr(self._reactor, "callFromThread") or threadable.isInIOThread()
                or not getattr(self._reactor, "running", False)):
            return f()
        result: T = threads.blockingCallFromThread(self._reactor, f)
        return result

    def __getitem__(self, key: KeyLike) -> bytes:
        result: bytes = self._blocking("get", self.d_get, key)
        return result

    def get(self, key: KeyLike, default: Any = None) -> Any:
        return self._blocking("get", self.d_get, key, default)

    def __setitem__(self, key: KeyLike, value: KeyLike) -> None:
        self._blocking("set", self.d_set, key, value)

    def set(self, key: KeyLike, value: KeyLike) -> None:
        self._blocking("set", self.d_set, key, value)

    def __delitem__(self, key: KeyLike) -> None:
        self._blocking("delete", self.d_delete, key)

    def pop(self, key: KeyLike, default: Any = _MISSING) -> Any:
        return self._blocking("pop", self.d_pop, key, default)

    def popitem(self) -> tuple[bytes, bytes]:
        return self._blocking("popitem", self.d_popitem)

    def setdefault(self, key: KeyLike, default: KeyLike | None = None) -> bytes:
        return self._blocking("setdefault", self.d_setdefault, key, default)

    def update(self, other: Mapping[Any, Any] | Iterable[tuple[Any, Any]] = (),
               **kwargs: Any) -> None:
        self._blocking("update", lambda: self.d_update(other, **kwargs))

    def values(self) -> Iterator[bytes]:
        return iter(self._blocking("values", self.d_values))

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._blocking("items", self.d_items))

    def copy(self) -> dict[bytes, bytes]:
        return self._blocking("copy", self.d_copy)

    def clear(self) -> None:
        self._blocking("clear", self.d_clear)

    def keys(self) -> Iterator[bytes]:
        return iter(self._local(self.keyset.keys))

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()

    def __len__(self) -> int:
        return self._local(self.keyset.__len__)

    def __contains__(self, key: object) -> bool:
        try:
            k = to_bytes(key)
        except TypeError:
            return False
        return self._local(lambda: k in self.keyset)

    # -- notices over the mesh ---------------------------------------------------------------

    def _apply(self, entry: Entry) -> Outcome:
        now = self._reactor.seconds()
        if now - self._last_prune >= PRUNE_EVERY:
            self._last_prune = now
            self.keyset.prune(now)
        outcome = self.keyset.apply(entry, now)
        if outcome is Outcome.ADDED:
            self._events.emit("add", self, entry.key)
        elif outcome is Outcome.DELETED:
            self._events.emit("delete", self, entry.key)
        return outcome

    def _broadcast(self, entry: Entry) -> None:
        # The write is stored: a notice that cannot go out (mesh stopped) does not undo
        # it; peers learn it from the set exchange when they connect again.
        try:
            for chunk in chunk_entries([entry]):
                self.mesh.broadcast(NOTICE, chunk, channel=CHANNEL)
        except Exception as e:
            self.counters["notice_not_sent"] += 1
            log.warn("chord notice for {key!r} not sent: {e}", key=entry.key, e=e)

    def _send_set(self, peer: bytes, chunks: Iterable[bytes] | None = None) -> None:
        """Send ``chunks`` (encoded entries; default: our whole key set) to ``peer``."""
        if chunks is None:
            chunks = chunk_entries(self.keyset.entries())
        try:
            for chunk in chunks:
                self.mesh.send(peer, SET, chunk, channel=CHANNEL)
        except KeyError:
            pass  # gone meanwhile: it gets the set when it connects again
        except Exception as e:
            self.counters["set_not_sent"] += 1
            log.warn("chord set for {peer!r} not sent: {e}", peer=peer, e=e)

    def _request_set(self, peer: bytes) -> None:
        try:
            self.mesh.send(peer, SET_REQUEST, b"", channel=CHANNEL)
        except KeyError:
            pass
        except Exception as e:
            log.warn("chord set request to {peer!r} not sent: {e}", peer=peer, e=e)

    def _connected(self, mesh: Any, peer: bytes) -> None:
        self._send_set(peer)

    def _set_requested(self, peer: bytes) -> None:
        now = self._reactor.seconds()
        last = self._answered.get(peer)
        if last is not None and now - last < SET_REQUEST_INTERVAL:
            self.refused["set_request_too_soon"] += 1
            return
        if len(self._answered) >= SET_REQUEST_MEMORY:
            horizon = now - SET_REQUEST_INTERVAL
            self._answered = {p: t for p, t in self._answered.items() if t >= horizon}
            if len(self._answered) >= SET_REQUEST_MEMORY:
                self.refused["set_request_too_many"] += 1
                return
        self._answered[peer] = now
        self.counters["set_requests"] += 1
        self._send_set(peer)

    def _received(self, msg: MeshMessage) -> None:
        if msg.parts == (SET_REQUEST, b"") and not msg.broadcast:
            self._set_requested(msg.via)
            return
        if len(msg.parts) != 2 or msg.parts[0] not in (NOTICE, SET):
            self.refused["malformed"] += 1
            return
        try:
            entries = decode_entries(msg.parts[1])
        except RecordError as e:
            log.debug("malformed chord message from {peer}: {e}", peer=msg.via, e=e)
            self.refused["malformed"] += 1
            return
        kind = "notices" if msg.parts[0] == NOTICE else "sets"
        self.counters[kind] += 1
        learned = [e for e in entries if self._apply(e).won]
        self.counters["learned"] += len(learned)
        if msg.parts[0] == SET and learned:
            # A set taught us something the rest of our side may not know: pass on what
            # changed (only that, so it stops where it is no longer news), encoded once.
            chunks: list[bytes] | None = None
            for peer in self.mesh.peers():
                if peer != msg.via and peer != msg.origin:
                    if chunks is None:
                        chunks = list(chunk_entries(learned))
                    self.counters["passed_on"] += len(learned)
                    self._send_set(peer, chunks)
