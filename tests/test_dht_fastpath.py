"""Tests for the DHT protocol's hot path (issue 10): pings framed and received without
the codec, answers handed to ``then`` inside the protocol, and the deadline FIFO.

The ping shortcuts must behave exactly as the generic path.  The tests drive a protocol
with them (:class:`DHTProtocol`) and one without (``PING_SHORTCUTS = False``, every
datagram through :func:`codec.encode` and :func:`codec.decode`) through the same
datagrams, in identical state, and compare everything observable: the counters, the
refusals, what was sent, what the handler was told, how each request ended, the tokens
kept and the addresses proven.
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.dht import codec
from p2pnet.dht import protocol as protocol_module
from p2pnet.dht.errors import RemoteError, RPCTimeoutError
from p2pnet.dht.limits import Limits
from p2pnet.dht.proof import AddressProof
from p2pnet.dht.protocol import DEFAULT_TIMEOUT, DHTProtocol
from tests.test_dht_protocol import (
    ELSEWHERE,
    NETWORK,
    OTHER_ID,
    OWN_ID,
    PEER,
    PEER_ID,
    ProtocolTestMixin,
    RecordingHandler,
    RecordingTransport,
    counting_tids,
)

LOCAL = ("127.0.0.1", 4000)
TOKEN = b"K" * codec.TOKEN_BYTES


class GenericProtocol(DHTProtocol):
    """The protocol without its ping shortcuts: the reference they must equal."""

    PING_SHORTCUTS = False


def tid(n: int) -> bytes:
    """The ``n``-th transaction id of :func:`counting_tids`."""
    return n.to_bytes(codec.TID_BYTES, "big")


def fixed_randbytes() -> Any:
    counter = itertools.count(1)
    return lambda n: bytes([next(counter) % 256]) * n


class Side:
    def __init__(self, cls: type[DHTProtocol], clock: task.Clock, limits: Limits | None,
                 address: tuple[str, int]) -> None:
        self.handler = RecordingHandler()
        self.proto = cls(OWN_ID, NETWORK, self.handler, clock, tid_source=counting_tids(),
                         limits=limits)
        # the same secrets on both sides, so their tokens agree
        self.proto.proof = AddressProof(self.proto.limits, clock.seconds, fixed_randbytes())
        self.transport = RecordingTransport(self.proto, address)
        self.proto.makeConnection(self.transport)  # type: ignore[arg-type]
        self.outcomes: list[Any] = []

    def request(self, address: tuple[str, int], body: codec.Body, **kw: Any
                ) -> defer.Deferred[Any]:
        if type(body) is codec.PingRequest and not kw:
            d = self.proto.ping(address)  # the shortcut's lane (the generic side: request)
        else:
            d = self.proto.request(address, body, **kw)
        n = len(self.outcomes)
        self.outcomes.append("pending")

        def record(result: Any) -> None:
            if isinstance(result, Failure):
                result = (result.type, str(result.value))
            self.outcomes[n] = result

        d.addBoth(record)
        return d

    def observed(self) -> dict[str, Any]:
        proto = self.proto
        return {
            "stats": attrs.asdict(proto.stats),
            "refused": dict(proto.refused),
            "written": list(self.transport.written),
            "seen": list(self.handler.seen),
            "requests": list(self.handler.requests),
            "outcomes": list(self.outcomes),
            "outstanding": sorted(proto._pending),
            "tokens": dict(proto._tokens),
            "proven": sorted(proto.proof._proven),
        }


class Pair:
    """A protocol with the ping shortcuts and one without, in identical state."""

    def __init__(self, limits: Limits | None = None,
                 address: tuple[str, int] = ("10.0.0.1", 4000)) -> None:
        self.clock = task.Clock()
        self.fast = Side(DHTProtocol, self.clock, limits, address)
        self.generic = Side(GenericProtocol, self.clock, limits, address)

    def request(self, address: tuple[str, int], body: codec.Body | None = None,
                **kw: Any) -> None:
        for side in (self.fast, self.generic):
            side.request(address, codec.PingRequest() if body is None else body, **kw)

    def receive(self, data: Any, address: tuple[str, int]) -> None:
        for side in (self.fast, self.generic):
            side.proto.datagramReceived(data, address)

    def assert_same(self, case: SynchronousTestCase) -> dict[str, Any]:
        fast, generic = self.fast.observed(), self.generic.observed()
        for key in fast:
            case.assertEqual(fast[key], generic[key], key)
        return fast


def ping_request(sender: bytes = PEER_ID, t: bytes = b"T" * 8, **kw: Any) -> bytes:
    return codec.encode(NETWORK, t, sender, codec.PingRequest(), **kw)


def ping_answer(t: bytes = tid(1), sender: bytes = PEER_ID, token: bytes | None = TOKEN,
                **kw: Any) -> bytes:
    return codec.encode(NETWORK, t, sender, codec.PingResponse(), codec.RPC.PING, token, **kw)


def mutations(frame: bytes) -> list[bytes]:
    """``frame`` changed in one byte (every position, three ways), cut by one byte, and
    one byte longer."""
    out = []
    for i in range(len(frame)):
        for value in {frame[i] ^ 1, 0, 255} - {frame[i]}:
            out.append(frame[:i] + bytes([value]) + frame[i + 1:])
    out += [frame[:-1], frame + b"\x00", frame + b"\x01", b"\x00" + frame]
    return out


class ShortcutTakenTests(SynchronousTestCase):
    """The comparisons below mean something only if the shortcuts are taken."""

    def decodes(self, proto_cls: type[DHTProtocol], frames: list[tuple[bytes, Any]]) -> int:
        calls = []
        real = codec.decode

        def counting(data: bytes) -> codec.Message:
            calls.append(data)
            return real(data)

        self.patch(codec, "decode", counting)
        side = Side(proto_cls, task.Clock(), None, ("10.0.0.1", 4000))
        side.request(PEER, codec.PingRequest())
        for data, address in frames:
            side.proto.datagramReceived(data, address)
        self.assertIsInstance(side.outcomes[0], codec.Message)  # answered
        self.assertEqual(side.proto.stats.requests_in, 1)
        return len(calls)

    def test_valid_pings_skip_the_codec(self) -> None:
        frames = [(ping_request(), PEER), (ping_answer(), PEER)]
        self.assertEqual(self.decodes(DHTProtocol, frames), 0)
        self.assertEqual(self.decodes(GenericProtocol, frames), 2)

    def test_generic_protocol_frames_with_the_codec(self) -> None:
        side = Side(GenericProtocol, task.Clock(), None, ("10.0.0.1", 4000))
        self.assertIsNone(side.proto._ping_frame)
        self.assertEqual(side.proto._ping_in[1], -1)


class OneByteOffTests(SynchronousTestCase):
    """A ping frame that differs from a valid one in one byte (or its length) is
    treated exactly as the generic decoder treats it."""

    def check(self, frames: list[tuple[bytes, tuple[str, int]]],
              setup: Any = None) -> dict[str, Any]:
        pair = Pair()
        pair.request(PEER)  # tid 1: a ping
        pair.request(PEER, codec.FindNodeRequest(OTHER_ID))  # tid 2: another rpc
        if setup is not None:
            setup(pair)
        for data, address in frames:
            pair.receive(data, address)
        pair.clock.advance(DEFAULT_TIMEOUT / 2)
        return pair.assert_same(self)

    def test_valid_frames(self) -> None:
        got = self.check([(ping_request(), PEER), (ping_answer(), PEER)])
        self.assertEqual(got["stats"]["requests_in"], 1)
        self.assertEqual(got["stats"]["responses_in"], 1)
        self.assertIsInstance(got["outcomes"][0], codec.Message)
        self.assertEqual(got["outcomes"][0].token, TOKEN)
        self.assertEqual(got["proven"], [PEER[0]])
        self.assertEqual(got["tokens"], {PEER: TOKEN})

    def test_every_one_byte_change_of_a_ping_request(self) -> None:
        for data in mutations(ping_request()):
            self.check([(data, PEER)])

    def test_every_one_byte_change_of_a_ping_answer(self) -> None:
        for data in mutations(ping_answer()):
            self.check([(data, PEER)])

    def test_checks_of_the_answer(self) -> None:
        cases = [
            [(ping_answer(), ELSEWHERE)],  # wrong address
            [(ping_answer(), (PEER[0], PEER[1] + 1))],  # wrong port
            [(ping_answer(tid(2)), PEER)],  # wrong rpc
            [(ping_answer(tid(3)), PEER)],  # unmatched
            [(ping_answer(sender=OWN_ID), PEER)],  # from ourselves
            [(ping_answer(), PEER), (ping_answer(), PEER)],  # a duplicate
            [(ping_answer(token=None), PEER)],  # no token: the generic path
            [(ping_answer(grant=TOKEN), PEER)],  # a grant: the generic path
            [(ping_answer(padding=3), PEER)],  # padded: the generic path
            [(ping_answer(), LOCAL)],
        ]
        for frames in cases:
            self.check(frames)

    def test_answer_to_a_loopback_request(self) -> None:
        got = self.check([(ping_answer(tid(3)), LOCAL)],
                         setup=lambda pair: pair.request(LOCAL))
        self.assertEqual(got["tokens"], {})  # none kept for loopback servers
        self.assertIsInstance(got["outcomes"][2], codec.Message)

    def test_checks_of_the_request(self) -> None:
        for frames in [
            [(ping_request(sender=OWN_ID), PEER)],
            [(ping_request(token=TOKEN), PEER)],
            [(ping_request(grant=TOKEN), PEER)],
            [(ping_request(padding=5), PEER)],
            [(ping_request(), LOCAL), (ping_request(), ELSEWHERE)],
            [(codec.encode(b"other-network", b"T" * 8, PEER_ID, codec.PingRequest()),
              PEER)],
        ]:
            self.check(frames)

    def test_not_bytes(self) -> None:
        for data in (bytearray(ping_request()), memoryview(ping_request()),
                     bytearray(ping_answer())):
            got = self.check([(data, PEER)])  # type: ignore[list-item]
            self.assertEqual(got["stats"]["malformed"], 1)

    def test_rate_limits_charged_the_same(self) -> None:
        pair = Pair(Limits(rate_per_source=1, rate_per_source_burst=3, rate_global=2,
                           rate_global_burst=4))
        for i in range(10):
            pair.receive(ping_request(), PEER)
            pair.receive(ping_request(t=bytes(8)), ELSEWHERE)
            if i % 3 == 0:
                pair.clock.advance(0.5)
        got = pair.assert_same(self)
        self.assertGreater(got["refused"]["rate_limited_source"], 0)
        self.assertGreater(got["refused"]["rate_limited_global"], 0)
        self.assertEqual(got["stats"]["rate_limited"] + got["stats"]["requests_in"], 20)

    def test_handler_refusal_and_deferred_answer(self) -> None:
        def setup(pair: Pair) -> None:
            for side in (pair.fast, pair.generic):
                side.handler.respond = lambda msg, addr: defer.fail(
                    protocol_module.RequestRefused(codec.ErrorCode.BUSY, "busy"))

        got = self.check([(ping_request(), PEER)], setup=setup)
        self.assertEqual(got["stats"]["errors_sent"], 1)

    def test_every_kind_of_handler_answer(self) -> None:
        def crash(msg: codec.Message, address: Any) -> Any:
            raise RuntimeError("handler bug")

        responders = [
            lambda msg, address: defer.succeed(codec.PingResponse()),
            lambda msg, address: codec.NodesResponse(()),  # an odd answer, still sent
            lambda msg, address: codec.ErrorResponse(codec.ErrorCode.BUSY, "later"),
            lambda msg, address: defer.Deferred(),  # never answers
            crash,
        ]
        for respond in responders:
            def setup(pair: Pair, respond: Any = respond) -> None:
                for side in (pair.fast, pair.generic):
                    side.handler.respond = respond

            got = self.check([(ping_request(), PEER)], setup=setup)
            self.assertEqual(got["stats"]["requests_in"], 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)  # one per side

    def test_no_answer_once_stopped(self) -> None:
        def setup(pair: Pair) -> None:
            for side in (pair.fast, pair.generic):
                def stop(msg: codec.Message, address: Any, side: Side = side) -> Any:
                    side.proto.stopProtocol()
                    return codec.PingResponse()
                side.handler.respond = stop

        got = self.check([(ping_request(), PEER)], setup=setup)
        self.assertEqual(len(got["written"]), 2)  # our two requests, no answer


_ADDRESSES = st.sampled_from([PEER, ELSEWHERE, LOCAL, (PEER[0], PEER[1] + 1)])


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """A ping frame, valid or near it: the shortcuts' neighbourhood."""
    base = draw(st.sampled_from([
        ping_request(), ping_request(sender=OWN_ID), ping_request(token=TOKEN),
        ping_answer(), ping_answer(tid(2)), ping_answer(tid(3)), ping_answer(token=None),
        ping_answer(sender=OWN_ID), ping_answer(grant=TOKEN),
        codec.encode(NETWORK, tid(1), PEER_ID, codec.ErrorResponse(4, "x"), codec.RPC.PING,
                     TOKEN),
    ]))
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["set", "cut", "insert", "truncate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "set":
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[i]
        elif op == "insert":
            data.insert(i, draw(st.integers(0, 255)))
        else:
            del data[i:]
    return bytes(data)


_HEAD = bytes((codec.VERSION, len(NETWORK))) + NETWORK


@st.composite
def near_pings(draw: st.DrawFn) -> bytes:
    """Datagrams with a ping's layout, each field valid or not."""
    head = draw(st.sampled_from([_HEAD + b"\x00\x01", _HEAD + b"\x01\x01", _HEAD + b"\x01\x02",
                                 _HEAD + b"\x02\x01", _HEAD[:-1] + b"X\x00\x01"]))
    t = draw(st.sampled_from([tid(1), tid(2), b"T" * 8]) | st.binary(min_size=8, max_size=8))
    sender = draw(st.sampled_from([PEER_ID, OWN_ID]) | st.binary(min_size=20, max_size=20))
    flags = draw(st.sampled_from([0, 1]) | st.integers(0, 255))
    token = draw(st.sampled_from([b"", TOKEN]) | st.binary(max_size=9))
    return head + t + sender + bytes([flags]) + token


class PropertyTests(SynchronousTestCase):
    @given(st.lists(st.tuples(frames(), _ADDRESSES, st.booleans()), max_size=6))
    def test_shortcuts_equal_the_generic_path(self, script: list[Any]) -> None:
        pair = Pair(Limits(rate_per_source=2, rate_per_source_burst=3))
        pair.request(PEER)
        pair.request(PEER, codec.FindNodeRequest(OTHER_ID))
        pair.request(LOCAL)
        for data, address, wait in script:
            pair.receive(data, address)
            if wait:
                pair.clock.advance(1.0)
        pair.clock.advance(10 * DEFAULT_TIMEOUT)
        pair.assert_same(self)
        self.assertEqual(self.flushLoggedErrors(), [])

    @given(near_pings(), _ADDRESSES)
    def test_datagrams_shaped_like_pings(self, data: bytes, address: tuple[str, int]
                                         ) -> None:
        pair = Pair()
        pair.request(PEER)
        pair.request(LOCAL)
        pair.receive(data, address)
        pair.assert_same(self)


class ThenTests(ProtocolTestMixin, SynchronousTestCase):
    """``request(..., then=f, then_args=...)`` fires with ``f(sender, body, *args)``."""

    def test_fires_with_the_result(self) -> None:
        seen: list[Any] = []

        def then(sender: bytes, body: Any, a: int, b: str) -> tuple[int, str, bytes]:
            seen.append(body)
            return a, b, sender

        for lane in (False, True):
            self.setUp()
            seen.clear()

            if lane:
                d = self.proto.ping(PEER, then=then, then_args=(1, "x"))
            else:
                d = self.proto.request(PEER, codec.PingRequest(), then=then,
                                       then_args=(1, "x"))
            msg, _ = self.sent()
            self.assertNoResult(d)
            self.answer(msg, codec.PingResponse())
            self.assertEqual(self.successResultOf(d), (1, "x", PEER_ID))
            self.assertEqual(seen, [codec.PingResponse()])

    def test_generic_answers_too(self) -> None:
        d = self.proto.request(PEER, codec.FindNodeRequest(OTHER_ID),
                               then=lambda sender, body: (sender, body))
        self.answer(self.sent()[0], codec.NodesResponse(()))
        self.assertEqual(self.successResultOf(d), (PEER_ID, codec.NodesResponse(())))

    def test_exception_fails_the_deferred(self) -> None:
        def then(sender: bytes, body: Any) -> None:
            raise ValueError("no")

        d = self.proto.request(PEER, codec.PingRequest(), then=then)
        self.answer(self.sent()[0], codec.PingResponse())
        self.failureResultOf(d, ValueError)
        self.assertEqual(self.proto.outstanding, 0)

    def test_not_called_on_failure(self) -> None:
        called: list[Any] = []
        d1 = self.proto.request(PEER, codec.PingRequest(), then=called.append, retries=0)
        d2 = self.proto.request(PEER, codec.PingRequest(), then=called.append)
        self.answer(self.sent(1)[0], codec.ErrorResponse(codec.ErrorCode.INTERNAL, "x"))
        self.failureResultOf(d2, RemoteError)
        self.clock.advance(DEFAULT_TIMEOUT)
        self.failureResultOf(d1, RPCTimeoutError)
        self.assertEqual(called, [])


class DeadlineTests(ProtocolTestMixin, SynchronousTestCase):
    """Requests time out in (deadline, sending order), across the FIFO and the heap."""

    def test_ties_across_fifo_and_heap(self) -> None:
        order: list[str] = []
        for name, timeout in [("a", 2.0), ("b", 5.0), ("c", 2.0), ("d", 1.0)]:
            d = self.proto.request(PEER, codec.PingRequest(), timeout=timeout, retries=0)
            d.addErrback(lambda f, name=name: order.append(name))
        self.assertEqual(len(self.proto._deadlines), 2)  # c and d sort before b
        self.clock.advance(2.0)
        self.assertEqual(order, ["d", "a", "c"])
        self.clock.advance(3.0)
        self.assertEqual(order, ["d", "a", "c", "b"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_clock_stepped_back(self) -> None:
        clock = self.clock
        order: list[int] = []
        for i in range(3):
            d = self.proto.request(PEER, codec.PingRequest(), retries=0)
            d.addErrback(lambda f, i=i: order.append(i))
            clock.rightNow -= 0.5  # a wall clock stepped back between the sends
        clock.rightNow = 0.0
        clock.advance(1.0)
        self.assertEqual(order, [2])
        clock.advance(0.5)
        self.assertEqual(order, [2, 1])
        clock.advance(0.5)
        self.assertEqual(order, [2, 1, 0])

    @given(st.lists(st.tuples(st.sampled_from([0.5, 1.0, 2.0, 3.0]),
                              st.sampled_from([0.0, 0.0, 0.25, 1.0]), st.integers(0, 1)),
                    min_size=1, max_size=12))
    def test_each_times_out_at_its_deadline_in_order(self, script: list[Any]) -> None:
        clock = task.Clock()
        proto = DHTProtocol(OWN_ID, NETWORK, RecordingHandler(), clock,
                            tid_source=counting_tids())
        proto.makeConnection(RecordingTransport(proto))  # type: ignore[arg-type]
        deadlines: list[tuple[float, int]] = []
        failed: list[tuple[float, int]] = []
        for i, (timeout, wait, retries) in enumerate(script):
            for _ in range(round(wait / 0.01)):  # in steps, as time passes
                clock.advance(0.01)
            d = proto.request(PEER, codec.PingRequest(), timeout=timeout, retries=retries)
            deadlines.append((clock.seconds() + timeout * (1 + retries), i))
            d.addErrback(lambda f, i=i: failed.append((clock.seconds(), i)))
        for _ in range(2000):
            if len(failed) == len(script):
                break
            clock.advance(0.01)
        self.assertEqual(len(failed), len(script))
        # without retries, in (deadline, sending) order
        once = sorted((deadline, i) for deadline, i in deadlines if script[i][2] == 0)
        self.assertEqual([i for _, i in failed if script[i][2] == 0], [i for _, i in once])
        by_index = dict((i, t) for t, i in failed)
        for deadline, i in deadlines:
            self.assertGreaterEqual(by_index[i] + 1e-9, deadline)
            # a retry may wait for the timer's granularity once per try
            self.assertLessEqual(by_index[i], deadline + 2 * (proto.TIMER_GRANULARITY + 0.01))
        self.assertEqual(proto.outstanding, 0)
        self.assertEqual((len(proto._queue), len(proto._deadlines)), (0, 0))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_entries_follow_outstanding_requests(self) -> None:
        """Answered in order, the FIFO holds only what is still outstanding."""
        for _ in range(50):
            self.proto.request(PEER, codec.PingRequest())
        for i in range(40):
            self.answer(self.sent(i)[0], codec.PingResponse())
        self.assertEqual(len(self.proto._queue), 10)
        self.assertEqual(self.proto.outstanding, 10)


class OtherwiseTests(ProtocolTestMixin, SynchronousTestCase):
    """``request(..., then=f, otherwise=g)`` and ``ping(..., then=f, otherwise=g)`` end
    as ``request(...).addCallback(lambda m: f(m.sender, m.body)).addErrback(g)`` does,
    in every way a request ends."""

    lane = False  # the first way through ping() instead of request()

    def outcome(self, d: defer.Deferred[Any]) -> Any:
        result: list[Any] = []
        d.addBoth(result.append)
        if isinstance(result[0], Failure):
            return ("failed", result[0].type, str(result[0].value))
        if isinstance(result[0], codec.Message):  # the two requests' tids differ
            return ("fired", attrs.evolve(result[0], tid=b""))
        return ("fired", result[0])

    def both(self, then: Any, otherwise: Any, end: Any, body: codec.Body | None = None
             ) -> tuple[Any, Any]:
        """The same request both ways; ``end`` answers, times out or stops them."""
        body = codec.PingRequest() if body is None else body
        self.proto.retries = 0
        if type(body) is codec.PingRequest and self.lane:
            fast = self.proto.ping(PEER, then=then, otherwise=otherwise)
        else:
            fast = self.proto.request(PEER, body, then=then, otherwise=otherwise)
        slow = self.proto.request(PEER, body)
        if then is not None:
            slow.addCallback(lambda m: then(m.sender, m.body))
        slow.addErrback(otherwise)
        end(self)
        return self.outcome(fast), self.outcome(slow)

    def test_every_ending(self) -> None:
        def answer(case: OtherwiseTests) -> None:
            for i in (0, 1):
                case.answer(case.sent(i)[0], codec.PingResponse())

        def error(case: OtherwiseTests) -> None:
            for i in (0, 1):
                case.answer(case.sent(i)[0], codec.ErrorResponse(codec.ErrorCode.BUSY, "x"))

        def timeout(case: OtherwiseTests) -> None:
            case.clock.advance(DEFAULT_TIMEOUT)

        def stop(case: OtherwiseTests) -> None:
            case.proto.stopProtocol()

        def sender(sender: bytes, body: Any) -> bytes:
            return sender

        def broken(sender: bytes, body: Any) -> bytes:
            raise KeyError("then failed")

        def returns_failure(sender: bytes, body: Any) -> Failure:
            return Failure(IndexError("then returned a failure"))

        def describe(failure: Failure) -> str:
            return failure.type.__name__

        def passes_on(failure: Failure) -> Failure:
            return failure

        def crashes(failure: Failure) -> None:
            raise LookupError("otherwise failed")

        seen = set()
        for end, then, otherwise, self.lane in itertools.product(
                (answer, error, timeout, stop), (None, sender, broken, returns_failure),
                (describe, passes_on, crashes), (False, True)):
            self.setUp()
            fast, slow = self.both(then, otherwise, end)
            self.assertEqual(fast, slow, (end, then, otherwise, self.lane))
            seen.add(fast[0])
            if isinstance(fast[1], (str, bytes)):
                seen.add(fast[1])
            elif fast[0] == "failed":
                seen.add(fast[1].__name__)
        self.assertIn("RPCTimeoutError", seen)
        self.assertIn("RemoteError", seen)
        self.assertIn("ProtocolStoppedError", seen)
        self.assertIn("KeyError", seen)
        self.assertIn("IndexError", seen)  # then's returned Failure went to otherwise
        self.assertIn(PEER_ID, seen)
        self.assertIn("LookupError", seen)  # otherwise's own exception

    def test_failed_at_once(self) -> None:
        """A request that cannot be sent fails through ``otherwise`` too."""
        got = self.proto.request(PEER, codec.FindNodeRequest(b"short"),
                                 otherwise=lambda f: f.type)
        self.assertIs(self.successResultOf(got), ValueError)
        self.proto.stopProtocol()
        got = self.proto.request(PEER, codec.PingRequest(), otherwise=lambda f: f.type)
        from p2pnet.dht.errors import ProtocolStoppedError
        self.assertIs(self.successResultOf(got), ProtocolStoppedError)


class PingCallTests(SynchronousTestCase):
    """``Ping.call(address, otherwise)`` on the in-memory network."""

    def setUp(self) -> None:
        from tests.dhthelpers import Sim
        self.sim = Sim()
        self.a, self.b = self.sim.add_many(2)

    def test_answer(self) -> None:
        d = self.a.ping.call(self.b.address, otherwise=lambda f: False)
        rtt, node = self.successResultOf(self.sim.run(d))
        self.assertEqual(node, self.b.node)
        self.assertLessEqual(abs(rtt - 2 * self.sim.net.latency), 1e-5)

    def test_silence(self) -> None:
        failures: list[Failure] = []
        d = self.a.ping.call(("10.9.9.9", 1), otherwise=lambda f: failures.append(f) or False)
        self.sim.settle(3 * DEFAULT_TIMEOUT)
        self.assertIs(self.successResultOf(d), False)
        self.assertTrue(failures[0].check(RPCTimeoutError))
        d = self.a.ping.call(("10.9.9.9", 1))
        self.sim.settle(3 * DEFAULT_TIMEOUT)
        self.failureResultOf(d, RPCTimeoutError)


class RandomPoolTests(SynchronousTestCase):
    def test_transaction_ids(self) -> None:
        pool = protocol_module._RandomPool(size=64)  # 8 ids a read
        tids = [pool.take(codec.TID_BYTES) for _ in range(100)]
        self.assertEqual({len(t) for t in tids}, {codec.TID_BYTES})
        self.assertEqual(len(set(tids)), 100)  # fresh random bytes each (2^-64 a clash)
        other = [pool.take(5) for _ in range(30)] + [pool.take(100)]
        self.assertEqual([len(x) for x in other], [5] * 30 + [100])
        self.assertEqual(len(set(other)), 31)


class NetworkIdLengthTests(SynchronousTestCase):
    """The shortcut's offsets follow the network id's length (1 to 32 bytes)."""

    def test_shortest_and_longest(self) -> None:
        decoded: list[bytes] = []
        real = codec.decode
        self.patch(codec, "decode", lambda d: decoded.append(d) or real(d))
        for network in (b"x", b"n" * codec.MAX_NETWORK_ID):
            decoded.clear()
            handler = RecordingHandler()
            proto = DHTProtocol(OWN_ID, network, handler, task.Clock(),
                                tid_source=counting_tids())
            transport = RecordingTransport(proto)
            proto.makeConnection(transport)  # type: ignore[arg-type]
            d = proto.request(PEER, codec.PingRequest())
            proto.datagramReceived(codec.encode(network, b"Q" * 8, PEER_ID,
                                                codec.PingRequest()), PEER)
            answer, _ = transport.written[-1]
            self.assertEqual(real(answer).tid, b"Q" * 8)
            proto.datagramReceived(codec.encode(network, tid(1), PEER_ID,
                                                codec.PingResponse(), codec.RPC.PING,
                                                TOKEN), PEER)
            msg = self.successResultOf(d)
            self.assertEqual((msg.sender, msg.tid, msg.token, msg.network_id),
                             (PEER_ID, tid(1), TOKEN, network))
            self.assertEqual(handler.seen, [(PEER_ID, PEER)] * 2)
            self.assertEqual(decoded, [])  # both through the shortcut
