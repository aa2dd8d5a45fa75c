# -*- test-case-name: tests.test_dht_network -*-
"""The five RPCs, one object each: the client call (a Deferred) and the server's answer.

The wire form of each request and answer lives in :mod:`p2pnet.dht.codec`; the protocol
(:mod:`p2pnet.dht.protocol`) frames and matches.  An RPC object works against the node
that owns it through :class:`NodeView`, the part of
:class:`p2pnet.dht.network.DHTNetwork` the RPCs use (a ``typing.Protocol``, so the
import arrows keep pointing one way).

Storing (:class:`Store`) takes a value only under the acceptance rule of
:meth:`p2pnet.dht.table.RecordIndex.refusal` (newer timestamp, quotas in total, per source
address and per prefix) and refuses timestamps far in the future; a pulled value is
checked again when it lands.  A pull has a deadline, and every chunk must be as long as
asked for (only the last may be shorter).  A copy expires ``TIME_EXPIRE`` after its
publisher last published it: the store request carries the value's age, which a
replication keeps and only a (re)publish resets.  Every refusal is counted by kind in
``net.refused``.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from p2pnet import ids
from p2pnet.dht import codec
from p2pnet.dht.errors import VerificationError
from p2pnet.dht.limits import Limits, RefusalCounter, prefix_key, source_key
from p2pnet.dht.protocol import Address, DHTProtocol, RequestRefused, failed
from p2pnet.dht.table import IKVPTable, KVPRecord
from p2pnet.models import MAX_VALUE_SIZE, Node, NodeList
from p2pnet.observer import OneShotObserver

_PING = codec.PingRequest()
_PONG = codec.PingResponse()
_STORED = codec.StoreResponse(codec.StoreStatus.STORED)

#: Values this node pulls at once by default (``Limits.pull_max``).
MAX_PULLS = Limits().pull_max

#: Largest value chunk one getval answer carries (fits one datagram with its header).
MAX_CHUNK = 60 * 1024


@attrs.frozen
class FindValueFromNodeResult:
    """A findval answer: the node's values for the key, or nodes closer to it."""

    values: tuple[codec.ValueInfo, ...] | None = None
    nodes: NodeList | None = None
    #: the bytes of ``values[0]``, when the node sent them inline (not yet verified)
    data: bytes | None = None

    @property
    def useful(self) -> bool:
        return self.values is not None


class NodeView(Protocol):
    """What the RPC objects use of the node that owns them (:class:`DHTNetwork`)."""

    TIME_EXPIRE: float
    clock: IReactorTime
    protocol: DHTProtocol
    kvp_table: IKVPTable
    limits: Limits
    refused: RefusalCounter
    chunk_size: int
    window: int
    inline_max: int
    stats_stored: int
    stats_refused: int
    get_value_rpc: GetValue

    def node_for(self, node_id: bytes, address: Address) -> Node: ...

    def close_nodes_for(self, key: bytes, requester: bytes | None = None) -> list[Node]: ...

    def expiry_for(self, key: bytes, now: float) -> float: ...

    def offer(self, key: bytes, index: bytes, value: bytes) -> None: ...

    def withdraw(self, key: bytes, index: bytes) -> None: ...

    def offered(self, key: bytes, index: bytes) -> bytes | None: ...


def _release(counts: Counter[Any], key: Any) -> None:
    """One fewer under ``key``; a key at zero leaves (the counters stay as small as what
    is under way)."""
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]


def _status(sender: bytes, body: codec.StoreResponse) -> codec.StoreStatus:
    return body.status


def _taken(sender: bytes, body: codec.StoreResponse) -> bool:
    return body.status != codec.StoreStatus.REFUSED


def _node_list(sender: bytes, body: codec.NodesResponse) -> NodeList:
    return NodeList(body.nodes)


def _found(sender: bytes, body: codec.Body) -> FindValueFromNodeResult:
    if isinstance(body, codec.ValuesResponse):
        return FindValueFromNodeResult(values=body.values, data=body.data)
    assert isinstance(body, codec.NodesResponse)
    return FindValueFromNodeResult(nodes=NodeList(body.nodes))


class RPCCommand:
    """One RPC: ``call`` sends the request, ``answer`` serves it."""

    rpc: codec.RPC

    def __init__(self, net: NodeView) -> None:
        self.net = net

    def answer(self, body: Any, sender: bytes, address: Address) -> Any:
        raise NotImplementedError


