# -*- test-case-name: tests.test_dht_network -*-
"""The five RPCs, one object each: the client call (a Deferred) and the server's answer.

The wire form of each request and answer lives in :mod:`p2pnet.dht.codec`; the protocol
(:mod:`p2pnet.dht.protocol`) frames and matches.  An RPC object works against the node
that owns it (:class:`p2pnet.dht.network.DHTNetwork`, typed here as ``Any`` to keep the
arrows pointing one way).
"""

from __future__ import annotations

import math
from typing import Any

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from p2pnet import ids
from p2pnet.dht import codec
from p2pnet.dht.errors import VerificationError
from p2pnet.dht.protocol import Address, RequestRefused
from p2pnet.dht.table import KVPRecord
from p2pnet.models import MAX_VALUE_SIZE, Node, NodeList

_PING = codec.PingRequest()
_PONG = codec.PingResponse()

#: Values this node pulls at once for store requests; more are refused while busy.
MAX_PULLS = 16

#: Largest value chunk one getval answer carries (fits one datagram with its header).
MAX_CHUNK = 60 * 1024


@attrs.frozen
class FindValueFromNodeResult:
    """A findval answer: the node's values for the key, or nodes closer to it."""

    values: tuple[codec.ValueInfo, ...] | None = None
    nodes: NodeList | None = None

    @property
    def useful(self) -> bool:
        return self.values is not None


class RPCCommand:
    rpc: codec.RPC

    def __init__(self, net: Any) -> None:
        self.net = net

    def answer(self, body: Any, sender: bytes, address: Address) -> Any:
        raise NotImplementedError


class Ping(RPCCommand):
    """``ping``: an empty answer; both sides note each other as contacts."""

    rpc = codec.RPC.PING

    def call(self, address: Address) -> defer.Deferred[tuple[float, Node]]:
        start = self.net.clock.seconds()

        def done(msg: codec.Message) -> tuple[float, Node]:
            return (self.net.clock.seconds() - start, self.net.node_for(msg.sender, address))

        d: defer.Deferred[codec.Message] = self.net.protocol.request(address, _PING)
        return d.addCallback(done)

    def answer(self, body: Any, sender: bytes, address: Address) -> codec.PingResponse:
        return _PONG


class FindNode(RPCCommand):
    """``findnode(key)``: up to k nodes closest to the key."""

    rpc = codec.RPC.FIND_NODE

    def call(self, node: Node, key: bytes) -> defer.Deferred[NodeList]:
        d = self.net.protocol.request(node.address, codec.FindNodeRequest(ids.check_key(key)))
        return d.addCallback(lambda msg: NodeList(msg.body.nodes))

    def answer(self, body: codec.FindNodeRequest, sender: bytes, address: Address
               ) -> codec.NodesResponse:
        return codec.NodesResponse(tuple(self.net.close_nodes_for(body.key, sender)))


class FindValue(RPCCommand):
    """``findval(key[, index])``: what the node holds for the key, or closer nodes."""

    rpc = codec.RPC.FIND_VALUE

    def call(self, node: Node, key: bytes, index: bytes | None = None
             ) -> defer.Deferred[FindValueFromNodeResult]:
        req = codec.FindValueRequest(ids.check_key(key),
                                     None if index is None else ids.check_key(index, "index"))

        def done(msg: codec.Message) -> FindValueFromNodeResult:
            if isinstance(msg.body, codec.ValuesResponse):
                return FindValueFromNodeResult(values=msg.body.values)
            assert isinstance(msg.body, codec.NodesResponse)
            return FindValueFromNodeResult(nodes=NodeList(msg.body.nodes))

        return self.net.protocol.request(node.address, req).addCallback(done)

    def answer(self, body: codec.FindValueRequest, sender: bytes, address: Address
               ) -> codec.Body:
        now = self.net.clock.seconds()
        records = [r for r in self.net.kvp_table.records_for_key(body.key)
                   if not r.is_expired(now) and (body.index is None or r.index == body.index)]
        if records:
            records.sort(key=lambda r: r.timestamp, reverse=True)
            return codec.ValuesResponse(tuple(
                codec.ValueInfo(r.index, r.size, r.timestamp)
                for r in records[: codec.MAX_VALUES]))
        return codec.NodesResponse(tuple(self.net.close_nodes_for(body.key, sender)))


