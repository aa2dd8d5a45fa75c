"""Tests of p2pnet.mesh.codec: round trips, strictness, fuzzing."""

from __future__ import annotations

import struct

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.mesh import codec
from p2pnet.mesh.codec import (
    Broadcast,
    Bye,
    Direct,
    Hello,
    Kind,
    Ping,
    Pong,
    Refuse,
    decode,
    encode,
    with_hops,
)
from p2pnet.mesh.errors import DecodeError

V = codec.VERSION

ids = st.binary(min_size=1, max_size=codec.MAX_ID)
channels = st.binary(max_size=codec.MAX_CHANNEL)
parts = st.lists(st.binary(max_size=64), max_size=8).map(tuple)
hosts = st.text(min_size=1, max_size=40).filter(
    lambda s: 1 <= len(s.encode("utf-8", "surrogatepass")) <= 255
    and not any(0xD800 <= ord(c) <= 0xDFFF for c in s))

hellos = st.builds(Hello, network_id=st.binary(min_size=1, max_size=codec.MAX_NETWORK_ID),
                   peer_id=ids, host=hosts, port=st.integers(1, 65535),
                   version=st.integers(0, 255), ack=st.booleans())
refusals = st.builds(Refuse, code=st.integers(0, 255), reason=st.text(max_size=100).filter(
    lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)))
directs = st.builds(Direct, channel=channels, parts=parts)
broadcasts = st.builds(Broadcast, msg_id=st.binary(min_size=16, max_size=16), origin=ids,
                       sent_at=st.floats(min_value=0, max_value=1e12), channel=channels,
                       parts=parts, hops=st.integers(0, codec.MAX_HOPS))
messages = st.one_of(hellos, refusals, directs, broadcasts,
                     st.sampled_from([Ping(), Pong(), Bye()]))


class RoundTripTests(SynchronousTestCase):
    @given(messages)
    def test_round_trip(self, msg: codec.Message) -> None:
        frames = encode(msg)
        self.assertTrue(all(isinstance(f, bytes) for f in frames))
        self.assertEqual(decode(frames), msg)

    def test_hello_layout(self) -> None:
        frames = encode(Hello(b"net", b"id1", "127.0.0.1", 4456))
        self.assertEqual(frames, [bytes((codec.VERSION,)) + b"\x01\x03net\x03id1"
                                  + struct.pack(">H", 4456) + b"\x09127.0.0.1"])

    def test_broadcast_layout(self) -> None:
        frames = encode(Broadcast(b"m" * 16, b"o", 2.5, b"ch", (b"x",), hops=7))
        self.assertEqual(frames, [bytes((2, Kind.BROADCAST, 7)) + b"m" * 16
                                  + struct.pack(">d", 2.5) + b"\x01o\x02ch", b"x"])
        self.assertEqual(Broadcast(b"m" * 16, b"o", 2.5, b"", ()).hops, codec.MAX_HOPS)

    def test_version_one_broadcast_refused(self) -> None:
        # version 1 had no hop limit (and dropped floods by the sender's clock)
        head = bytes((1, Kind.BROADCAST)) + b"m" * 16 + struct.pack(">d", 1.0) + b"\x01o\x00"
        self.assertRaises(DecodeError, decode, [head])

    def test_hello_of_other_version_decodes(self) -> None:
        frames = encode(Hello(b"net", b"id1", "h", 1, version=9))
        self.assertEqual(decode(frames).version, 9)  # type: ignore[union-attr]

    def test_payload_frames_follow_header(self) -> None:
        frames = encode(Direct(b"sync", (b"a", b"", b"c")))
        self.assertEqual(frames[1:], [b"a", b"", b"c"])