class Ping(RPCCommand):
    """``ping``: an empty answer; both sides note each other as contacts."""

    rpc = codec.RPC.PING

    def __init__(self, net: NodeView) -> None:
        super().__init__(net)
        self._then = self._done  # bound once: the hot path makes no method object per call

    def call(self, address: Address, otherwise: Any = None) -> defer.Deferred[Any]:
        """Fires with ``(round trip seconds, Node)``; a failure goes to ``otherwise``
        (a function of the Failure) when given, as ``addErrback(otherwise)`` would send
        it, one Deferred step cheaper."""
        net = self.net
        # the answer goes through _done inside the protocol: one Deferred step fewer
        # than addCallback, and no closure per call (arguments by position: the hot path)
        return net.protocol.ping(address, self._then, (net.clock.seconds(), address),
                                 otherwise)

    def _done(self, sender: bytes, body: Any, start: float, address: Address
              ) -> tuple[float, Node]:
        net = self.net
        return (net.clock.seconds() - start, net.node_for(sender, address))

    def answer(self, body: Any, sender: bytes, address: Address) -> codec.PingResponse:
        return _PONG


class FindNode(RPCCommand):
    """``findnode(key)``: up to k nodes closest to the key."""

    rpc = codec.RPC.FIND_NODE

    def call(self, node: Node, key: bytes,
             otherwise: Callable[[Failure], Any] | None = None) -> defer.Deferred[NodeList]:
        """Fires with the nodes the node named; a failure goes to ``otherwise`` when given
        (as ``addErrback(otherwise)`` would send it, one Deferred step cheaper)."""
        return self.net.protocol.request(node.address, codec.FindNodeRequest(
            ids.check_key(key)), None, None, _node_list, (), otherwise)

    def answer(self, body: codec.FindNodeRequest, sender: bytes, address: Address
               ) -> codec.NodesResponse:
        return codec.NodesResponse(tuple(self.net.close_nodes_for(body.key, sender)))


class FindValue(RPCCommand):
    """``findval(key[, index])``: what the node holds for the key, or closer nodes."""

    rpc = codec.RPC.FIND_VALUE

    def call(self, node: Node, key: bytes, index: bytes | None = None,
             otherwise: Callable[[Failure], Any] | None = None
             ) -> defer.Deferred[FindValueFromNodeResult]:
        """Fires with what the node holds or names; a failure goes to ``otherwise`` when
        given (as ``addErrback(otherwise)`` would send it, one Deferred step cheaper)."""
        req = codec.FindValueRequest(ids.check_key(key),
                                     None if index is None else ids.check_key(index, "index"))
        return self.net.protocol.request(node.address, req, None, None, _found, (),
                                         otherwise)

    def answer(self, body: codec.FindValueRequest, sender: bytes, address: Address
               ) -> codec.Body:
        """The entry for exactly ``(key, index)`` if held; else the entries of every index
        of the key held; else the nodes closest to the key (SEMANTICS §3).

        The first (newest) value's bytes go inline when it is at most ``inline_max``
        bytes and the value table has them in memory (:meth:`IKVPTable.peek`): the
        requester is spared a getval round trip, and no disk read is queued outside
        getval's fair read queue.  The protocol drops the inline bytes first when the
        answer is too large for an unproven address."""
        net = self.net
        now = net.clock.seconds()
        table = net.kvp_table
        records = [r for r in table.records_for_key(body.key) if not r.is_expired(now)]
        exact = [r for r in records if r.index == body.index]
        if exact:
            records = exact
        if records:
            records.sort(key=lambda r: r.timestamp, reverse=True)
            first = records[0]
            data = table.peek(first.key, first.index) if first.size <= net.inline_max else None
            if data is not None and len(data) != first.size:
                data = None
            return codec.ValuesResponse(tuple(
                codec.ValueInfo(r.index, r.size, r.timestamp)
                for r in records[: codec.MAX_VALUES]), data)
        return codec.NodesResponse(tuple(net.close_nodes_for(body.key, sender)))


@attrs.define(eq=False)
class _Pull:
    """A value being pulled for a store request, and the requests waiting on it."""

    source: tuple[str, int]
    prefix: str
    #: the deadline came from ``pull_min_rate`` (not ``pull_max_seconds``)
    by_rate: bool = False
    done: OneShotObserver[codec.StoreStatus] = attrs.Factory(OneShotObserver)


