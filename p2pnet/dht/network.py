# -*- test-case-name: tests.test_dht_network -*-
"""The DHT node: routing, the five RPCs, iterative lookups, publishing a value.

:class:`DHTNetwork` has bytestag's surface, with Deferreds.  It is transport-free: its
:attr:`~DHTNetwork.protocol` is a ``DatagramProtocol`` to be bound with
``reactor.listenUDP`` (see :mod:`p2pnet.dht.service`) or attached to an in-memory
network (:mod:`p2pnet.sim.memory`).  Every timer runs on the injected clock.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from p2pnet import ids
from p2pnet.dht import codec, rpcs
from p2pnet.dht.contacts import ContactBook
from p2pnet.dht.errors import (
    DHTError,
    LookupTimeoutError,
    RemoteError,
    RPCTimeoutError,
    ValueNotFoundError,
    ValueUnreachableError,
    VerificationError,
)
from p2pnet.dht.limits import Limits, RefusalCounter
from p2pnet.dht.lookup import Lookup, LookupStats, Until
from p2pnet.dht.protocol import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    Address,
    DHTProtocol,
    IRequestHandler,
    RequestRefused,
    ip_family,
)
from p2pnet.dht.routing import RoutingTable
from p2pnet.dht.shortlist import NETWORK_PARALLELISM, K, Shortlist
from p2pnet.dht.table import IKVPTable, KVPRecord, MemoryKVPTable
from p2pnet.models import MAX_VALUE_SIZE, Node, NodeList

log = Logger()

NETWORK_ID = b"p2pnet"
TIME_EXPIRE = 86490.0
TIME_REFRESH = 3600.0
TIME_REPLICATE = 3600.0
TIME_REPUBLISH = 86400.0
#: Values up to this size travel inside the store request; larger ones are pulled.
INLINE_MAX = 1024
#: the largest ``inline_max``: a findval answer with 64 announcements and the value fits
#: one datagram
MAX_INLINE = 32 * 1024
#: Bytes per getval chunk, and chunks in flight while fetching a large value.
CHUNK_SIZE = 16 * 1024
WINDOW = 8
#: A contact that failed this many requests in a row leaves the routing table (the
#: default of ``Limits.routing_stale_after``; set it there).
STALE_AFTER = 3
#: A full bucket's least recently seen contact is pinged before a newcomer may replace
#: it -- unless it was heard from this recently: then it is alive and the newcomer waits
#: (the default of ``Limits.routing_evict_ping_after``; set it there).
EVICT_PING_AFTER = 60.0


#: A get whose this many closest nodes (alive or not) all failed says "unreachable",
#: not "not found": those are where a put stores the value.
UNREACHABLE_QUORUM = 3


def _as_key(key: bytes | str) -> bytes:
    """A 160-bit key; a ``str`` names a key by the SHA-1 of its UTF-8 form."""
    if isinstance(key, str):
        return ids.key_for(key.encode("utf-8"))
    return ids.check_key(key)


@implementer(IRequestHandler)
class DHTNetwork:
    """A Kademlia node (k = 20, alpha = 3) speaking the p2pnet DHT protocol."""

    MAX_VALUE_SIZE = MAX_VALUE_SIZE
    NETWORK_PARALLELISM = NETWORK_PARALLELISM
    TIME_EXPIRE = TIME_EXPIRE
    TIME_REFRESH = TIME_REFRESH
    TIME_REPLICATE = TIME_REPLICATE
    TIME_REPUBLISH = TIME_REPUBLISH

    def __init__(
        self,
        reactor: IReactorTime,
        kvp_table: IKVPTable | None = None,
        node_id: bytes | None = None,
        network_id: bytes = NETWORK_ID,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        k: int = K,
        alpha: int = NETWORK_PARALLELISM,
        chunk_size: int = CHUNK_SIZE,
        window: int = WINDOW,
        inline_max: int = INLINE_MAX,
        randbytes: Callable[[int], bytes] | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.clock = reactor
        self.limits = limits or Limits()
        self.refused = RefusalCounter()
        self._randbytes = randbytes or os.urandom
        self._key = ids.check_key(node_id) if node_id is not None else ids.random_key(
            self._randbytes)
        if not 1 <= len(network_id) <= codec.MAX_NETWORK_ID:
            raise ValueError("network id must be 1..32 bytes")
        self.kvp_table: IKVPTable = kvp_table if kvp_table is not None else MemoryKVPTable()
        self.k = k
        self.alpha = alpha
        self.chunk_size = min(chunk_size, rpcs.MAX_CHUNK)
        self.window = window
        if not 0 <= inline_max <= MAX_INLINE:
            # a findval answer carries up to 64 announcements and the inline value: it
            # must fit one datagram
            raise ValueError(f"inline_max must be 0..{MAX_INLINE} bytes")
        self.inline_max = inline_max
        lim = self.limits
        self._routing_table = RoutingTable(
            self._key, reactor.seconds, k, one_per_address=lim.routing_one_per_address,
            max_per_prefix=lim.routing_max_per_prefix or None,
            replacements=lim.routing_replacements,
            replacement_max_age=lim.routing_replacement_max_age)
        self.protocol = DHTProtocol(self._key, network_id, self, reactor, timeout, retries,
                                    tid_source=randbytes)
        self.ping = rpcs.Ping(self)
        self.find_node = rpcs.FindNode(self)
        self.find_value = rpcs.FindValue(self)
        self.store = rpcs.Store(self)
        self.get_value_rpc = rpcs.GetValue(self)
        self._rpcs: dict[codec.RPC, rpcs.RPCCommand] = {
            r.rpc: r for r in (self.ping, self.find_node, self.find_value, self.store,
                               self.get_value_rpc)}
        self._offers: dict[tuple[bytes, bytes], tuple[bytes, int]] = {}
        self.contacts = ContactBook(self, self._routing_table, reactor, self.limits,
                                    self.refused)
        # IRequestHandler's contact calls (nearly every datagram makes one) go straight
        # to the contact book's methods, a Python call fewer than forwarding methods:
        #: a request arrived: a known contact moves up; a stranger is pinged back
        self.contact_seen: Callable[[bytes, Address], None] = self.contacts.contact_seen
        #: a node answered our request: it may enter the routing table
        self.contact_answered: Callable[[bytes, Address], None] = (
            self.contacts.contact_answered)
        #: the :class:`Node` for an id and address (the contact's own when known)
        self.node_for: Callable[[bytes, Address], Node] = self.contacts.node_for
        self.stats_stored = 0
        self.stats_refused = 0
        self.lookups = 0
        self.lookup_contacts = 0

    # -- properties ----------------------------------------------------------------

    @property
    def key(self) -> bytes:
        """This node's id."""
        return self._key

    @property
    def address(self) -> Address:
        """The (host, port) the protocol is bound to."""
        host = self.protocol.transport.getHost()  # type: ignore[union-attr]
        return (host.host, host.port)

    @property
    def node(self) -> Node:
        return Node(self._key, *self.address)

    @property
    def routing_table(self) -> RoutingTable:
        return self._routing_table

    # -- contacts --------------------------------------------------------------------

    def _failed(self, node: Node, failure: Failure) -> Failure:
        """Count a failed request to ``node`` (timeouts and bad answers only)."""
        return self.contacts.failed(node, failure)

    def close_nodes_for(self, key: bytes, requester: bytes | None = None) -> list[Node]:
        """The k closest contacts to ``key``, leaving out the node that asks."""
        nodes = self._routing_table.get_close_nodes(key, self.k + 1)
        return [n for n in nodes if n.key != requester][: self.k]

    def expiry_for(self, key: bytes, now: float) -> float:
        """When a copy stored here expires: sooner the more nodes lie between us and it."""
        c = self._routing_table.count_close(key)
        return now + self.TIME_EXPIRE / math.exp(c / self.k)

    # -- requests from the protocol ------------------------------------------------------

    def handle_request(self, message: codec.Message, address: Address) -> Any:
        rpc = self._rpcs.get(message.rpc)
        if rpc is None:
            raise RequestRefused(codec.ErrorCode.BAD_REQUEST, "unknown rpc")
        return rpc.answer(message.body, message.sender, address)

    def getval_size(self, body: codec.GetValueRequest) -> int | None:
        """Bytes of data the answer to a getval would carry (see ``IRequestHandler``)."""
        return self.get_value_rpc.size_of(body)

    # -- values being offered to other nodes (served by getval) --------------------------

    def offer(self, key: bytes, index: bytes, value: bytes) -> None:
        held = self._offers.get((key, index))
        self._offers[(key, index)] = (value, (held[1] if held else 0) + 1)

    def withdraw(self, key: bytes, index: bytes) -> None:
        held = self._offers.get((key, index))
        if held is None:
            return
        if held[1] <= 1:
            del self._offers[(key, index)]
        else:
            self._offers[(key, index)] = (held[0], held[1] - 1)

    def offered(self, key: bytes, index: bytes) -> bytes | None:
        held = self._offers.get((key, index))
        return held[0] if held else None

    # -- single-node operations (bytestag's surface) -------------------------------------

    def _resolve(self, address: Address) -> defer.Deferred[Address]:
        host, port = address
        if ip_family(host):
            return defer.succeed((host, int(port)))
        resolve = getattr(self.clock, "resolve", None)
        if resolve is None:
            return defer.fail(ValueError(f"cannot resolve {host!r} without a reactor"))
        d: defer.Deferred[str] = resolve(host)
        return d.addCallback(lambda ip: (ip, int(port)))

    def ping_address(self, address: Address) -> defer.Deferred[tuple[float, Node] | bool]:
        """Ping an address: fires with ``(round trip seconds, Node)``, or False."""
        host, port = address
        if ip_family(host):  # cached: Twisted's checks cost a ping's 3%
            # a failure goes to _false inside the protocol: one Deferred step fewer
            if type(address) is not tuple or type(port) is not int:
                address = (host, int(port))  # answers are matched on (str, int)
            return self.ping.call(address, _false)
        d = self._resolve(address).addCallback(self.ping.call)
        return d.addErrback(_false)

    def ping_node(self, node: Node) -> defer.Deferred[tuple[float, Node] | bool]:
        return self.ping.call(node.address, functools.partial(self._failed_false, node=node))

    def _failed_false(self, failure: Failure, node: Node) -> bool:
        self._failed(node, failure)
        return False

    def find_nodes_from_node(self, node: Node, key: bytes) -> defer.Deferred[NodeList | None]:
        """Ask ``node`` for the nodes closest to ``key``; None when it does not answer."""
        d: defer.Deferred[Any] = self.find_node.call(
            node, key, functools.partial(self._failed_none, node=node))
        return d  # (a NodeList, or None from otherwise)

    def _failed_none(self, failure: Failure, node: Node) -> None:
        self._failed(node, failure)
        return None

    def find_value_from_node(self, node: Node, key: bytes, index: bytes | None = None
                             ) -> defer.Deferred[rpcs.FindValueFromNodeResult | None]:
        d: defer.Deferred[Any] = self.find_value.call(
            node, key, index, functools.partial(self._failed_none, node=node))
        return d

    def get_value_from_node(self, node: Node, key: bytes, index: bytes,
                            offset: int = 0, size: int | None = None) -> defer.Deferred[bytes]:
        """Download a value (from ``offset``) from ``node``; fails on any error, and with
        :class:`VerificationError` when a whole value (offset 0) does not hash to
        ``index`` or is not ``size`` bytes."""
        d = self.get_value_rpc.fetch(node.address, key, index, size, offset)
        if offset == 0:
            d.addCallback(_verified, index, size)
        return d

    def store_to_node(self, node: Node, key: bytes, index: bytes, bytes_: bytes,
                      timestamp: float, *, age: float = 0.0) -> defer.Deferred[bool]:
        """Offer a value to ``node``: True when the node holds it afterwards.

        ``age``: seconds since the value's publisher last published it; 0 (a publish)
        renews the node's copy, a replication passes the copy's age so it does not.
        """
        if len(bytes_) > self.MAX_VALUE_SIZE or not math.isfinite(timestamp) or timestamp < 0:
            return defer.fail(ValueError("value over the size limit or bad timestamp"))
        return self.store.taken(node, key, index, bytes_, timestamp, age,
                                functools.partial(self._failed_false, node=node))

    # -- lookups (p2pnet.dht.lookup) -------------------------------------------------

    def find_node_shortlist(self, key: bytes, *, until: Until = Until.CLOSEST,
                            stats: LookupStats | None = None) -> defer.Deferred[Shortlist]:
        """Iterative findnode: the shortlist once the k closest nodes have answered
        (``until=Until.QUORUM``: once the closest few have)."""
        return Lookup(self, ids.check_key(key), until=until, stats=stats).run()

    def find_value_shortlist(self, key: bytes, index: bytes | None = None, *,
                             until: Until = Until.CLOSEST,
                             stats: LookupStats | None = None) -> defer.Deferred[Shortlist]:
        """Iterative findval: also tallies what the holders of the key announced."""
        return Lookup(self, ids.check_key(key), find_value=True,
                      index=None if index is None else ids.check_key(index, "index"),
                      until=until, stats=stats).run()

    # -- publishing and fetching values --------------------------------------------------

    def store_value(self, key: bytes, index: bytes, *, stats: LookupStats | None = None
                    ) -> defer.Deferred[int]:
        """Store a held value to the k closest nodes; fires with how many hold it.

        The lookup ends once the closest few nodes answered (``Until.QUORUM``): their
        answers name the key's neighbourhood, so the k closest nodes that did not fail are
        then known (19.9 of the true 20 on average in ``bench/compare.py`` runs at 200 and
        1,000 nodes) without asking each of them for nodes too.  The stores go to those k
        at once; the store's answer is the proof that a node is alive, and a node that does
        not take the value is replaced by the next closest, up to k times.  When stores
        fail with no closer candidate left (silent or made-up nodes that others named and
        nobody asked), the full lookup follows and the value goes to the k closest nodes
        that answered it.

        An original is (re)published: its copies are renewed.  Another copy is
        replicated: the store carries its age, so it expires TIME_EXPIRE after its
        publisher last published it.  ``last_update`` is set only when a node took it.
        """
        return defer.Deferred.fromCoroutine(self._store_value(key, index, stats))

    async def _store_value(self, key: bytes, index: bytes,
                           stats: LookupStats | None = None) -> int:
        record = self.kvp_table.get_record(key, index)
        if record is None:
            raise KeyError((key, index))
        value: bytes = await self.kvp_table.read(key, index)
        shortlist = await self.find_node_shortlist(key, until=Until.QUORUM, stats=stats)
        now = self.clock.seconds()
        published = record.published if record.published is not None else record.last_update
        age = 0.0 if record.is_original else max(0.0, now - published)
        tried: dict[Node, bool] = {}
        took, missing = await self._store_to_closest(
            shortlist.alive(2 * self.k), key, index, value, record.timestamp, age, tried)
        if missing:
            # Stores failed with no candidate left to stand in: nodes named by others but
            # never asked may be silent or made up.  The lookup goes on to the full rule
            # (the k closest that did not fail have answered), knowing which nodes took
            # the value and which failed, and the value goes to the closest that answered
            # and were not tried.
            for node, ok in tried.items():
                shortlist.mark_node(node, active=ok)
            shortlist = await Lookup(self, key, stats=stats, shortlist=shortlist).run()
            rest = [n for n in shortlist.closest(self.k) if n not in tried][:missing]
            more, _ = await self._store_to_closest(rest, key, index, value,
                                                   record.timestamp, age, tried)
            took += more
        current = self.kvp_table.get_record(key, index)
        if took and current is not None and current.timestamp == record.timestamp:
            await self.kvp_table.update_record(attrs.evolve(
                current, last_update=self.clock.seconds(),
                published=now if current.is_original else current.published))
        return took

    def _store_to_closest(self, candidates: list[Node], key: bytes, index: bytes,
                          value: bytes, timestamp: float, age: float, tried: dict[Node, bool]
                          ) -> defer.Deferred[tuple[int, int]]:
        """Store to the first k of ``candidates`` at once, each one that does not take it
        replaced by the next candidate; ``tried`` gets each node tried and whether it took
        the value.  Fires with ``(took, missing)``: how many took it, and how many failed
        with no candidate left to replace them."""
        targets = candidates[: self.k]
        spares = candidates[self.k:][::-1]  # popped from the end: closest first
        if not targets:
            return defer.succeed((0, 0))
        done: defer.Deferred[tuple[int, int]] = defer.Deferred()
        state = [len(targets), 0, 0]  # stores out, stores taken, failures not replaced

        def one(node: Node) -> None:
            tried[node] = False
            d = defer.maybeDeferred(self.store_to_node, node, key, index, value, timestamp,
                                    age=age)
            d.addCallbacks(finished, ours, callbackArgs=(node,))

        def finished(ok: bool, node: Node) -> None:
            tried[node] = bool(ok)
            if done.called:
                return
            if ok:
                state[1] += 1
            elif spares:
                one(spares.pop())  # one store ended, another started: as many out
                return
            else:
                state[2] += 1
            state[0] -= 1
            if state[0] == 0:
                done.callback((state[1], state[2]))

        def ours(failure: Failure) -> None:  # not the node's fault: no spare for it
            if not done.called:
                done.errback(failure)

        for node in targets:
            one(node)
        return done

    def get_value(self, key: bytes, index: bytes | None = None, *,
                  stats: LookupStats | None = None) -> defer.Deferred[bytes]:
        """Find and fetch the value at ``(key, index)`` (the newest one when no index).

        The value is checked against its index (SHA-1) and announced size, then cached
        at the closest node of the lookup that lacked it.  When a holder cannot deliver
        (silent, or its bytes do not match), the other holders are tried, then the other
        announcements newest first, then this node's own copy.  Fails with
        :class:`ValueNotFoundError` (a ``KeyError``) when the closest nodes answered and
        none could deliver, with :class:`~p2pnet.dht.errors.ValueUnreachableError` when a
        holder announced it and then went silent, or the closest nodes all failed, and with
        :class:`~p2pnet.dht.errors.LookupTimeoutError` when the lookup ran past its time
        without finding a holder (and this node has no copy).
        """
        return defer.Deferred.fromCoroutine(self._get_value(key, index, stats))

    async def _get_value(self, key: bytes, index: bytes | None,
                         stats: LookupStats | None = None) -> bytes:
        ids.check_key(key)
        local = self._newest_local(key, index)
        if index is not None and local is not None:
            # content-addressed: a copy held here is the value
            return await self.kvp_table.read(local.key, local.index)
        # With an index any holder's copy is the value (it is checked against the index):
        # the lookup may stop at the first holder.  Without one, once the closest nodes
        # answered and one of them holds the key.  A full lookup only if that fails.
        until = Until.FIRST_HOLDER if index is not None else Until.HOLDERS
        silent: set[Node] = set()  # holders whose fetch timed out
        try:
            shortlist = await self.find_value_shortlist(key, index, until=until, stats=stats)
            value = await self._fetch_from(shortlist, key, index, local, silent)
            if value is None and not shortlist.is_finished():
                shortlist = await self.find_value_shortlist(key, index, stats=stats)
                value = await self._fetch_from(shortlist, key, index, local, silent)
        except LookupTimeoutError:
            if local is None:
                raise
            value = None
        if value is None and local is not None:
            value = await self.kvp_table.read(local.key, local.index)
        if value is None:
            if silent or shortlist.closest_failed(UNREACHABLE_QUORUM):
                raise ValueUnreachableError(
                    f"the nodes holding key {key.hex()} did not answer")
            raise ValueNotFoundError(f"no reachable node holds key {key.hex()}")
        return value

    async def _fetch_from(self, shortlist: Shortlist, key: bytes, index: bytes | None,
                          local: KVPRecord | None, silent: set[Node]) -> bytes | None:
        """The newest value that can be had: announcements newest first (this node's own
        copy in its place by timestamp), each from its holders closest first.  A value
        fetched is verified (size and SHA-1) and cached at the closest node that lacked
        it.  None when nothing could be had.

        A holder that failed once is not asked again (one that timed out is added to
        ``silent``), except one that answered "busy" (``ErrorCode.BUSY``): it is asked
        once more after ``limits.fetch_busy_retry_seconds``.  At most
        ``limits.lookup_max_rounds`` fetches are tried (counted as ``get_fetches``).
        """
        failed: set[Node] = set()
        busy: set[Node] = set()  # holders that answered busy once already
        budget = self.limits.lookup_max_rounds
        for info in shortlist.announcements(index):
            if local is not None and local.timestamp >= info.timestamp:
                return await self.kvp_table.read(local.key, local.index)
            value = shortlist.inline_value(info)  # verified: no fetch needed
            if value is not None:
                self._cache_at(shortlist, key, info, value)
                return value
            for node in shortlist.holders(info.index, info.size, info.timestamp):
                if node in failed:
                    continue
                if budget <= 0:
                    self.refused["get_fetches"] += 1
                    return None
                budget -= 1
                try:
                    try:
                        value = await self.get_value_from_node(node, key, info.index,
                                                               size=info.size)
                    except RemoteError as e:
                        if e.code != codec.ErrorCode.BUSY or node in busy:
                            raise
                        busy.add(node)
                        await task.deferLater(self.clock,
                                              self.limits.fetch_busy_retry_seconds,
                                              lambda: None)
                        value = await self.get_value_from_node(node, key, info.index,
                                                               size=info.size)
                except (DHTError, ValueError) as e:
                    log.debug("fetch from {node} failed: {e}", node=node, e=e)
                    failed.add(node)
                    if isinstance(e, RPCTimeoutError):
                        silent.add(node)
                    continue
                if len(value) != info.size or ids.key_for(value) != info.index:
                    log.warn("{node} sent a value that does not match its announcement",
                             node=node)
                    failed.add(node)
                    continue
                self._cache_at(shortlist, key, info, value)
                return value
        return None

    def _newest_local(self, key: bytes, index: bytes | None) -> KVPRecord | None:
        now = self.clock.seconds()
        held = [r for r in self.kvp_table.records_for_key(key)
                if not r.is_expired(now) and (index is None or r.index == index)]
        return max(held, key=lambda r: r.timestamp) if held else None

    def _cache_at(self, shortlist: Shortlist, key: bytes, info: codec.ValueInfo,
                  value: bytes) -> None:
        holders = set(shortlist.holders(info.index, info.size, info.timestamp))
        for node in shortlist.sorted_nodes:
            if node not in holders:
                d = self.store_to_node(node, key, info.index, value, info.timestamp)
                d.addErrback(lambda f: None)
                return

    def get_value_at(self, key: bytes, index: bytes) -> defer.Deferred[bytes]:
        """Alias of :meth:`get_value` with a required index."""
        return self.get_value(key, index)

    # -- the application layer: put / get -------------------------------------------

    def put(self, key: bytes | str, value: bytes, timestamp: float | None = None, *,
            stats: LookupStats | None = None) -> defer.Deferred[int]:
        """Publish ``value`` under ``key`` from this node; fires with the replica count.

        ``key`` is a 160-bit key, or a ``str`` naming one (SHA-1 of its UTF-8 form).  The
        value's index is its SHA-1; this node keeps it as an original and republishes it.
        Older values this node published under the same key are dropped here.
        """
        return defer.Deferred.fromCoroutine(self._put(_as_key(key), value, timestamp, stats))

    async def _put(self, key: bytes, value: bytes, timestamp: float | None,
                   stats: LookupStats | None = None) -> int:
        if not isinstance(value, bytes):
            raise TypeError("value must be bytes")
        if len(value) > MAX_VALUE_SIZE:
            raise ValueError(f"value is over {MAX_VALUE_SIZE} bytes")
        index = ids.key_for(value)
        ts = self.clock.seconds() if timestamp is None else float(timestamp)
        for old in self.kvp_table.records_for_key(key):
            if old.is_original and old.index != index:
                await self.kvp_table.delete(old.key, old.index)
        await self.kvp_table.put(KVPRecord(key, index, len(value), ts, is_original=True), value)
        return await self.store_value(key, index, stats=stats)

    def get(self, key: bytes | str, *, stats: LookupStats | None = None
            ) -> defer.Deferred[bytes]:
        """The newest value published under ``key`` (see :meth:`put`)."""
        return self.get_value(_as_key(key), None, stats=stats)

    # -- joining -------------------------------------------------------------------------

    def join_network(self, address: Address, *, refresh: bool = True
                     ) -> defer.Deferred[bool]:
        """Join through a known node: ping it, look ourselves up, refresh far buckets
        (unless ``refresh`` is false: :class:`~p2pnet.dht.service.Joiner` spreads that
        part out in time).

        Fires True when the node answered and the routing table is not empty.
        """
        return defer.Deferred.fromCoroutine(self._join(address, refresh))

    async def _join(self, address: Address, refresh: bool = True) -> bool:
        pong = await self.ping_address(address)
        if not pong:
            return False
        await self.find_node_shortlist(self._key)
        if refresh:
            await self.refresh_buckets(far_only=True)
        return self._routing_table.num_contacts > 0

    def refresh_buckets(self, far_only: bool = False, older_than: float | None = None,
                        quick: bool = False) -> defer.Deferred[int]:
        """Look up a random id in buckets up to our closest neighbour's.

        ``far_only`` refreshes only the buckets farther than the closest neighbour;
        ``older_than`` only those not looked up for that many seconds; ``quick`` lookups
        end once the closest few nodes answered (enough to learn a bucket's region).
        Fires with the number of lookups made.
        """
        until = Until.QUORUM if quick else Until.CLOSEST
        closest = self._routing_table.closest_bucket_number()
        if closest is None:
            return defer.succeed(0)
        now = self.clock.seconds()
        numbers = range(0, closest if far_only else closest + 1)
        todo = [n for n in numbers
                if older_than is None
                or now - self._routing_table.buckets[n].last_lookup >= older_than]
        lookups = [self.find_node_shortlist(
            ids.random_key_in_bucket(self._key, n, self._randbytes), until=until)
            for n in todo]
        d = defer.gatherResults(lookups, consumeErrors=True)
        return d.addCallback(lambda _: len(todo))


def _false(_: object) -> bool:
    return False


def _verified(value: bytes, index: bytes, size: int | None) -> bytes:
    if (size is not None and len(value) != size) or ids.key_for(value) != index:
        raise VerificationError("the value does not match its index and size")
    return value
