# -*- test-case-name: tests.test_chord_record -*-
"""What a chord socket stores in the DHT under a key: a value or a tombstone.

The DHT has no delete, and its ``get`` answers the newest value published under a key
(by timestamp).  So a write of ``key`` stores a :class:`Record` -- the key itself, the
write's timestamp, and the value or, for a delete, nothing but a tombstone mark -- and a
read decodes the newest one: a tombstone answers ``KeyError``.  The record's timestamp
is also the DHT record's timestamp, so the DHT and the key set order writes alike; the
record's SHA-1 (the DHT index) is the tie-break for equal timestamps.

Layout (network byte order), 13 bytes + key + value::

    magic   2 bytes  b"C1" (format 1)
    kind    1 byte   1 = value, 2 = tombstone
    time    8 bytes  IEEE double, finite and >= 0
    keylen  2 bytes
    key     keylen bytes (checked against the key read: a record is for one key only)
    value   the rest (empty for a tombstone)

The decoder is strict and total: any bytes either give a valid record or raise
:class:`~p2pnet.chord.errors.RecordError`.  Pure module (no Twisted).
"""

from __future__ import annotations

import enum
import hashlib
import math
import struct

import attrs

from p2pnet.chord.errors import RecordError

MAGIC = b"C1"
_HEAD = struct.Struct("!2sBdH")
HEADER_SIZE = _HEAD.size
#: The wire's bound on a key (the length field is 16 bits); ``Limits.chord_max_key_size``
#: is the (smaller) bound a node enforces.
MAX_KEY_SIZE = 0xFFFF
#: The DHT key of a chord key is the SHA-1 of this prefix and the key, so chord keys do
#: not collide with other values published in the same DHT.
NAMESPACE = b"p2pnet.chord\x00"


class Kind(enum.IntEnum):
    VALUE = 1
    TOMBSTONE = 2


def _check_time(t: float) -> float:
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"timestamp must be finite and >= 0, got {t!r}")
    return t


@attrs.frozen
class Record:
    """One write of a key: its value, or a tombstone (``value`` is ``b""``)."""

    kind: Kind = attrs.field(converter=Kind)
    timestamp: float = attrs.field(converter=float)
    key: bytes
    value: bytes = b""

    def __attrs_post_init__(self) -> None:
        _check_time(self.timestamp)
        if not isinstance(self.key, bytes) or not isinstance(self.value, bytes):
            raise TypeError("key and value must be bytes")
        if len(self.key) > MAX_KEY_SIZE:
            raise ValueError(f"key is over {MAX_KEY_SIZE} bytes")
        if self.kind is Kind.TOMBSTONE and self.value:
            raise ValueError("a tombstone has no value")

    @property
    def present(self) -> bool:
        return self.kind is Kind.VALUE

    @classmethod
    def value_of(cls, key: bytes, value: bytes, timestamp: float) -> Record:
        return cls(Kind.VALUE, timestamp, key, value)

    @classmethod
    def tombstone(cls, key: bytes, timestamp: float) -> Record:
        return cls(Kind.TOMBSTONE, timestamp, key)


def encode(record: Record) -> bytes:
    return (_HEAD.pack(MAGIC, record.kind, record.timestamp, len(record.key))
            + record.key + record.value)


def decode(data: bytes) -> Record:
    """The record in ``data``; :class:`RecordError` for anything else."""
    if not isinstance(data, bytes):
        raise RecordError("a record is bytes")
    if len(data) < HEADER_SIZE:
        raise RecordError("record too short")
    magic, kind, timestamp, keylen = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise RecordError("not a chord record (bad magic)")
    if kind not in (Kind.VALUE, Kind.TOMBSTONE):
        raise RecordError(f"unknown record kind {kind}")
    if not math.isfinite(timestamp) or timestamp < 0:
        raise RecordError("bad timestamp")
    end = HEADER_SIZE + keylen
    if len(data) < end:
        raise RecordError("record shorter than its key")
    value = data[end:]
    if kind == Kind.TOMBSTONE and value:
        raise RecordError("a tombstone has no value")
    return Record(Kind(kind), timestamp, data[HEADER_SIZE:end], value)


def digest(data: bytes) -> bytes:
    """The SHA-1 of an encoded record: its DHT index, and the tie-break between writes
    of the same timestamp."""
    return hashlib.sha1(data).digest()


def dht_key(key: bytes) -> bytes:
    """The 160-bit DHT key a chord key's records are published under."""
    return hashlib.sha1(NAMESPACE + key).digest()


def max_value_size(key: bytes, max_record: int) -> int:
    """The largest value that fits a record of ``key`` in ``max_record`` bytes."""
    return max_record - HEADER_SIZE - len(key)
