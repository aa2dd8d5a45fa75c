"""Tests for :mod:`p2pnet.dht.protocol`: matching, timeouts, retries, dispatch, counters.

The protocol is driven directly: a recording transport captures what it sends, the
tests craft the datagrams it receives with :mod:`p2pnet.dht.codec`, and a
``task.Clock`` is the only time there is.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from p2pnet import ids
from p2pnet.dht import codec
from p2pnet.dht.errors import (
    DecodeError,
    ProtocolStoppedError,
    RemoteError,
    RPCTimeoutError,
)
from p2pnet.dht.protocol import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DHTProtocol,
    IRequestHandler,
    RequestRefused,
)
from p2pnet.models import Node

NETWORK = b"p2pnet-test"
OWN_ID = ids.key_for(b"own node")
PEER_ID = ids.key_for(b"peer node")
OTHER_ID = ids.key_for(b"other node")
HERE = ("10.0.0.1", 4000)
PEER = ("10.0.0.2", 4000)
ELSEWHERE = ("10.0.0.3", 4000)


class RecordingTransport:
    """A datagram transport that keeps what is written (an ``IUDPTransport`` fake)."""

    def __init__(self, protocol: DHTProtocol, address: tuple[str, int] = HERE) -> None:
        self.protocol = protocol
        self.address = address
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.written.append((data, addr))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", *self.address)

    def stopListening(self) -> defer.Deferred[None]:
        self.protocol.doStop()
        return defer.succeed(None)


class FailingTransport(RecordingTransport):
    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        raise OSError("network unreachable")


@implementer(IRequestHandler)
class RecordingHandler:
    """Answers pings, findnode with no nodes; ``respond`` can be replaced per test."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, tuple[str, int]]] = []
        self.requests: list[codec.Message] = []
        self.respond: Any = None

    def contact_seen(self, node_id: bytes, address: tuple[str, int]) -> None:
        self.seen.append((node_id, address))

    def contact_answered(self, node_id: bytes, address: tuple[str, int]) -> None:
        self.seen.append((node_id, address))

    def handle_request(self, message: codec.Message, address: tuple[str, int]) -> Any:
        self.requests.append(message)
        if self.respond is not None:
            return self.respond(message, address)
        if isinstance(message.body, codec.PingRequest):
            return codec.PingResponse()
        return codec.NodesResponse(())


def counting_tids() -> Any:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


