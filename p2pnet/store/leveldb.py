# -*- test-case-name: tests.test_store_leveldb -*-
"""LevelDB through plyvel: teos's ``DBManager``, with a blocking API and Deferred twins.

Keys and values are UTF-8 bytes on disk and ``str`` for the caller; a stored key is
``prefix + key``.  A non-``str`` key, value or prefix raises ``TypeError``.

**Blocking API** (usable from open to :meth:`DBManager.close`, outside the reactor):
``create_entry``, ``load_entry``, ``load_entries``, ``delete_entry``,
``iter_prefix``/``scan_prefix``, ``write_batch``, ``close``.

**Deferred API** — the naming scheme every p2pnet store follows: each blocking method
``m`` has a twin ``d_m`` taking the same arguments (``d_create_entry``,
``d_load_entry``, ...; declared with :class:`deferred_twin`).  The twin runs ``m`` on the
store's own :class:`~p2pnet.store.pool.StoreExecutor` thread and returns a Deferred of
``m``'s result or exception.  Calls made in one reactor turn share one thread hop.
:meth:`DBManager.submit` runs any callable on that thread.  The twins work between
:meth:`~DBManager.start` and :meth:`~DBManager.stop` (or ``startService`` /
``stopService``: a :class:`DBManager` is an ``IService``); before that they fail with
:class:`~p2pnet.store.pool.ExecutorStopped`.  ``stop`` runs what is queued, stops the
thread, and leaves the database open; ``close`` closes it (blocking), ``d_close`` closes it
on the store's thread and then stops the thread.

**One handle per path per process.**  A second open of a LevelDB database inside the
process that holds it fails *and silently drops the process's fcntl lock* (LevelDB opens
the LOCK file, sees it is held, and closes that descriptor, which releases every fcntl
lock the process had on the file).  A module registry keyed by the real path therefore
refuses a second :class:`DBManager` for an open path with :class:`DatabaseLockedError`
before plyvel is asked; another process holding the lock gives the same error.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import plyvel
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pnet.store.errors import (
    DatabaseClosedError,
    DatabaseCorruptError,
    DatabaseLockedError,
    StoreError,
)
from p2pnet.store.pool import StoreExecutor

P = ParamSpec("P")
R = TypeVar("R")

log = Logger(namespace="p2pnet.store.leveldb")

#: Real path -> the open manager (or None while it is being opened).
_registry: dict[str, DBManager | None] = {}
_registry_lock = threading.Lock()


def open_paths() -> list[str]:
    """The real paths of the LevelDB databases this process holds open (for diagnostics)."""
    with _registry_lock:
        return sorted(_registry)


class deferred_twin(Generic[P, R]):  # noqa: N801 - used like a decorator/function
    """Declare ``d_m = deferred_twin(m)`` in a store class: the Deferred twin of ``m``.

    ``store.d_m(*args)`` runs ``store.m(*args)`` (looked up by name, so overrides count)
    through ``store.executor`` and returns a Deferred of its result.  The first look-up on
    an instance creates the store's executor if needed.

    ``coalesce`` names an attribute of the store holding a call group (see
    :meth:`StoreExecutor.bind <p2pnet.store.pool.StoreExecutor.bind>`): consecutive calls
    of the twin in one hop then run together.  The group is used only while the store's
    ``m`` is the one declared here; an overriding ``m`` runs call by call.
    """

    def __init__(
        self, blocking: Callable[Concatenate[Any, P], R], coalesce: str | None = None
    ) -> None:
        self._blocking = blocking
        self._name = blocking.__name__
        self._attr = f"d_{self._name}"
        self._coalesce = coalesce
        self.__doc__ = f"Deferred twin of :meth:`{self._name}`, run on the store's thread."

    def __set_name__(self, owner: type, name: str) -> None:
        self._attr = name

    @overload
    def __get__(self, obj: None, owner: type) -> deferred_twin[P, R]: ...

    @overload
    def __get__(self, obj: object, owner: type) -> Callable[P, defer.Deferred[R]]: ...

    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            return self
        method = getattr(obj, self._name)
        group = None
        if self._coalesce is not None and getattr(method, "__func__", None) is self._blocking:
            group = getattr(obj, self._coalesce, None)
        # Cached on the instance (this is a non-data descriptor): later look-ups are a
        # plain attribute read, which matters at ~100k calls/s.
        bound = obj.executor.bind(method, group)
        obj.__dict__[self._attr] = bound
        return bound


#: LevelDB's lock failure: "IO error: lock <path>/LOCK: Resource temporarily unavailable"
#: (another process) or "...: already held by process".  A LOCK file that cannot be
#: opened at all ("IO error: <path>/LOCK: Not a directory") is not a lock conflict.
_LOCK_MESSAGE = re.compile(r"(^|: )lock ")


def _plyvel_message(error: BaseException) -> str:
    """plyvel's error text (it carries bytes) as a str."""
    arg = error.args[0] if error.args else ""
    if isinstance(arg, bytes):
        return arg.decode("utf-8", "replace")
    return str(arg)


