"""Tests for :mod:`p2pnet.dht.codec`: round trips, strictness and totality of ``decode``.

DESIGN.md: "Decoders are strict and total" -- any byte string either decodes to a valid
message or raises :class:`DecodeError`, and nothing else.  Hypothesis builds every body
type for the round trips, and fuzzes ``decode`` with arbitrary bytes and with mutations
(truncations, byte flips, appended bytes) of valid encodings.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.dht import codec
from p2pnet.dht.codec import (
    KEY,
    MAX_DATAGRAM,
    MAX_NETWORK_ID,
    MAX_NODES,
    MAX_PADDING,
    MAX_VALUES,
    RPC,
    TID_BYTES,
    TOKEN_BYTES,
    VERSION,
    ErrorCode,
    ErrorResponse,
    FindNodeRequest,
    FindValueRequest,
    GetValueRequest,
    GetValueResponse,
    Kind,
    Message,
    NodesResponse,
    PingRequest,
    PingResponse,
    StoreRequest,
    StoreResponse,
    StoreStatus,
    ValueInfo,
    ValuesResponse,
)
from p2pnet.dht.errors import DecodeError
from p2pnet.models import MAX_VALUE_SIZE, Node

NETID = b"p2pnet"
TID = b"\x01\x02\x03\x04\x05\x06\x07\x08"
SENDER = bytes(range(KEY))
KEY_A = b"\xaa" * KEY
KEY_B = b"\xbb" * KEY


# -- strategies ------------------------------------------------------------------------

keys = st.binary(min_size=KEY, max_size=KEY)
netids = st.binary(min_size=1, max_size=MAX_NETWORK_ID)
tids = st.binary(min_size=TID_BYTES, max_size=TID_BYTES)


def _canonical(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    return socket.inet_ntop(family, ip.packed)


#: addresses a contact may have (what the decoder keeps), in the decoder's text form
hosts = (st.ip_addresses(v=4) | st.ip_addresses(v=6)).filter(
    lambda ip: codec.reachable(ip.packed)).map(_canonical)
tokens = st.none() | st.binary(min_size=TOKEN_BYTES, max_size=TOKEN_BYTES)
paddings = st.just(0) | st.integers(min_value=1, max_value=MAX_PADDING)
ports = st.integers(min_value=1, max_value=65535)
nodes = st.builds(Node, keys, hosts, ports)
sizes = st.integers(min_value=0, max_value=MAX_VALUE_SIZE)
timestamps = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
value_infos = st.builds(ValueInfo, keys, sizes, timestamps)


def node_tuples(max_size: int = MAX_NODES) -> st.SearchStrategy[tuple[Node, ...]]:
    return st.lists(nodes, max_size=max_size).map(tuple)


@st.composite
def getval_responses(draw: st.DrawFn, max_data: int = 2000) -> GetValueResponse:
    total = draw(sizes)
    data = draw(st.binary(max_size=min(total, max_data)))
    offset = draw(st.integers(min_value=0, max_value=total - len(data)))
    return GetValueResponse(total, offset, data)


@st.composite
def inline_stores(draw: st.DrawFn, max_data: int = 2000) -> StoreRequest:
    data = draw(st.binary(max_size=max_data))
    return StoreRequest(draw(keys), draw(keys), len(data), draw(timestamps), data, draw(ages))


ages = st.just(0) | st.integers(min_value=1, max_value=2**32 - 1)


@st.composite
def inline_values(draw: st.DrawFn, max_values: int = MAX_VALUES, max_data: int = 2000
                  ) -> ValuesResponse:
    """A findval answer carrying its first value's bytes inline."""
    data = draw(st.binary(max_size=max_data))
    first = ValueInfo(draw(keys), len(data), draw(timestamps))
    rest = draw(st.lists(value_infos, max_size=max_values - 1))
    return ValuesResponse((first, *rest), data)


def bodies(max_nodes: int = MAX_NODES, max_values: int = MAX_VALUES,
           max_data: int = 2000) -> st.SearchStrategy[tuple[codec.Body, Kind, RPC]]:
    """Every body type, with the kind and rpc it must travel as."""
    def tagged(strategy: st.SearchStrategy[codec.Body], kind: Kind, rpc: RPC
               ) -> st.SearchStrategy[tuple[codec.Body, Kind, RPC]]:
        return strategy.map(lambda b: (b, kind, rpc))

    req, resp = Kind.REQUEST, Kind.RESPONSE
    return st.one_of(
        tagged(st.just(PingRequest()), req, RPC.PING),
        tagged(st.just(PingResponse()), resp, RPC.PING),
        tagged(st.builds(FindNodeRequest, keys), req, RPC.FIND_NODE),
        tagged(st.builds(NodesResponse, node_tuples(max_nodes)), resp, RPC.FIND_NODE),
        tagged(st.builds(FindValueRequest, keys, st.none() | keys), req, RPC.FIND_VALUE),
        tagged(st.builds(NodesResponse, node_tuples(max_nodes)), resp, RPC.FIND_VALUE),
        tagged(st.builds(ValuesResponse, st.lists(value_infos, max_size=max_values).map(tuple)),
               resp, RPC.FIND_VALUE),
        tagged(inline_values(max_values, max_data), resp, RPC.FIND_VALUE),
        tagged(st.builds(StoreRequest, keys, keys, sizes, timestamps, st.none(), ages),
               req, RPC.STORE),
        tagged(inline_stores(max_data), req, RPC.STORE),
        tagged(st.builds(StoreResponse, st.sampled_from(StoreStatus)), resp, RPC.STORE),
        tagged(st.builds(GetValueRequest, keys, keys, sizes, sizes), req, RPC.GET_VALUE),
        tagged(getval_responses(max_data), resp, RPC.GET_VALUE),
        st.tuples(
            st.builds(ErrorResponse, st.integers(min_value=0, max_value=255),
                      st.text(max_size=50)),  # at most 200 bytes of UTF-8: not cut
            st.just(Kind.ERROR), st.sampled_from(RPC)),
    )


