# -*- test-case-name: tests.test_dht_table -*-
"""The values a DHT node holds: :class:`KVPRecord` metadata and the :class:`IKVPTable` seam.

Metadata (key, index, size, timestamp, flags, expiry, source) is small and is kept in
memory by every implementation, so the protocol answers ``findval`` and decides on
``store`` synchronously.  Value bytes may live on disk: reading and writing them returns
Deferreds, so a persistent table can do its I/O off the reactor thread.

Quotas (:meth:`RecordIndex.refusal`): records and bytes are counted in total, per source
address (:func:`~p2pnet.dht.limits.source_key`) and per /24 or /64
(:func:`~p2pnet.dht.limits.prefix_key`); every record is charged
``Limits.store_record_overhead`` bytes on top of its size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

import attrs
from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

from p2pnet import ids
from p2pnet.dht.limits import Address, Limits, prefix_key, source_key
from p2pnet.models import MAX_VALUE_SIZE

#: Default byte quota of a value table (all values together).
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


def _finite(_inst: Any, attr: Any, value: Any) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attr.name} must be finite and not negative")


@attrs.frozen
class KVPRecord:
    """Metadata of one value held under ``(key, index)``."""

    key: bytes = attrs.field(validator=lambda _i, _a, v: ids.check_key(v, "key"))
    index: bytes = attrs.field(validator=lambda _i, _a, v: ids.check_key(v, "index"))
    size: int = attrs.field()
    timestamp: float = attrs.field(converter=float, validator=_finite)
    is_original: bool = False
    #: When this node last published or replicated the value (0 = never).
    last_update: float = attrs.field(default=0.0, validator=_finite)
    #: Local expiry time, or None for a value that does not expire here (an original).
    expires_at: float | None = attrs.field(default=None, validator=_finite)
    #: When the value was last published by its publisher, on this node's clock (a copy
    #: expires TIME_EXPIRE after it; replication does not move it); None: unknown.
    published: float | None = attrs.field(default=None, validator=_finite)
    #: The address that stored this copy here (charged for it), or None (an original).
    source: Address | None = attrs.field(default=None)

    @source.validator
    def _check_source(self, _a: Any, source: Any) -> None:
        if source is None:
            return
        if not (isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], str)
                and type(source[1]) is int and 0 <= source[1] <= 65535):
            raise ValueError("source must be a (host, port) tuple")
        try:
            if len(source[0].encode("utf-8")) > 255:
                raise ValueError("source host is over 255 bytes")
        except UnicodeEncodeError as e:
            raise ValueError("source host is not valid text") from e

    @size.validator
    def _check_size(self, _a: Any, size: int) -> None:
        if not 0 <= size <= MAX_VALUE_SIZE:
            raise ValueError(f"size must be in 0..{MAX_VALUE_SIZE}")

    @property
    def kvpid(self) -> tuple[bytes, bytes]:
        return (self.key, self.index)

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


class IKVPTable(Interface):
    """Values by ``(key, index)``; metadata synchronous, value bytes behind Deferreds."""

    max_bytes = Attribute("The byte quota of all values together.")
    total_bytes = Attribute("Bytes of all values held now.")

    def records() -> Iterator[KVPRecord]:
        """Every record held (a snapshot, safe to iterate while the table changes)."""

    def records_for_key(key: bytes) -> list[KVPRecord]:
        """The records held for ``key``, any index."""

    def get_record(key: bytes, index: bytes) -> KVPRecord | None:
        """The record for ``(key, index)`` or None."""

    def is_acceptable(key: bytes, index: bytes, size: int, timestamp: float) -> bool:
        """Whether a store of this value would be taken (see :func:`acceptable`)."""

    def refusal(key: bytes, index: bytes, size: int, timestamp: float,
                source: Address | None = None, limits: Limits | None = None) -> str | None:
        """Why a store of this value from ``source`` would be refused (a refusal kind for
        :class:`~p2pnet.dht.limits.RefusalCounter`), or None when it would be taken."""

    def put(record: KVPRecord, value: bytes) -> defer.Deferred[None]:
        """Hold ``value`` under ``record`` (replacing what was held); len(value) == size."""

    def update_record(record: KVPRecord) -> defer.Deferred[None]:
        """Replace the metadata of a held value (flags, times); KeyError if not held."""

    def read(key: bytes, index: bytes, offset: int = 0, length: int | None = None
             ) -> defer.Deferred[bytes]:
        """Bytes of a held value from ``offset``; fails with KeyError if not held."""

    def peek(key: bytes, index: bytes) -> bytes | None:
        """The held value when its bytes are in memory now (no I/O, no waiting), else None.

        A findval answer carries a small value inline only when it can be had this way,
        so that a findval never queues a disk read outside getval's fair read queue."""

    def delete(key: bytes, index: bytes) -> defer.Deferred[None]:
        """Forget a value; deleting one not held is not an error."""


