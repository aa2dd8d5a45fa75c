# -*- test-case-name: tests.test_dht_protocol -*-
"""The DHT's datagram protocol: frames, matches, times out and dispatches.

It knows nothing of what the RPCs mean.  Requests go to an :class:`IRequestHandler`;
answers are matched to outstanding requests by transaction id *and* by the address the
request went to.  Everything else (undecodable datagrams, another network's messages,
unknown or spoofed answers) is dropped and counted in :attr:`DHTProtocol.stats`.

Against strangers (issue 11), with the bounds of :class:`~p2pnet.dht.limits.Limits`:

* **request floods**: every request is charged to token buckets per source address, per
  prefix and in total (:mod:`p2pnet.dht.ratelimit`); a refused request is dropped
  unanswered and counted in :attr:`DHTProtocol.refused` (``rate_limited_*``).
* **amplification**: an answer to an address not yet proven (:mod:`p2pnet.dht.proof`) is
  at most ``answer_amplification`` times its request's bytes: node and value lists are
  cut to fit (``unproven_cut``), other answers are replaced by an ``UNPROVEN`` error that
  carries a token (``unproven_refused``).  Every answer carries a token bound to the
  requester's IP; requests that may get large answers carry the last token we got from
  that address, and a findnode/findval without one is padded so its answer fits.  A
  request answered ``UNPROVEN`` is sent again once, with the token (``proof_retries``).
  A store request grants its receiver a token, for the getvals that pull the value.
* **bogus contacts**: the codec drops unreachable addresses from node lists; the protocol
  also drops our own id, addresses of the other family than our socket's, and loopback
  addresses named by a non-loopback sender; all are counted as ``bogus_contact``.

The hot path (issue 10): pings are framed and received without the codec.  A datagram
of exactly a ping's length that starts as this network's pings do is taken apart by
fixed offsets, with every check of the generic path in its order (``PING_SHORTCUTS``
turns this off; tests compare both ways on mutated frames).  ``request(then=...,
otherwise=...)`` applies the caller's callback and errback inside the protocol, one
Deferred step each cheaper than ``addCallback``/``addErrback``; :meth:`DHTProtocol.ping`
is ``request(PingRequest(), ...)`` without the generic checks, and a ping's answer
builds no :class:`~p2pnet.dht.codec.Message` for a ``then``.

:func:`tune_udp_port` sizes a listening port's read size (Twisted reads 8,192 bytes per
datagram by default) and its receive buffer.
"""

from __future__ import annotations

import functools
import heapq
import math
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer, udp
from twisted.internet.abstract import isIPAddress, isIPv6Address
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
from p2pnet.dht.limits import Limits, RefusalCounter, is_loopback
from p2pnet.dht.proof import AddressProof
from p2pnet.dht.ratelimit import RateLimiter

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
        """Answer a request: a response body, or a Deferred firing with one.

        A handler may also have ``getval_size(body)``: the bytes of data its answer to
        that :class:`~p2pnet.dht.codec.GetValueRequest` would carry (None when it would
        answer with an error), known without reading the value.  The protocol then
        refuses a chunk too large for an unproven address before the handler reads it."""


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
    rate_limited: int = 0
    bogus_contacts: int = 0
    proof_retries: int = 0

    @property
    def dropped(self) -> int:
        return (self.malformed + self.wrong_network + self.from_self + self.unmatched
                + self.wrong_address + self.wrong_rpc)


