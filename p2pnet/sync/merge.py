# -*- test-case-name: tests.test_sync_merge -*-
"""The replicated dict's state per key, the lease rule, and the one merge rule.

Pure logic: no Twisted, no I/O; times are whole UTC seconds passed in by the caller.

**State per key** (:class:`Entry`): the value (``bytes``; a mapping value is kept
encoded, see :func:`encode_map`) or ``None`` for a *tombstone*, the ``owner`` (the id of
the node that wrote it), the ``timestamp`` (whole UTC seconds at the write) and ``seq``,
a counter that orders writes made in the same second (0 for the first write of a second,
then one more than the entry it replaced).  ``(owner, timestamp)`` is the lease record
py2p calls ``metatuple`` (:class:`Lease`).

**The merge rule** (:func:`wins`, :func:`merge`), the same for live writes, the dump a
peer sends on connect, a healed partition and the entries loaded from disk: of two
entries for a key, the one with the greater

    ``(timestamp, seq, lower owner id by bytes compare, kind, value)``

wins, i.e. the newer timestamp; in the same second the higher ``seq``; then the lower
owner id; and, only for two different writes with the same lease record (a node that
lost its state and wrote again in the same second), the greater value.  That is a
total order, and a replica keeps the greatest entry it has seen: the merge is
commutative, associative and idempotent, so replicas that have seen the same writes hold
the same dict, whatever the order, repetition or batching of deliveries.  This rule is
used both with and without leasing: without leasing it *is* py2p's rule ("a newer
timestamp wins; equal timestamps go to the lower id").

**The lease rule** (:func:`may_write`, SEMANTICS §4) guards *local* writes.  With
leasing on, a node may write a key when: (1) the key has no entry, or only a tombstone
(a delete gives the lease up); (2) it owns the entry (its write renews the lease); (3)
the entry is older than ``lease`` (3600) seconds by this node's clock; (4) the entry is
from this very second and this node's id is lower than the owner's.  Otherwise the write
raises :class:`LeaseError` (a ``KeyError``).  A local write is made by
:func:`next_entry`, whose entry always beats the one it replaces (timestamp never behind
it, ``seq`` one more in the same second), so every replica that has what the writer had
takes it.

*Why not drop remote writes that break the lease, as py2p does?*  That check depends on
the receiver's clock and on what the receiver has seen, so two replicas can decide
differently and disagree for ever (py2p's healed partitions do).  Writes allowed by the
lease rule always win the merge anyway (a renewal or a take-over after expiry is newer;
a same-second take-over by a lower id is not older and has the lower id or a higher
``seq``).  The merge only decides between writes made *without knowledge of each other*
(the same moments on two nodes, or two sides of a partition): the newer one wins there,
on every node alike, and the loser sees its value replaced (``'update'`` fires).

**Deletes** are tombstones, merged like values, so a node that missed a delete cannot
bring the key back; a tombstone is forgotten ``tombstone_seconds`` (the lease period)
after its timestamp.  A replica cut off for longer than that may bring back a key that
was deleted meanwhile (the usual price of forgetting tombstones).

**Anti-entropy**: :attr:`SyncState.digest` is an order-free digest of every entry
(the XOR of a 128-bit hash per ``(key, entry)``, kept up to date in O(1) a change), so
two replicas compare their whole state in 16 bytes; the socket exchanges digests with
its peers now and then and dumps to a peer whose digest differs.  That repairs what a
lost message (a link cut while it was in flight, a broadcast dropped as too old) left
behind.

**Bounds** (:class:`SyncLimits`): what a peer can make us hold.  Entries over the key or
value size, with an owner id over 64 bytes, a timestamp more than ``max_clock_skew``
seconds in our future, or a new key past ``max_keys`` (tombstones count) are refused and
counted by kind.  A refusal is the one case where replicas may differ: it protects the
node from a peer that floods or lies.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
from collections import Counter
from collections.abc import Iterator, Mapping

import attrs

#: Seconds a lease lasts after the owner's last write (py2p: one hour).
LEASE_SECONDS = 3600


class LeaseError(KeyError):
    """A local write to a key that another node holds the lease on."""

    def __str__(self) -> str:  # KeyError's str() is the repr of its argument
        return str(self.args[0]) if self.args else "lease held by another node"


class SyncRefused(ValueError):
    """A local write over a bound of :class:`SyncLimits`."""


@attrs.frozen
class Lease:
    """The lease record of a key: who wrote it, and when (whole UTC seconds)."""

    owner: bytes
    timestamp: int

    def expires(self, lease_seconds: int = LEASE_SECONDS) -> int:
        return self.timestamp + lease_seconds


KIND_TOMBSTONE = 0
KIND_BYTES = 1
KIND_MAP = 2


@attrs.frozen
class Entry:
    """One key's replicated state: a value (or tombstone) and its lease record."""

    value: bytes | None
    owner: bytes
    timestamp: int
    seq: int = 0
    kind: int = attrs.field(default=KIND_BYTES)

    def __attrs_post_init__(self) -> None:
        if (self.value is None) != (self.kind == KIND_TOMBSTONE):
            raise ValueError("a tombstone has no value, and only a tombstone")
        if self.kind not in (KIND_TOMBSTONE, KIND_BYTES, KIND_MAP):
            raise ValueError(f"unknown kind {self.kind}")
        if self.timestamp < 0 or self.seq < 0:
            raise ValueError("timestamp and seq must not be negative")

    @classmethod
    def tombstone(cls, owner: bytes, timestamp: int, seq: int = 0) -> Entry:
        return cls(None, owner, timestamp, seq, KIND_TOMBSTONE)

    @property
    def deleted(self) -> bool:
        return self.value is None

    @property
    def lease(self) -> Lease:
        return Lease(self.owner, self.timestamp)

    def order(self) -> tuple[int, int]:
        return (self.timestamp, self.seq)