@st.composite
def messages(draw: st.DrawFn, **kw: int) -> Message:
    body, kind, rpc = draw(bodies(**kw))
    return Message(draw(netids), kind, rpc, draw(tids), draw(keys), body, draw(tokens),
                   draw(paddings), draw(tokens))


def encode_message(m: Message) -> bytes:
    return codec.encode(m.network_id, m.tid, m.sender, m.body, m.rpc, m.token, m.padding,
                        m.grant)


def enc(body: codec.Body, rpc: RPC | None = None) -> bytes:
    return codec.encode(NETID, TID, SENDER, body, rpc)


def header(kind: int, rpc: int, netid: bytes = NETID, extra: bytes = b"\x00") -> bytes:
    return bytes((VERSION, len(netid))) + netid + bytes((kind, rpc)) + TID + SENDER + extra


def node_bytes(key: bytes, port: int, host: str | bytes) -> bytes:
    """One wire contact: ``host`` an address literal, or raw 4 or 16 bytes."""
    packed = host if isinstance(host, bytes) else ipaddress.ip_address(host).packed
    return key + bytes((4 if len(packed) == 4 else 6,)) + packed + struct.pack("!H", port)


def is_fixed_layout(m: Message) -> bool:
    """Every message but a getval answer: its length follows from its own fields."""
    return not isinstance(m.body, GetValueResponse)


# -- helpers ---------------------------------------------------------------------------


class CodecTestCase(SynchronousTestCase):
    def assertDecodesOrRejects(self, data: bytes) -> Message | None:
        """``decode(data)`` is a valid message (re-encoding gives ``data``) or DecodeError."""
        try:
            m = codec.decode(data)
        except DecodeError:
            return None
        self.assertIsInstance(m, Message)
        if isinstance(m.body, NodesResponse):
            for n in m.body.nodes:  # built unchecked by the decoder: each must be valid
                self.assertEqual(Node(n.key, n.host, n.port), n)
                self.assertTrue(codec.reachable(ipaddress.ip_address(n.host).packed))
            if m.body.dropped:  # the kept contacts re-encode; the dropped ones are gone
                self.assertLessEqual(len(m.body.nodes) + m.body.dropped, MAX_NODES)
                again = codec.decode(encode_message(m))
                self.assertEqual(again.body, NodesResponse(m.body.nodes))
                return m
        if isinstance(m.body, ErrorResponse) and len(m.body.message.encode("utf-8")) > 200:
            # the decoder takes up to 255 bytes; the encoder cuts at 200
            again = codec.decode(encode_message(m))
            self.assertTrue(m.body.message.startswith(again.body.message))  # type: ignore
        else:
            self.assertEqual(encode_message(m), data)
        return m

    def assertRejects(self, data: bytes) -> None:
        self.assertRaises(DecodeError, codec.decode, data)


# -- round trips -----------------------------------------------------------------------