class Store(RPCCommand):
    """``store(key, index, size, timestamp, age)``: offer a value.

    Small values travel inline; larger ones are pulled by the receiver with ``getval``
    from the offering node.  The receiver keeps a value only if it hashes to its index.
    Answer: stored, already held (its expiry is renewed if the store is a republish)
    or refused.
    """

    rpc = codec.RPC.STORE

    def __init__(self, net: NodeView) -> None:
        super().__init__(net)
        self._pulls: dict[tuple[bytes, bytes, float], _Pull] = {}
        self._pulls_by_source: Counter[tuple[str, int]] = Counter()
        self._pulls_by_prefix: Counter[str] = Counter()
        #: sources whose last pull ran past its deadline -> when they may pull again
        #: (bounded by ``limits.pull_slow_max_sources``, oldest first out)
        self._slow: OrderedDict[tuple[str, int], float] = OrderedDict()

    @property
    def pulls(self) -> int:
        """Pulls under way."""
        return len(self._pulls)

    def call(self, node: Node, key: bytes, index: bytes, value: bytes, timestamp: float,
             age: float = 0.0) -> defer.Deferred[codec.StoreStatus]:
        """Offer ``value``; ``age``: seconds since its publisher last published it (0 for
        a publish, the copy's age for a replication)."""
        return self._offer(node, key, index, value, timestamp, age, _status, None)

    def taken(self, node: Node, key: bytes, index: bytes, value: bytes, timestamp: float,
              age: float, otherwise: Callable[[Failure], Any]) -> defer.Deferred[Any]:
        """:meth:`call`, firing with whether the node holds the value afterwards (not
        ``REFUSED``), a failure going to ``otherwise``: as ``addCallback`` and
        ``addErrback`` would, two Deferred steps cheaper (a put makes k of these)."""
        return self._offer(node, key, index, value, timestamp, age, _taken, otherwise)

    def _offer(self, node: Node, key: bytes, index: bytes, value: bytes, timestamp: float,
               age: float, then: Callable[[bytes, Any], Any],
               otherwise: Callable[[Failure], Any] | None) -> defer.Deferred[Any]:
        size = len(value)
        if size > MAX_VALUE_SIZE:
            return failed(ValueError(f"value is over {MAX_VALUE_SIZE} bytes"), otherwise)
        if not (math.isfinite(timestamp) and timestamp >= 0):
            return failed(ValueError("timestamp must be finite and not negative"), otherwise)
        if not (math.isfinite(age) and age >= 0):
            return failed(ValueError("age must be finite and not negative"), otherwise)
        inline = size <= self.net.inline_max
        req = codec.StoreRequest(key, index, size, float(timestamp), value if inline else None,
                                 min(math.ceil(age), 0xFFFFFFFF))
        if inline:  # the answer goes through then/otherwise inside the protocol
            return self.net.protocol.request(node.address, req, None, None, then, (),
                                             otherwise)
        chunks = math.ceil(size / self.net.chunk_size)
        timeout = self.net.protocol.timeout * (2 + chunks / self.net.window)
        self.net.offer(key, index, value)  # pulled with getvals, withdrawn once answered
        d: defer.Deferred[Any] = self.net.protocol.request(node.address, req, timeout=timeout)
        d.addBoth(self._withdraw, key, index)
        d.addCallback(lambda msg: then(msg.sender, msg.body))
        return d if otherwise is None else d.addErrback(otherwise)

    def _withdraw(self, result: Any, key: bytes, index: bytes) -> Any:
        self.net.withdraw(key, index)
        return result

    def _refuse(self, kind: str) -> codec.StoreResponse:
        self.net.refused[kind] += 1
        self.net.stats_refused += 1
        return codec.StoreResponse(codec.StoreStatus.REFUSED)

    def answer(self, body: codec.StoreRequest, sender: bytes, address: Address) -> Any:
        net = self.net
        limits = net.limits
        now = net.clock.seconds()
        if body.timestamp > now + limits.store_max_future_seconds:
            return self._refuse("store_future_timestamp")
        published = max(0.0, now - body.age)
        if published + net.TIME_EXPIRE <= now:
            return self._refuse("store_expired")
        answered = self._held_or_refused(body, address, now, published)
        if answered is not None:
            return answered
        if body.data is not None:  # checked just now: no need to check again
            return self._keep(body, body.data, address, published, checked=True)
        pull_id = (body.key, body.index, body.timestamp)
        pull = self._pulls.get(pull_id)
        if pull is None:
            source, prefix = source_key(address), prefix_key(address)
            if self._is_slow(source, now):
                return self._refuse("pull_source_slow")
            if len(self._pulls) >= limits.pull_max:
                return self._refuse("pull_busy")  # the storer tries again next round
            if self._pulls_by_source[source] >= limits.pull_max_per_source:
                return self._refuse("pull_source_busy")
            if self._pulls_by_prefix[prefix] >= limits.pull_max_per_prefix:
                return self._refuse("pull_prefix_busy")
            deadline, by_rate = self.pull_deadline(body.size)
            pull = self._pulls[pull_id] = _Pull(source, prefix, by_rate)
            self._pulls_by_source[source] += 1
            self._pulls_by_prefix[prefix] += 1
            d: defer.Deferred[Any] = net.get_value_rpc.fetch(
                address, body.key, body.index, body.size)
            d.addTimeout(deadline, net.clock)
            d.addCallback(lambda value: self._keep(body, value, address, published))
            d.addCallback(lambda resp: resp.status)
            d.addBoth(self._pull_done, pull_id)
        # a retried request joins the pull under way
        return pull.done.when_fired().addCallback(codec.StoreResponse)

    def pull_deadline(self, size: int) -> tuple[float, bool]:
        """Seconds a pull of ``size`` bytes may take, and whether the minimum rate (rather
        than ``pull_max_seconds``) set it."""
        limits = self.net.limits
        if limits.pull_min_rate <= 0:
            return limits.pull_max_seconds, False
        by_rate = limits.pull_grace_seconds + size / limits.pull_min_rate
        if by_rate < limits.pull_max_seconds:
            return by_rate, True
        return limits.pull_max_seconds, False

    def _is_slow(self, source: tuple[str, int], now: float) -> bool:
        until = self._slow.get(source)
        if until is None:
            return False
        if until > now:
            return True
        del self._slow[source]
        return False

    def _mark_slow(self, source: tuple[str, int]) -> None:
        limits = self.net.limits
        if limits.pull_slow_penalty_seconds <= 0 or limits.pull_slow_max_sources <= 0:
            return
        self._slow.pop(source, None)
        self._slow[source] = self.net.clock.seconds() + limits.pull_slow_penalty_seconds
        while len(self._slow) > limits.pull_slow_max_sources:
            self._slow.popitem(last=False)

    @property
    def slow_sources(self) -> int:
        """Sources remembered as slow (some may have served their time)."""
        return len(self._slow)

    def _pull_done(self, result: Any, pull_id: tuple[bytes, bytes, float]) -> None:
        pull = self._pulls.pop(pull_id)
        _release(self._pulls_by_source, pull.source)
        _release(self._pulls_by_prefix, pull.prefix)
        if isinstance(result, Failure):
            if result.check(defer.TimeoutError):
                self.net.refused["pull_too_slow" if pull.by_rate else "pull_timeout"] += 1
                self._mark_slow(pull.source)
                result = Failure(RequestRefused(codec.ErrorCode.BAD_REQUEST,
                                                "the pull ran past its deadline"))
            elif not result.check(RequestRefused):
                self.net.refused["pull_failed"] += 1
                result = Failure(RequestRefused(codec.ErrorCode.BAD_REQUEST,
                                                f"could not fetch the value: {result.value}"))
        pull.done.fire(result)

    def _held_or_refused(self, body: codec.StoreRequest, source: Address, now: float,
                         published: float) -> Any:
        """The answer when the value need not or may not be kept now, else None: HELD for
        this node's own copy (published here: the index is its hash), a refresh of the same
        copy, or a refusal by the table's acceptance rule."""
        table = self.net.kvp_table
        held = table.get_record(body.key, body.index)
        if held is not None and held.is_original:
            return codec.StoreResponse(codec.StoreStatus.HELD)
        if held is not None and held.timestamp == body.timestamp and held.size == body.size:
            return self._refresh(held, now, published)
        kind = table.refusal(body.key, body.index, body.size, body.timestamp, source,
                             self.net.limits)
        if kind is not None:
            return self._refuse(kind)
        return None

    def _expiry(self, key: bytes, now: float, published: float) -> float:
        """A copy expires by the cache rule, and at most TIME_EXPIRE after its publish."""
        return min(self.net.expiry_for(key, now), published + self.net.TIME_EXPIRE)

    def _refresh(self, held: KVPRecord, now: float, published: float) -> Any:
        """The value is held: a republish (a newer publish time) renews its expiry; a
        replication does not."""
        if held.is_original:
            return codec.StoreResponse(codec.StoreStatus.HELD)
        if held.published is not None and published < held.published + 1.0:
            # not a newer publish (an age is whole seconds, and the store took some time)
            published = held.published
        expires = self._expiry(held.key, now, published)
        if held.expires_at is not None and held.expires_at >= expires:
            return codec.StoreResponse(codec.StoreStatus.HELD)
        d = self.net.kvp_table.update_record(
            attrs.evolve(held, expires_at=expires, published=published))
        return d.addCallback(lambda _: codec.StoreResponse(codec.StoreStatus.HELD))

    def _keep(self, body: codec.StoreRequest, value: bytes, source: Address,
              published: float, checked: bool = False) -> Any:
        """Keep a value that arrived (inline, with the acceptance rule ``checked`` in
        this same call; or pulled: then perhaps much later, so the rule is applied again
        to what the table holds now)."""
        net = self.net
        if len(value) != body.size or ids.key_for(value) != body.index:
            net.refused["store_bad_value"] += 1
            raise RequestRefused(codec.ErrorCode.BAD_REQUEST,
                                 "value does not match its size and index")
        now = net.clock.seconds()
        if not checked:
            # published here meanwhile, or a table that has filled: the same rule again
            answered = self._held_or_refused(body, source, now, published)
            if answered is not None:
                return answered
        record = KVPRecord(body.key, body.index, body.size, body.timestamp,
                           is_original=False, last_update=now,
                           expires_at=self._expiry(body.key, now, published),
                           published=published, source=source)
        d = net.kvp_table.put(record, value)
        net.stats_stored += 1
        if d.called and not isinstance(d.result, Failure):
            return _STORED  # a table in memory: the answer goes out now, no Deferred step
        return d.addCallback(lambda _: _STORED)


