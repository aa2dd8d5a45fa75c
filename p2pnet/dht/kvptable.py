# -*- test-case-name: tests.test_dht_kvptable -*-
"""The DHT's persistent value table: an :class:`~p2pnet.dht.table.IKVPTable` in LevelDB.

Layout, under a key namespace (default ``b"kvp/"``, so the table can share a database
with other data)::

    namespace + b"r" + key + index  ->  the record's metadata (:func:`encode_record`)
    namespace + b"v" + key + index  ->  the value bytes

A put writes both keys in one LevelDB write batch and a delete removes both in one, so
a crash leaves a value wholly there or wholly gone.  Every record is loaded into memory
when the table opens, so the metadata methods are synchronous as the interface requires;
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

_VERSION = 1
#: version, size, timestamp, is_original, last_update, has_expiry, expires_at
_RECORD = struct.Struct("<BQdBdBd")
_KVPID_BYTES = 2 * ids.KEY_BYTES


def encode_record(record: KVPRecord) -> bytes:
    """The metadata of ``record`` (its key and index live in the database key)."""
    expires = record.expires_at
    return _RECORD.pack(
        _VERSION,
        record.size,
        record.timestamp,
        1 if record.is_original else 0,
        record.last_update,
        0 if expires is None else 1,
        0.0 if expires is None else expires,
    )


def decode_record(key: bytes, index: bytes, data: bytes) -> KVPRecord:
    """Inverse of :func:`encode_record`; ``ValueError`` for anything else."""
    try:
        version, size, timestamp, original, last_update, has_expiry, expires = _RECORD.unpack(data)
    except struct.error as e:
        raise ValueError(f"bad record encoding: {e}") from e
    if version != _VERSION or original not in (0, 1) or has_expiry not in (0, 1):
        raise ValueError("bad record encoding")
    try:
        return KVPRecord(
            key=key,
            index=index,
            size=size,
            timestamp=timestamp,
            is_original=bool(original),
            last_update=last_update,
            expires_at=expires if has_expiry else None,
        )
    except TypeError as e:
        raise ValueError(str(e)) from e


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
    ) -> None:
        if not isinstance(namespace, bytes):
            raise TypeError("namespace must be bytes")
        RecordIndex.__init__(self, max_bytes)
        self._db = db
        self._owns_db = owns_db
        self._rprefix = namespace + b"r"
        self._vprefix = namespace + b"v"
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
                    if kvpid not in with_value:
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

    def _rollback(self, written: KVPRecord, previous: KVPRecord | None) -> None:
        """Undo a failed write in memory, unless a later call changed the entry since."""
        if self._records.get(written.kvpid) is not written:
            return
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
    ) -> defer.Deferred[None]:
        self._remember(record)
        d = self._db.executor.submit(self._db.write_raw, puts)

        def _failed(failure: Failure) -> Failure:
            self._rollback(record, previous)
            return failure

        return d.addErrback(_failed)

    def put(self, record: KVPRecord, value: bytes) -> defer.Deferred[None]:
        if not isinstance(value, bytes | bytearray | memoryview):
            return defer.fail(TypeError(f"value must be bytes, not {type(value).__name__}"))
        value = bytes(value)
        if len(value) != record.size:
            return defer.fail(ValueError("value length does not match the record's size"))
        kvpid = record.key + record.index
        puts = [(self._rprefix + kvpid, encode_record(record)), (self._vprefix + kvpid, value)]
        return self._write(record, self._records.get(record.kvpid), puts)

    def update_record(self, record: KVPRecord) -> defer.Deferred[None]:
        old = self._records.get(record.kvpid)
        if old is None:
            return defer.fail(KeyError(record.kvpid))
        if old.size != record.size:
            return defer.fail(ValueError("update_record cannot change the size"))
        puts = [(self._rprefix + record.key + record.index, encode_record(record))]
        return self._write(record, old, puts)

    def read(
        self, key: bytes, index: bytes, offset: int = 0, length: int | None = None
    ) -> defer.Deferred[bytes]:
        if (key, index) not in self._records:
            return defer.fail(KeyError((key, index)))
        return self._db.executor.submit(self._read, key, index, offset, length)

    def _read(self, key: bytes, index: bytes, offset: int, length: int | None) -> bytes:
        value: bytes | None = self._db.raw.get(self._vprefix + key + index)
        if value is None:
            raise KeyError((key, index))
        end = len(value) if length is None else offset + length
        return value[offset:end]

    def delete(self, key: bytes, index: bytes) -> defer.Deferred[None]:
        old = self._forget(key, index)
        if not isinstance(key, bytes) or not isinstance(index, bytes):
            return defer.succeed(None)
        deletes = [self._rprefix + key + index, self._vprefix + key + index]
        d = self._db.executor.submit(self._db.write_raw, (), deletes)

        def _failed(failure: Failure) -> Failure:
            if old is not None and (key, index) not in self._records:
                self._remember(old)
            return failure

        return d.addErrback(_failed)


__all__ = ["LevelDBKVPTable", "decode_record", "encode_record"]