class RoundTripTests(CodecTestCase):
    @given(messages())
    def test_round_trip(self, m: Message) -> None:
        """Every message kind and rpc decodes to what was encoded."""
        data = encode_message(m)
        self.assertLessEqual(len(data), MAX_DATAGRAM)
        self.assertEqual(codec.decode(data), m)

    @given(bodies())
    def test_kind_and_rpc_follow_the_body(self, tagged: tuple[codec.Body, Kind, RPC]) -> None:
        body, kind, rpc = tagged
        m = codec.decode(codec.encode(NETID, TID, SENDER, body, rpc))
        self.assertEqual((m.kind, m.rpc, m.body), (kind, rpc, body))
        self.assertEqual((m.network_id, m.tid, m.sender), (NETID, TID, SENDER))

    def test_every_body_type(self) -> None:
        """One explicit example of each body, kind and rpc."""
        n1 = Node(KEY_A, "10.0.0.1", 4000)
        n2 = Node(KEY_B, "2001:db8::1", 65535)
        cases: list[tuple[codec.Body, Kind, RPC]] = [
            (PingRequest(), Kind.REQUEST, RPC.PING),
            (PingResponse(), Kind.RESPONSE, RPC.PING),
            (FindNodeRequest(KEY_A), Kind.REQUEST, RPC.FIND_NODE),
            (NodesResponse((n1, n2)), Kind.RESPONSE, RPC.FIND_NODE),
            (NodesResponse(()), Kind.RESPONSE, RPC.FIND_NODE),
            (FindValueRequest(KEY_A), Kind.REQUEST, RPC.FIND_VALUE),
            (FindValueRequest(KEY_A, KEY_B), Kind.REQUEST, RPC.FIND_VALUE),
            (NodesResponse((n2,)), Kind.RESPONSE, RPC.FIND_VALUE),
            (NodesResponse(()), Kind.RESPONSE, RPC.FIND_VALUE),
            (ValuesResponse((ValueInfo(KEY_B, 12, 1.5), ValueInfo(KEY_A, 0, 0.0))),
             Kind.RESPONSE, RPC.FIND_VALUE),
            (ValuesResponse(()), Kind.RESPONSE, RPC.FIND_VALUE),
            (ValuesResponse((ValueInfo(KEY_B, 3, 1.5), ValueInfo(KEY_A, 9, 0.0)), b"abc"),
             Kind.RESPONSE, RPC.FIND_VALUE),
            (ValuesResponse((ValueInfo(KEY_B, 0, 1.5),), b""), Kind.RESPONSE, RPC.FIND_VALUE),
            (StoreRequest(KEY_A, KEY_B, 3, 10.0), Kind.REQUEST, RPC.STORE),
            (StoreRequest(KEY_A, KEY_B, 3, 10.0, b"abc"), Kind.REQUEST, RPC.STORE),
            (StoreRequest(KEY_A, KEY_B, 0, 10.0, b""), Kind.REQUEST, RPC.STORE),
            (StoreResponse(StoreStatus.REFUSED), Kind.RESPONSE, RPC.STORE),
            (StoreResponse(StoreStatus.STORED), Kind.RESPONSE, RPC.STORE),
            (StoreResponse(StoreStatus.HELD), Kind.RESPONSE, RPC.STORE),
            (GetValueRequest(KEY_A, KEY_B, 5, 100), Kind.REQUEST, RPC.GET_VALUE),
            (GetValueResponse(10, 4, b"456789"), Kind.RESPONSE, RPC.GET_VALUE),
            (GetValueResponse(0, 0, b""), Kind.RESPONSE, RPC.GET_VALUE),
            (ErrorResponse(ErrorCode.NOT_FOUND, "pas trouvé ✓ 😀"), Kind.ERROR, RPC.GET_VALUE),
            (ErrorResponse(ErrorCode.INTERNAL, ""), Kind.ERROR, RPC.PING),
        ]
        for body, kind, rpc in cases:
            m = codec.decode(enc(body, rpc))
            self.assertEqual((m.kind, m.rpc, m.body), (kind, rpc, body), body)

    def test_store_inline_and_pull_differ(self) -> None:
        """A pull store (data None) and an inline store of zero bytes are different."""
        pull = codec.decode(enc(StoreRequest(KEY_A, KEY_B, 0, 1.0))).body
        inline = codec.decode(enc(StoreRequest(KEY_A, KEY_B, 0, 1.0, b""))).body
        self.assertIsNone(pull.data)  # type: ignore[union-attr]
        self.assertEqual(inline.data, b"")  # type: ignore[union-attr]

    def test_nodes_response_defaults_to_findnode(self) -> None:
        m = codec.decode(enc(NodesResponse(())))
        self.assertEqual(m.rpc, RPC.FIND_NODE)

    def test_values_response_is_findval(self) -> None:
        m = codec.decode(enc(ValuesResponse(()), RPC.FIND_NODE))
        self.assertEqual(m.rpc, RPC.FIND_VALUE)

    def test_error_code_is_int(self) -> None:
        m = codec.decode(enc(ErrorResponse(ErrorCode.BAD_REQUEST, "x"), RPC.STORE))
        self.assertEqual(m.body, ErrorResponse(3, "x"))
        self.assertEqual(m.kind, Kind.ERROR)
        self.assertEqual(m.rpc, RPC.STORE)

    def test_max_nodes_and_values(self) -> None:
        many = tuple(Node(bytes([i]) * KEY, f"2001:db8::{i + 1:x}", 1 + i)
                     for i in range(MAX_NODES))
        self.assertEqual(codec.decode(enc(NodesResponse(many))).body, NodesResponse(many))
        vals = tuple(ValueInfo(bytes([i]) * KEY, MAX_VALUE_SIZE, float(i))
                     for i in range(MAX_VALUES))
        self.assertEqual(codec.decode(enc(ValuesResponse(vals))).body, ValuesResponse(vals))


# -- encode refusals ---------------------------------------------------------------------