@attrs.define(eq=False)
class _Read:
    """A getval read of a held value, running or waiting for the value table."""

    body: codec.GetValueRequest
    length: int
    total: int
    source: tuple[str, int]
    done: defer.Deferred[Any] = attrs.Factory(defer.Deferred)


class GetValue(RPCCommand):
    """``getval(key, index, offset, length)``: bytes of a held value from an offset."""

    rpc = codec.RPC.GET_VALUE

    def __init__(self, net: NodeView) -> None:
        super().__init__(net)
        #: reads of held values running on the value table now
        self.reading = 0
        #: reads waiting for the value table, per source; sources are served in turn
        self._waiting: OrderedDict[tuple[str, int], deque[_Read]] = OrderedDict()
        #: reads waiting for the value table, in all
        self.waiting = 0
        #: reads running or waiting, per source
        self._by_source: Counter[tuple[str, int]] = Counter()

    def call(self, address: Address, key: bytes, index: bytes, offset: int, length: int
             ) -> defer.Deferred[codec.GetValueResponse]:
        req = codec.GetValueRequest(key, index, offset, length)
        d: defer.Deferred[Any] = self.net.protocol.request(address, req)
        return d.addCallback(lambda m: m.body)

    def fetch(self, address: Address, key: bytes, index: bytes, size: int | None = None,
              offset: int = 0) -> defer.Deferred[bytes]:
        """The whole value from ``offset``, in chunks with a window of requests in flight.

        Every chunk must be exactly as long as asked for, except the value's last one: a
        short chunk ends the fetch (VerificationError), so the bytes held while fetching
        never exceed the announced size, and a peer cannot dribble a value out.
        Cancelling the Deferred (e.g. ``addTimeout``) stops the fetch.
        """
        return defer.Deferred.fromCoroutine(self._fetch(address, key, index, size, offset))

    async def _fetch(self, address: Address, key: bytes, index: bytes, size: int | None,
                     offset: int) -> bytes:
        chunk = self.net.chunk_size
        first = await self.call(address, key, index, offset, chunk)
        total = first.total
        if size is not None and total != size:
            raise VerificationError(f"value is {total} bytes, {size} were announced")
        if total > MAX_VALUE_SIZE or first.offset != offset or (
                len(first.data) != max(0, min(chunk, total - offset))):
            raise VerificationError("getval answered a wrong or short chunk")
        parts = [first.data]
        starts = list(range(offset + chunk, total, chunk))
        window = self.net.window
        for i in range(0, len(starts), window):
            batch = starts[i:i + window]
            try:
                answers = await defer.gatherResults(
                    [self.call(address, key, index, s, chunk) for s in batch],
                    consumeErrors=True)
            except defer.FirstError as e:
                e.subFailure.raiseException()
            for s, ans in zip(batch, answers):
                if ans.offset != s or ans.total != total or (
                        len(ans.data) != min(chunk, total - s)):
                    raise VerificationError("getval answered a wrong or short chunk")
                parts.append(ans.data)
        return b"".join(parts)

    def _held(self, body: codec.GetValueRequest) -> tuple[bytes | None, int]:
        """The value being offered (or None: a held one) and its size; ``RequestRefused``
        when neither is held or the offset is past the end."""
        net = self.net
        offered = net.offered(body.key, body.index)
        if offered is not None:
            total = len(offered)
        else:
            record = net.kvp_table.get_record(body.key, body.index)
            if record is None or record.is_expired(net.clock.seconds()):
                raise RequestRefused(codec.ErrorCode.NOT_FOUND, "value not held")
            total = record.size
        if body.offset > total:
            raise RequestRefused(codec.ErrorCode.BAD_REQUEST, "offset past the end")
        return offered, total

    def size_of(self, body: codec.GetValueRequest) -> int | None:
        """The bytes of data :meth:`answer` would send, from the metadata alone (None:
        it would answer with an error)."""
        try:
            _, total = self._held(body)
        except RequestRefused:
            return None
        return min(body.length, MAX_CHUNK, total - body.offset)

    def answer(self, body: codec.GetValueRequest, sender: bytes, address: Address) -> Any:
        net = self.net
        length = min(body.length, MAX_CHUNK)
        offered, total = self._held(body)
        if offered is not None:
            return codec.GetValueResponse(total, body.offset,
                                          offered[body.offset:body.offset + length])
        limits = net.limits
        source = source_key(address)
        if self._by_source[source] >= limits.read_max_pending_per_source:
            net.refused["read_source_busy"] += 1
            raise RequestRefused(codec.ErrorCode.BUSY, "busy: too many of your reads queued")
        read = _Read(body, length, total, source)
        if self.reading < limits.read_max_pending:
            self._start(read)
        else:
            if self.waiting >= limits.read_max_waiting and not self._drop_one():
                net.refused["read_busy"] += 1
                raise RequestRefused(codec.ErrorCode.BUSY, "busy: too many reads queued")
            self._waiting.setdefault(source, deque()).append(read)
            self.waiting += 1
        self._by_source[source] += 1
        return read.done

    def _start(self, read: _Read) -> None:
        self.reading += 1
        body = read.body
        d = self.net.kvp_table.read(body.key, body.index, body.offset, read.length)
        d.addCallback(lambda data: codec.GetValueResponse(read.total, body.offset, data))
        d.addBoth(self._read_done, read)

    def _read_done(self, result: Any, read: _Read) -> None:
        self.reading -= 1
        self._forget(read.source)
        while self._waiting and self.reading < self.net.limits.read_max_pending:
            source, queue = next(iter(self._waiting.items()))
            nxt = queue.popleft()
            self.waiting -= 1
            del self._waiting[source]
            if queue:
                self._waiting[source] = queue  # to the back of the line
            self._start(nxt)
        read.done.callback(result)

    def _forget(self, source: tuple[str, int]) -> None:
        _release(self._by_source, source)

    def _drop_one(self) -> bool:
        """Make room in a full waiting line: the source with the most reads waiting loses
        its newest one (answered "busy").  False when every source waits for one read
        only, so that dropping one would not be fairer."""
        if not self._waiting:
            return False
        source, queue = max(self._waiting.items(), key=lambda item: len(item[1]))
        if len(queue) <= 1:
            return False
        read = queue.pop()
        self.waiting -= 1
        self._forget(source)
        self.net.refused["read_busy"] += 1
        read.done.errback(RequestRefused(codec.ErrorCode.BUSY, "busy: too many reads queued"))
        return True


__all__ = ["MAX_CHUNK", "MAX_VALUE_SIZE", "FindNode", "FindValue", "FindValueFromNodeResult",
           "GetValue", "NodeView", "Ping", "RPCCommand", "Store"]
