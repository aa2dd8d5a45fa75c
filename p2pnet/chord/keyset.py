# -*- test-case-name: tests.test_chord_keyset -*-
"""The local key set of a chord socket: which keys the network holds, kept by notices.

Values live in the DHT; the *keys* are known locally so that ``keys()``, ``len()`` and
``in`` need no lookup.  Every write (a value or a tombstone, see :mod:`p2pnet.chord.record`)
becomes an :class:`Entry` -- key, timestamp, the record's SHA-1 and whether the key is
present -- that is flooded to every node as a notice; a node that connects is sent the
whole set (tombstones included) and sends its own.

**Merge rule.** For each key the entry with the larger ``(timestamp, digest)`` wins; an
entry is kept only if it beats the one held.  Taking a maximum over a total order is
commutative, associative and idempotent, so every node that has received the same
entries holds the same set, whatever the order of delivery, duplicates included (proved
with hypothesis in ``tests/test_chord_keyset.py``).  It is also the DHT's rule: the DHT
answers the newest record, and the digest is its index.

**Events.** :meth:`KeySet.apply` says what an entry did: ``ADDED`` (the key became
present), ``DELETED`` (it became absent), ``UPDATED`` (it won, presence unchanged: a
value overwritten), ``STALE`` (it lost), or a refusal.  The socket fires ``'add'`` and
``'delete'`` from these, so each event fires once per change of a node's key set.

**Bounds.** Whatever notices can make a node hold is bounded: at most ``max_keys``
entries (live keys and tombstones; when full the oldest tombstone makes room, and with
none a new key is refused), keys of at most ``max_key_size`` bytes, tombstones kept
``tombstone_ttl`` seconds, timestamps at most ``max_future`` seconds ahead of the clock.
Refusals are counted in :attr:`KeySet.refused` by kind.

The wire form of entries (:func:`encode_entries` / :func:`decode_entries`) is strict and
total.  Pure module (no Twisted).
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Iterable, Iterator

import attrs

from p2pnet.chord.errors import RecordError
from p2pnet.dht.limits import RefusalCounter

DIGEST_SIZE = 20
_COUNT = struct.Struct("!H")
_KEYLEN = struct.Struct("!H")
_TAIL = struct.Struct(f"!d{DIGEST_SIZE}sB")
#: Entries in one message at most, and the bytes a dump chunk aims for.
MAX_ENTRIES = 1024
CHUNK_BYTES = 64 * 1024


@attrs.frozen
class Entry:
    """The newest write of ``key`` a node knows of."""

    key: bytes
    timestamp: float
    digest: bytes
    present: bool

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.key, bytes) or not isinstance(self.digest, bytes):
            raise TypeError("key and digest must be bytes")
        if len(self.digest) != DIGEST_SIZE:
            raise ValueError(f"digest must be {DIGEST_SIZE} bytes")
        if not math.isfinite(self.timestamp) or self.timestamp < 0:
            raise ValueError("timestamp must be finite and >= 0")
        if len(self.key) > 0xFFFF:
            raise ValueError("key is over 65535 bytes")

    @property
    def rank(self) -> tuple[float, bytes]:
        """The merge order: newer timestamp wins, then the larger digest."""
        return (self.timestamp, self.digest)


class Outcome(enum.Enum):
    ADDED = "added"
    DELETED = "deleted"
    UPDATED = "updated"
    STALE = "stale"
    REFUSED_FULL = "keyset_full"
    REFUSED_KEY_SIZE = "key_too_large"
    REFUSED_FUTURE = "future_timestamp"

    @property
    def won(self) -> bool:
        """The entry changed this node's set (so it is news to pass on)."""
        return self in (Outcome.ADDED, Outcome.DELETED, Outcome.UPDATED)


