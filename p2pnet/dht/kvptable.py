# -*- test-case-name: tests.test_dht_kvptable -*-
"""The DHT's persistent value table: an :class:`~p2pnet.dht.table.IKVPTable` in LevelDB.

Layout, under a key namespace (default ``b"kvp/"``, so the table can share a database
with other data)::

    namespace + b"r" + key + index             ->  the record's metadata (:func:`encode_record`)
    namespace + b"c" + key + index + chunk u32 ->  16 KiB chunk number ``chunk`` of the value
    namespace + b"v" + key + index             ->  the whole value (version 1 tables only)

Values are stored in :data:`VALUE_CHUNK` chunks so that a getval of one chunk reads one
or two chunks, not the whole 1 MiB value.  A put writes the record and every chunk in one
LevelDB write batch and a delete removes them in one, so a crash leaves a value wholly
there or wholly gone.  Version 1 records (whole values under ``b"v"``) are still read.

Every record is loaded into memory when the table opens, so the metadata methods are
synchronous as the interface requires.  Small values (up to :data:`SMALL_VALUE` bytes)
are kept in memory too, up to ``small_cache_bytes`` in all (each charged
:data:`SMALL_ENTRY_COST` more for its entry), oldest out first: those
written here and those read once since the table opened.  They answer :meth:`peek`
(findval answers carry them inline) and reads without touching the disk;
``put``, ``update_record``, ``read`` and ``delete`` run on the database's
:class:`~p2pnet.store.pool.StoreExecutor` thread and return Deferreds.  The memory copy
changes when a call is made (so acceptance decisions see writes still in flight) and is
rolled back if the write fails; the executor's single thread keeps disk writes in call
order.

Lifecycle: :meth:`LevelDBKVPTable.open` (a Deferred; the database is opened and read
off the reactor thread) or :meth:`LevelDBKVPTable.open_blocking` (outside a reactor),
then :meth:`~LevelDBKVPTable.stop` (or ``stopService``), which runs the queued writes,
stops the thread and closes the database the table opened.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from p2pnet import ids
from p2pnet.dht.table import DEFAULT_MAX_BYTES, IKVPTable, KVPRecord, RecordIndex
from p2pnet.store.leveldb import DBManager
from p2pnet.store.pool import StoreExecutor

log = Logger(namespace="p2pnet.dht.kvptable")

#: Bytes per stored chunk of a value (a getval chunk reads one or two of them).
VALUE_CHUNK = 16 * 1024

_V1 = 1
#: version, size, timestamp, is_original, last_update, has_expiry, expires_at
_RECORD_V1 = struct.Struct("<BQdBdBd")
_VERSION = 2
#: version, size, timestamp, flags, last_update, expires_at, published, source port;
#: then the source host (UTF-8, the rest).  Flags: 1 original, 2 has expiry,
#: 4 has published, 8 has source.
_RECORD = struct.Struct("<BQdBdddH")
_CHUNK_NO = struct.Struct(">I")
_KVPID_BYTES = 2 * ids.KEY_BYTES

#: values up to this many bytes are kept in memory as well as on disk
SMALL_VALUE = 1024
#: bytes of small values one table keeps in memory, by default (each entry is charged
#: its value and :data:`SMALL_ENTRY_COST` for its key and slot)
SMALL_CACHE_BYTES = 1 << 20
SMALL_ENTRY_COST = 160


def encode_record(record: KVPRecord) -> bytes:
    """The metadata of ``record`` (its key and index live in the database key)."""
    flags = ((1 if record.is_original else 0) | (0 if record.expires_at is None else 2)
             | (0 if record.published is None else 4) | (0 if record.source is None else 8))
    host, port = record.source if record.source is not None else ("", 0)
    return _RECORD.pack(
        _VERSION,
        record.size,
        record.timestamp,
        flags,
        record.last_update,
        record.expires_at or 0.0,
        record.published or 0.0,
        port,
    ) + host.encode("utf-8")


def decode_record(key: bytes, index: bytes, data: bytes) -> KVPRecord:
    """Inverse of :func:`encode_record` (and reads version 1); ``ValueError`` otherwise."""
    if data[:1] == bytes([_V1]):
        return _decode_v1(key, index, data)
    try:
        version, size, timestamp, flags, last_update, expires, published, port = (
            _RECORD.unpack_from(data))
        host = data[_RECORD.size:].decode("utf-8")
    except (struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"bad record encoding: {e}") from e
    if version != _VERSION or flags & ~15 or (not flags & 8 and (host or port)):
        raise ValueError("bad record encoding")
    return _record(
        key=key,
        index=index,
        size=size,
        timestamp=timestamp,
        is_original=bool(flags & 1),
        last_update=last_update,
        expires_at=expires if flags & 2 else None,
        published=published if flags & 4 else None,
        source=(host, port) if flags & 8 else None,
    )


def _decode_v1(key: bytes, index: bytes, data: bytes) -> KVPRecord:
    try:
        version, size, timestamp, original, last_update, has_expiry, expires = (
            _RECORD_V1.unpack(data))
    except struct.error as e:
        raise ValueError(f"bad record encoding: {e}") from e
    if version != _V1 or original not in (0, 1) or has_expiry not in (0, 1):
        raise ValueError("bad record encoding")
    return _record(
        key=key,
        index=index,
        size=size,
        timestamp=timestamp,
        is_original=bool(original),
        last_update=last_update,
        expires_at=expires if has_expiry else None,
    )


def _record(**fields: Any) -> KVPRecord:
    """A decoded record; a ``TypeError`` of its validators is a ``ValueError`` like the rest."""
    try:
        return KVPRecord(**fields)
    except TypeError as e:
        raise ValueError(str(e)) from e


def _chunks(size: int) -> int:
    return -(-size // VALUE_CHUNK)


@implementer(IKVPTable)
class LevelDBKVPTable(Service, RecordIndex):
    """Values by ``(key, index)`` in LevelDB; metadata in memory, values on disk.

    :param db: the database (its executor runs the I/O).
    :param owns_db: whether :meth:`stop` stops ``db``'s executor and closes ``db``.
    """

    def __init__(
        self,
        db: DBManager,
        max_bytes: int = DEFAULT_MAX_BYTES,
        namespace: bytes = b"kvp/",
        *,
        owns_db: bool = False,
        small_cache_bytes: int = SMALL_CACHE_BYTES,
    ) -> None:
        if not isinstance(namespace, bytes):
            raise TypeError("namespace must be bytes")
        RecordIndex.__init__(self, max_bytes)
        self._small: dict[tuple[bytes, bytes], bytes] = {}  # insertion order: oldest first
        self._puts: dict[tuple[bytes, bytes], KVPRecord] = {}  # value writes in flight
        self._small_bytes = 0
        self._small_max = small_cache_bytes
        self._db = db
        self._owns_db = owns_db
        self._rprefix = namespace + b"r"
        self._vprefix = namespace + b"v"
        self._cprefix = namespace + b"c"
        self._load()

    # -- opening and closing ------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        reactor: Any = None,
        namespace: bytes = b"kvp/",
    ) -> defer.Deferred[LevelDBKVPTable]:
        """Open (or create) the table at ``path`` off the reactor thread, started."""
        executor = StoreExecutor(reactor, name=f"p2pnet-kvptable:{path}")
        executor.start()

        def _open() -> LevelDBKVPTable:
            return cls.open_blocking(
                path, max_bytes, reactor=reactor, namespace=namespace, executor=executor
            )

        def _failed(failure: Failure) -> defer.Deferred[Any]:
            return executor.stop().addCallback(lambda _: failure)

        d = executor.submit(_open)
        d.addErrback(_failed)
        return d

    @classmethod
    def open_blocking(
        cls,
        path: str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        reactor: Any = None,
        namespace: bytes = b"kvp/",
        executor: StoreExecutor | None = None,
    ) -> LevelDBKVPTable:
        """Open (or create) the table at ``path`` now, in the calling thread.

        Call :meth:`start` before the Deferred methods when ``executor`` is not running.
        """
        db = DBManager(path, reactor=reactor, executor=executor)
        try:
            return cls(db, max_bytes, namespace, owns_db=True)
        except BaseException:
            # Maybe on the executor's own thread (from open()): leave the executor alone.
            db._close_handle()
            raise

    def _load(self) -> None:
        raw = self._db.raw
        with raw.snapshot() as snapshot:
            cut = len(self._vprefix)
            with snapshot.iterator(prefix=self._vprefix, include_value=False) as it:
                with_value = {k[cut:] for k in it}
            cut = len(self._cprefix)
            first = _CHUNK_NO.pack(0)
            with snapshot.iterator(prefix=self._cprefix, include_value=False) as it:
                with_chunks = {k[cut:-4] for k in it if k[-4:] == first}
            cut = len(self._rprefix)
            with snapshot.iterator(prefix=self._rprefix) as it:
                for k, data in it:
                    kvpid = k[cut:]
                    key, index = kvpid[: ids.KEY_BYTES], kvpid[ids.KEY_BYTES :]
                    try:
                        if len(kvpid) != _KVPID_BYTES:
                            raise ValueError("bad key length")
                        record = decode_record(key, index, data)
                    except ValueError as e:
                        log.error("skipping a bad record {k!r}: {e}", k=k, e=e)
                        continue
                    if (kvpid not in with_value if data[:1] == bytes([_V1])
                            else record.size and kvpid not in with_chunks):
                        log.error("skipping a record without value {k!r}", k=k)
                        continue
                    self._remember(record)
        log.info(
            "value table {path}: {n} records, {b} bytes",
            path=self._db.db_path,
            n=len(self._records),
            b=self.total_bytes,
        )

    def start(self) -> None:
        """Start the database's thread (not needed after :meth:`open`)."""
        self._db.start()

    def stop(self) -> defer.Deferred[None]:
        """Finish the queued writes; stop and close the database if the table owns it."""
        if not self._owns_db:
            return defer.succeed(None)
        return self._db.d_close()

    def close(self) -> None:
        """Close the database now, in the calling thread (the table must be stopped)."""
        if self._owns_db:
            self._db.close()

    def startService(self) -> None:  # noqa: N802 - IService
        Service.startService(self)
        self.start()

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802 - IService
        Service.stopService(self)
        return self.stop()

    # -- memory -------------------------------------------------------------------------

    def _keep_small(self, kvpid: tuple[bytes, bytes], value: bytes) -> None:
        self._drop_small(kvpid)
        if len(value) > SMALL_VALUE or len(value) + SMALL_ENTRY_COST > self._small_max:
            return
        small = self._small
        small[kvpid] = value
        self._small_bytes += len(value) + SMALL_ENTRY_COST
        while self._small_bytes > self._small_max:
            self._small_bytes -= len(small.pop(next(iter(small)))) + SMALL_ENTRY_COST

    def _drop_small(self, kvpid: tuple[bytes, bytes]) -> None:
        value = self._small.pop(kvpid, None)
        if value is not None:
            self._small_bytes -= len(value) + SMALL_ENTRY_COST

    def _rollback(self, written: KVPRecord, previous: KVPRecord | None,
                  value: bool = False) -> None:
        """Undo a failed write in memory, unless a later call changed the entry since.

        A failed value write (``value``) is undone unless a later *put* replaced it: a
        metadata update made since (``update_record``) changed only the metadata of a
        value the disk does not have."""
        kvpid = written.kvpid
        if value:
            if self._puts.get(kvpid) is not written:
                return
            del self._puts[kvpid]
        elif self._records.get(kvpid) is not written:
            return
        self._drop_small(kvpid)
        if previous is None:
            self._forget(written.key, written.index)
        else:
            self._remember(previous)

    # -- IKVPTable ----------------------------------------------------------------------

    def _write(
        self,
        record: KVPRecord,
        previous: KVPRecord | None,
        puts: list[tuple[bytes, bytes]],
        deletes: list[bytes] | None = None,
        value: bool = False,
    ) -> defer.Deferred[None]:
        self._remember(record)
        if value:
            self._puts[record.kvpid] = record  # the value write in flight for this kvpid
        d = self._db.executor.submit(self._db.write_raw, puts, deletes or ())

        def _done(result: None) -> None:
            if value and self._puts.get(record.kvpid) is record:
                del self._puts[record.kvpid]

        def _failed(failure: Failure) -> Failure:
            self._rollback(record, previous, value)
            return failure

        return d.addCallbacks(_done, _failed)

    def put(self, record: KVPRecord, value: bytes) -> defer.Deferred[None]:
        if not isinstance(value, bytes | bytearray | memoryview):
            return defer.fail(TypeError(f"value must be bytes, not {type(value).__name__}"))
        value = bytes(value)
        if len(value) != record.size:
            return defer.fail(ValueError("value length does not match the record's size"))
        kvpid = record.key + record.index
        previous = self._records.get(record.kvpid)
        puts = [(self._rprefix + kvpid, encode_record(record))]
        puts += [(self._cprefix + kvpid + _CHUNK_NO.pack(n),
                  value[n * VALUE_CHUNK:(n + 1) * VALUE_CHUNK])
                 for n in range(_chunks(len(value)))]
        deletes = [self._vprefix + kvpid]  # a version 1 copy, if any
        if previous is not None:
            deletes += [self._cprefix + kvpid + _CHUNK_NO.pack(n)
                        for n in range(_chunks(len(value)), _chunks(previous.size))]
        self._keep_small(record.kvpid, value)  # before _write: a failed write drops it
        return self._write(record, previous, puts, deletes, value=True)

    def _update_held(self, record: KVPRecord, old: KVPRecord) -> defer.Deferred[None]:
        puts = [(self._rprefix + record.key + record.index, encode_record(record))]
        return self._write(record, old, puts)

    def read(
        self, key: bytes, index: bytes, offset: int = 0, length: int | None = None
    ) -> defer.Deferred[bytes]:
        record = self._records.get((key, index))
        if record is None:
            return defer.fail(KeyError((key, index)))
        end = record.size if length is None else min(offset + length, record.size)
        if offset >= end:
            return defer.succeed(b"")
        small = self._small.get((key, index))
        if small is not None:
            return defer.succeed(small[offset:end])
        d = self._db.executor.submit(self._read, key + index, offset, end)
        if offset == 0 and end == record.size <= SMALL_VALUE:
            d.addCallback(self._read_small, record)
        return d

    def _read_small(self, value: bytes, record: KVPRecord) -> bytes:
        if self._records.get(record.kvpid) is record:  # still what is held
            self._keep_small(record.kvpid, value)
        return value

    def peek(self, key: bytes, index: bytes) -> bytes | None:
        return self._small.get((key, index))

    def _read(self, kvpid: bytes, offset: int, end: int) -> bytes:
        """Bytes ``offset:end`` of a value: only the chunks that hold them are read."""
        raw = self._db.raw
        first, last = offset // VALUE_CHUNK, (end - 1) // VALUE_CHUNK
        parts = []
        for n in range(first, last + 1):
            chunk: bytes | None = raw.get(self._cprefix + kvpid + _CHUNK_NO.pack(n))
            if chunk is None:
                whole: bytes | None = raw.get(self._vprefix + kvpid)  # version 1
                if whole is None:
                    raise KeyError((kvpid[: ids.KEY_BYTES], kvpid[ids.KEY_BYTES:]))
                return whole[offset:end]
            parts.append(chunk)
        data = b"".join(parts)
        skip = offset - first * VALUE_CHUNK
        return data[skip:skip + end - offset]

    def delete(self, key: bytes, index: bytes) -> defer.Deferred[None]:
        old = self._forget(key, index)
        if not isinstance(key, bytes) or not isinstance(index, bytes):
            return defer.succeed(None)
        self._drop_small((key, index))
        self._puts.pop((key, index), None)  # a value write in flight that fails: deleted
        kvpid = key + index
        deletes = [self._rprefix + kvpid, self._vprefix + kvpid]
        if old is not None:
            deletes += [self._cprefix + kvpid + _CHUNK_NO.pack(n) for n in range(_chunks(old.size))]
        d = self._db.executor.submit(self._db.write_raw, (), deletes)

        def _failed(failure: Failure) -> Failure:
            if old is not None and (key, index) not in self._records:
                self._remember(old)
            return failure

        return d.addErrback(_failed)


__all__ = ["SMALL_CACHE_BYTES", "SMALL_ENTRY_COST", "SMALL_VALUE", "VALUE_CHUNK",
           "LevelDBKVPTable", "decode_record", "encode_record"]