class EncodeTests(CodecTestCase):
    def test_datagram_limit(self) -> None:
        """A message of exactly MAX_DATAGRAM bytes encodes; one byte more is refused."""
        overhead = len(enc(GetValueResponse(MAX_VALUE_SIZE, 0, b"")))
        fits = GetValueResponse(MAX_VALUE_SIZE, 0, b"x" * (MAX_DATAGRAM - overhead))
        data = enc(fits)
        self.assertEqual(len(data), MAX_DATAGRAM)
        self.assertEqual(codec.decode(data).body, fits)
        too_big = GetValueResponse(MAX_VALUE_SIZE, 0, b"x" * (MAX_DATAGRAM - overhead + 1))
        self.assertRaises(ValueError, enc, too_big)

    def test_inline_store_over_datagram(self) -> None:
        data = b"v" * MAX_DATAGRAM
        self.assertRaises(ValueError, enc, StoreRequest(KEY_A, KEY_B, len(data), 1.0, data))

    def test_too_many_nodes_or_values(self) -> None:
        many = tuple(Node(bytes([i]) * KEY, "10.0.0.1", 1 + i) for i in range(MAX_NODES + 1))
        self.assertRaises(ValueError, enc, NodesResponse(many))
        vals = tuple(ValueInfo(KEY_A, 1, 1.0) for _ in range(MAX_VALUES + 1))
        self.assertRaises(ValueError, enc, ValuesResponse(vals))

    def test_error_needs_rpc(self) -> None:
        self.assertRaises(ValueError, enc, ErrorResponse(1, "boom"))

    def test_not_a_body(self) -> None:
        self.assertRaises(TypeError, enc, "ping")

    def test_bad_header_fields(self) -> None:
        for netid, tid, sender in [(b"", TID, SENDER), (b"n" * (MAX_NETWORK_ID + 1), TID, SENDER),
                                   (NETID, TID[:-1], SENDER), (NETID, TID + b"x", SENDER),
                                   (NETID, TID, SENDER[:-1])]:
            self.assertRaises(ValueError, codec.encode, netid, tid, sender, PingRequest())

    def test_out_of_range_integers(self) -> None:
        """Fields that do not fit their width are refused with ValueError (the error
        callers catch), not ``struct.error``."""
        for body, rpc in [(ErrorResponse(256, "x"), RPC.PING),
                          (ErrorResponse(-1, "x"), RPC.PING),
                          (StoreRequest(KEY_A, KEY_B, -1, 1.0), None),
                          (StoreRequest(KEY_A, KEY_B, 2**32, 1.0), None),
                          (GetValueRequest(KEY_A, KEY_B, 2**32, 0), None),
                          (GetValueResponse(2**32, 0, b""), None),
                          (ValuesResponse((ValueInfo(KEY_A, -5, 1.0),)), None)]:
            self.assertRaises(ValueError, enc, body, rpc)

    def test_keys_of_another_length(self) -> None:
        """A key or index that is not 20 bytes is refused, not padded or cut."""
        for bad in [b"", b"k" * (KEY - 1), b"k" * (KEY + 1)]:
            for body in [FindNodeRequest(bad), FindValueRequest(bad),
                         FindValueRequest(KEY_A, bad), FindValueRequest(bad, KEY_A),
                         StoreRequest(bad, KEY_B, 1, 1.0), StoreRequest(KEY_A, bad, 1, 1.0, b"x"),
                         GetValueRequest(bad, KEY_B, 0, 1), GetValueRequest(KEY_A, bad, 0, 1),
                         ValuesResponse((ValueInfo(KEY_A, 1, 1.0), ValueInfo(bad, 1, 1.0)))]:
                self.assertRaises(ValueError, enc, body)

    def test_long_error_message_cut_on_utf8_boundary(self) -> None:
        """Error messages are cut to at most 200 bytes without splitting a character."""
        for text in ["a" * 300, "é" * 150, "a" + "é" * 150, "€" * 100, "ab" + "😀" * 60,
                     "x" * 199 + "😀", "x" * 200, "x" * 201]:
            m = codec.decode(enc(ErrorResponse(ErrorCode.INTERNAL, text), RPC.FIND_NODE))
            got = m.body.message  # type: ignore[union-attr]
            raw = got.encode("utf-8")
            self.assertLessEqual(len(raw), 200)
            self.assertTrue(text.startswith(got), text)
            if len(text.encode("utf-8")) <= 200:
                self.assertEqual(got, text)
            else:
                self.assertGreater(len(raw), 200 - 4)  # only the split character is lost

    @given(st.text(max_size=300))
    def test_any_error_message_encodes_and_decodes(self, text: str) -> None:
        m = codec.decode(enc(ErrorResponse(1, text), RPC.STORE))
        got = m.body.message  # type: ignore[union-attr]
        self.assertTrue(text.startswith(got))
        self.assertLessEqual(len(got.encode("utf-8")), 200)
        if len(text.encode("utf-8")) <= 200:
            self.assertEqual(got, text)


# -- totality of decode ------------------------------------------------------------------