def wins(a: Entry, b: Entry) -> bool:
    """True when ``a`` strictly beats ``b`` in the merge order (see the module doc)."""
    if a.timestamp != b.timestamp:
        return a.timestamp > b.timestamp
    if a.seq != b.seq:
        return a.seq > b.seq
    if a.owner != b.owner:
        return a.owner < b.owner
    if a.kind != b.kind:
        return a.kind > b.kind
    return (a.value or b"") > (b.value or b"")


def merge(current: Entry | None, incoming: Entry) -> Entry:
    """The entry a replica keeps: the greater of the two (``current`` on a tie)."""
    if current is None or wins(incoming, current):
        return incoming
    return current


def lease_holder(current: Entry | None, now: int,
                 lease_seconds: int = LEASE_SECONDS) -> bytes | None:
    """The owner whose lease on the key is live at ``now``, or None."""
    if current is None or current.deleted:
        return None
    if now - current.timestamp > lease_seconds:
        return None
    return current.owner


def may_write(current: Entry | None, writer: bytes, now: int, *, leasing: bool = True,
              lease_seconds: int = LEASE_SECONDS) -> bool:
    """The lease rule for a local write by ``writer`` at ``now`` (whole seconds)."""
    if not leasing:
        return True
    holder = lease_holder(current, now, lease_seconds)
    if holder is None or holder == writer:
        return True
    assert current is not None
    return current.timestamp == now and writer < current.owner


def next_entry(current: Entry | None, writer: bytes, now: int, value: bytes | None,
               kind: int = KIND_BYTES) -> Entry:
    """The entry of a local write (or delete, ``value=None``) that replaces ``current``.

    Its timestamp is ``now``, or the current entry's when that is ahead (a peer's clock
    runs fast), and its ``seq`` is one more than the current entry's in the same second:
    so it beats ``current`` (see :func:`wins`) whatever the ids.
    """
    if value is None:
        kind = KIND_TOMBSTONE
    if current is None:
        return Entry(value, writer, now, 0, kind)
    timestamp = max(now, current.timestamp)
    seq = current.seq + 1 if timestamp == current.timestamp else 0
    return Entry(value, writer, timestamp, seq, kind)


# -- mapping values ---------------------------------------------------------------------

_LEN = struct.Struct(">I")


def encode_map(mapping: Mapping[bytes, bytes]) -> bytes:
    """A canonical encoding of a ``bytes -> bytes`` mapping (sorted by key)."""
    out = [_LEN.pack(len(mapping))]
    for k in sorted(mapping):
        v = mapping[k]
        out += [_LEN.pack(len(k)), k, _LEN.pack(len(v)), v]
    return b"".join(out)


