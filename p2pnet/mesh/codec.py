# -*- test-case-name: tests.test_mesh_codec -*-
"""The mesh wire format: one message per ZeroMQ multipart message, one strict decoder.

Pure Python, no Twisted.  :func:`decode` takes the frames of one ZeroMQ message (the
ROUTER's routing frame already removed) and returns a message for valid frames; it raises
:class:`~p2pnet.mesh.errors.DecodeError` for *any* other list of byte strings.

Frame 0 is the header, big-endian; the payload parts of ``direct`` and ``broadcast``
follow as frames 1..n (every other kind has exactly one frame)::

    header     version u8 | kind u8 | body
    hello      netid-len u8 | netid | id-len u8 | id | port u16 | host-len u8 | host
    hello-ack  (same body as hello: the answering node's own values)
    refuse     code u8 | reason-len u16 | reason (UTF-8)
    direct     channel-len u8 | channel
    broadcast  hops u8 | msg-id 16 | sent-at f64 | origin-len u8 | origin |
               channel-len u8 | channel
    ping, pong, bye   (no body)

Every other kind is decoded only at :data:`VERSION`; a hello of any version decodes (its
body layout is frozen), so a node can refuse a wrong version with a reason.

Version 2 added the broadcast's hop limit (``hops``, 0..255, decremented at each relay,
see :mod:`p2pnet.mesh.flood`); version 1 dropped floods by the origin's ``sent-at``, which
version 2 carries as information only.  :func:`with_hops` rewrites the hop limit of
encoded broadcast frames, so a relay does not encode the message again.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from p2pnet.mesh.errors import DecodeError

VERSION = 2
MSG_ID_BYTES = 16
#: The largest hop limit a broadcast carries (one byte).
MAX_HOPS = 255
MAX_ID = 64
MAX_NETWORK_ID = 32
MAX_CHANNEL = 64
MAX_HOST = 255
MAX_REASON = 1024
MAX_PARTS = 64
#: Bytes of payload (all parts together) one message carries at most.
MAX_PAYLOAD = 1 << 20
#: The longest frame a valid message has (the ZeroMQ MAXMSGSIZE to set on sockets).
MAX_FRAME = MAX_PAYLOAD


class Kind(enum.IntEnum):
    HELLO = 1
    HELLO_ACK = 2
    REFUSE = 3
    DIRECT = 4
    BROADCAST = 5
    PING = 6
    PONG = 7
    BYE = 8


class Refusal(enum.IntEnum):
    """Why a node refused a hello."""

    WRONG_NETWORK = 1
    WRONG_VERSION = 2
    SELF = 3
    TOO_MANY_PEERS = 4
    PROTOCOL = 5
    STOPPING = 6


# -- validators -------------------------------------------------------------------------


def check_channel(channel: object) -> None:
    """``TypeError`` unless ``channel`` is bytes; ``ValueError`` if over MAX_CHANNEL."""
    if not isinstance(channel, bytes):
        raise TypeError("a channel must be bytes")
    if len(channel) > MAX_CHANNEL:
        raise ValueError(f"a channel is at most {MAX_CHANNEL} bytes")


def _bounded_bytes(lo: int, hi: int) -> Callable[[Any, Any, bytes], None]:
    def check(_: object, attribute: attrs.Attribute[bytes], value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError(f"{attribute.name} must be bytes, not {type(value).__name__}")
        if not lo <= len(value) <= hi:
            raise ValueError(f"{attribute.name} must be {lo}..{hi} bytes, got {len(value)}")
    return check


def _check_host(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str):
        raise TypeError("host must be str")
    try:
        n = len(value.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ValueError("host must be encodable as UTF-8") from e
    if not 1 <= n <= MAX_HOST:
        raise ValueError(f"host must be 1..{MAX_HOST} bytes of UTF-8")


def _check_port(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValueError(f"port must be 1..65535, got {value!r}")


def _check_version(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= 255:
        raise ValueError("version must be 0..255")


def _check_parts(_: object, attribute: attrs.Attribute[tuple[bytes, ...]],
                 value: tuple[bytes, ...]) -> None:
    if len(value) > MAX_PARTS:
        raise ValueError(f"at most {MAX_PARTS} parts, got {len(value)}")
    total = 0
    for part in value:
        if not isinstance(part, bytes):
            raise TypeError(f"parts must be bytes, not {type(part).__name__}")
        total += len(part)
    if total > MAX_PAYLOAD:
        raise ValueError(f"payload of {total} bytes is over {MAX_PAYLOAD}")


def _check_sent_at(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"sent_at must be finite and not negative, got {value!r}")


def _check_hops(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_HOPS:
        raise ValueError(f"hops must be 0..{MAX_HOPS}, got {value!r}")


def _check_reason(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    try:
        n = len(value.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ValueError("reason must be encodable as UTF-8") from e
    if n > MAX_REASON:
        raise ValueError(f"reason must be at most {MAX_REASON} bytes")


def _parts(value: Sequence[bytes]) -> tuple[bytes, ...]:
    return tuple(value)


# -- messages ---------------------------------------------------------------------------

@attrs.frozen
class Hello:
    """A handshake: who I am, where I listen, which network and protocol version.

    ``ack`` marks the answer (``hello-ack``) to a hello.
    """

    network_id: bytes = attrs.field(validator=_bounded_bytes(1, MAX_NETWORK_ID))
    peer_id: bytes = attrs.field(validator=_bounded_bytes(1, MAX_ID))
    host: str = attrs.field(validator=_check_host)
    port: int = attrs.field(validator=_check_port)
    version: int = attrs.field(default=VERSION, validator=_check_version)
    ack: bool = False


@attrs.frozen
class Refuse:
    """A refused hello, with the reason for the other side's user."""

    code: int = attrs.field(validator=attrs.validators.and_(
        attrs.validators.instance_of(int), attrs.validators.in_(range(256))))
    reason: str = attrs.field(validator=_check_reason)