class DecodeTotalityTests(CodecTestCase):
    @given(st.binary(max_size=300))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        self.assertDecodesOrRejects(data)

    @given(st.integers(0, 4), st.sampled_from(list(RPC)) | st.integers(0, 7),
           st.binary(max_size=200))
    def test_valid_header_arbitrary_body(self, kind: int, rpc: int, body: bytes) -> None:
        """Past the header, so the body decoders see the random bytes."""
        self.assertDecodesOrRejects(header(kind, rpc) + body)

    @given(st.sampled_from([Kind.REQUEST, Kind.RESPONSE]), st.sampled_from(list(RPC)),
           st.lists(st.integers(0, 255) | st.sampled_from([0, 1, 2, 32, 33, 64, 65]),
                    max_size=120))
    def test_valid_header_small_byte_body(self, kind: Kind, rpc: RPC, body: list[int]) -> None:
        """Bodies of small numbers, so counts and flags often look plausible."""
        self.assertDecodesOrRejects(header(kind, rpc) + bytes(body))

    def test_non_bytes(self) -> None:
        data = enc(PingRequest())
        for bad in [bytearray(data), memoryview(data), data.decode("latin-1"), None, 7, [1]]:
            self.assertRaises(DecodeError, codec.decode, bad)

    def test_short_and_empty(self) -> None:
        for data in [b"", b"\x01", bytes((VERSION, 1))]:
            self.assertRejects(data)

    def test_oversize_datagram(self) -> None:
        fits = enc(GetValueResponse(MAX_VALUE_SIZE, 0, b""))
        pad = MAX_DATAGRAM + 1 - len(fits)
        self.assertRejects(enc(GetValueResponse(MAX_VALUE_SIZE, 0, b"")) + b"x" * pad)

    @settings(max_examples=60)
    @given(messages(max_nodes=4, max_values=4, max_data=40))
    def test_truncation_at_every_length(self, m: Message) -> None:
        data = encode_message(m)
        for i in range(len(data)):
            got = self.assertDecodesOrRejects(data[:i])
            if is_fixed_layout(m):
                self.assertIsNone(got, f"{m.body!r} truncated to {i} bytes decoded")

    @settings(max_examples=60)
    @given(messages(max_nodes=4, max_values=4, max_data=40))
    def test_single_byte_flips(self, m: Message) -> None:
        data = encode_message(m)
        for i in range(len(data)):
            for new in {data[i] ^ 0xFF, data[i] ^ 0x01, data[i] ^ 0x80, 0, 1, 0xFF} - {data[i]}:
                self.assertDecodesOrRejects(data[:i] + bytes((new,)) + data[i + 1:])

    @given(messages(max_nodes=4, max_values=4, max_data=40), st.binary(min_size=1, max_size=40))
    def test_appended_bytes(self, m: Message, extra: bytes) -> None:
        data = encode_message(m)
        got = self.assertDecodesOrRejects(data + extra)
        if is_fixed_layout(m):
            self.assertIsNone(got, f"{m.body!r} with {extra!r} appended decoded")

    def test_getval_response_truncation_keeps_a_shorter_chunk(self) -> None:
        """The one variable layout: a shorter chunk is still a valid chunk."""
        data = enc(GetValueResponse(10, 2, b"abcdef"))
        self.assertEqual(codec.decode(data[:-2]).body, GetValueResponse(10, 2, b"abcd"))
        self.assertEqual(codec.decode(data + b"gh").body, GetValueResponse(10, 2, b"abcdefgh"))
        self.assertRejects(data + b"ghi")


# -- specific rejections -----------------------------------------------------------------