def decode_map(data: bytes) -> dict[bytes, bytes]:
    """The inverse of :func:`encode_map` (``ValueError`` on anything else)."""
    try:
        (n,), pos = _LEN.unpack_from(data, 0), 4
        out: dict[bytes, bytes] = {}
        for _ in range(n):
            parts = []
            for _ in range(2):
                (size,) = _LEN.unpack_from(data, pos)
                pos += 4
                if pos + size > len(data):
                    raise ValueError("truncated mapping")
                parts.append(data[pos:pos + size])
                pos += size
            out[parts[0]] = parts[1]
    except struct.error as e:
        raise ValueError(f"truncated mapping: {e}") from None
    if pos != len(data):
        raise ValueError("trailing bytes after the mapping")
    if encode_map(out) != data:
        raise ValueError("mapping not in canonical form")
    return out


# -- the state of one replica -------------------------------------------------------------


@attrs.define
class SyncLimits:
    """What a peer can make a sync socket hold (refusals counted by kind)."""

    #: bytes a key holds at most (keys are names, not payloads)
    max_key_bytes: int = 1024
    #: bytes a value holds at most (a value travels in one mesh message of at most 1 MiB)
    max_value_bytes: int = 256 * 1024
    #: keys held at most, tombstones included (a peer cannot grow us without end)
    max_keys: int = 100_000
    #: bytes an owner id holds at most (the mesh's longest peer id)
    max_owner_bytes: int = 64
    #: seconds a timestamp may be ahead of our clock (a fast or lying clock would
    #: otherwise win every merge for as long as it is ahead)
    max_clock_skew: int = 600
    #: seconds a tombstone is kept (the lease period: a delete outlives any lease)
    tombstone_seconds: int = LEASE_SECONDS
    #: full dumps sent to one connected peer per minute at most (a hello or a digest
    #: asks for one; more would let a peer make us send our whole state again and again)
    max_dumps_per_minute: int = 10


_HASHED = struct.Struct(">HBQIBI")


def entry_hash(key: bytes, entry: Entry) -> int:
    """A 128-bit hash of ``(key, entry)`` (XORed into :attr:`SyncState.digest`)."""
    value = entry.value or b""
    h = hashlib.blake2b(_HASHED.pack(len(key), len(entry.owner), entry.timestamp,
                                     entry.seq, entry.kind, len(value)),
                        digest_size=16)
    h.update(key)
    h.update(entry.owner)
    h.update(value)
    return int.from_bytes(h.digest(), "big")


@attrs.frozen
class Change:
    """What a merge changed in the visible dict (``value`` None: the key went away)."""

    key: bytes
    value: bytes | None
    entry: Entry