class KeySet:
    """Entries by key, merged by :attr:`Entry.rank`; see the module docstring."""

    def __init__(self, max_keys: int = 100_000, max_key_size: int = 1024,
                 tombstone_ttl: float = 86400.0, max_future: float = 300.0) -> None:
        if max_keys < 1 or max_key_size < 0 or tombstone_ttl < 0 or max_future < 0:
            raise ValueError("bounds must be positive")
        self.max_keys = max_keys
        self.max_key_size = max_key_size
        self.tombstone_ttl = tombstone_ttl
        self.max_future = max_future
        self._entries: dict[bytes, Entry] = {}
        #: present keys, in the order they became present (popitem takes the last)
        self._live: dict[bytes, None] = {}
        #: absent keys (tombstones), in the order they became absent (evicted first-in)
        self._dead: dict[bytes, None] = {}
        self.refused = RefusalCounter()

    # -- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._live))

    def keys(self) -> list[bytes]:
        """The present keys, oldest first (a snapshot)."""
        return list(self._live)

    def get(self, key: bytes) -> Entry | None:
        """The entry held for ``key`` (present or a tombstone), or None."""
        return self._entries.get(key)

    def entries(self) -> list[Entry]:
        """Every entry held, tombstones included (what a connecting node is sent)."""
        return list(self._entries.values())

    @property
    def size(self) -> int:
        """Entries held: live keys and tombstones."""
        return len(self._entries)

    def check_new(self, key: bytes) -> Outcome | None:
        """Why a present entry for ``key`` would be refused right now, or None."""
        if len(key) > self.max_key_size:
            return Outcome.REFUSED_KEY_SIZE
        if key not in self._entries and len(self._entries) >= self.max_keys and not self._dead:
            return Outcome.REFUSED_FULL
        return None

    # -- merging ---------------------------------------------------------------------------

    def apply(self, entry: Entry, now: float | None = None) -> Outcome:
        """Merge one entry; say what it did (refusals are counted too).

        With ``now`` (this node's clock), an entry more than ``max_future`` seconds
        ahead is refused: it would outrank every real write of its key for that long.
        """
        if now is not None and entry.timestamp > now + self.max_future:
            self.refused[Outcome.REFUSED_FUTURE.value] += 1
            return Outcome.REFUSED_FUTURE
        held = self._entries.get(entry.key)
        if held is None:
            refusal = self.check_new(entry.key)
            if refusal is not None:
                self.refused[refusal.value] += 1
                return refusal
            if len(self._entries) >= self.max_keys:
                self._evict_one()
        elif entry.rank <= held.rank:
            return Outcome.STALE
        self._entries[entry.key] = entry
        was_present = held is not None and held.present
        if entry.present:
            self._dead.pop(entry.key, None)
            if not was_present:
                self._live[entry.key] = None
                return Outcome.ADDED
            return Outcome.UPDATED
        self._live.pop(entry.key, None)
        if held is not None and not held.present:
            return Outcome.UPDATED
        self._dead[entry.key] = None
        return Outcome.DELETED if was_present else Outcome.UPDATED

    def _evict_one(self) -> None:
        oldest = next(iter(self._dead))
        del self._dead[oldest]
        del self._entries[oldest]
        self.refused["tombstone_evicted"] += 1

    def prune(self, now: float) -> int:
        """Forget tombstones older than ``tombstone_ttl``; returns how many."""
        horizon = now - self.tombstone_ttl
        old = [k for k in self._dead if self._entries[k].timestamp < horizon]
        for k in old:
            del self._dead[k]
            del self._entries[k]
        return len(old)


# -- the wire form of entries ----------------------------------------------------------------


def encode_entries(entries: Iterable[Entry]) -> bytes:
    """One message's worth of entries (at most :data:`MAX_ENTRIES`)."""
    items = list(entries)
    if len(items) > MAX_ENTRIES:
        raise ValueError(f"at most {MAX_ENTRIES} entries per message")
    out = [_COUNT.pack(len(items))]
    for e in items:
        out += [_KEYLEN.pack(len(e.key)), e.key,
                _TAIL.pack(e.timestamp, e.digest, 1 if e.present else 0)]
    return b"".join(out)


def chunk_entries(entries: Iterable[Entry], chunk_bytes: int = CHUNK_BYTES
                  ) -> Iterator[bytes]:
    """Encode any number of entries as messages of at most :data:`MAX_ENTRIES` entries
    and about ``chunk_bytes`` bytes (one entry over that goes alone)."""
    batch: list[Entry] = []
    size = _COUNT.size
    for e in entries:
        n = _KEYLEN.size + len(e.key) + _TAIL.size
        if batch and (len(batch) >= MAX_ENTRIES or size + n > chunk_bytes):
            yield encode_entries(batch)
            batch, size = [], _COUNT.size
        batch.append(e)
        size += n
    if batch:
        yield encode_entries(batch)


def decode_entries(data: bytes) -> list[Entry]:
    """The entries of one message; :class:`RecordError` for anything malformed."""
    if not isinstance(data, bytes):
        raise RecordError("entries are bytes")
    if len(data) < _COUNT.size:
        raise RecordError("entries: too short")
    (count,) = _COUNT.unpack_from(data)
    if count > MAX_ENTRIES:
        raise RecordError(f"entries: {count} is over {MAX_ENTRIES}")
    pos = _COUNT.size
    out = []
    for _ in range(count):
        if len(data) < pos + _KEYLEN.size:
            raise RecordError("entries: truncated")
        (keylen,) = _KEYLEN.unpack_from(data, pos)
        pos += _KEYLEN.size
        end = pos + keylen
        if len(data) < end + _TAIL.size:
            raise RecordError("entries: truncated")
        key = data[pos:end]
        timestamp, digest, flags = _TAIL.unpack_from(data, end)
        pos = end + _TAIL.size
        if flags not in (0, 1):
            raise RecordError("entries: bad flags")
        if not math.isfinite(timestamp) or timestamp < 0:
            raise RecordError("entries: bad timestamp")
        out.append(Entry(key, timestamp, digest, flags == 1))
    if pos != len(data):
        raise RecordError("entries: trailing bytes")
    return out