class ProtocolTestMixin:
    """A protocol on a recording transport, with a Clock and a recording handler."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.handler = RecordingHandler()
        self.proto = self.make_protocol()
        self.transport = RecordingTransport(self.proto)
        self.proto.makeConnection(self.transport)  # type: ignore[arg-type]

    def make_protocol(self, **kw: Any) -> DHTProtocol:
        kw.setdefault("tid_source", counting_tids())
        return DHTProtocol(OWN_ID, NETWORK, self.handler, self.clock, **kw)

    def sent(self, i: int = -1) -> tuple[codec.Message, tuple[str, int]]:
        data, addr = self.transport.written[i]
        return codec.decode(data), addr

    def answer(self, request: codec.Message, body: codec.Body, sender: bytes = PEER_ID,
               address: tuple[str, int] = PEER, network: bytes = NETWORK,
               tid: bytes | None = None) -> None:
        data = codec.encode(network, request.tid if tid is None else tid, sender, body,
                            request.rpc)
        self.proto.datagramReceived(data, address)

    def request_to_us(self, body: codec.Body, sender: bytes = PEER_ID,
                      address: tuple[str, int] = PEER, tid: bytes = b"T" * 8,
                      network: bytes = NETWORK) -> None:
        self.proto.datagramReceived(codec.encode(network, tid, sender, body), address)


class ClientSideTests(ProtocolTestMixin, SynchronousTestCase):
    def test_handler_interface(self) -> None:
        verifyObject(IRequestHandler, self.handler)

    def test_request_gets_answer(self) -> None:
        d = self.proto.request(PEER, codec.PingRequest())
        self.assertNoResult(d)
        msg, addr = self.sent()
        self.assertEqual(addr, PEER)
        self.assertEqual((msg.kind, msg.rpc, msg.network_id, msg.sender),
                         (codec.Kind.REQUEST, codec.RPC.PING, NETWORK, OWN_ID))
        self.answer(msg, codec.PingResponse())
        reply = self.successResultOf(d)
        self.assertEqual(reply.body, codec.PingResponse())
        self.assertEqual(reply.sender, PEER_ID)
        self.assertEqual(self.proto.outstanding, 0)
        # No retry or timeout follows the answer (a timer may stay armed until then).
        self.clock.advance((DEFAULT_RETRIES + 1) * DEFAULT_TIMEOUT)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        stats = self.proto.stats
        self.assertEqual((stats.retries, stats.timeouts), (0, 0))
        self.assertEqual((stats.requests_out, stats.responses_in, stats.datagrams_out,
                          stats.datagrams_in, stats.dropped), (1, 1, 1, 1, 0))

    def test_answered_deadlines_not_kept(self) -> None:
        """Once nothing is outstanding, no deadline of an answered request is held; one
        still outstanding keeps its own and times out as before."""
        def held() -> int:
            return len(self.proto._queue) + len(self.proto._deadlines)

        d1 = self.proto.request(PEER, codec.PingRequest())
        d2 = self.proto.request(PEER, codec.PingRequest())
        d3 = self.proto.request(PEER, codec.PingRequest())
        m1, m2, m3 = (self.sent(i)[0] for i in range(3))
        self.answer(m2, codec.PingResponse())
        self.assertEqual(held(), 3)  # answered out of order: d2's waits behind d1's
        self.answer(m1, codec.PingResponse())
        self.assertEqual(held(), 1)  # the answered head and what followed it are gone
        self.answer(m3, codec.PingResponse())
        for d in (d1, d2, d3):
            self.successResultOf(d)
        self.assertEqual(held(), 0)
        d4 = self.proto.request(PEER, codec.PingRequest(), retries=0)
        self.clock.advance(DEFAULT_TIMEOUT)
        self.failureResultOf(d4, RPCTimeoutError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answers_matched_by_tid(self) -> None:
        d1 = self.proto.request(PEER, codec.FindNodeRequest(OTHER_ID))
        d2 = self.proto.request(PEER, codec.FindNodeRequest(PEER_ID))
        m1, _ = self.sent(0)
        m2, _ = self.sent(1)
        self.assertNotEqual(m1.tid, m2.tid)
        node = Node(OTHER_ID, "10.0.0.9", 1)
        self.answer(m2, codec.NodesResponse((node,)))
        self.answer(m1, codec.NodesResponse(()))
        self.assertEqual(self.successResultOf(d1).body.nodes, ())
        self.assertEqual(self.successResultOf(d2).body.nodes, (node,))

    def test_colliding_tid_is_drawn_again(self) -> None:
        tids = iter([b"A" * 8, b"A" * 8, b"B" * 8])
        proto = self.make_protocol(tid_source=lambda n: next(tids))
        proto.makeConnection(RecordingTransport(proto))  # type: ignore[arg-type]
        proto.request(PEER, codec.PingRequest())
        proto.request(PEER, codec.PingRequest())
        self.assertEqual(sorted(proto._pending), [b"A" * 8, b"B" * 8])

    def test_answer_from_other_address_dropped(self) -> None:
        d = self.proto.request(PEER, codec.PingRequest())
        msg, _ = self.sent()
        self.answer(msg, codec.PingResponse(), address=ELSEWHERE)
        self.assertNoResult(d)
        self.assertEqual(self.proto.stats.wrong_address, 1)
        self.assertEqual(self.handler.seen, [])
        # The genuine answer still matches afterwards.
        self.answer(msg, codec.PingResponse())
        self.successResultOf(d)
        self.assertEqual(self.handler.seen, [(PEER_ID, PEER)])

    def test_answer_from_other_port_dropped(self) -> None:
        d = self.proto.request(PEER, codec.PingRequest())
        msg, _ = self.sent()
        self.answer(msg, codec.PingResponse(), address=(PEER[0], PEER[1] + 1))
        self.assertNoResult(d)
        self.assertEqual(self.proto.stats.wrong_address, 1)

    def test_answer_for_other_rpc_dropped(self) -> None:
        d = self.proto.request(PEER, codec.PingRequest())
        msg, _ = self.sent()
        data = codec.encode(NETWORK, msg.tid, PEER_ID, codec.NodesResponse(()),
                            codec.RPC.FIND_NODE)
        self.proto.datagramReceived(data, PEER)
        self.assertNoResult(d)
        self.assertEqual(self.proto.stats.wrong_rpc, 1)
        self.assertEqual(self.proto.stats.wrong_address, 0)

    def test_unknown_tid_dropped(self) -> None:
        d = self.proto.request(PEER, codec.PingRequest())
        msg, _ = self.sent()
        self.answer(msg, codec.PingResponse(), tid=b"\xff" * 8)
        self.assertNoResult(d)
        self.assertEqual(self.proto.stats.unmatched, 1)
        self.assertEqual(self.handler.seen, [])

    def test_duplicate_answer_dropped(self) -> None:
        d = self.proto.request(PEER, codec.PingRequest())
        msg, _ = self.sent()
        self.answer(msg, codec.PingResponse())
        self.answer(msg, codec.PingResponse())
        self.successResultOf(d)
        self.assertEqual(self.proto.stats.unmatched, 1)
        self.assertEqual(self.proto.stats.responses_in, 1)

    def test_other_network_dropped(self) -> None:
        d = self.proto.request(PEER, codec.PingRequest())
        msg, _ = self.sent()
        self.answer(msg, codec.PingResponse(), network=b"another")
        self.request_to_us(codec.PingRequest(), network=b"another")
        self.assertNoResult(d)
        self.assertEqual(self.proto.stats.wrong_network, 2)
        self.assertEqual(self.handler.requests, [])
        self.assertEqual(self.handler.seen, [])
        self.assertEqual(len(self.transport.written), 1)  # nothing answered

    def test_own_id_dropped(self) -> None:
        d = self.proto.request(PEER, codec.PingRequest())
        msg, _ = self.sent()
        self.answer(msg, codec.PingResponse(), sender=OWN_ID)
        self.request_to_us(codec.PingRequest(), sender=OWN_ID)
        self.assertNoResult(d)
        self.assertEqual(self.proto.stats.from_self, 2)
        self.assertEqual(self.handler.requests, [])
        self.assertEqual(self.handler.seen, [])

    def test_garbage_dropped(self) -> None:
        d = self.proto.request(PEER, codec.PingRequest())
        msg, _ = self.sent()
        good = codec.encode(NETWORK, msg.tid, PEER_ID, codec.PingResponse())
        for junk in [b"", b"\x00", b"\xff" * 100, good[:-1], good + b"\x00", good[:10]]:
            self.proto.datagramReceived(junk, PEER)
        self.assertNoResult(d)
        self.assertEqual(self.proto.stats.malformed, 6)
        self.assertEqual(self.proto.stats.dropped, 6)
        self.assertEqual(self.handler.seen, [])

    def test_clock_stepping_back_does_not_hold_timeouts_back(self) -> None:
        """A wall clock set back (an NTP step) after a round of expiries: a new request
        still times out after its own timeout, not after the step as well."""
        first = self.proto.request(PEER, codec.PingRequest(), timeout=1.0, retries=0)
        self.clock.advance(1.0)
        self.failureResultOf(first, RPCTimeoutError)
        self.clock.advance(-100.0)  # the clock is set back
        d = self.proto.request(PEER, codec.PingRequest(), timeout=1.0, retries=0)
        self.clock.advance(0.999)
        self.assertNoResult(d)
        self.clock.advance(0.002)
        self.failureResultOf(d, RPCTimeoutError)

    def test_timeout_after_retries(self) -> None:
        d = self.proto.request(PEER, codec.PingRequest())
        total = (DEFAULT_RETRIES + 1) * DEFAULT_TIMEOUT
        self.clock.advance(DEFAULT_TIMEOUT - 0.001)
        self.assertEqual(len(self.transport.written), 1)
        self.clock.advance(0.001)
        self.assertEqual(len(self.transport.written), 2)  # the retry
        self.assertEqual(self.transport.written[0], self.transport.written[1])
        self.assertEqual(self.proto.stats.retries, 1)
        self.clock.advance(total - self.clock.seconds() - 0.001)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        f = self.failureResultOf(d, RPCTimeoutError)
        self.assertEqual(f.value.address, PEER)
        self.assertEqual(f.value.rpc, "ping")
        self.assertIn("2 tries", str(f.value))
        self.assertEqual(self.proto.stats.timeouts, 1)
        self.assertEqual(self.proto.outstanding, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answer_to_retry_matches(self) -> None:
        d = self.proto.request(PEER, codec.PingRequest())
        self.clock.advance(DEFAULT_TIMEOUT)
        msg, _ = self.sent()
        self.answer(msg, codec.PingResponse())
        self.successResultOf(d)
        self.clock.advance(DEFAULT_TIMEOUT)
        self.assertEqual(len(self.transport.written), 2)  # no third try
        self.assertEqual(self.proto.stats.timeouts, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # An answer after the timeout is unmatched.
        d2 = self.proto.request(PEER, codec.PingRequest())
        self.clock.pump([DEFAULT_TIMEOUT] * (DEFAULT_RETRIES + 1))
        self.failureResultOf(d2, RPCTimeoutError)
        late, _ = self.sent()
        self.answer(late, codec.PingResponse())
        self.assertEqual(self.proto.stats.unmatched, 1)

    def test_configurable_timeout_and_retries(self) -> None:
        proto = self.make_protocol(timeout=0.5, retries=3)
        transport = RecordingTransport(proto)
        proto.makeConnection(transport)  # type: ignore[arg-type]
        d = proto.request(PEER, codec.PingRequest())
        self.clock.pump([0.5, 0.5, 0.5, 0.499])
        self.assertNoResult(d)
        self.clock.advance(0.001)
        self.failureResultOf(d, RPCTimeoutError)
        self.assertEqual(len(transport.written), 4)
        self.assertEqual(proto.stats.retries, 3)

    def test_per_request_timeout(self) -> None:
        d = self.proto.request(PEER, codec.PingRequest(), timeout=10.0, retries=0)
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, RPCTimeoutError)
        self.assertEqual(len(self.transport.written), 1)

    def test_error_answer_is_remote_error(self) -> None:
        d = self.proto.request(PEER, codec.FindNodeRequest(OTHER_ID))
        msg, _ = self.sent()
        self.answer(msg, codec.ErrorResponse(codec.ErrorCode.NOT_FOUND, "nope"))
        f = self.failureResultOf(d, RemoteError)
        self.assertEqual((f.value.code, f.value.message), (codec.ErrorCode.NOT_FOUND, "nope"))
        self.assertEqual(self.handler.seen, [(PEER_ID, PEER)])  # it answered: a contact

    def test_awaiting_an_address(self) -> None:
        self.assertFalse(self.proto.awaiting(PEER))
        d = self.proto.request(PEER, codec.PingRequest())
        self.assertTrue(self.proto.awaiting(PEER))
        self.assertFalse(self.proto.awaiting((PEER[0], PEER[1] + 1)))
        msg, _ = self.sent()
        self.answer(msg, codec.PingResponse())
        self.successResultOf(d)
        self.assertFalse(self.proto.awaiting(PEER))
        # past the scan bound the answer is the safe one: not awaiting
        self.proto.AWAITING_SCAN = 2
        ds = [self.proto.request(PEER, codec.PingRequest()) for _ in range(3)]
        self.assertFalse(self.proto.awaiting(PEER))
        self.transport.stopListening()
        for d in ds:
            self.failureResultOf(d, ProtocolStoppedError)

    def test_stop_errbacks_outstanding(self) -> None:
        ds = [self.proto.request(PEER, codec.PingRequest()) for _ in range(3)]
        self.transport.stopListening()
        for d in ds:
            self.failureResultOf(d, ProtocolStoppedError)
        self.assertEqual(self.proto.outstanding, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.failureResultOf(self.proto.request(PEER, codec.PingRequest()),
                             ProtocolStoppedError)

    def test_restart_after_stop(self) -> None:
        self.transport.stopListening()
        transport = RecordingTransport(self.proto)
        self.proto.makeConnection(transport)  # type: ignore[arg-type]
        d = self.proto.request(PEER, codec.PingRequest())
        msg = codec.decode(transport.written[-1][0])
        self.proto.datagramReceived(
            codec.encode(NETWORK, msg.tid, PEER_ID, codec.PingResponse()), PEER)
        self.successResultOf(d)

    def test_not_a_request_body(self) -> None:
        self.assertRaises(TypeError, self.proto.request, PEER, codec.PingResponse())
        self.assertEqual(self.proto.outstanding, 0)

    def test_send_failure_counted(self) -> None:
        proto = self.make_protocol(timeout=1.0, retries=0)
        proto.makeConnection(FailingTransport(proto))  # type: ignore[arg-type]
        d = proto.request(PEER, codec.PingRequest())
        self.assertEqual(proto.stats.send_failures, 1)
        self.clock.advance(1.0)
        self.failureResultOf(d, RPCTimeoutError)


class ServerSideTests(ProtocolTestMixin, SynchronousTestCase):
    def test_request_answered(self) -> None:
        self.request_to_us(codec.PingRequest(), tid=b"12345678")
        msg, addr = self.sent()
        self.assertEqual(addr, PEER)
        self.assertEqual((msg.kind, msg.rpc, msg.tid, msg.sender, msg.body),
                         (codec.Kind.RESPONSE, codec.RPC.PING, b"12345678", OWN_ID,
                          codec.PingResponse()))
        self.assertEqual(self.proto.stats.requests_in, 1)

    def test_every_valid_message_calls_contact_seen(self) -> None:
        self.request_to_us(codec.PingRequest())
        self.request_to_us(codec.FindNodeRequest(OWN_ID), sender=OTHER_ID, address=ELSEWHERE)
        d = self.proto.request(PEER, codec.PingRequest())
        msg, _ = self.sent()
        self.answer(msg, codec.PingResponse())
        self.successResultOf(d)
        self.assertEqual(self.handler.seen,
                         [(PEER_ID, PEER), (OTHER_ID, ELSEWHERE), (PEER_ID, PEER)])

    def test_refused_gives_error_answer(self) -> None:
        def refuse(message: codec.Message, address: Any) -> Any:
            raise RequestRefused(codec.ErrorCode.NOT_FOUND, "value not held")

        self.handler.respond = refuse
        self.request_to_us(codec.FindNodeRequest(OTHER_ID))
        msg, _ = self.sent()
        self.assertEqual((msg.kind, msg.rpc), (codec.Kind.ERROR, codec.RPC.FIND_NODE))
        self.assertEqual(msg.body, codec.ErrorResponse(codec.ErrorCode.NOT_FOUND,
                                                       "value not held"))
        self.assertEqual(self.proto.stats.errors_sent, 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_deferred_refusal_gives_error_answer(self) -> None:
        pending: defer.Deferred[Any] = defer.Deferred()
        self.handler.respond = lambda m, a: pending
        self.request_to_us(codec.PingRequest())
        self.assertEqual(self.transport.written, [])
        pending.errback(RequestRefused(codec.ErrorCode.BAD_REQUEST, "later"))
        msg, _ = self.sent()
        self.assertEqual(msg.body, codec.ErrorResponse(codec.ErrorCode.BAD_REQUEST, "later"))

    def test_deferred_answer(self) -> None:
        pending: defer.Deferred[Any] = defer.Deferred()
        self.handler.respond = lambda m, a: pending
        self.request_to_us(codec.PingRequest())
        self.assertEqual(self.transport.written, [])
        pending.callback(codec.PingResponse())
        msg, _ = self.sent()
        self.assertEqual((msg.kind, msg.body), (codec.Kind.RESPONSE, codec.PingResponse()))

    def test_handler_crash_gives_internal_error(self) -> None:
        def crash(message: codec.Message, address: Any) -> Any:
            raise ZeroDivisionError("oops")

        self.handler.respond = crash
        self.request_to_us(codec.PingRequest())
        msg, _ = self.sent()
        self.assertEqual(msg.kind, codec.Kind.ERROR)
        self.assertEqual(msg.body.code, codec.ErrorCode.INTERNAL)
        self.assertNotIn("oops", msg.body.message)  # no internals leak
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        # The node keeps working.
        self.handler.respond = None
        self.request_to_us(codec.PingRequest(), tid=b"again!!!")
        msg, _ = self.sent()
        self.assertEqual((msg.kind, msg.tid), (codec.Kind.RESPONSE, b"again!!!"))

    def test_deferred_crash_gives_internal_error(self) -> None:
        self.handler.respond = lambda m, a: defer.fail(KeyError("boom"))
        self.request_to_us(codec.PingRequest())
        msg, _ = self.sent()
        self.assertEqual(msg.body.code, codec.ErrorCode.INTERNAL)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_unencodable_answer_gives_internal_error(self) -> None:
        too_many = tuple(Node(ids.key_for(bytes([i])), "10.0.1.1", 1000 + i)
                         for i in range(codec.MAX_NODES + 1))
        self.handler.respond = lambda m, a: codec.NodesResponse(too_many)
        self.request_to_us(codec.FindNodeRequest(OTHER_ID))
        msg, _ = self.sent()
        self.assertEqual(msg.body.code, codec.ErrorCode.INTERNAL)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_no_answer_after_stop(self) -> None:
        pending: defer.Deferred[Any] = defer.Deferred()
        self.handler.respond = lambda m, a: pending
        self.request_to_us(codec.PingRequest())
        self.transport.stopListening()
        pending.callback(codec.PingResponse())
        self.assertEqual(self.transport.written, [])


_HEADER = bytes([codec.VERSION, len(NETWORK)]) + NETWORK


class ArbitraryBytesTests(SynchronousTestCase):
    """Whatever arrives, ``datagramReceived`` returns quietly and counts it."""

    def make(self) -> tuple[DHTProtocol, RecordingTransport, RecordingHandler]:
        handler = RecordingHandler()
        proto = DHTProtocol(OWN_ID, NETWORK, handler, task.Clock())
        transport = RecordingTransport(proto)
        proto.makeConnection(transport)  # type: ignore[arg-type]
        return proto, transport, handler

    @given(st.binary(max_size=300))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        proto, transport, handler = self.make()
        proto.datagramReceived(data, PEER)
        try:
            codec.decode(data)
        except DecodeError:
            self.assertEqual(proto.stats.malformed, 1)
            self.assertEqual(handler.seen, [])
            self.assertEqual(transport.written, [])
        self.assertEqual(proto.stats.datagrams_in, 1)

    @given(st.binary(max_size=120))
    def test_arbitrary_bodies_after_a_valid_header(self, tail: bytes) -> None:
        # Past the network id, so hypothesis explores the kind/rpc/body decoders.
        proto, transport, handler = self.make()
        data = _HEADER + tail
        proto.datagramReceived(data, PEER)
        try:
            msg = codec.decode(data)
        except DecodeError:
            self.assertEqual(proto.stats.malformed, 1)
            return
        self.assertEqual(proto.stats.malformed, 0)
        if msg.sender == OWN_ID:
            self.assertEqual(proto.stats.from_self, 1)
        elif msg.kind == codec.Kind.REQUEST:
            self.assertEqual(handler.seen, [(msg.sender, PEER)])
            self.assertEqual(len(transport.written), 1)
        else:
            self.assertEqual(proto.stats.unmatched, 1)
        self.assertEqual(self.flushLoggedErrors(), [])


# -- defences against strangers (issue 11 #4 #13 #14) ---------------------------------------


class WireDefenceTests(ProtocolTestMixin, SynchronousTestCase):
    def raw_request(self, body: codec.Body, address: tuple[str, int] = PEER,
                    token: bytes | None = None, padding: int = 0,
                    grant: bytes | None = None) -> int:
        data = codec.encode(NETWORK, b"T" * 8, PEER_ID, body, None, token, padding, grant)
        self.proto.datagramReceived(data, address)
        return len(data)

    def test_ping_frames_equal_the_codec(self) -> None:
        """The protocol's own ping framing is the codec's, byte for byte."""
        self.proto.request(PEER, codec.PingRequest())
        data, _ = self.transport.written[-1]
        msg = codec.decode(data)
        self.assertEqual(data, codec.encode(NETWORK, msg.tid, OWN_ID, codec.PingRequest()))
        self.raw_request(codec.PingRequest())
        data, _ = self.transport.written[-1]
        token = self.proto.proof.token_for(PEER[0])
        self.assertEqual(data, codec.encode(NETWORK, b"T" * 8, OWN_ID, codec.PingResponse(),
                                            codec.RPC.PING, token))

    def test_every_answer_carries_a_token_for_the_ip(self) -> None:
        self.raw_request(codec.FindNodeRequest(OTHER_ID))
        msg, _ = self.sent()
        self.assertEqual(msg.token, self.proto.proof.token_for(PEER[0]))
        self.raw_request(codec.FindNodeRequest(OTHER_ID), address=ELSEWHERE)
        msg2, _ = self.sent()
        self.assertNotEqual(msg2.token, msg.token)

    def test_findnode_padded_until_a_token_is_held(self) -> None:
        limits = self.proto.limits
        self.proto.request(PEER, codec.FindNodeRequest(OTHER_ID))
        data, _ = self.transport.written[-1]
        msg = codec.decode(data)
        self.assertGreaterEqual(len(data), limits.request_pad_to)
        self.assertIsNone(msg.token)
        self.answer(msg, codec.NodesResponse(()), )
        # the answer carried no token: still padded
        self.proto.request(PEER, codec.FindNodeRequest(OTHER_ID))
        msg, _ = self.sent()
        self.assertGreater(msg.padding, 0)
        data = codec.encode(NETWORK, msg.tid, PEER_ID, codec.NodesResponse(()),
                            codec.RPC.FIND_NODE, b"K" * 8)
        self.proto.datagramReceived(data, PEER)
        # now a token is held for PEER: sent instead of padding, to PEER only
        self.proto.request(PEER, codec.FindValueRequest(OTHER_ID))
        msg, _ = self.sent()
        self.assertEqual((msg.token, msg.padding), (b"K" * 8, 0))
        self.proto.request(ELSEWHERE, codec.FindNodeRequest(OTHER_ID))
        msg, _ = self.sent()
        self.assertIsNone(msg.token)
        self.assertGreater(msg.padding, 0)
        # pings never carry tokens or padding
        self.proto.request(PEER, codec.PingRequest())
        msg, _ = self.sent()
        self.assertEqual((msg.token, msg.padding), (None, 0))

    def test_store_request_grants_a_token(self) -> None:
        self.proto.request(PEER, codec.StoreRequest(OTHER_ID, PEER_ID, 5, 1.0))
        msg, _ = self.sent()
        self.assertEqual(msg.grant, self.proto.proof.token_for(PEER[0]))
        # a grant received is presented back in our getvals to that address
        self.raw_request(codec.StoreRequest(OTHER_ID, PEER_ID, 5, 1.0), grant=b"G" * 8)
        self.proto.request(PEER, codec.GetValueRequest(OTHER_ID, PEER_ID, 0, 5))
        msg, _ = self.sent()
        self.assertEqual(msg.token, b"G" * 8)

    def test_unproven_large_answer_refused_with_token(self) -> None:
        self.handler.respond = lambda m, a: codec.GetValueResponse(5000, 0, b"x" * 5000)
        # the handler knows the answer's size from metadata: a held 5,000-byte value
        self.handler.getval_size = lambda body: min(body.length, 5000 - body.offset)
        size = self.raw_request(codec.GetValueRequest(OTHER_ID, PEER_ID, 0, 5000))
        data, _ = self.transport.written[-1]
        msg = codec.decode(data)
        self.assertLessEqual(len(data), 3 * size)
        self.assertEqual(msg.body.code, codec.ErrorCode.UNPROVEN)  # type: ignore[union-attr]
        self.assertEqual(self.proto.refused["unproven_refused"], 1)
        self.assertEqual(self.handler.requests, [])  # refused before the value was read
        # a chunk that fits the bound is read and answered
        self.handler.respond = lambda m, a: codec.GetValueResponse(5000, 0, b"x" * 10)
        self.raw_request(codec.GetValueRequest(OTHER_ID, PEER_ID, 0, 10))
        self.assertIsInstance(self.sent()[0].body, codec.GetValueResponse)
        # a large length asked of a small value: the answer fits, so it is read
        self.handler.getval_size = lambda body: min(body.length, 10)
        self.handler.respond = lambda m, a: codec.GetValueResponse(10, 0, b"x" * 10)
        self.raw_request(codec.GetValueRequest(OTHER_ID, PEER_ID, 0, 16384))
        self.assertIsInstance(self.sent()[0].body, codec.GetValueResponse)
        self.handler.getval_size = lambda body: min(body.length, 5000 - body.offset)
        self.handler.respond = lambda m, a: codec.GetValueResponse(5000, 0, b"x" * 5000)
        # with the token: the whole answer
        self.raw_request(codec.GetValueRequest(OTHER_ID, PEER_ID, 0, 5000), token=msg.token)
        self.assertIsInstance(self.sent()[0].body, codec.GetValueResponse)
        # a wrong token, or the token of another IP: refused again
        self.raw_request(codec.GetValueRequest(OTHER_ID, PEER_ID, 0, 5000), token=b"x" * 8,
                         address=ELSEWHERE)
        self.assertIsInstance(self.sent()[0].body, codec.ErrorResponse)
        self.raw_request(codec.GetValueRequest(OTHER_ID, PEER_ID, 0, 5000), token=msg.token,
                         address=ELSEWHERE)
        self.assertIsInstance(self.sent()[0].body, codec.ErrorResponse)

    def test_unproven_lists_cut_to_fit(self) -> None:
        nodes = tuple(Node(bytes([i]) * 20, f"10.1.0.{i + 1}", 4000) for i in range(20))
        values = tuple(codec.ValueInfo(bytes([i]) * 20, 10, float(i)) for i in range(40))
        for body, answer in [(codec.FindNodeRequest(OTHER_ID), codec.NodesResponse(nodes)),
                             (codec.FindValueRequest(OTHER_ID), codec.ValuesResponse(values))]:
            self.handler.respond = lambda m, a, answer=answer: answer
            size = self.raw_request(body)
            data, _ = self.transport.written[-1]
            got = codec.decode(data).body
            self.assertLessEqual(len(data), 3 * size)
            self.assertGreater(len(data), 3 * size - 40)  # cut no more than needed
            kept = got.nodes if isinstance(got, codec.NodesResponse) else got.values  # type: ignore
            full = answer.nodes if isinstance(answer, codec.NodesResponse) else answer.values
            self.assertEqual(kept, full[:len(kept)])  # the closest / newest first
        self.assertEqual(self.proto.refused["unproven_cut"], 2)

    def test_answer_goes_out_before_a_ping_back(self) -> None:
        """The answer to a request is sent before ``contact_seen`` runs (which may ping
        the requester back), on the generic path and on the ping shortcut."""
        proto = self.proto
        order: list[str] = []
        self.handler.contact_seen = lambda node_id, address: order.append(  # type: ignore
            f"seen after {len(self.transport.written)} sent")
        for body in (codec.FindNodeRequest(OTHER_ID), codec.PingRequest()):
            before = len(self.transport.written)
            self.raw_request(body)
            self.assertEqual(order[-1], f"seen after {before + 1} sent")
        self.assertEqual(len(order), 2)
        self.assertIsNotNone(proto._ping_frame)  # the second one took the ping shortcut

    def test_unproven_inline_value_dropped_first(self) -> None:
        """A findval answer too large for an unproven address loses its inline bytes
        before any announcement; when that is enough, every announcement stays."""
        values = tuple(codec.ValueInfo(bytes([i]) * 20, 600 if i == 0 else 10, float(i))
                       for i in range(3))
        self.handler.respond = lambda m, a: codec.ValuesResponse(values, b"v" * 600)
        size = self.raw_request(codec.FindValueRequest(OTHER_ID))
        data, _ = self.transport.written[-1]
        got = codec.decode(data).body
        self.assertLessEqual(len(data), 3 * size)
        self.assertEqual(got, codec.ValuesResponse(values))
        self.assertEqual(self.proto.refused["unproven_cut"], 1)

    def test_answered_us_proves(self) -> None:
        self.handler.respond = lambda m, a: codec.GetValueResponse(5000, 0, b"x" * 5000)
        d = self.proto.request(PEER, codec.PingRequest())
        self.answer(self.sent()[0], codec.PingResponse())
        self.successResultOf(d)
        self.raw_request(codec.GetValueRequest(OTHER_ID, PEER_ID, 0, 5000))
        self.assertIsInstance(self.sent()[0].body, codec.GetValueResponse)

    def test_unproven_error_retried_once_with_the_token(self) -> None:
        d = self.proto.request(PEER, codec.GetValueRequest(OTHER_ID, PEER_ID, 0, 100))
        first, _ = self.sent()
        self.assertIsNone(first.token)
        unproven = codec.ErrorResponse(codec.ErrorCode.UNPROVEN, "prove")
        data = codec.encode(NETWORK, first.tid, PEER_ID, unproven, codec.RPC.GET_VALUE,
                            b"K" * 8)
        self.proto.datagramReceived(data, PEER)
        self.assertNoResult(d)
        again, _ = self.sent()
        self.assertEqual((again.tid, again.token), (first.tid, b"K" * 8))
        self.assertEqual(self.proto.stats.proof_retries, 1)
        # a second UNPROVEN is the answer
        self.proto.datagramReceived(data, PEER)
        f = self.failureResultOf(d, RemoteError)
        self.assertEqual(f.value.code, codec.ErrorCode.UNPROVEN)

    def test_bogus_contacts_from_the_codec_and_context(self) -> None:
        own = Node(OWN_ID, "10.1.1.1", 4000)
        v6 = Node(OTHER_ID, "2001:db8::1", 4000)
        loop = Node(b"\x05" * 20, "127.0.0.1", 4000)
        good = Node(b"\x06" * 20, "10.1.1.2", 4000)
        d = self.proto.request(PEER, codec.FindNodeRequest(OTHER_ID))
        self.answer(self.sent()[0], codec.NodesResponse((own, v6, loop, good)))
        self.assertEqual(self.successResultOf(d).body,
                         codec.NodesResponse((good,), dropped=3))
        self.assertEqual(self.proto.refused["bogus_contact"], 3)
        # from a loopback sender, loopback contacts are fine
        d = self.proto.request(("127.0.0.1", 5000), codec.FindNodeRequest(OTHER_ID))
        self.answer(self.sent()[0], codec.NodesResponse((loop, good)),
                    address=("127.0.0.1", 5000))
        self.assertEqual(self.successResultOf(d).body.nodes, (loop, good))  # type: ignore

    def test_rate_limited_requests_dropped_unanswered(self) -> None:
        from p2pnet.dht.limits import Limits
        self.proto = DHTProtocol(OWN_ID, NETWORK, self.handler, self.clock,
                                 limits=Limits(rate_per_source=1, rate_per_source_burst=3))
        self.transport = RecordingTransport(self.proto)
        self.proto.makeConnection(self.transport)  # type: ignore[arg-type]
        for _ in range(10):
            self.raw_request(codec.PingRequest())
        self.assertEqual(len(self.transport.written), 3)
        self.assertEqual(len(self.handler.requests), 3)
        self.assertEqual(self.proto.refused["rate_limited_source"], 7)
        self.assertEqual(self.proto.stats.rate_limited, 7)
        # answers to our own requests are not charged
        d = self.proto.request(PEER, codec.PingRequest())
        self.answer(self.sent()[0], codec.PingResponse())
        self.successResultOf(d)


class PaddingTests(ProtocolTestMixin, SynchronousTestCase):
    def test_padded_to_exactly_the_target(self) -> None:
        target = self.proto.limits.request_pad_to
        for body in [codec.FindNodeRequest(OTHER_ID), codec.FindValueRequest(OTHER_ID),
                     codec.FindValueRequest(OTHER_ID, PEER_ID)]:
            self.proto.request(PEER, body)
            data, _ = self.transport.written[-1]
            self.assertEqual(len(data), target)
            self.assertEqual(codec.decode(data).body, body)

    def test_no_tokens_held_for_loopback_servers(self) -> None:
        """Proof is per IP: on loopback a per-server token buys nothing but memory."""
        local = ("127.0.0.1", 5000)
        d = self.proto.request(local, codec.FindNodeRequest(OTHER_ID))
        msg, _ = self.sent()
        data = codec.encode(NETWORK, msg.tid, PEER_ID, codec.NodesResponse(()),
                            codec.RPC.FIND_NODE, b"K" * 8)
        self.proto.datagramReceived(data, local)
        self.successResultOf(d)
        self.assertEqual(self.proto._tokens, {})