class RejectionTests(CodecTestCase):
    def replace(self, data: bytes, pos: int, new: bytes) -> bytes:
        return data[:pos] + new + data[pos + len(new):]

    def body_pos(self, netid: bytes = NETID) -> int:
        return 2 + len(netid) + 2 + TID_BYTES + KEY + 1

    def test_wrong_version(self) -> None:
        data = enc(PingRequest())
        for v in [0, VERSION + 1, 255]:
            self.assertRejects(bytes((v,)) + data[1:])

    def test_network_id_length(self) -> None:
        self.assertRejects(bytes((VERSION, 0)) + bytes((0, 1)) + TID + SENDER + b"\x00")
        long_id = b"n" * (MAX_NETWORK_ID + 1)
        self.assertRejects(bytes((VERSION, len(long_id))) + long_id + bytes((0, 1)) + TID
                           + SENDER + b"\x00")
        ok = b"n" * MAX_NETWORK_ID
        self.assertEqual(codec.decode(bytes((VERSION, len(ok))) + ok + bytes((0, 1)) + TID
                                      + SENDER + b"\x00").network_id, ok)

    def test_truncated_header(self) -> None:
        data = enc(PingRequest())
        for i in range(self.body_pos()):
            self.assertRejects(data[:i])

    def test_unknown_kind_or_rpc(self) -> None:
        for kind, rpc in [(3, 1), (255, 1), (0, 0), (0, 6), (1, 255), (2, 0)]:
            self.assertRejects(header(kind, rpc))
            self.assertRejects(header(kind, rpc) + KEY_A)

    def test_oversize_value_size(self) -> None:
        big = MAX_VALUE_SIZE + 1
        self.assertRejects(enc(StoreRequest(KEY_A, KEY_B, big, 1.0)))
        self.assertRejects(enc(StoreRequest(KEY_A, KEY_B, 2**32 - 1, 1.0)))
        self.assertRejects(enc(ValuesResponse((ValueInfo(KEY_A, big, 1.0),))))
        self.assertRejects(enc(GetValueResponse(big, 0, b"")))
        self.assertRejects(enc(GetValueRequest(KEY_A, KEY_B, big, 0)))
        self.assertRejects(enc(GetValueRequest(KEY_A, KEY_B, 0, big)))
        # the limit itself is fine
        self.assertEqual(codec.decode(enc(StoreRequest(KEY_A, KEY_B, MAX_VALUE_SIZE, 1.0))).body,
                         StoreRequest(KEY_A, KEY_B, MAX_VALUE_SIZE, 1.0))

    def test_inline_value_exactly_its_size(self) -> None:
        """Variant 2 of a findval answer: the first value's bytes, exactly its size, and
        only after at least one announcement."""
        good = enc(ValuesResponse((ValueInfo(KEY_A, 3, 1.0),), b"abc"))
        self.assertEqual(codec.decode(good).body.data, b"abc")  # type: ignore[union-attr]
        self.assertRejects(good[:-1])
        self.assertRejects(good + b"d")
        head = header(Kind.RESPONSE, RPC.FIND_VALUE)
        self.assertRejects(head + b"\x02\x00")  # no announcement
        self.assertRejects(head + b"\x02\x00abc")
        self.assertRejects(head + b"\x02\x01" + KEY_A)  # truncated announcement
        self.assertRejects(head + b"\x03\x00")  # unknown variant
        for body in [ValuesResponse((), b""), ValuesResponse((ValueInfo(KEY_A, 3, 1.0),), b"ab")]:
            self.assertRaises(ValueError, enc, body)

    def test_bad_timestamps(self) -> None:
        for ts in [math.nan, -math.nan, -1.0, -1e-300, math.inf, -math.inf]:
            self.assertRejects(enc(StoreRequest(KEY_A, KEY_B, 1, ts)))
            self.assertRejects(enc(StoreRequest(KEY_A, KEY_B, 1, ts, b"x")))
            self.assertRejects(enc(ValuesResponse((ValueInfo(KEY_A, 1, 1.0),
                                                   ValueInfo(KEY_B, 1, ts)))))

    def test_unknown_address_family(self) -> None:
        """An entry of an unknown family has no known length: the datagram is malformed."""
        good = node_bytes(KEY_A, 4000, "10.0.0.1")
        for family in [0, 5, 41, 255]:
            bad = good[:KEY] + bytes((family,)) + good[KEY + 1:]
            self.assertRejects(header(Kind.RESPONSE, RPC.FIND_NODE) + b"\x01" + bad)
            self.assertRejects(header(Kind.RESPONSE, RPC.FIND_VALUE) + b"\x00\x01" + bad)

    def test_truncated_address(self) -> None:
        for host in ["10.0.0.1", "2001:db8::1"]:
            entry = node_bytes(KEY_A, 4000, host)
            for cut in range(1, len(entry)):
                self.assertRejects(header(Kind.RESPONSE, RPC.FIND_NODE) + b"\x01"
                                   + entry[:-cut])

    def test_port_zero_is_dropped(self) -> None:
        body = bytes((2,)) + node_bytes(KEY_A, 0, "10.0.0.1") + node_bytes(KEY_B, 1, "10.0.0.2")
        self.assertEqual(codec.decode(header(Kind.RESPONSE, RPC.FIND_NODE) + body).body,
                         NodesResponse((Node(KEY_B, "10.0.0.2", 1),), dropped=1))

    def test_too_many_nodes(self) -> None:
        def nodes_body(count: int) -> bytes:
            return bytes((count,)) + b"".join(
                node_bytes(bytes([i]) * KEY, 1000 + i, "10.1.1.1") for i in range(count))

        self.assertEqual(
            len(codec.decode(header(Kind.RESPONSE, RPC.FIND_NODE)
                             + nodes_body(MAX_NODES)).body.nodes),  # type: ignore[union-attr]
            MAX_NODES)
        self.assertRejects(header(Kind.RESPONSE, RPC.FIND_NODE) + nodes_body(MAX_NODES + 1))
        self.assertRejects(header(Kind.RESPONSE, RPC.FIND_VALUE) + b"\x00"
                           + nodes_body(MAX_NODES + 1))

    def test_node_count_mismatch(self) -> None:
        one = node_bytes(KEY_A, 1, "10.1.1.1")
        self.assertRejects(header(Kind.RESPONSE, RPC.FIND_NODE) + b"\x02" + one)
        self.assertRejects(header(Kind.RESPONSE, RPC.FIND_NODE) + b"\x00" + one)
        self.assertRejects(header(Kind.RESPONSE, RPC.FIND_NODE))  # no count at all

    def test_too_many_values(self) -> None:
        def values_body(count: int) -> bytes:
            return b"\x01" + bytes((count,)) + struct.pack("!20sId", KEY_A, 1, 1.0) * count

        self.assertEqual(
            len(codec.decode(header(Kind.RESPONSE, RPC.FIND_VALUE)
                             + values_body(MAX_VALUES)).body.values),  # type: ignore[union-attr]
            MAX_VALUES)
        self.assertRejects(header(Kind.RESPONSE, RPC.FIND_VALUE) + values_body(MAX_VALUES + 1))

    def test_bad_findval_variants(self) -> None:
        h = header(Kind.RESPONSE, RPC.FIND_VALUE)
        for body in [b"", b"\x02\x00", b"\x01", b"\xff\x00"]:
            self.assertRejects(h + body)
        r = header(Kind.REQUEST, RPC.FIND_VALUE)
        for body in [KEY_A, KEY_A + b"\x02", KEY_A + b"\x01", KEY_A + b"\x00" + KEY_B,
                     KEY_A + b"\x01" + KEY_B[:-1], KEY_A + b"\x02" + KEY_B]:
            self.assertRejects(r + body)

    def test_getval_chunk_beyond_total(self) -> None:
        h = header(Kind.RESPONSE, RPC.GET_VALUE)
        self.assertRejects(h + struct.pack("!II", 10, 8) + b"abc")
        self.assertRejects(h + struct.pack("!II", 10, 11) + b"")
        self.assertRejects(h + struct.pack("!II", 0, 0) + b"a")
        self.assertRejects(h + struct.pack("!II", 10, 2**32 - 1) + b"a")
        self.assertRejects(h + struct.pack("!I", 10))  # truncated
        self.assertEqual(codec.decode(h + struct.pack("!II", 10, 7) + b"abc").body,
                         GetValueResponse(10, 7, b"abc"))
        self.assertEqual(codec.decode(h + struct.pack("!II", 10, 10)).body,
                         GetValueResponse(10, 10, b""))

    def test_inline_flag(self) -> None:
        data = enc(StoreRequest(KEY_A, KEY_B, 1, 1.0))
        flag = len(data) - 1
        for f in [2, 3, 255]:
            self.assertRejects(self.replace(data, flag, bytes((f,))))
            self.assertRejects(self.replace(data, flag, bytes((f,))) + b"x")

    def test_inline_store_data_length_must_equal_size(self) -> None:
        h = header(Kind.REQUEST, RPC.STORE)

        def store(size: int, data: bytes) -> bytes:
            return h + struct.pack("!20s20sIdB", KEY_A, KEY_B, size, 1.0, 1) + data

        self.assertEqual(codec.decode(store(3, b"abc")).body,
                         StoreRequest(KEY_A, KEY_B, 3, 1.0, b"abc"))
        for size, data in [(5, b"abcd"), (5, b"abcdef"), (0, b"a"), (1, b"")]:
            self.assertRejects(store(size, data))
        # a pull store carries no data
        self.assertRejects(h + struct.pack("!20s20sIdB", KEY_A, KEY_B, 1, 1.0, 0) + b"x")

    def test_bad_store_status(self) -> None:
        h = header(Kind.RESPONSE, RPC.STORE)
        for status in [3, 255]:
            self.assertRejects(h + bytes((status,)))
        self.assertRejects(h)
        self.assertRejects(h + b"\x01\x01")

    def test_bad_error_body(self) -> None:
        h = header(Kind.ERROR, RPC.PING)
        self.assertRejects(h)
        self.assertRejects(h + b"\x01")
        self.assertRejects(h + b"\x01\x03ab")  # shorter than its length
        self.assertRejects(h + b"\x01\x01ab")  # longer than its length
        self.assertRejects(h + b"\x01\x02\xc3\x28")  # not UTF-8
        self.assertEqual(codec.decode(h + b"\x01\x02ab").body, ErrorResponse(1, "ab"))

    def test_fixed_requests_wrong_length(self) -> None:
        for rpc, body in [(RPC.PING, b"x"), (RPC.FIND_NODE, KEY_A[:-1]),
                          (RPC.FIND_NODE, KEY_A + b"x"),
                          (RPC.GET_VALUE, struct.pack("!20s20sII", KEY_A, KEY_B, 0, 1)[:-1]),
                          (RPC.GET_VALUE, struct.pack("!20s20sII", KEY_A, KEY_B, 0, 1) + b"x"),
                          (RPC.STORE, struct.pack("!20s20sIdB", KEY_A, KEY_B, 0, 1.0, 0)[:-1])]:
            self.assertRejects(header(Kind.REQUEST, rpc) + body)
        self.assertRejects(header(Kind.RESPONSE, RPC.PING) + b"x")