class _RandomPool:
    """Cryptographically random bytes, read from the OS 4 KiB at a time (one system call
    per 512 transaction ids instead of one per request).  Transaction ids are cut from
    each read at once, and handed out by a list pop."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._buf = b""
        self._pos = 0
        #: transaction ids cut from the last read, not yet taken (protocols pop from it)
        self.tids: list[bytes] = []

    def take(self, n: int) -> bytes:
        if n == _TID_BYTES:
            tids = self.tids
            if not tids:
                buf = os.urandom(self._size - self._size % n)
                tids.extend([buf[i:i + n] for i in range(0, len(buf), n)])
            return tids.pop()
        if self._pos + n > len(self._buf):
            self._buf, self._pos = os.urandom(max(self._size, n)), 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out


_TID_BYTES = codec.TID_BYTES
#: one pool for every protocol of the process: 4 KiB, not 4 KiB per node
_SHARED_POOL = _RandomPool()


class _Pending:
    __slots__ = ("deferred", "address", "data", "timeout", "tries_left", "deadline", "rpc",
                 "tries", "body", "proof_retried", "then", "then_args", "otherwise")

    def __init__(self, deferred: defer.Deferred[Any], address: Address,
                 data: bytes, timeout: float, tries_left: int, rpc: codec.RPC,
                 body: codec.Body, then: Callable[..., Any] | None,
                 then_args: tuple[Any, ...], otherwise: Callable[[Failure], Any] | None
                 ) -> None:
        self.deferred = deferred
        self.address = address
        self.data = data
        self.timeout = timeout
        self.tries_left = tries_left
        self.tries = 1
        self.rpc = rpc
        self.deadline = 0.0
        self.body = body
        self.proof_retried = False
        self.then = then
        self.then_args = then_args
        self.otherwise = otherwise

    def fail(self, error: BaseException | Failure) -> None:
        """End with ``error``: errback, or fire with ``otherwise(failure)``."""
        _fail(self.deferred, self.otherwise, error)


def _fail(d: defer.Deferred[Any], otherwise: Callable[[Failure], Any] | None,
          error: BaseException | Failure) -> None:
    """Fire ``d`` as ``d.addErrback(otherwise)`` (when given) then ``d.errback(error)``
    would."""
    if otherwise is None:
        d.errback(error)
        return
    try:
        result = otherwise(error if isinstance(error, Failure) else Failure(error))
    except Exception:
        d.errback(Failure())
        return
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


def failed(error: BaseException, otherwise: Callable[[Failure], Any] | None = None
           ) -> defer.Deferred[Any]:
    """A Deferred already ended with ``error``, as ``addErrback(otherwise)`` (when
    given) would have it: for callers of ``request(otherwise=)`` that fail before it."""
    d: defer.Deferred[Any] = defer.Deferred()
    _fail(d, otherwise, error)
    return d


#: requests whose answers may be large: they carry our token for the address
_TOKEN_RPCS = frozenset({codec.RPC.FIND_NODE, codec.RPC.FIND_VALUE, codec.RPC.GET_VALUE})
#: requests padded when we hold no token for the address (their answers are lists)
_PAD_RPCS = frozenset({codec.RPC.FIND_NODE, codec.RPC.FIND_VALUE})
#: bytes one contact takes in a node list, by family
_NODE_BYTES = {False: codec.KEY + 1 + 4 + 2, True: codec.KEY + 1 + 16 + 2}
_VALUE_BYTES = codec.KEY + 4 + 8
#: bytes of a getval answer before its data (total, offset), and of a token
_GETVAL_HEAD = 8 + codec.TOKEN_BYTES
#: enum members as module constants: ``codec.Kind.REQUEST`` costs 0.2 us a lookup on
#: Python 3.11, and the hot path made several per datagram
_PING = codec.RPC.PING
_REQUEST = codec.Kind.REQUEST
_RESPONSE = codec.Kind.RESPONSE
_PING_BODY = codec.PingRequest()
_PONG_BODY = codec.PingResponse()
_PING_REQUEST = codec.PingRequest
_PING_RESPONSE = codec.PingResponse
#: the ping request's RPC byte (what the rate limiter charges)
_PING_BYTE = int(codec.RPC.PING)
_TOKEN_BYTES = codec.TOKEN_BYTES
_UNPROVEN = codec.ErrorResponse(codec.ErrorCode.UNPROVEN, "prove your address: send the token")


@functools.lru_cache(maxsize=4096)  # Twisted's checks are regular expressions
def ip_family(host: str) -> int:
    """4 or 6 when ``host`` is an IPv4 or IPv6 address literal, else 0 (cached for the
    whole process: every node of it sends to the same hosts)."""
    if isIPAddress(host):
        return 4
    if isIPv6Address(host):
        return 6
    return 0


def _body_size(body: Any) -> int:
    """Bytes of a findnode or findval request's body (what padding adds to)."""
    if type(body) is codec.FindNodeRequest:
        return codec.KEY
    return codec.KEY + 1 + (0 if body.index is None else codec.KEY)