class SyncState:
    """One replica: the entries by key, the visible dict, tombstone expiry, bounds."""

    def __init__(self, limits: SyncLimits | None = None,
                 refused: Counter[str] | None = None) -> None:
        self.limits = limits or SyncLimits()
        self.entries: dict[bytes, Entry] = {}
        #: the visible dict: live values only (reads are one dict look-up)
        self.values: dict[bytes, bytes] = {}
        self._tombstones: list[tuple[int, bytes]] = []  # (expiry, key), lazily pruned
        #: XOR of :func:`entry_hash` over every entry: equal states, equal digests
        self.digest = 0
        #: remote entries refused, by kind (see :meth:`check`)
        self.refused: Counter[str] = Counter() if refused is None else refused

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.values)

    def check(self, key: bytes, entry: Entry, now: int) -> str | None:
        """Why ``entry`` for ``key`` is refused, or None (see :class:`SyncLimits`)."""
        limits = self.limits
        if len(key) > limits.max_key_bytes:
            return "key_too_large"
        if entry.value is not None and len(entry.value) > limits.max_value_bytes:
            return "value_too_large"
        if not entry.owner or len(entry.owner) > limits.max_owner_bytes:
            return "bad_owner"
        if entry.timestamp > now + limits.max_clock_skew:
            return "from_future"
        if entry.kind == KIND_MAP:
            try:
                decode_map(entry.value or b"")
            except ValueError:
                return "bad_mapping"
        if key not in self.entries and len(self.entries) >= limits.max_keys:
            self.purge(now)
            if len(self.entries) >= limits.max_keys:
                return "too_many_keys"
        return None

    def apply(self, key: bytes, entry: Entry, now: int) -> Change | None:
        """Merge ``entry`` into ``key``; the visible change, if any.

        Refused entries are counted in :attr:`refused` and change nothing.
        """
        current = self.entries.get(key)
        if current is not None and not wins(entry, current):
            return None
        reason = self.check(key, entry, now)
        if reason is not None:
            self.refused[reason] += 1
            return None
        return self._put(key, entry, current)

    @property
    def digest_bytes(self) -> bytes:
        return self.digest.to_bytes(16, "big")

    def _put(self, key: bytes, entry: Entry, current: Entry | None) -> Change | None:
        self.entries[key] = entry
        if current is not None:
            self.digest ^= entry_hash(key, current)
        self.digest ^= entry_hash(key, entry)
        if entry.value is None:
            heapq.heappush(self._tombstones,
                           (entry.timestamp + self.limits.tombstone_seconds, key))
            if len(self._tombstones) > 2 * len(self.entries) + 64:
                self._rebuild_tombstones()  # keys deleted again and again
            if current is None or current.value is None:
                return None  # nothing visible changed
            del self.values[key]
            return Change(key, None, entry)
        self.values[key] = entry.value
        return Change(key, entry.value, entry)

    def prepare(self, key: bytes, writer: bytes, now: int, value: bytes | None, *,
                kind: int = KIND_BYTES, leasing: bool = True,
                lease_seconds: int = LEASE_SECONDS) -> Entry:
        """The entry of a local write (``value`` None: a delete), checked; nothing changes.

        Raises :class:`LeaseError` when another node holds the lease, ``KeyError`` when
        deleting a key that has no value, :class:`SyncRefused` when over a bound.
        """
        current = self.entries.get(key)
        if value is None and (current is None or current.deleted):
            raise KeyError(key)
        if not may_write(current, writer, now, leasing=leasing,
                         lease_seconds=lease_seconds):
            assert current is not None
            raise LeaseError(
                f"key {key!r} is leased to node {current.owner!r} (set at "
                f"{current.timestamp}, free after {current.timestamp + lease_seconds}, "
                f"UTC seconds; now {now}): "
                f"only its owner may change or delete it before then"
            )
        entry = next_entry(current, writer, now, value, kind)
        reason = self.check(key, entry, now)
        if reason is not None:
            raise SyncRefused(f"refused to write key {key!r}: {reason} "
                              f"(limits: {self.limits})")
        return entry

    def commit(self, key: bytes, entry: Entry) -> Change | None:
        """Put a prepared local entry in place; the visible change, if any."""
        return self._put(key, entry, self.entries.get(key))

    def write(self, key: bytes, writer: bytes, now: int, value: bytes | None, *,
              kind: int = KIND_BYTES, leasing: bool = True,
              lease_seconds: int = LEASE_SECONDS) -> tuple[Entry, Change | None]:
        """:meth:`prepare` and :meth:`commit` a local write."""
        entry = self.prepare(key, writer, now, value, kind=kind, leasing=leasing,
                             lease_seconds=lease_seconds)
        return entry, self.commit(key, entry)

    def _rebuild_tombstones(self) -> None:
        ttl = self.limits.tombstone_seconds
        self._tombstones = [(e.timestamp + ttl, k) for k, e in self.entries.items()
                            if e.value is None]
        heapq.heapify(self._tombstones)

    def purge(self, now: int) -> list[bytes]:
        """Forget tombstones past their time; the keys forgotten."""
        gone = []
        heap = self._tombstones
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            entry = self.entries.get(key)
            if (entry is not None and entry.value is None
                    and entry.timestamp + self.limits.tombstone_seconds <= now):
                del self.entries[key]
                self.digest ^= entry_hash(key, entry)
                gone.append(key)
        return gone

    def snapshot(self) -> dict[bytes, Entry]:
        """Every entry, tombstones included (what a connect dump sends)."""
        return dict(self.entries)
