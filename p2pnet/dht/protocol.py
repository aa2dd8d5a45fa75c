# -*- test-case-name: tests.test_dht_protocol -*-
"""The DHT's datagram protocol: frames, matches, times out and dispatches.

It knows nothing of what the RPCs mean.  Requests go to an :class:`IRequestHandler`;
answers are matched to outstanding requests by transaction id *and* by the address the
request went to.  Everything else (undecodable datagrams, another network's messages,
unknown or spoofed answers) is dropped and counted in :attr:`DHTProtocol.stats`.
"""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from p2pnet.dht import codec
from p2pnet.dht.errors import (
    DecodeError,
    ProtocolStoppedError,
    RemoteError,
    RPCTimeoutError,
)

Address = tuple[str, int]

DEFAULT_TIMEOUT = 2.0
DEFAULT_RETRIES = 1

log = Logger()


class RequestRefused(Exception):
    """Raised by a handler to answer a request with an error response."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class IRequestHandler(Interface):
    """What the protocol calls for traffic it has accepted."""

    def contact_seen(node_id: bytes, address: Address) -> None:
        """A valid request from ``node_id`` arrived from ``address`` (an unproven
        sender: the address may be forged)."""

    def contact_answered(node_id: bytes, address: Address) -> None:
        """``node_id`` answered one of our requests from the address it went to."""

    def handle_request(message: codec.Message, address: Address) -> Any:
        """Answer a request: a response body, or a Deferred firing with one."""


@attrs.define
class ProtocolStats:
    """Counters of what the protocol saw and did."""

    datagrams_in: int = 0
    datagrams_out: int = 0
    requests_in: int = 0
    responses_in: int = 0
    requests_out: int = 0
    retries: int = 0
    timeouts: int = 0
    malformed: int = 0
    wrong_network: int = 0
    from_self: int = 0
    unmatched: int = 0
    wrong_address: int = 0
    wrong_rpc: int = 0
    errors_sent: int = 0
    send_failures: int = 0

    @property
    def dropped(self) -> int:
        return (self.malformed + self.wrong_network + self.from_self + self.unmatched
                + self.wrong_address + self.wrong_rpc)


class _RandomPool:
    """Cryptographically random bytes, read from the OS 4 KiB at a time (one system call
    per 512 transaction ids instead of one per request)."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            self._buf, self._pos = os.urandom(max(self._size, n)), 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out


class _Pending:
    __slots__ = ("deferred", "address", "data", "timeout", "tries_left", "deadline", "rpc",
                 "tries")

    def __init__(self, deferred: defer.Deferred[codec.Message], address: Address,
                 data: bytes, timeout: float, tries_left: int, rpc: codec.RPC) -> None:
        self.deferred = deferred
        self.address = address
        self.data = data
        self.timeout = timeout
        self.tries_left = tries_left
        self.tries = 1
        self.rpc = rpc
        self.deadline = 0.0