# -- contacts: bogus entries are dropped and counted (issue 11 #4) ---------------------------


#: addresses no node can be reached at: each is dropped from a node list
BOGUS_HOSTS = [
    "0.0.0.0", "0.1.2.3", "255.255.255.255", "224.0.0.1", "239.255.255.250", "240.0.0.1",
    "::", "ff02::1", "ff05::2", "::ffff:10.0.0.1", "::10.0.0.1", "fe80::1", "febf::1",
]
#: addresses a contact may have
GOOD_HOSTS = ["10.0.0.1", "1.2.3.4", "127.0.0.1", "223.255.255.254", "::1", "2001:db8::5",
              "fec0::1", "fd00::1"]


class ContactTests(CodecTestCase):
    def nodes_answer(self, entries: list[bytes], rpc: RPC = RPC.FIND_NODE) -> bytes:
        prefix = b"\x00" if rpc == RPC.FIND_VALUE else b""
        return header(Kind.RESPONSE, rpc) + prefix + bytes((len(entries),)) + b"".join(entries)

    def test_bogus_addresses_dropped_and_counted(self) -> None:
        """Each bogus entry is left out and counted; the good ones around it are kept."""
        for rpc in (RPC.FIND_NODE, RPC.FIND_VALUE):
            for bogus in BOGUS_HOSTS:
                entries = [node_bytes(KEY_A, 1000, "10.0.0.1"), node_bytes(KEY_B, 2000, bogus),
                           node_bytes(SENDER, 3000, "2001:db8::1")]
                body = codec.decode(self.nodes_answer(entries, rpc)).body
                self.assertEqual(body, NodesResponse(
                    (Node(KEY_A, "10.0.0.1", 1000), Node(SENDER, "2001:db8::1", 3000)),
                    dropped=1), bogus)

    def test_good_addresses_kept(self) -> None:
        for host in GOOD_HOSTS:
            body = codec.decode(self.nodes_answer([node_bytes(KEY_A, 7, host)])).body
            self.assertEqual(body, NodesResponse((Node(KEY_A, _canonical(
                ipaddress.ip_address(host)), 7),)), host)

    def test_all_bogus(self) -> None:
        entries = [node_bytes(bytes([i]) * KEY, 1 + i, h) for i, h in enumerate(BOGUS_HOSTS)]
        body = codec.decode(self.nodes_answer(entries)).body
        self.assertEqual(body, NodesResponse((), dropped=len(BOGUS_HOSTS)))

    def test_hostnames_cannot_be_sent(self) -> None:
        """Version 2 carries binary addresses: a hostname has no wire form."""
        for host in ["example.com", "localhost", "h", "1.2.3", "01.2.3.4", " 1.2.3.4",
                     "fe80::1%eth0"]:
            self.assertRaises(ValueError, enc, NodesResponse((Node(KEY_A, host, 1),)))

    @given(st.lists(st.tuples(keys, st.binary(min_size=4, max_size=4)
                              | st.binary(min_size=16, max_size=16),
                              st.integers(0, 65535)), max_size=MAX_NODES))
    def test_any_entries(self, entries: list[tuple[bytes, bytes, int]]) -> None:
        """Any list of well-framed entries decodes: kept + dropped = sent, and each kept
        contact is reachable and in canonical text form."""
        data = self.nodes_answer([node_bytes(k, port, packed) for k, packed, port in entries])
        body = codec.decode(data).body
        assert isinstance(body, NodesResponse)
        self.assertEqual(len(body.nodes) + body.dropped, len(entries))
        expected = [(k, packed, port) for k, packed, port in entries
                    if port and codec.reachable(packed)]
        self.assertEqual([(n.key, ipaddress.ip_address(n.host).packed, n.port)
                          for n in body.nodes], expected)
        self.assertDecodesOrRejects(data)