class Store(RPCCommand):
    """``store(key, index, size, timestamp)``: offer a value.

    Small values travel inline; larger ones are pulled by the receiver with ``getval``
    from the offering node.  The receiver keeps a value only if it hashes to its index.
    Answer: stored, already held (its expiry is refreshed) or refused.
    """

    rpc = codec.RPC.STORE

    def __init__(self, net: Any) -> None:
        super().__init__(net)
        self._pulls: dict[tuple[bytes, bytes, float], list[defer.Deferred[codec.StoreStatus]]] = {}

    def call(self, node: Node, key: bytes, index: bytes, value: bytes, timestamp: float
             ) -> defer.Deferred[codec.StoreStatus]:
        size = len(value)
        if size > MAX_VALUE_SIZE:
            return defer.fail(ValueError(f"value is over {MAX_VALUE_SIZE} bytes"))
        if not (math.isfinite(timestamp) and timestamp >= 0):
            return defer.fail(ValueError("timestamp must be finite and not negative"))
        inline = size <= self.net.inline_max
        req = codec.StoreRequest(key, index, size, float(timestamp), value if inline else None)
        timeout = None
        if not inline:
            chunks = math.ceil(size / self.net.chunk_size)
            timeout = self.net.protocol.timeout * (2 + chunks / self.net.window)
            self.net.offer(key, index, value)
        d = self.net.protocol.request(node.address, req, timeout=timeout)
        d.addCallback(lambda msg: msg.body.status)
        if not inline:
            d.addBoth(self._withdraw, key, index)
        return d

    def _withdraw(self, result: Any, key: bytes, index: bytes) -> Any:
        self.net.withdraw(key, index)
        return result

    def answer(self, body: codec.StoreRequest, sender: bytes, address: Address
               ) -> Any:
        net = self.net
        table = net.kvp_table
        now = net.clock.seconds()
        held = table.get_record(body.key, body.index)
        if held is not None and held.timestamp == body.timestamp and held.size == body.size:
            return self._refresh(held, now)
        if not table.is_acceptable(body.key, body.index, body.size, body.timestamp):
            net.stats_refused += 1
            return codec.StoreResponse(codec.StoreStatus.REFUSED)
        if body.data is not None:
            return self._keep(body, body.data, held, now)
        pull_id = (body.key, body.index, body.timestamp)
        out: defer.Deferred[codec.StoreStatus] = defer.Deferred()
        waiters = self._pulls.get(pull_id)
        if waiters is None and len(self._pulls) >= MAX_PULLS:
            net.stats_refused += 1  # busy: the storer will try again at the next round
            return codec.StoreResponse(codec.StoreStatus.REFUSED)
        if waiters is not None:
            waiters.append(out)  # a retried request joins the pull under way
        else:
            self._pulls[pull_id] = [out]
            d = net.get_value_rpc.fetch(address, body.key, body.index, body.size)
            d.addCallback(lambda value: self._keep(body, value, held, net.clock.seconds()))
            d.addCallback(lambda resp: resp.status)
            d.addBoth(self._pull_done, pull_id)
        return out.addCallback(codec.StoreResponse)

    def _pull_done(self, result: Any, pull_id: tuple[bytes, bytes, float]) -> None:
        waiters = self._pulls.pop(pull_id, [])
        if isinstance(result, Failure) and not result.check(RequestRefused):
            result = Failure(RequestRefused(codec.ErrorCode.BAD_REQUEST,
                                            f"could not fetch the value: {result.value}"))
        for w in waiters:
            if isinstance(result, Failure):
                w.errback(result)
            else:
                w.callback(result)

    def _refresh(self, held: KVPRecord, now: float) -> Any:
        expires = self.net.expiry_for(held.key, now)
        if held.is_original or (held.expires_at is not None and held.expires_at >= expires):
            return codec.StoreResponse(codec.StoreStatus.HELD)
        d = self.net.kvp_table.update_record(attrs.evolve(held, expires_at=expires))
        return d.addCallback(lambda _: codec.StoreResponse(codec.StoreStatus.HELD))

    def _keep(self, body: codec.StoreRequest, value: bytes, held: KVPRecord | None,
              now: float) -> Any:
        if len(value) != body.size or ids.key_for(value) != body.index:
            raise RequestRefused(codec.ErrorCode.BAD_REQUEST,
                                 "value does not match its size and index")
        record = KVPRecord(body.key, body.index, body.size, body.timestamp,
                           is_original=held.is_original if held else False,
                           last_update=now, expires_at=self.net.expiry_for(body.key, now))
        d = self.net.kvp_table.put(record, value)
        self.net.stats_stored += 1
        return d.addCallback(lambda _: codec.StoreResponse(codec.StoreStatus.STORED))