@attrs.frozen
class Direct:
    """A message for the neighbour it is sent to."""

    channel: bytes = attrs.field(validator=_bounded_bytes(0, MAX_CHANNEL))
    parts: tuple[bytes, ...] = attrs.field(converter=_parts, validator=_check_parts)


@attrs.frozen
class Broadcast:
    """A flooded message: ``msg_id`` de-duplicates, ``hops`` is the number of links it
    may still cross, ``sent_at`` the origin's clock (information only: clocks may
    disagree)."""

    msg_id: bytes = attrs.field(validator=_bounded_bytes(MSG_ID_BYTES, MSG_ID_BYTES))
    origin: bytes = attrs.field(validator=_bounded_bytes(1, MAX_ID))
    sent_at: float = attrs.field(validator=_check_sent_at)
    channel: bytes = attrs.field(validator=_bounded_bytes(0, MAX_CHANNEL))
    parts: tuple[bytes, ...] = attrs.field(converter=_parts, validator=_check_parts)
    hops: int = attrs.field(default=MAX_HOPS, validator=_check_hops)


@attrs.frozen
class Ping:
    """Keepalive; answered with :class:`Pong`."""


@attrs.frozen
class Pong:
    """Answer to :class:`Ping`."""


@attrs.frozen
class Bye:
    """The sender closes this link (stopping, or dropping us)."""


Message = Hello | Refuse | Direct | Broadcast | Ping | Pong | Bye

_F64 = struct.Struct(">d")
_U16 = struct.Struct(">H")


# -- encoding ---------------------------------------------------------------------------

def encode(msg: Message) -> list[bytes]:
    """The frames of ``msg`` (the messages validate themselves when built)."""
    if isinstance(msg, Broadcast):
        head = b"".join((
            bytes((VERSION, Kind.BROADCAST, msg.hops)), msg.msg_id, _F64.pack(msg.sent_at),
            bytes((len(msg.origin),)), msg.origin, bytes((len(msg.channel),)), msg.channel,
        ))
        return [head, *msg.parts]
    if isinstance(msg, Direct):
        head = bytes((VERSION, Kind.DIRECT, len(msg.channel))) + msg.channel
        return [head, *msg.parts]
    if isinstance(msg, Hello):
        host = msg.host.encode("utf-8")
        kind = Kind.HELLO_ACK if msg.ack else Kind.HELLO
        return [b"".join((
            bytes((msg.version, kind, len(msg.network_id))), msg.network_id,
            bytes((len(msg.peer_id),)), msg.peer_id, _U16.pack(msg.port),
            bytes((len(host),)), host,
        ))]
    if isinstance(msg, Refuse):
        reason = msg.reason.encode("utf-8")
        return [bytes((VERSION, Kind.REFUSE, msg.code)) + _U16.pack(len(reason)) + reason]
    if isinstance(msg, Ping):
        return [bytes((VERSION, Kind.PING))]
    if isinstance(msg, Pong):
        return [bytes((VERSION, Kind.PONG))]
    if isinstance(msg, Bye):
        return [bytes((VERSION, Kind.BYE))]
    raise TypeError(f"not a mesh message: {type(msg).__name__}")


