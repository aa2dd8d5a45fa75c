# -*- test-case-name: tests.test_sync_codec -*-
"""The sync socket's messages on the mesh (channel ``b"sync"``): a pure, total decoder.

Every message is a list of mesh parts.  ``parts[0]`` is a 3-byte header:
``version`` (1), ``mode`` (``b"L"`` leasing on, ``b"F"`` leasing off: the two kinds of
network never mix) and ``type``:

- ``b"H"`` hello (no more parts): sent to a peer on connect; a peer of the same mode
  answers by sending its whole state;
- ``b"R"`` refuse, ``parts[1]`` the reason (UTF-8, at most 1024 bytes): the peer runs
  the other mode;
- ``b"G"`` digest, ``parts[1]`` the 16-byte digest of the sender's whole state (see
  :attr:`p2pnet.sync.merge.SyncState.digest`): a peer whose digest differs answers with
  a hello and its dump;
- ``b"W"`` writes (flooded to every node) and ``b"D"`` dump (sent to one peer on
  connect): ``parts[1]`` is a run of entries, each
  ``>HBQIBI`` (key length, owner length, timestamp, seq, kind, value length) then the
  key, the owner and the value (no value for a tombstone).

:func:`decode` raises :class:`SyncDecodeError` (a ``ValueError``) for anything else.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import attrs

from p2pnet.sync.merge import KIND_BYTES, KIND_MAP, KIND_TOMBSTONE, Entry

VERSION = 1
LEASING = b"L"
FREE = b"F"
HELLO = b"H"
REFUSE = b"R"
WRITES = b"W"
DUMP = b"D"
DIGEST = b"G"
DIGEST_SIZE = 16
MAX_REASON = 1024
#: bytes of entries put in one message at most (the mesh carries at most 1 MiB)
MAX_BATCH = 512 * 1024

_ENTRY = struct.Struct(">HBQIBI")
_TYPES = (HELLO, REFUSE, WRITES, DUMP, DIGEST)


class SyncDecodeError(ValueError):
    """A sync message that is not well formed."""


@attrs.frozen
class SyncMessage:
    leasing: bool
    type: bytes
    entries: tuple[tuple[bytes, Entry], ...] = ()
    reason: str = ""
    digest: bytes = b""


def header(leasing: bool, type_: bytes) -> bytes:
    return bytes([VERSION]) + (LEASING if leasing else FREE) + type_


def encode_entry(key: bytes, entry: Entry) -> bytes:
    value = entry.value if entry.value is not None else b""
    return b"".join((
        _ENTRY.pack(len(key), len(entry.owner), entry.timestamp, entry.seq, entry.kind,
                    len(value)),
        key, entry.owner, value,
    ))


def encode_entries(leasing: bool, type_: bytes,
                   items: Iterable[tuple[bytes, Entry]],
                   max_batch: int = MAX_BATCH) -> list[tuple[bytes, bytes]]:
    """``W`` or ``D`` messages (each a ``(header, body)`` pair of parts) holding
    ``items``, each body at most ``max_batch`` bytes (or one entry, if larger)."""
    if type_ not in (WRITES, DUMP):
        raise ValueError("entries go in W or D messages")
    head = header(leasing, type_)
    out: list[tuple[bytes, bytes]] = []
    batch: list[bytes] = []
    size = 0
    for key, entry in items:
        blob = encode_entry(key, entry)
        if batch and size + len(blob) > max_batch:
            out.append((head, b"".join(batch)))
            batch, size = [], 0
        batch.append(blob)
        size += len(blob)
    if batch:
        out.append((head, b"".join(batch)))
    return out


def encode_hello(leasing: bool) -> tuple[bytes]:
    return (header(leasing, HELLO),)


def encode_refuse(leasing: bool, reason: str) -> tuple[bytes, bytes]:
    data = reason.encode("utf-8")[:MAX_REASON]
    return (header(leasing, REFUSE), data.decode("utf-8", "ignore").encode("utf-8"))


def encode_digest(leasing: bool, digest: bytes) -> tuple[bytes, bytes]:
    if len(digest) != DIGEST_SIZE:
        raise ValueError(f"a digest is {DIGEST_SIZE} bytes")
    return (header(leasing, DIGEST), digest)


def decode_entries(body: bytes) -> tuple[tuple[bytes, Entry], ...]:
    out = []
    pos, end = 0, len(body)
    size = _ENTRY.size
    while pos < end:
        if pos + size > end:
            raise SyncDecodeError("truncated entry header")
        klen, olen, timestamp, seq, kind, vlen = _ENTRY.unpack_from(body, pos)
        pos += size
        if kind not in (KIND_TOMBSTONE, KIND_BYTES, KIND_MAP):
            raise SyncDecodeError(f"unknown entry kind {kind}")
        if kind == KIND_TOMBSTONE and vlen:
            raise SyncDecodeError("a tombstone with a value")
        if pos + klen + olen + vlen > end:
            raise SyncDecodeError("truncated entry")
        key = body[pos:pos + klen]
        pos += klen
        owner = body[pos:pos + olen]
        pos += olen
        value = body[pos:pos + vlen] if kind != KIND_TOMBSTONE else None
        pos += vlen
        if not owner:
            raise SyncDecodeError("an entry without an owner")
        out.append((key, Entry(value, owner, timestamp, seq, kind)))
    return tuple(out)


def decode(parts: tuple[bytes, ...] | list[bytes]) -> SyncMessage:
    """Decode a sync message's parts (:class:`SyncDecodeError` when malformed)."""
    if not parts or not all(isinstance(p, bytes) for p in parts):
        raise SyncDecodeError("no parts, or parts not bytes")
    head = parts[0]
    if len(head) != 3:
        raise SyncDecodeError("header must be 3 bytes")
    if head[0] != VERSION:
        raise SyncDecodeError(f"unknown version {head[0]}")
    mode, type_ = head[1:2], head[2:3]
    if mode not in (LEASING, FREE):
        raise SyncDecodeError(f"unknown mode {mode!r}")
    if type_ not in _TYPES:
        raise SyncDecodeError(f"unknown message type {type_!r}")
    leasing = mode == LEASING
    if type_ == HELLO:
        if len(parts) != 1:
            raise SyncDecodeError("hello takes no more parts")
        return SyncMessage(leasing, type_)
    if len(parts) != 2:
        raise SyncDecodeError(f"{type_!r} takes exactly one more part")
    if type_ == REFUSE:
        if len(parts[1]) > MAX_REASON:
            raise SyncDecodeError("reason too long")
        try:
            reason = parts[1].decode("utf-8")
        except UnicodeDecodeError:
            raise SyncDecodeError("reason is not UTF-8") from None
        return SyncMessage(leasing, type_, reason=reason)
    if type_ == DIGEST:
        if len(parts[1]) != DIGEST_SIZE:
            raise SyncDecodeError(f"a digest is {DIGEST_SIZE} bytes")
        return SyncMessage(leasing, type_, digest=parts[1])
    return SyncMessage(leasing, type_, entries=decode_entries(parts[1]))