class DHTProtocol(DatagramProtocol):
    """One UDP endpoint of a DHT node."""

    #: frame and receive pings without the codec (the same bytes and the same checks;
    #: tests compare a protocol with and without them)
    PING_SHORTCUTS = True

    def __init__(
        self,
        node_id: bytes,
        network_id: bytes,
        handler: Any,
        clock: IReactorTime,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        tid_source: Callable[[int], bytes] | None = None,
        limits: Limits | None = None,
        refused: RefusalCounter | None = None,
    ) -> None:
        self.node_id = node_id
        self.network_id = network_id
        self.handler = handler
        self.clock = clock
        self.timeout = timeout
        self.retries = retries
        self.stats = ProtocolStats()
        # the node's limits and refusal counter when it has them (DHTNetwork does)
        if limits is None:
            limits = getattr(handler, "limits", None)
        if refused is None:
            refused = getattr(handler, "refused", None)
        self.limits = limits = limits if isinstance(limits, Limits) else Limits()
        #: refusals and drops by kind (the node's counter when it has one)
        self.refused = refused if isinstance(refused, RefusalCounter) else RefusalCounter()
        self.limiter = RateLimiter(limits, clock.seconds)
        self.proof = AddressProof(limits, clock.seconds)
        self._tokens: dict[Address, bytes] = {}  # the last token each address gave us
        self._ipv6 = False
        # the hot path: sendto on the port's socket, for literals of its family (_write)
        self._sendto: Callable[[bytes, Address], Any] | None = None
        self._family = 4
        # pings framed without the codec: the same bytes (tests check), a third the cost
        self._ping_frame: tuple[bytes, bytes, bytes] | None = None
        # pings received without the codec (see _ping_request_in): the frames' fixed
        # starts and lengths; a length of -1 matches no datagram
        self._ping_in: tuple[bytes, int, bytes, int] = (b"", -1, b"", -1)
        # where a ping frame's transaction id starts, and its sender starts and ends
        self._ping_at = (0, 0, 0)
        if self.PING_SHORTCUTS and len(node_id) == codec.KEY \
                and 0 < len(network_id) <= codec.MAX_NETWORK_ID:
            head = bytes((codec.VERSION, len(network_id))) + network_id
            self._ping_frame = (head + bytes((codec.Kind.REQUEST, codec.RPC.PING)),
                                node_id + b"\x00",
                                head + bytes((codec.Kind.RESPONSE, codec.RPC.PING)))
            fixed = len(head) + 2 + codec.TID_BYTES + codec.KEY + 1
            at = len(head) + 2
            self._ping_at = (at, at + codec.TID_BYTES, at + codec.TID_BYTES + codec.KEY)
            self._ping_in = (self._ping_frame[0], fixed,
                             self._ping_frame[2], fixed + codec.TOKEN_BYTES)
        # bytes of a header without token, grant or padding
        self._head_size = 2 + len(network_id) + 2 + codec.TID_BYTES + codec.KEY + 1
        # transaction ids: popped from the process's pool's list (one call fewer per
        # request); an injected source is asked each time (its list stays empty)
        self._tid_source = tid_source
        self._tids = _SHARED_POOL.tids if tid_source is None else []
        # Deadlines of requests in flight, as (deadline, sequence, tid): a FIFO in that
        # order (every request with the usual timeout: an append and a popleft each; a
        # heap's pops cost a sift through every answered entry), and a heap for an entry
        # that sorts before the FIFO's last (a shorter timeout, a clock stepped back).
        self._queue: deque[tuple[float, int, bytes]] = deque()
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
        try:
            host = self.transport.getHost().host  # type: ignore[union-attr]
        except Exception:  # a transport without an address: assume IPv4
            host = ""
        self._ipv6 = ":" in host
        self._family = 6 if self._ipv6 else 4
        sock = getattr(self.transport, "socket", None)
        self._sendto = sock.sendto if isinstance(self.transport, udp.Port) and sock else None

    def stopProtocol(self) -> None:
        self._stopped = True
        self._sendto = None
        pending, self._pending = self._pending, {}
        self._deadlines = []
        self._queue.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf
        for p in pending.values():
            p.fail(ProtocolStoppedError("the DHT protocol stopped"))

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    #: :meth:`awaiting` looks through at most this many outstanding requests
    AWAITING_SCAN = 256

    def awaiting(self, address: Address) -> bool:
        """Whether a request of ours to ``address`` is outstanding (False, the safe
        answer, when more than :attr:`AWAITING_SCAN` are)."""
        pending = self._pending
        if len(pending) > self.AWAITING_SCAN:
            return False
        return any(p.address == address for p in pending.values())

    # -- client side ---------------------------------------------------------------

    def request(self, address: Address, body: codec.Body, timeout: float | None = None,
                retries: int | None = None, then: Callable[..., Any] | None = None,
                then_args: tuple[Any, ...] = (),
                otherwise: Callable[[Failure], Any] | None = None) -> defer.Deferred[Any]:
        """Send a request; the Deferred fires with the answer :class:`codec.Message`.

        Fails with :class:`RPCTimeoutError`, :class:`RemoteError` (an error answer) or
        :class:`ProtocolStoppedError`.

        ``then`` and ``otherwise`` give what ``addCallback(lambda m: then(m.sender,
        m.body, *then_args))`` and then ``addErrback(otherwise)`` would, each one
        Deferred step cheaper (and a ping's answer builds no Message): the Deferred
        fires with ``then(sender, body, *then_args)``, and a failure (an exception
        ``then`` raises too) is handed to ``otherwise``.  Both return plain values (or
        a Failure), not Deferreds.
        """
        if self._stopped or self.transport is None:
            return failed(ProtocolStoppedError("the DHT protocol is not running"),
                                otherwise)
        pending = self._pending
        tids = self._tids
        tid = tids.pop() if tids else self._new_tid()
        while tid in pending:
            tid = self._new_tid()
        frame = self._ping_frame
        if type(body) is _PING_REQUEST and frame is not None and len(tid) == _TID_BYTES:
            rpc = _PING
            data = frame[0] + tid + frame[1]  # the answer is small: no token
        else:
            rpc = _RPC_OF.get(type(body))  # type: ignore[assignment]
            if rpc is None:
                raise TypeError(f"not a request body: {body!r}")
            try:
                if rpc is _PING:
                    data = codec.encode(self.network_id, tid, self.node_id, body)
                else:
                    data = self._encode_request(tid, body, rpc, address)
            except (TypeError, ValueError) as e:
                return failed(e, otherwise)
        d: defer.Deferred[Any] = defer.Deferred()
        p = _Pending(d, address, data,
                     self.timeout if timeout is None else timeout,
                     self.retries if retries is None else retries, rpc, body,
                     then, then_args, otherwise)
        pending[tid] = p
        self.stats.requests_out += 1
        self._send_try(tid, p)
        return d

    def _new_tid(self) -> bytes:
        source = self._tid_source
        return _SHARED_POOL.take(_TID_BYTES) if source is None else source(_TID_BYTES)

    def ping(self, address: Address, then: Callable[..., Any] | None = None,
             then_args: tuple[Any, ...] = (),
             otherwise: Callable[[Failure], Any] | None = None) -> defer.Deferred[Any]:
        """``request(address, PingRequest(), then=then, then_args=then_args,
        otherwise=otherwise)``, by the shortest way: the hot path of the commonest RPC."""
        frame = self._ping_frame
        if frame is None or self._stopped or self.transport is None:
            return self.request(address, _PING_BODY, None, None, then, then_args, otherwise)
        tids = self._tids
        tid = tids.pop() if tids else self._new_tid()
        pending = self._pending
        if tid in pending or len(tid) != _TID_BYTES:  # (a clash: one in 2^64)
            return self.request(address, _PING_BODY, None, None, then, then_args, otherwise)
        d: defer.Deferred[Any] = defer.Deferred()
        p = _Pending(d, address, frame[0] + tid + frame[1], self.timeout, self.retries,
                     _PING, _PING_BODY, then, then_args, otherwise)
        pending[tid] = p
        self.stats.requests_out += 1
        self._send_try(tid, p)
        return d

    def _encode_request(self, tid: bytes, body: codec.Body, rpc: codec.RPC,
                        address: Address) -> bytes:
        """A request with our token for ``address``, or padded when we hold none."""
        token = self._tokens.get(address) if rpc in _TOKEN_RPCS else None
        if token is None and rpc in _PAD_RPCS:
            size = self._head_size + _body_size(body)
            padding = codec.padding_for(size, self.limits.request_pad_to)
            return codec.encode(self.network_id, tid, self.node_id, body, padding=padding)
        # a store offer may be pulled with getvals: grant the receiver a token for them
        grant = self.proof.token_for(address[0]) if rpc is codec.RPC.STORE else None
        return codec.encode(self.network_id, tid, self.node_id, body, token=token, grant=grant)

    def _keep_token(self, address: Address, token: bytes) -> None:
        if is_loopback(address[0]):
            # Proof is per IP, and every node on loopback shares 127.0.0.1: once any local
            # node answered a server, all are proven there.  Holding a token per local
            # server would cost ~200 bytes each and buy nothing (1,000 nodes a process).
            return
        tokens = self._tokens
        if tokens.get(address) != token:
            if address not in tokens and len(tokens) >= self.limits.token_cache_max:
                for a in list(tokens)[: len(tokens) // 2]:
                    del tokens[a]
            tokens[address] = token

    def _send_try(self, tid: bytes, p: _Pending) -> None:
        self._write(p.data, p.address)
        deadline = self.clock.seconds() + p.timeout
        p.deadline = deadline
        self._seq = seq = self._seq + 1
        queue = self._queue
        if not queue or queue[-1][0] <= deadline:
            queue.append((deadline, seq, tid))
        else:
            heapq.heappush(self._deadlines, (deadline, seq, tid))
        if deadline < self._timer_at:
            self._arm(deadline)

    # One timer for all requests, at the earliest deadline of the FIFO and the heap;
    # answered entries are dropped from the FIFO's head as answers come, and skipped
    # when due.  Right after a round of expiries the timer waits at least
    # TIMER_GRANULARITY, so a busy node does not schedule a reactor call per request.
    TIMER_GRANULARITY = 0.05

    def _arm(self, at: float) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        now = self.clock.seconds()
        if 0.0 <= now - self._last_expiry < self.TIMER_GRANULARITY:  # (a clock stepped
            # back would otherwise hold every timeout back by the size of the step)
            at = max(at, self._last_expiry + self.TIMER_GRANULARITY)
        self._timer_at = at
        self._timer = self.clock.callLater(max(0.0, at - now), self._expire)

    def _expire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self.clock.seconds()
        self._last_expiry = now
        pending = self._pending
        queue = self._queue
        heap = self._deadlines
        while True:  # the entries due, in (deadline, sequence) order across both
            if queue and queue[0][0] <= now and (not heap or queue[0] < heap[0]):
                tid = queue.popleft()[2]
            elif heap and heap[0][0] <= now:
                tid = heapq.heappop(heap)[2]
            else:
                break
            p = pending.get(tid)
            if p is not None and p.deadline <= now:
                self._timed_out(tid)
        while queue and queue[0][2] not in pending:
            queue.popleft()
        while heap and heap[0][2] not in pending:
            heapq.heappop(heap)
        if queue or heap:
            self._arm(min(queue[0][0] if queue else math.inf,
                          heap[0][0] if heap else math.inf))

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
        p.fail(RPCTimeoutError(p.rpc.name.lower(), p.address,
                               p.timeout, p.tries))

    def _write(self, data: bytes, address: Address) -> None:
        # Twisted's udp.Port.write checks the host with up to three regular-expression
        # calls per datagram; ip_family caches that check, then the socket's sendto is
        # called directly (a tenth of a ping's cost).  Other transports: write().
        sendto = self._sendto
        if sendto is not None:
            if ip_family(address[0]) == self._family:
                try:
                    sendto(data, address)
                except InterruptedError:
                    try:
                        sendto(data, address)
                    except OSError as e:
                        self._send_failed(address, e)
                        return
                except OSError as e:  # a full buffer, an unreachable host: drop, count
                    self._send_failed(address, e)
                    return
                self.stats.datagrams_out += 1
                return
        try:
            self.transport.write(data, address)  # type: ignore[union-attr]
            self.stats.datagrams_out += 1
        except Exception as e:  # a send error must not break the node
            self._send_failed(address, e)

    def _send_failed(self, address: Address, error: BaseException) -> None:
        self.stats.send_failures += 1
        log.debug("send to {address} failed: {error}", address=address, error=error)

    # -- receiving -----------------------------------------------------------------

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        stats = self.stats
        stats.datagrams_in += 1
        address: Address = addr if type(addr) is tuple and len(addr) == 2 else (addr[0], addr[1])
        size = len(datagram)
        # Pings skip the codec: a datagram of a ping's exact length that starts as this
        # network's pings do is a ping request without token, grant or padding (flags
        # byte 0, the last), or a ping answer with a token (flags byte 1, before the
        # token).  Those are exactly the frames the codec decodes to such pings, and
        # the shortcuts make the generic path's checks in its order (tests compare).
        fast = self._ping_in
        if size == fast[1]:
            if datagram[-1] == 0 and type(datagram) is bytes and datagram.startswith(fast[0]):
                self._ping_request_in(datagram, address)
                return
        elif size == fast[3] and datagram[-9] == 1 and type(datagram) is bytes \
                and datagram.startswith(fast[2]):
            self._ping_answer_in(datagram, address)
            return
        # Requests (and what claims to be one) are charged before they are decoded, so a
        # flood is refused for the price of a peek at the kind byte; the global bucket
        # is charged by the RPC byte that follows it (a store costs more than a ping; a
        # missing byte is charged as the costliest RPC).
        if size > 2 and size > 2 + datagram[1] and datagram[2 + datagram[1]] == 0:
            at = 3 + datagram[1]
            refusal = self.limiter.check(address, datagram[at] if size > at else 0)
            if refusal is not None:
                stats.rate_limited += 1
                self.refused[refusal] += 1
                return
        try:
            msg = codec.decode(datagram)
        except DecodeError:
            stats.malformed += 1
            return
        if msg.network_id != self.network_id:
            stats.wrong_network += 1
            return
        if msg.sender == self.node_id:
            stats.from_self += 1
            return
        if msg.kind is _REQUEST:
            stats.requests_in += 1
            if msg.grant is not None:
                self._keep_token(address, msg.grant)
            # the answer first, then what the request tells us of its sender (which may
            # ping it back): the requester reads our answer before our ping
            self._answer(msg, address, size)
            self.handler.contact_seen(msg.sender, address)
            return
        p = self._matched(msg.tid, address, msg.rpc)
        if p is None:
            return
        self.proof.answered(address[0])
        token = msg.token
        if token is not None:
            self._keep_token(address, token)
        body = msg.body
        if type(body) is codec.ErrorResponse and body.code == codec.ErrorCode.UNPROVEN \
                and token is not None and not p.proof_retried:
            # the answer was too large for an address it could not trust: once more,
            # with the token it just gave us
            p.proof_retried = True
            stats.proof_retries += 1
            grant = self.proof.token_for(address[0]) if p.rpc is codec.RPC.STORE else None
            p.data = codec.encode(self.network_id, msg.tid, self.node_id, p.body, token=token,
                                  grant=grant)
            self._send_try(msg.tid, p)
            return
        if type(body) is codec.NodesResponse:
            msg.body = body = self._sane_contacts(body, address)
        self._settle(msg.tid, p, msg.sender, body, address, msg)

    def _ping_request_in(self, datagram: bytes, address: Address) -> None:
        """A ping request without token, grant or padding, of this network (checked)."""
        refusal = self.limiter.check(address, _PING_BYTE)
        if refusal is not None:
            self.stats.rate_limited += 1
            self.refused[refusal] += 1
            return
        at, sender_at, end = self._ping_at
        sender = datagram[sender_at:end]
        if sender == self.node_id:
            self.stats.from_self += 1
            return
        self.stats.requests_in += 1
        handler = self.handler
        tid = datagram[at:sender_at]
        msg = codec.Message(self.network_id, _REQUEST, _PING, tid, sender, _PING_BODY,
                            None, 0, None)
        try:
            result = handler.handle_request(msg, address)
        except Exception:
            self._reply_failure(Failure(), msg, address, len(datagram))
        else:
            if type(result) is _PING_RESPONSE:  # what _reply does with it, one call sooner
                if not self._stopped and self.transport is not None:
                    self._pong(tid, address)
            else:
                self._answered(result, msg, address, len(datagram))
        handler.contact_seen(sender, address)  # after the answer, as on the generic path

    def _matched(self, tid: bytes, address: Address, rpc: codec.RPC) -> _Pending | None:
        """The request an answer of ``rpc`` from ``address`` with ``tid`` settles, or None
        (counted: no such request, another address, another RPC)."""
        p = self._pending.get(tid)
        if p is None:
            self.stats.unmatched += 1
        elif p.address != address:
            self.stats.wrong_address += 1
        elif p.rpc is not rpc:
            self.stats.wrong_rpc += 1
        else:
            return p
        return None

    def _ping_answer_in(self, datagram: bytes, address: Address) -> None:
        """A ping answer with a token, of this network (checked)."""
        stats = self.stats
        at, sender_at, end = self._ping_at
        sender = datagram[sender_at:end]
        if sender == self.node_id:
            stats.from_self += 1
            return
        tid = datagram[at:sender_at]
        p = self._pending.get(tid)  # _matched, inline: the hot path
        if p is None or p.address != address or p.rpc is not _PING:
            self._matched(tid, address, _PING)  # counts why
            return
        host = address[0]
        self.proof.answered(host)
        token = datagram[-_TOKEN_BYTES:]
        self._keep_token(address, token)
        # the Message only when the caller takes it (a ``then`` takes sender and body)
        self._settle(tid, p, sender, _PONG_BODY, address,
                     None if p.then is not None else
                     codec.Message(self.network_id, _RESPONSE, _PING, tid, sender,
                                   _PONG_BODY, token, 0, None))

    def _settle(self, tid: bytes, p: _Pending, sender: bytes, body: codec.Body,
                address: Address, msg: codec.Message | None) -> None:
        """Fire the request ``tid`` with its accepted answer from ``sender``: ``then``'s
        result, or the answer's ``msg`` (which a request without ``then`` has)."""
        pending = self._pending
        del pending[tid]
        if not pending:
            # nothing outstanding: every deadline left is of an answered request (at a
            # thousand requests a second, 2,000 entries held for nothing)
            self._deadlines.clear()
            self._queue.clear()
        else:
            queue = self._queue  # answers come mostly in order: the head is answered
            while queue and queue[0][2] not in pending:
                queue.popleft()
        self.stats.responses_in += 1
        self.handler.contact_answered(sender, address)
        if type(body) is codec.ErrorResponse:
            p.fail(RemoteError(body.code, body.message))
            return
        then = p.then
        if then is None:
            p.deferred.callback(msg)
            return
        try:
            result = then(sender, body, *p.then_args)
        except Exception:
            p.fail(Failure())
            return
        if isinstance(result, Failure):  # as addCallback(then).addErrback(otherwise)
            p.fail(result)
        else:
            p.deferred.callback(result)

    def _sane_contacts(self, body: codec.NodesResponse, address: Address
                       ) -> codec.NodesResponse:
        """Drop our own id, the other family's addresses, and loopback addresses named
        by a non-loopback sender; count them with what the codec dropped."""
        own, ipv6 = self.node_id, self._ipv6
        local = is_loopback(address[0])
        kept = [n for n in body.nodes
                if n.key != own and (":" in n.host) == ipv6
                and (local or not is_loopback(n.host))]
        dropped = body.dropped + len(body.nodes) - len(kept)
        if dropped:
            self.stats.bogus_contacts += dropped
            self.refused["bogus_contact"] += dropped
            return codec.NodesResponse(tuple(kept), dropped)
        return body

    def _answer(self, msg: codec.Message, address: Address, size: int) -> None:
        body = msg.body
        if type(body) is codec.GetValueRequest:
            # a chunk too large for an unproven address is refused before it is read:
            # the requester's retry with the token reads it once, not twice
            sizer = getattr(self.handler, "getval_size", None)
            bound = self.limits.answer_amplification * size
            if sizer is not None and bound:
                data = sizer(body)
                if data is not None and self._head_size + _GETVAL_HEAD + data > bound \
                        and not self.proof.is_proven(address[0], msg.token):
                    self._write(self._unproven(msg, self.proof.token_for(address[0])),
                                address)
                    return
        try:
            result = self.handler.handle_request(msg, address)
        except Exception:
            self._reply_failure(Failure(), msg, address, size)
            return
        self._answered(result, msg, address, size)

    def _answered(self, result: Any, msg: codec.Message, address: Address, size: int
                  ) -> None:
        """Send the handler's ``result`` (an answer body, or a Deferred of one)."""
        if type(result) in _ANSWER_TYPES:  # the common case, without an ABC isinstance
            self._reply(result, msg, address, size)
        elif isinstance(result, defer.Deferred):
            result.addCallbacks(self._reply, self._reply_failure,
                                callbackArgs=(msg, address, size),
                                errbackArgs=(msg, address, size))
        else:
            self._reply(result, msg, address, size)

    def _reply(self, body: codec.Body, msg: codec.Message, address: Address,
               size: int) -> None:
        if self._stopped or self.transport is None:
            return
        if type(body) is _PING_RESPONSE and self._ping_frame is not None:
            self._pong(msg.tid, address)
            return
        ip = address[0]
        token = self.proof.token_for(ip)
        try:
            data = codec.encode(self.network_id, msg.tid, self.node_id, body, msg.rpc, token)
        except (TypeError, ValueError) as e:
            log.failure("cannot encode the answer to {rpc}", rpc=msg.rpc.name, failure=Failure(e))
            body = codec.ErrorResponse(codec.ErrorCode.INTERNAL, "answer does not encode")
            data = codec.encode(self.network_id, msg.tid, self.node_id, body, msg.rpc, token)
        bound = self.limits.answer_amplification * size
        if bound and len(data) > bound and not self.proof.is_proven(ip, msg.token):
            data = self._fit(body, msg, token, len(data), int(bound))
        self._write(data, address)

    def _pong(self, tid: bytes, address: Address) -> None:
        """Answer a ping (framed without the codec: the same bytes)."""
        self._write(self._ping_frame[2] + tid + self.node_id  # type: ignore[index]
                    + b"\x01" + self.proof.token_for(address[0]), address)

    def _fit(self, body: codec.Body, msg: codec.Message, token: bytes, size: int,
             bound: int) -> bytes:
        """An answer of at most ``bound`` bytes for an unproven address: a cut list, or
        an ``UNPROVEN`` error carrying the token."""
        excess = size - bound
        cut: codec.Body | None = None
        if type(body) is codec.NodesResponse:
            keep = list(body.nodes)
            while keep and excess > 0:
                excess -= _NODE_BYTES[":" in keep.pop().host]
            if keep:
                cut = codec.NodesResponse(tuple(keep))
        elif type(body) is codec.ValuesResponse:
            values = body.values
            if body.data is not None:  # the inline bytes go first: the rest still helps
                excess -= len(body.data)
                if excess <= 0:
                    cut = codec.ValuesResponse(values)
            if cut is None:
                drop = -(-excess // _VALUE_BYTES)
                if drop < len(values):
                    cut = codec.ValuesResponse(values[:len(values) - drop])
        if cut is not None:
            self.refused["unproven_cut"] += 1
            return codec.encode(self.network_id, msg.tid, self.node_id, cut, msg.rpc, token)
        return self._unproven(msg, token)

    def _unproven(self, msg: codec.Message, token: bytes) -> bytes:
        """An ``UNPROVEN`` error answering ``msg``, with the token to retry with."""
        self.refused["unproven_refused"] += 1
        return codec.encode(self.network_id, msg.tid, self.node_id, _UNPROVEN, msg.rpc, token)

    def _reply_failure(self, failure: Failure, msg: codec.Message, address: Address,
                       size: int) -> None:
        if failure.check(RequestRefused):
            err = failure.value
            body = codec.ErrorResponse(err.code, err.message)
        else:
            log.failure("handler failed on {rpc} from {address}", failure=failure,
                        rpc=msg.rpc.name, address=address)
            body = codec.ErrorResponse(codec.ErrorCode.INTERNAL, "internal error")
        self.stats.errors_sent += 1
        self._reply(body, msg, address, size)


def tune_udp_port(port: Any, receive_buffer: int | None = None) -> int:
    """Make a listening Twisted UDP port read whole datagrams, and size its buffer.

    Twisted's ``udp.Port`` reads at most ``maxPacketSize`` (8,192) bytes per datagram and
    silently cuts the rest; this sets it to :data:`codec.MAX_DATAGRAM` + 1, so every
    datagram the codec accepts arrives whole (and one byte more is seen as too large).
    ``receive_buffer`` (default ``Limits().udp_receive_buffer``) is asked for as
    ``SO_RCVBUF``, so bursts wait in the kernel instead of being dropped.  Returns the
    receive buffer the kernel granted (0 when the port has no socket).
    """
    port.maxPacketSize = codec.MAX_DATAGRAM + 1
    sock = getattr(port, "socket", None)
    if sock is None:
        return 0
    wanted = Limits().udp_receive_buffer if receive_buffer is None else receive_buffer
    try:
        if wanted > 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    except OSError as e:
        log.warn("cannot size the UDP receive buffer: {error}", error=e)
        return 0


#: answer bodies a handler returns directly
_ANSWER_TYPES = frozenset({codec.PingResponse, codec.NodesResponse, codec.ValuesResponse,
                           codec.StoreResponse, codec.GetValueResponse, codec.ErrorResponse})

_RPC_OF: dict[type, codec.RPC] = {
    codec.PingRequest: codec.RPC.PING,
    codec.FindNodeRequest: codec.RPC.FIND_NODE,
    codec.FindValueRequest: codec.RPC.FIND_VALUE,
    codec.StoreRequest: codec.RPC.STORE,
    codec.GetValueRequest: codec.RPC.GET_VALUE,
}