# -- header: token and padding (protocol version 2) ---------------------------------------


class HeaderTests(CodecTestCase):
    TOKEN = b"T" * TOKEN_BYTES

    def test_token_and_padding_round_trip(self) -> None:
        for token, padding in [(None, 0), (self.TOKEN, 0), (None, 1), (self.TOKEN, 300),
                               (None, MAX_PADDING)]:
            data = codec.encode(NETID, TID, SENDER, FindNodeRequest(KEY_A), None, token, padding)
            m = codec.decode(data)
            self.assertEqual((m.token, m.padding, m.body), (token, padding,
                                                            FindNodeRequest(KEY_A)))

    def test_padding_for_reaches_the_target(self) -> None:
        for body in [FindNodeRequest(KEY_A), FindValueRequest(KEY_A, KEY_B), PingRequest()]:
            size = len(enc(body))
            for target in [0, size, size + 1, size + 2, size + 3, 300, 1000]:
                pad = codec.padding_for(size, target)
                data = codec.encode(NETID, TID, SENDER, body, padding=pad)
                if target <= size:
                    self.assertEqual(pad, 0)
                else:
                    self.assertGreaterEqual(len(data), target)
                    self.assertLessEqual(len(data), max(target, size + 3))

    def test_bad_token_or_padding_refused_by_encode(self) -> None:
        for token, padding in [(b"short", 0), (self.TOKEN + b"x", 0), (None, -1),
                               (None, MAX_PADDING + 1)]:
            self.assertRaises(ValueError, codec.encode, NETID, TID, SENDER, PingRequest(),
                              None, token, padding)

    def test_unknown_flags(self) -> None:
        for flags in [8, 0x10, 0x80, 0xFF, 9]:
            self.assertRejects(header(Kind.REQUEST, RPC.PING, extra=bytes((flags,))))

    def test_truncated_token(self) -> None:
        for n in range(TOKEN_BYTES):
            self.assertRejects(header(Kind.REQUEST, RPC.PING, extra=b"\x01" + b"T" * n))

    def test_padding_must_be_zero_and_fit(self) -> None:
        ok = header(Kind.REQUEST, RPC.PING, extra=b"\x02\x00\x03" + bytes(3))
        self.assertEqual(codec.decode(ok).padding, 3)
        for extra in [b"\x02\x00\x03" + b"\x00\x01\x00", b"\x02\x00\x03" + bytes(2),
                      b"\x02\x00\x00", b"\x02\x00", b"\x02",
                      b"\x02" + struct.pack("!H", MAX_PADDING + 1) + bytes(MAX_PADDING + 1)]:
            self.assertRejects(header(Kind.REQUEST, RPC.PING, extra=extra))

    def test_grant(self) -> None:
        grant = b"G" * TOKEN_BYTES
        data = codec.encode(NETID, TID, SENDER, StoreRequest(KEY_A, KEY_B, 1, 1.0), None,
                            self.TOKEN, 0, grant)
        m = codec.decode(data)
        self.assertEqual((m.token, m.grant), (self.TOKEN, grant))
        self.assertRaises(ValueError, codec.encode, NETID, TID, SENDER, PingRequest(), None,
                          None, 0, b"short")

    def test_store_age(self) -> None:
        """The age of a replicated copy (storage slice): present only when not 0."""
        for age in [0, 1, 86400, 2**32 - 1]:
            for data in [None, b"abc"]:
                body = StoreRequest(KEY_A, KEY_B, 3, 1.0, data, age)
                self.assertEqual(codec.decode(enc(body)).body, body)
        self.assertRaises(ValueError, enc, StoreRequest(KEY_A, KEY_B, 3, 1.0, None, 2**32))
        h = header(Kind.REQUEST, RPC.STORE)
        self.assertRejects(h + struct.pack("!20s20sIdBI", KEY_A, KEY_B, 1, 1.0, 2, 0))
        for flags in [4, 8, 0x80]:
            self.assertRejects(h + struct.pack("!20s20sIdB", KEY_A, KEY_B, 1, 1.0, flags))

    def test_version_1_refused(self) -> None:
        data = enc(PingRequest())
        self.assertRejects(b"\x01" + data[1:])