def acceptable(
    held: KVPRecord | None, size: int, timestamp: float, total_bytes: int, max_bytes: int
) -> bool:
    """bytestag's rule, plus: an older timestamp than the one held is refused.

    Refused: same or older timestamp than the held copy, a size over MAX_VALUE_SIZE, or
    a value that would push the table over its quota.
    """
    if size < 0 or size > MAX_VALUE_SIZE:
        return False
    if held is not None and timestamp <= held.timestamp:
        return False
    freed = held.size if held is not None else 0
    return total_bytes - freed + size <= max_bytes


@attrs.define
class Usage:
    """Records and value bytes held for one holder of a quota."""

    records: int = 0
    bytes: int = 0

    def charged(self, overhead: int) -> int:
        """Bytes charged: value bytes plus ``overhead`` per record."""
        return self.bytes + self.records * overhead


def _over(records: int, value_bytes: int, freed: KVPRecord | None, size: int,
          max_records: int, max_bytes: int, overhead: int) -> str | None:
    """'records' or 'bytes' when adding a record of ``size`` in place of ``freed`` (None:
    in place of nothing) to ``records`` holding ``value_bytes`` breaks a quota of
    ``max_records`` records and ``max_bytes`` charged bytes, else None."""
    if freed is not None:
        records -= 1
        value_bytes -= freed.size
    records += 1
    if records > max_records:
        return "records"
    if value_bytes + size + records * overhead > max_bytes:
        return "bytes"
    return None


@functools.lru_cache(maxsize=8192)  # every store and every record held asks
def quota_keys(address: Address) -> tuple[tuple[str, int], str]:
    """The :func:`~p2pnet.dht.limits.source_key` and
    :func:`~p2pnet.dht.limits.prefix_key` of a storing address."""
    return source_key(address), prefix_key(address)


