# -*- test-case-name: tests.test_dht_table -*-
"""The values a DHT node holds: :class:`KVPRecord` metadata and the :class:`IKVPTable` seam.

Metadata (key, index, size, timestamp, flags, expiry) is small and is kept in memory by
every implementation, so the protocol answers ``findval`` and decides on ``store``
synchronously.  Value bytes may live on disk: reading and writing them returns Deferreds,
so a persistent table can do its I/O off the reactor thread.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import attrs
from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

from p2pnet import ids
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

    def put(record: KVPRecord, value: bytes) -> defer.Deferred[None]:
        """Hold ``value`` under ``record`` (replacing what was held); len(value) == size."""

    def update_record(record: KVPRecord) -> defer.Deferred[None]:
        """Replace the metadata of a held value (flags, times); KeyError if not held."""

    def read(key: bytes, index: bytes, offset: int = 0, length: int | None = None
             ) -> defer.Deferred[bytes]:
        """Bytes of a held value from ``offset``; fails with KeyError if not held."""

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


class RecordIndex:
    """The in-memory metadata every value table keeps: records by (key, index) and by key,
    and the byte total; the synchronous half of :class:`IKVPTable`."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.total_bytes = 0
        self._records: dict[tuple[bytes, bytes], KVPRecord] = {}
        self._by_key: dict[bytes, set[bytes]] = {}

    def _remember(self, record: KVPRecord) -> None:
        old = self._records.get(record.kvpid)
        self.total_bytes += record.size - (old.size if old is not None else 0)
        self._records[record.kvpid] = record
        self._by_key.setdefault(record.key, set()).add(record.index)

    def _forget(self, key: bytes, index: bytes) -> KVPRecord | None:
        old = self._records.pop((key, index), None)
        if old is not None:
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

    def update_record(self, record: KVPRecord) -> defer.Deferred[None]:
        old = self._records.get(record.kvpid)
        if old is None:
            return defer.fail(KeyError(record.kvpid))
        if old.size != record.size:
            return defer.fail(ValueError("update_record cannot change the size"))
        self._records[record.kvpid] = record
        return defer.succeed(None)

    def read(
        self, key: bytes, index: bytes, offset: int = 0, length: int | None = None
    ) -> defer.Deferred[bytes]:
        value = self._values.get((key, index))
        if value is None:
            return defer.fail(KeyError((key, index)))
        end = len(value) if length is None else offset + length
        return defer.succeed(value[offset:end])

    def delete(self, key: bytes, index: bytes) -> defer.Deferred[None]:
        if self._forget(key, index) is not None:
            del self._values[(key, index)]
        return defer.succeed(None)