class GetValue(RPCCommand):
    """``getval(key, index, offset, length)``: bytes of a held value from an offset."""

    rpc = codec.RPC.GET_VALUE

    def call(self, address: Address, key: bytes, index: bytes, offset: int, length: int
             ) -> defer.Deferred[codec.GetValueResponse]:
        req = codec.GetValueRequest(key, index, offset, length)
        return self.net.protocol.request(address, req).addCallback(lambda m: m.body)

    def fetch(self, address: Address, key: bytes, index: bytes, size: int | None = None,
              offset: int = 0) -> defer.Deferred[bytes]:
        """The whole value from ``offset``, in chunks with a window of requests in flight."""
        return defer.Deferred.fromCoroutine(self._fetch(address, key, index, size, offset))

    async def _fetch(self, address: Address, key: bytes, index: bytes, size: int | None,
                     offset: int) -> bytes:
        chunk = self.net.chunk_size
        first = await self.call(address, key, index, offset, chunk)
        total = first.total
        if size is not None and total != size:
            raise VerificationError(f"value is {total} bytes, {size} were announced")
        if first.offset != offset or (len(first.data) == 0 and offset < total):
            raise VerificationError("getval answered the wrong chunk")
        step = len(first.data)
        parts = {offset: first.data}
        # step is 0 only when the first answer already reached the end (an empty value,
        # or offset == total): nothing more to fetch.
        starts = list(range(offset + step, total, step)) if step else []
        window = self.net.window
        for i in range(0, len(starts), window):
            batch = starts[i:i + window]
            try:
                answers = await defer.gatherResults(
                    [self.call(address, key, index, s, step) for s in batch],
                    consumeErrors=True)
            except defer.FirstError as e:
                e.subFailure.raiseException()
            for s, ans in zip(batch, answers):
                if ans.offset != s or ans.total != total or (
                        len(ans.data) != min(step, total - s)):
                    raise VerificationError("getval answered the wrong chunk")
                parts[s] = ans.data
        return b"".join(parts[s] for s in sorted(parts))

    def answer(self, body: codec.GetValueRequest, sender: bytes, address: Address) -> Any:
        length = min(body.length, MAX_CHUNK)
        offered = self.net.offered(body.key, body.index)
        if offered is not None:
            if body.offset > len(offered):
                raise RequestRefused(codec.ErrorCode.BAD_REQUEST, "offset past the end")
            return codec.GetValueResponse(len(offered), body.offset,
                                          offered[body.offset:body.offset + length])
        record = self.net.kvp_table.get_record(body.key, body.index)
        if record is None or record.is_expired(self.net.clock.seconds()):
            raise RequestRefused(codec.ErrorCode.NOT_FOUND, "value not held")
        if body.offset > record.size:
            raise RequestRefused(codec.ErrorCode.BAD_REQUEST, "offset past the end")
        d = self.net.kvp_table.read(body.key, body.index, body.offset, length)
        return d.addCallback(lambda data: codec.GetValueResponse(record.size, body.offset, data))


__all__ = ["MAX_CHUNK", "MAX_VALUE_SIZE", "FindNode", "FindValue", "FindValueFromNodeResult",
           "GetValue", "Ping", "RPCCommand", "Store"]