class RecordIndex:
    """The in-memory metadata every value table keeps: records by (key, index) and by key,
    the byte total and the quota counters; the synchronous half of :class:`IKVPTable`
    (and the checks of ``update_record``, whose write a subclass makes in ``_update_held``)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.total_bytes = 0
        self._records: dict[tuple[bytes, bytes], KVPRecord] = {}
        self._by_key: dict[bytes, set[bytes]] = {}
        #: usage by :func:`~p2pnet.dht.limits.source_key` of the storing address
        self.by_source: dict[tuple[str, int], Usage] = {}
        #: usage by :func:`~p2pnet.dht.limits.prefix_key` of the storing address
        self.by_prefix: dict[str, Usage] = {}

    def _charge(self, record: KVPRecord, sign: int) -> None:
        if record.source is None:
            return
        skey, pkey = quota_keys(record.source)
        usage = self.by_source.get(skey) or self.by_source.setdefault(skey, Usage())
        usage.records += sign
        usage.bytes += sign * record.size
        if usage.records <= 0:
            del self.by_source[skey]
        pusage = self.by_prefix.get(pkey) or self.by_prefix.setdefault(pkey, Usage())
        pusage.records += sign
        pusage.bytes += sign * record.size
        if pusage.records <= 0:
            del self.by_prefix[pkey]

    def _remember(self, record: KVPRecord) -> None:
        old = self._records.get(record.kvpid)
        if old is not None:
            self._charge(old, -1)
        self._charge(record, 1)
        self.total_bytes += record.size - (old.size if old is not None else 0)
        self._records[record.kvpid] = record
        self._by_key.setdefault(record.key, set()).add(record.index)

    def _replace_metadata(self, record: KVPRecord) -> None:
        """Swap a held record's metadata (same size) keeping the counters right."""
        self._remember(record)

    def update_record(self, record: KVPRecord) -> defer.Deferred[None]:
        """:meth:`IKVPTable.update_record`: the checks every table makes, then
        :meth:`_update_held` writes the new metadata of the held record ``old``."""
        old = self._records.get(record.kvpid)
        if old is None:
            return defer.fail(KeyError(record.kvpid))
        if old.size != record.size:
            return defer.fail(ValueError("update_record cannot change the size"))
        return self._update_held(record, old)

    def _update_held(self, record: KVPRecord, old: KVPRecord) -> defer.Deferred[None]:
        raise NotImplementedError

    def _forget(self, key: bytes, index: bytes) -> KVPRecord | None:
        old = self._records.pop((key, index), None)
        if old is not None:
            self._charge(old, -1)
            self.total_bytes -= old.size
            indexes = self._by_key[key]
            indexes.discard(index)
            if not indexes:
                del self._by_key[key]
        return old

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> Iterator[KVPRecord]:
        return iter(list(self._records.values()))

    def records_for_key(self, key: bytes) -> list[KVPRecord]:
        return [self._records[(key, i)] for i in self._by_key.get(key, ())]

    def get_record(self, key: bytes, index: bytes) -> KVPRecord | None:
        return self._records.get((key, index))

    def is_acceptable(self, key: bytes, index: bytes, size: int, timestamp: float) -> bool:
        held = self._records.get((key, index))
        return acceptable(held, size, timestamp, self.total_bytes, self.max_bytes)

    def refusal(self, key: bytes, index: bytes, size: int, timestamp: float,
                source: Address | None = None, limits: Limits | None = None) -> str | None:
        """Why a store would be refused, or None.  Kinds: ``store_too_large``,
        ``store_not_newer``, ``store_quota_records``/``_bytes`` (the whole table),
        ``store_source_quota_records``/``_bytes``, ``store_prefix_quota_records``/``_bytes``.

        A held copy that the store would replace frees its share first, where it was
        charged (the table always; its source's quotas only if it came from the same one).
        """
        lim = limits or Limits()
        if not 0 <= size <= MAX_VALUE_SIZE:
            return "store_too_large"
        held = self._records.get((key, index))
        if held is not None and timestamp <= held.timestamp:
            return "store_not_newer"
        over = lim.store_record_overhead
        kind = _over(len(self._records), self.total_bytes, held, size,
                     lim.store_max_records, min(self.max_bytes, lim.store_max_bytes), over)
        if kind:
            return f"store_quota_{kind}"
        if source is None:
            return None
        skey, pkey = quota_keys(source)
        held_keys = quota_keys(held.source) if held is not None and held.source else None
        usage = self.by_source.get(skey)
        kind = _over(usage.records if usage else 0, usage.bytes if usage else 0,
                     held if held_keys and held_keys[0] == skey else None,
                     size, lim.store_source_max_records, lim.store_source_max_bytes, over)
        if kind:
            return f"store_source_quota_{kind}"
        usage = self.by_prefix.get(pkey)
        kind = _over(usage.records if usage else 0, usage.bytes if usage else 0,
                     held if held_keys and held_keys[1] == pkey else None,
                     size, lim.store_prefix_max_records, lim.store_prefix_max_bytes, over)
        if kind:
            return f"store_prefix_quota_{kind}"
        return None

@implementer(IKVPTable)
class MemoryKVPTable(RecordIndex):
    """An :class:`IKVPTable` held in memory; every Deferred has fired on return."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__(max_bytes)
        self._values: dict[tuple[bytes, bytes], bytes] = {}

    def put(self, record: KVPRecord, value: bytes) -> defer.Deferred[None]:
        if len(value) != record.size:
            return defer.fail(ValueError("value length does not match the record's size"))
        self._remember(record)
        self._values[record.kvpid] = bytes(value)
        return defer.succeed(None)

    def _update_held(self, record: KVPRecord, old: KVPRecord) -> defer.Deferred[None]:
        self._replace_metadata(record)
        return defer.succeed(None)

    def read(
        self, key: bytes, index: bytes, offset: int = 0, length: int | None = None
    ) -> defer.Deferred[bytes]:
        value = self._values.get((key, index))
        if value is None:
            return defer.fail(KeyError((key, index)))
        end = len(value) if length is None else offset + length
        return defer.succeed(value[offset:end])

    def peek(self, key: bytes, index: bytes) -> bytes | None:
        return self._values.get((key, index))

    def delete(self, key: bytes, index: bytes) -> defer.Deferred[None]:
        if self._forget(key, index) is not None:
            del self._values[(key, index)]
        return defer.succeed(None)