class StrictnessTests(SynchronousTestCase):
    def assertBad(self, frames: list[bytes]) -> None:
        self.assertRaises(DecodeError, decode, frames)

    def test_empty(self) -> None:
        self.assertBad([])
        self.assertBad([b""])
        self.assertBad([b"\x01"])

    def test_trailing_byte(self) -> None:
        for msg in (Ping(), Direct(b"c", ()), Hello(b"n", b"i", "h", 1), Refuse(1, "x"),
                    Broadcast(b"m" * 16, b"o", 1.0, b"", ())):
            frames = encode(msg)
            self.assertBad([frames[0] + b"\x00", *frames[1:]])

    def test_truncated(self) -> None:
        frames = encode(Broadcast(b"m" * 16, b"origin", 5.0, b"chan", ()))
        for n in range(len(frames[0])):
            self.assertBad([frames[0][:n]])

    def test_wrong_version_non_hello(self) -> None:
        self.assertEqual(decode([bytes((V, Kind.PING))]), Ping())
        self.assertBad([bytes((V + 1, Kind.PING))])
        self.assertBad([bytes((V - 1, Kind.PING))])

    def test_unknown_kind(self) -> None:
        self.assertBad([bytes((V, 0))])
        self.assertBad([bytes((V, 99))])

    def test_extra_frames_on_single_frame_kinds(self) -> None:
        for msg in (Ping(), Pong(), Bye(), Refuse(1, "x"), Hello(b"n", b"i", "h", 1)):
            self.assertBad([*encode(msg), b"x"])

    def test_bad_sent_at(self) -> None:
        good = bytes((V, Kind.BROADCAST, 9)) + b"m" * 16 + struct.pack(">d", 0.0) + b"\x01o\x00"
        self.assertEqual(decode([good]), Broadcast(b"m" * 16, b"o", 0.0, b"", (), hops=9))
        for t in (float("nan"), float("inf"), -1.0):
            head = (bytes((V, Kind.BROADCAST, 9)) + b"m" * 16 + struct.pack(">d", t)
                    + b"\x01o\x00")
            self.assertBad([head])

    def test_zero_lengths(self) -> None:
        self.assertBad([bytes((V, Kind.HELLO, 0, 1)) + b"i\x00\x01\x01h"])  # empty netid
        self.assertBad([bytes((V, Kind.HELLO, 1)) + b"n\x00\x00\x01\x01h"])  # empty id
        self.assertBad([bytes((V, Kind.HELLO, 1)) + b"n\x01i\x00\x00\x01h"])  # port 0

    def test_bad_utf8(self) -> None:
        self.assertBad([bytes((V, Kind.HELLO, 1)) + b"n\x01i\x00\x01\x01\xff"])
        self.assertBad([bytes((V, Kind.REFUSE, 1, 0, 1)) + b"\xff"])

    def test_too_many_parts(self) -> None:
        head = encode(Direct(b"", ()))[0]
        self.assertBad([head] + [b""] * (codec.MAX_PARTS + 1))

    def test_payload_too_big(self) -> None:
        head = encode(Direct(b"", ()))[0]
        self.assertBad([head, b"x" * codec.MAX_PAYLOAD, b"y"])

    def test_not_bytes(self) -> None:
        self.assertBad(["str"])  # type: ignore[list-item]

    def test_invalid_messages_cannot_be_built(self) -> None:
        self.assertRaises(ValueError, Hello, b"", b"i", "h", 1)
        self.assertRaises(ValueError, Hello, b"n", b"i", "h", 0)
        self.assertRaises(ValueError, Hello, b"n", b"i" * 65, "h", 1)
        self.assertRaises(ValueError, Broadcast, b"short", b"o", 1.0, b"", ())
        self.assertRaises(ValueError, Broadcast, b"m" * 16, b"o", float("nan"), b"", ())
        self.assertRaises(ValueError, Broadcast, b"m" * 16, b"o", 1.0, b"", (), hops=256)
        self.assertRaises(ValueError, Broadcast, b"m" * 16, b"o", 1.0, b"", (), hops=-1)
        self.assertRaises(ValueError, Direct, b"c" * 65, ())
        self.assertRaises(TypeError, Direct, b"c", ("str",))
        self.assertRaises(ValueError, Direct, b"c", (b"",) * (codec.MAX_PARTS + 1))


class WithHopsTests(SynchronousTestCase):
    @given(broadcasts, st.integers(0, codec.MAX_HOPS))
    def test_rewrites_only_the_hop_limit(self, msg: Broadcast, hops: int) -> None:
        frames = encode(msg)
        again = with_hops(frames, hops)
        self.assertEqual(decode(again), attrs.evolve(msg, hops=hops))
        self.assertEqual(again[1:], frames[1:])
        self.assertEqual(decode(frames), msg)  # the input is left alone

    def test_refuses_other_frames(self) -> None:
        good = encode(Broadcast(b"m" * 16, b"o", 1.0, b"", ()))
        self.assertRaises(ValueError, with_hops, good, 256)
        self.assertRaises(ValueError, with_hops, good, -1)
        for frames in ([], [b""], encode(Ping()), encode(Direct(b"abc", (b"x",))),
                       [bytes((V - 1,)) + good[0][1:]]):
            self.assertRaises(ValueError, with_hops, frames, 3)


class FuzzTests(SynchronousTestCase):
    @given(st.lists(st.binary(max_size=80), max_size=5))
    def test_any_frames_decode_or_raise_decode_error(self, frames: list[bytes]) -> None:
        try:
            msg = decode(frames)
        except DecodeError:
            return
        self.assertEqual(encode(msg), frames)

    @given(messages, st.data())
    def test_mutated_frames(self, msg: codec.Message, data: st.DataObject) -> None:
        frames = encode(msg)
        head = bytearray(frames[0])
        i = data.draw(st.integers(0, len(head) - 1))
        head[i] = data.draw(st.integers(0, 255))
        mutated = [bytes(head), *frames[1:]]
        try:
            again = decode(mutated)
        except DecodeError:
            return
        self.assertEqual(encode(again), mutated)