def _encode(value: object, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"{what} must be a str, not {type(value).__name__}")


def _full_key(key: object, prefix: object) -> bytes:
    if prefix is None:
        return _encode(key, "key")
    return _encode(prefix, "prefix") + _encode(key, "key")


# The argument handling of create_entry / load_entry / delete_entry, for the call groups
# (same signatures, so a call that fails here fails the same way in the method).


def _entry_key(key: object, prefix: object = None) -> bytes:
    if prefix is None and key.__class__ is str:
        return key.encode("utf-8")
    return _full_key(key, prefix)


def _entry_item(key: object, value: object, prefix: object = None) -> tuple[bytes, bytes]:
    if value.__class__ is str:
        return _entry_key(key, prefix), value.encode("utf-8")
    return _full_key(key, prefix), _encode(value, "value")


def _failure_of(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The outcome of ``fn(*args, **kwargs)`` (a Failure if it raises).

    Used when the group's argument handling raised ``TypeError``: ``fn`` checks its
    arguments the same way before touching the database, so it raises too, with its own
    message (a signature error names ``fn``).
    """
    try:
        return fn(*args, **kwargs)
    except BaseException:
        return Failure()


class DBManager(Service):
    """A LevelDB database: strings in, UTF-8 bytes on disk (teos's ``DBManager``).

    :param db_path: the database directory (created when missing); ``ValueError`` unless
        a ``str``.
    :param reactor: the reactor of the Deferred API (default: the global one, imported
        only when the store starts).
    :param executor: the executor of the Deferred API, e.g. ``StoreExecutor.inline()``
        in unit tests; by default a one-thread pool owned by this store.
    :raises DatabaseLockedError: the database is open in another process or already
        open in this one.
    :raises DatabaseCorruptError: LevelDB reports corruption.
    """

    def __init__(
        self,
        db_path: str,
        *,
        reactor: Any = None,
        executor: StoreExecutor | None = None,
    ) -> None:
        if not isinstance(db_path, str):
            raise ValueError("db_path must be a str")
        self.db_path = db_path
        self._real_path = os.path.realpath(db_path)
        self._reactor = reactor
        self._executor = executor
        self._db: plyvel.DB | None = None
        with _registry_lock:
            if self._real_path in _registry:
                raise DatabaseLockedError(
                    f"LevelDB database {db_path!r} is already open in this process "
                    f"(one handle per path; close the other DBManager first)",
                    db_path,
                )
            _registry[self._real_path] = None  # reserved while plyvel opens it
        try:
            self._db = self._open(db_path)
        except BaseException:
            with _registry_lock:
                _registry.pop(self._real_path, None)
            raise
        with _registry_lock:
            _registry[self._real_path] = self
        # Call groups of the Deferred API (one object each, so runs group by identity).
        self._write_group = self._run_writes
        self._read_group = self._run_reads

    @staticmethod
    def _open(db_path: str) -> plyvel.DB:
        try:
            return plyvel.DB(db_path, create_if_missing=True)
        except plyvel.IOError as e:
            msg = _plyvel_message(e)
            if "already held by process" in msg:
                raise DatabaseLockedError(
                    f"LevelDB database {db_path!r} is already open in this process outside "
                    f"DBManager; that handle may have lost its lock ({msg})",
                    db_path,
                ) from e
            if _LOCK_MESSAGE.search(msg):
                raise DatabaseLockedError(
                    f"LevelDB database {db_path!r} is locked: another process holds it ({msg})",
                    db_path,
                ) from e
            raise StoreError(f"cannot open LevelDB database {db_path!r}: {msg}") from e
        except plyvel.CorruptionError as e:
            raise DatabaseCorruptError(
                f"LevelDB database {db_path!r} is corrupt: {_plyvel_message(e)}", db_path
            ) from e
        except plyvel.Error as e:
            raise StoreError(
                f"cannot open LevelDB database {db_path!r}: {_plyvel_message(e)}"
            ) from e

    # -- handle and lifecycle ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._db is None

    @property
    def raw(self) -> plyvel.DB:
        """The plyvel handle (for store code running on this store's thread)."""
        db = self._db
        if db is None:
            raise DatabaseClosedError(f"LevelDB database {self.db_path!r} is closed")
        return db

    @property
    def executor(self) -> StoreExecutor:
        """The executor of the Deferred API (created on first use)."""
        if self._executor is None:
            self._executor = StoreExecutor(self._reactor, name=f"p2pnet-leveldb:{self.db_path}")
        return self._executor

    def start(self) -> None:
        """Start the store's thread: the Deferred API works from now on."""
        self.executor.start()

    def stop(self) -> defer.Deferred[None]:
        """Run the queued calls, then stop the store's thread; the database stays open.

        Each caller's Deferred fires once the thread has drained and ended.
        """
        if self._executor is None:
            return defer.succeed(None)
        return self._executor.stop()

    def startService(self) -> None:  # noqa: N802 - IService
        Service.startService(self)
        self.start()

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802 - IService
        Service.stopService(self)
        return self.stop()

    def submit(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> defer.Deferred[R]:
        """Run ``fn(*args, **kwargs)`` on the store's thread; a Deferred of its result."""
        return self.executor.submit(fn, *args, **kwargs)

    def close(self) -> None:
        """Close the database and release its path (idempotent).

        With the Deferred API started, call it from the reactor thread; it raises
        :class:`StoreError` while Deferred calls are still in flight (wait for
        :meth:`stop`, then close).
        """
        if self._db is None:
            return
        if self._executor is not None:
            if not self.stop().called:
                raise StoreError(
                    f"close() of {self.db_path!r} with Deferred calls in flight; "
                    "wait for stop() first"
                )
        self._close_handle()

    def _close_handle(self) -> None:
        db, self._db = self._db, None
        if db is None:
            return
        db.close()
        with _registry_lock:
            if _registry.get(self._real_path) is self:
                del _registry[self._real_path]

    def d_close(self) -> defer.Deferred[None]:
        """Close without blocking the reactor: the calls queued so far run, the handle
        closes on the store's thread (LevelDB may wait there for a compaction), then the
        thread stops.  Calls made after this one fail with :class:`DatabaseClosedError`;
        do not use the blocking API from other threads meanwhile.
        """
        if self._db is None:
            return defer.succeed(None)
        if self._executor is None or not self._executor.running:
            self.close()
            return defer.succeed(None)

        def _then_stop(result: object) -> defer.Deferred[Any]:
            return self.stop().addCallback(lambda _: result)

        d = self._executor.submit(self._close_handle)
        d.addBoth(_then_stop)
        return d

    def __enter__(self) -> DBManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- blocking API -------------------------------------------------------------------

    def create_entry(self, key: str, value: str, prefix: str | None = None) -> None:
        """Store ``value`` under ``prefix + key`` (replacing what was there)."""
        k = _full_key(key, prefix)
        v = _encode(value, "value")
        self.raw.put(k, v)

    def load_entry(self, key: str, prefix: str | None = None) -> bytes | None:
        """The raw bytes stored under ``prefix + key``, or None."""
        k = _full_key(key, prefix)
        result: bytes | None = self.raw.get(k)
        return result

    def load_entries(self, keys: Iterable[str], prefix: str | None = None) -> list[bytes | None]:
        """:meth:`load_entry` for many keys at once (one thread hop as ``d_load_entries``)."""
        if isinstance(keys, str | bytes):
            raise TypeError("keys must be an iterable of str, not a string")
        full = [_full_key(k, prefix) for k in keys]
        get = self.raw.get
        return [get(k) for k in full]

    def delete_entry(self, key: str, prefix: str | None = None) -> None:
        """Delete ``prefix + key``; a missing key is not an error."""
        k = _full_key(key, prefix)
        self.raw.delete(k)

    def iter_prefix(self, prefix: str, *, snapshot: Any = None) -> Iterator[tuple[str, bytes]]:
        """``(key without prefix, value bytes)`` for every key starting with ``prefix``.

        Reads one consistent state: ``snapshot`` (a ``plyvel`` snapshot of :attr:`raw`)
        or the database as of the first ``next()``.  Keys that are not UTF-8 (written by
        raw-bytes code sharing the database) are skipped.
        """
        p = _encode(prefix, "prefix")
        cut = len(p)
        reader = self.raw if snapshot is None else snapshot
        with reader.iterator(prefix=p) as it:
            for k, v in it:
                try:
                    key = k[cut:].decode("utf-8")
                except UnicodeDecodeError:
                    log.debug("skipping non-UTF-8 key {key!r}", key=k)
                    continue
                yield key, v

    def scan_prefix(self, prefix: str) -> list[tuple[str, bytes]]:
        """:meth:`iter_prefix` as a list (what ``d_scan_prefix`` returns)."""
        return list(self.iter_prefix(prefix))

    def write_batch(
        self,
        puts: Iterable[tuple[str, str]] = (),
        deletes: Iterable[str] = (),
        prefix: str | None = None,
    ) -> None:
        """Apply ``puts`` then ``deletes`` atomically (one LevelDB write batch).

        Every argument is checked before anything is written: a ``TypeError`` leaves the
        database untouched.
        """
        if isinstance(puts, str | bytes) or isinstance(deletes, str | bytes):
            raise TypeError("puts and deletes must be iterables of items, not a string")
        encoded_puts = [(_full_key(k, prefix), _encode(v, "value")) for k, v in puts]
        encoded_deletes = [_full_key(k, prefix) for k in deletes]
        self.write_raw(encoded_puts, encoded_deletes)

    def write_raw(
        self, puts: Iterable[tuple[bytes, bytes]] = (), deletes: Iterable[bytes] = ()
    ) -> None:
        """Apply raw-bytes ``puts`` then ``deletes`` in one write batch."""
        with self.raw.write_batch(transaction=True) as batch:
            for k, v in puts:
                batch.put(k, v)
            for k in deletes:
                batch.delete(k)

    # -- Deferred API -------------------------------------------------------------------

    def _run_writes(self, calls: Sequence[Any]) -> list[Any]:
        """A hop's run of ``create_entry`` / ``delete_entry`` calls: one write batch.

        Each call's arguments are checked first (a bad one fails that call alone); the
        others go, in order, into one LevelDB write batch.  If writing it fails, every
        call in it fails with that error (nothing of it was written).
        """
        out: list[Any] = []
        items: list[tuple[bytes, bytes | None]] = []
        slots: list[int] = []
        put = DBManager.create_entry
        for i, (_, fn, args, kwargs, _) in enumerate(calls):
            try:
                if fn.__func__ is put:
                    item: tuple[bytes, bytes | None] = _entry_item(*args, **kwargs)
                else:
                    item = (_entry_key(*args, **kwargs), None)
            except TypeError:
                out.append(_failure_of(fn, args, kwargs))
                continue
            except BaseException:
                out.append(Failure())
                continue
            out.append(None)
            items.append(item)
            slots.append(i)
        if items:
            try:
                batch = self.raw.write_batch()
                bput, bdelete = batch.put, batch.delete
                for k, v in items:
                    if v is None:
                        bdelete(k)
                    else:
                        bput(k, v)
                batch.write()
            except BaseException:
                failure = Failure()
                for i in slots:
                    out[i] = failure
        return out

    def _run_reads(self, calls: Sequence[Any]) -> list[Any]:
        """A hop's run of ``load_entry`` calls, in one tight loop."""
        out: list[Any] = []
        append = out.append
        get = self.raw.get
        for _, fn, args, kwargs, _ in calls:
            try:
                append(get(_entry_key(*args, **kwargs)))
            except TypeError:
                append(_failure_of(fn, args, kwargs))
            except BaseException:
                append(Failure())
        return out

    d_create_entry = deferred_twin(create_entry, coalesce="_write_group")
    d_load_entry = deferred_twin(load_entry, coalesce="_read_group")
    d_load_entries = deferred_twin(load_entries)
    d_delete_entry = deferred_twin(delete_entry, coalesce="_write_group")
    d_scan_prefix = deferred_twin(scan_prefix)
    d_write_batch = deferred_twin(write_batch)
    d_write_raw = deferred_twin(write_raw)


__all__ = [
    "DBManager",
    "DatabaseClosedError",
    "DatabaseCorruptError",
    "DatabaseLockedError",
    "StoreError",
    "deferred_twin",
    "open_paths",
]