def with_hops(frames: Sequence[bytes], hops: int) -> list[bytes]:
    """The frames of an encoded :class:`Broadcast` with its hop limit set to ``hops``
    (for a relay: the rest of the frames is passed on as it came).

    ``frames`` must be a valid broadcast (as :func:`decode` took it); ``ValueError``
    otherwise, or for a ``hops`` outside 0..255.
    """
    if not 0 <= hops <= MAX_HOPS:
        raise ValueError(f"hops must be 0..{MAX_HOPS}, got {hops!r}")
    head = frames[0] if frames else b""
    if len(head) < 3 or head[0] != VERSION or head[1] != Kind.BROADCAST:
        raise ValueError("not the frames of a broadcast")
    return [head[:2] + bytes((hops,)) + head[3:], *frames[1:]]


# -- decoding ---------------------------------------------------------------------------

class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DecodeError(f"truncated {what}")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def u8(self, what: str) -> int:
        if self.pos >= len(self.data):
            raise DecodeError(f"truncated {what}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def short(self, lo: int, hi: int, what: str) -> bytes:
        n = self.u8(what)
        if not lo <= n <= hi:
            raise DecodeError(f"{what} length {n} not in {lo}..{hi}")
        return self.take(n, what)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise DecodeError(f"{len(self.data) - self.pos} trailing bytes")


def _payload(frames: Sequence[bytes]) -> tuple[bytes, ...]:
    parts = tuple(frames[1:])
    if len(parts) > MAX_PARTS:
        raise DecodeError(f"{len(parts)} parts, at most {MAX_PARTS}")
    if sum(len(p) for p in parts) > MAX_PAYLOAD:
        raise DecodeError(f"payload over {MAX_PAYLOAD} bytes")
    return parts


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DecodeError(f"{what} is not UTF-8") from e


def decode(frames: Sequence[bytes]) -> Message:
    """The message in ``frames``; :class:`DecodeError` for anything else."""
    if not frames:
        raise DecodeError("no frames")
    for frame in frames:
        if not isinstance(frame, bytes):
            raise DecodeError(f"frame of type {type(frame).__name__}, not bytes")
    head = frames[0]
    if len(head) < 2:
        raise DecodeError("header shorter than 2 bytes")
    version, kind = head[0], head[1]
    r = _Reader(head, 2)
    if kind in (Kind.HELLO, Kind.HELLO_ACK):
        if len(frames) != 1:
            raise DecodeError("hello has extra frames")
        network_id = r.short(1, MAX_NETWORK_ID, "network id")
        peer_id = r.short(1, MAX_ID, "peer id")
        port = _U16.unpack(r.take(2, "port"))[0]
        host = _utf8(r.short(1, MAX_HOST, "host"), "host")
        r.end()
        if port == 0:
            raise DecodeError("port 0")
        return Hello(network_id, peer_id, host, port, version, kind == Kind.HELLO_ACK)
    if version != VERSION:
        raise DecodeError(f"unsupported version {version}")
    if kind == Kind.BROADCAST:
        hops = r.u8("hops")
        msg_id = r.take(MSG_ID_BYTES, "msg id")
        sent_at = _F64.unpack(r.take(8, "sent at"))[0]
        origin = r.short(1, MAX_ID, "origin")
        channel = r.short(0, MAX_CHANNEL, "channel")
        r.end()
        if not math.isfinite(sent_at) or sent_at < 0:
            raise DecodeError(f"bad sent-at {sent_at!r}")
        return Broadcast(msg_id, origin, sent_at, channel, _payload(frames), hops)
    if kind == Kind.DIRECT:
        channel = r.short(0, MAX_CHANNEL, "channel")
        r.end()
        return Direct(channel, _payload(frames))
    if len(frames) != 1:
        raise DecodeError(f"kind {kind} has extra frames")
    if kind == Kind.REFUSE:
        code = r.u8("code")
        n = _U16.unpack(r.take(2, "reason length"))[0]
        if n > MAX_REASON:
            raise DecodeError(f"reason of {n} bytes")
        reason = _utf8(r.take(n, "reason"), "reason")
        r.end()
        return Refuse(code, reason)
    r.end()
    if kind == Kind.PING:
        return Ping()
    if kind == Kind.PONG:
        return Pong()
    if kind == Kind.BYE:
        return Bye()
    raise DecodeError(f"unknown kind {kind}")