class DHTProtocol(DatagramProtocol):
    """One UDP endpoint of a DHT node."""

    def __init__(
        self,
        node_id: bytes,
        network_id: bytes,
        handler: Any,
        clock: IReactorTime,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        tid_source: Callable[[int], bytes] | None = None,
    ) -> None:
        self.node_id = node_id
        self.network_id = network_id
        self.handler = handler
        self.clock = clock
        self.timeout = timeout
        self.retries = retries
        self.stats = ProtocolStats()
        self._tid = tid_source or _RandomPool().take
        self._deadlines: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self._timer: IDelayedCall | None = None
        self._timer_at = math.inf
        self._last_expiry = -math.inf
        self._pending: dict[bytes, _Pending] = {}
        self._stopped = False

    # -- lifecycle -----------------------------------------------------------------

    def startProtocol(self) -> None:
        self._stopped = False

    def stopProtocol(self) -> None:
        self._stopped = True
        pending, self._pending = self._pending, {}
        self._deadlines = []
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf
        for p in pending.values():
            p.deferred.errback(ProtocolStoppedError("the DHT protocol stopped"))

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    # -- client side ---------------------------------------------------------------

    def request(self, address: Address, body: codec.Body, timeout: float | None = None,
                retries: int | None = None) -> defer.Deferred[codec.Message]:
        """Send a request; the Deferred fires with the answer :class:`codec.Message`.

        Fails with :class:`RPCTimeoutError`, :class:`RemoteError` (an error answer) or
        :class:`ProtocolStoppedError`.
        """
        if self._stopped or self.transport is None:
            return defer.fail(ProtocolStoppedError("the DHT protocol is not running"))
        tid = self._tid(codec.TID_BYTES)
        while tid in self._pending:
            tid = self._tid(codec.TID_BYTES)
        rpc = _RPC_OF.get(type(body))
        if rpc is None:
            raise TypeError(f"not a request body: {body!r}")
        try:
            data = codec.encode(self.network_id, tid, self.node_id, body)
        except (TypeError, ValueError) as e:
            return defer.fail(e)
        d: defer.Deferred[codec.Message] = defer.Deferred()
        p = _Pending(d, address, data,
                     self.timeout if timeout is None else timeout,
                     self.retries if retries is None else retries, rpc)
        self._pending[tid] = p
        self.stats.requests_out += 1
        self._send_try(tid, p)
        return d

    def _send_try(self, tid: bytes, p: _Pending) -> None:
        self._write(p.data, p.address)
        deadline = self.clock.seconds() + p.timeout
        p.deadline = deadline
        self._seq += 1
        heapq.heappush(self._deadlines, (deadline, self._seq, tid))
        if deadline < self._timer_at:
            self._arm(deadline)

    # One timer for all requests: a heap of deadlines, answered entries skipped lazily.
    # Right after a round of expiries the timer waits at least TIMER_GRANULARITY, so a
    # busy node does not schedule a reactor call per request.
    TIMER_GRANULARITY = 0.05

    def _arm(self, at: float) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        now = self.clock.seconds()
        if now - self._last_expiry < self.TIMER_GRANULARITY:
            at = max(at, self._last_expiry + self.TIMER_GRANULARITY)
        self._timer_at = at
        self._timer = self.clock.callLater(max(0.0, at - now), self._expire)

    def _expire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self.clock.seconds()
        self._last_expiry = now
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, tid = heapq.heappop(heap)
            p = self._pending.get(tid)
            if p is not None and p.deadline <= now:
                self._timed_out(tid)
        while heap and heap[0][2] not in self._pending:
            heapq.heappop(heap)
        if heap:
            self._arm(heap[0][0])

    def _timed_out(self, tid: bytes) -> None:
        p = self._pending.get(tid)
        if p is None:
            return
        if p.tries_left > 0:
            p.tries_left -= 1
            p.tries += 1
            self.stats.retries += 1
            self._send_try(tid, p)
            return
        del self._pending[tid]
        self.stats.timeouts += 1
        p.deferred.errback(RPCTimeoutError(p.rpc.name.lower(), p.address,
                                           p.timeout, p.tries))

    def _write(self, data: bytes, address: Address) -> None:
        try:
            self.transport.write(data, address)  # type: ignore[union-attr]
            self.stats.datagrams_out += 1
        except Exception as e:  # a send error must not break the node
            self.stats.send_failures += 1
            log.debug("send to {address} failed: {error}", address=address, error=e)

    # -- receiving -----------------------------------------------------------------

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.stats.datagrams_in += 1
        try:
            msg = codec.decode(datagram)
        except DecodeError:
            self.stats.malformed += 1
            return
        if msg.network_id != self.network_id:
            self.stats.wrong_network += 1
            return
        if msg.sender == self.node_id:
            self.stats.from_self += 1
            return
        address: Address = (addr[0], addr[1])
        if msg.kind == codec.Kind.REQUEST:
            self.stats.requests_in += 1
            self.handler.contact_seen(msg.sender, address)
            self._answer(msg, address)
            return
        p = self._pending.get(msg.tid)
        if p is None:
            self.stats.unmatched += 1
            return
        if p.address != address:
            self.stats.wrong_address += 1
            return
        if p.rpc != msg.rpc:
            self.stats.wrong_rpc += 1
            return
        del self._pending[msg.tid]
        self.stats.responses_in += 1
        self.handler.contact_answered(msg.sender, address)
        if isinstance(msg.body, codec.ErrorResponse):
            p.deferred.errback(RemoteError(msg.body.code, msg.body.message))
        else:
            p.deferred.callback(msg)

    def _answer(self, msg: codec.Message, address: Address) -> None:
        try:
            result = self.handler.handle_request(msg, address)
        except Exception:
            self._reply_failure(Failure(), msg, address)
            return
        if isinstance(result, defer.Deferred):
            result.addCallbacks(self._reply, self._reply_failure,
                                callbackArgs=(msg, address), errbackArgs=(msg, address))
        else:
            self._reply(result, msg, address)

    def _reply(self, body: codec.Body, msg: codec.Message, address: Address) -> None:
        if self._stopped or self.transport is None:
            return
        try:
            data = codec.encode(self.network_id, msg.tid, self.node_id, body, msg.rpc)
        except (TypeError, ValueError) as e:
            log.failure("cannot encode the answer to {rpc}", rpc=msg.rpc.name, failure=Failure(e))
            body = codec.ErrorResponse(codec.ErrorCode.INTERNAL, "answer does not encode")
            data = codec.encode(self.network_id, msg.tid, self.node_id, body, msg.rpc)
        self._write(data, address)

    def _reply_failure(self, failure: Failure, msg: codec.Message, address: Address) -> None:
        if failure.check(RequestRefused):
            err = failure.value
            body = codec.ErrorResponse(err.code, err.message)
        else:
            log.failure("handler failed on {rpc} from {address}", failure=failure,
                        rpc=msg.rpc.name, address=address)
            body = codec.ErrorResponse(codec.ErrorCode.INTERNAL, "internal error")
        self.stats.errors_sent += 1
        self._reply(body, msg, address)


_RPC_OF: dict[type, codec.RPC] = {
    codec.PingRequest: codec.RPC.PING,
    codec.FindNodeRequest: codec.RPC.FIND_NODE,
    codec.FindValueRequest: codec.RPC.FIND_VALUE,
    codec.StoreRequest: codec.RPC.STORE,
    codec.GetValueRequest: codec.RPC.GET_VALUE,
}
