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

import functools
import json
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

from p2pnet.observer import OneShotObserver
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


def translate_plyvel(error: BaseException, path: str) -> StoreError:
    """The typed store error for a plyvel error (any other exception: a ``StoreError``)."""
    if isinstance(error, StoreError):
        return error
    msg = _plyvel_message(error)
    if isinstance(error, plyvel.CorruptionError):
        return DatabaseCorruptError(f"LevelDB database {path!r} is damaged: {msg}", path)
    return StoreError(f"LevelDB database {path!r}: {type(error).__name__}: {msg}")


def _mapped(
    method: Callable[Concatenate[DBManager, P], R],
) -> Callable[Concatenate[DBManager, P], R]:
    """A blocking method whose plyvel errors come out as :class:`StoreError`."""

    @functools.wraps(method)
    def wrapper(self: DBManager, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except plyvel.Error as e:
            raise translate_plyvel(e, self.db_path) from e

    return wrapper


#: The file a clean close leaves in the database directory: how many entries it held.
CLEAN_MARKER = "P2PNET-CLEAN"
#: LevelDB's LOG line for data skipped while it recovers a write-ahead log.
_DROPPED = re.compile(r"dropping (\d+) bytes")


def _count_entries(db: plyvel.DB) -> int:
    """Every entry of ``db``, read with checksums verified (raises on damage)."""
    with db.iterator(include_value=False, verify_checksums=True, fill_cache=False) as it:
        return sum(1 for _ in it)


def _log_drops(db_path: str) -> tuple[int, int]:
    """(events, bytes) LevelDB logged dropping while it opened ``db_path`` just now."""
    try:
        with open(os.path.join(db_path, "LOG"), encoding="utf-8", errors="replace") as f:
            sizes = [int(m.group(1)) for m in map(_DROPPED.search, f) if m]
    except OSError:
        return (0, 0)
    return (len(sizes), sum(sizes))


def _read_marker(db_path: str) -> int | None:
    """The entry count a clean close recorded (and remove the marker), or None."""
    path = os.path.join(db_path, CLEAN_MARKER)
    try:
        with open(path, encoding="utf-8") as f:
            count = json.load(f)["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    return count if isinstance(count, int) else None


def _write_marker(db_path: str, count: int) -> None:
    try:
        with open(os.path.join(db_path, CLEAN_MARKER), "w", encoding="utf-8") as f:
            json.dump({"entries": count}, f)
    except OSError as e:
        log.warn("cannot write {path}: {e}", path=db_path, e=e)


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
    :param lazy: open the database when the service starts, on the store's thread (the
        reactor thread never waits for LevelDB), instead of now.  :meth:`when_ready`
        fires once it is open; ``stopService`` then also closes it.
    :param repair: when the database is found damaged on open, repair it (LevelDB's
        ``RepairDB``: what can be read is kept) and open it again, instead of failing.
    :raises DatabaseLockedError: the database is open in another process or already
        open in this one.
    :raises DatabaseCorruptError: LevelDB reports corruption.

    **Lifecycle** (the same for every p2pnet store): ``startService`` (start),
    :meth:`when_ready` (ready: a new Deferred per caller), ``stopService`` (stop).

    **Damage on open.**  The database is opened with LevelDB's paranoid checks and every
    entry is read once with its checksum verified.  What LevelDB dropped while replaying
    its write-ahead log, a count lower than the one the last clean close recorded (a cut
    log loses its tail silently), and a damaged table file are each logged with a count;
    ``damage`` holds the figures of the last open.
    """

    def __init__(
        self,
        db_path: str,
        *,
        reactor: Any = None,
        executor: StoreExecutor | None = None,
        lazy: bool = False,
        repair: bool = False,
    ) -> None:
        if not isinstance(db_path, str):
            raise ValueError("db_path must be a str")
        self.db_path = db_path
        self._real_path = os.path.realpath(db_path)
        self._reactor = reactor
        self._executor = executor
        if executor is not None and executor.translate is None:
            executor.translate = self._translate
        self._db: plyvel.DB | None = None
        self._lazy = lazy
        self._repair = repair
        self._ready: OneShotObserver[None] = OneShotObserver()
        #: What the last open found: entries, entries at the last clean close (or None),
        #: bytes LevelDB dropped from its log, whether a repair ran.
        self.damage: dict[str, Any] = {}
        # Call groups of the Deferred API (one object each, so runs group by identity).
        self._write_group = self._run_writes
        self._read_group = self._run_reads
        if not lazy:
            self._reserve()
            self._open_now()

    def _reserve(self) -> None:
        """Take the path in the registry (one handle per path per process)."""
        with _registry_lock:
            if self._real_path in _registry:
                raise DatabaseLockedError(
                    f"LevelDB database {self.db_path!r} is already open in this process "
                    f"(one handle per path; close the other DBManager first)",
                    self.db_path,
                )
            _registry[self._real_path] = None  # reserved while plyvel opens it

    def _open_now(self) -> None:
        """Open the database in the calling thread and take the path in the registry."""
        try:
            db = self._open_checked()
        except BaseException:
            with _registry_lock:
                if _registry.get(self._real_path) is None:
                    _registry.pop(self._real_path, None)
            raise
        with _registry_lock:
            _registry[self._real_path] = self
        self._db = db

    def _translate(self, error: BaseException) -> BaseException | None:
        if isinstance(error, plyvel.Error):
            return translate_plyvel(error, self.db_path)
        return None

    def _open_checked(self) -> plyvel.DB:
        """Open with paranoid checks, count the entries, log any damage found."""
        path = self.db_path
        existed = os.path.exists(os.path.join(path, "CURRENT"))
        expected = _read_marker(path) if existed else None
        repaired = False
        drops = (0, 0)
        try:
            db = self._open(path)
            try:
                drops = _log_drops(path)
                count = _count_entries(db)
            except plyvel.Error as e:
                db.close()
                raise translate_plyvel(e, path) from e
        except DatabaseCorruptError as e:
            if not self._repair:
                raise
            log.error("LevelDB database {path} is damaged ({msg}); repairing it",
                      path=path, msg=str(e))
            try:
                plyvel.repair_db(path, paranoid_checks=True)
            except plyvel.Error as e2:
                raise translate_plyvel(e2, path) from e2
            repaired = True
            db = self._open(path)
            try:
                count = _count_entries(db)
            except plyvel.Error as e3:
                db.close()
                raise translate_plyvel(e3, path) from e3
            log.error("LevelDB database {path} repaired: {count} entries kept{was}",
                      path=path, count=count,
                      was="" if expected is None else f" ({expected} at its last clean close)")
        self.damage = {"entries": count, "entries_at_last_close": expected,
                       "dropped_bytes": drops[1], "repaired": repaired}
        if drops[0]:
            log.error(
                "LevelDB database {path} was damaged: {events} damaged spans of its log, "
                "{dropped} bytes dropped on recovery; {count} entries now",
                path=path, events=drops[0], dropped=drops[1], count=count)
        if expected is not None and count < expected:
            log.error(
                "LevelDB database {path} lost entries: {count} now, {expected} at its last "
                "clean close ({lost} missing)",
                path=path, count=count, expected=expected, lost=expected - count)
        elif existed and expected is None:
            log.warn("LevelDB database {path} was not closed cleanly; {count} entries "
                     "recovered", path=path, count=count)
        return db

    @staticmethod
    def _open(db_path: str) -> plyvel.DB:
        try:
            return plyvel.DB(db_path, create_if_missing=True, paranoid_checks=True)
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
            self._executor = StoreExecutor(self._reactor, name=f"p2pnet-leveldb:{self.db_path}",
                                           translate=self._translate)
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

    def when_ready(self) -> defer.Deferred[None]:
        """Fires once the service has started and the database is open (fails with the
        :class:`StoreError` of a failed open)."""
        return self._ready.when_fired()

    def startService(self) -> None:  # noqa: N802 - IService
        Service.startService(self)
        self.start()
        if self._ready.fired:
            self._ready.reset()
        if self._db is not None or not self._lazy:
            self._ready.fire(None)
            return
        try:
            self._reserve()
        except DatabaseLockedError:
            self._ready.fire(Failure())
            return
        d = self.executor.submit(self._open_checked)

        def opened(db: plyvel.DB) -> None:
            with _registry_lock:
                _registry[self._real_path] = self
            self._db = db
            self._ready.fire(None)

        def failed(f: Failure) -> None:
            with _registry_lock:
                if _registry.get(self._real_path) is None:
                    _registry.pop(self._real_path, None)
            if f.check(StoreError):  # a typed error says it all: one line, no traceback
                log.error("{error}", error=str(f.value))
            else:
                log.failure("LevelDB database {path} failed to open", f, path=self.db_path)
            self._ready.fire(f)

        d.addCallbacks(opened, failed)

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802 - IService
        Service.stopService(self)
        if not self._lazy:
            return self.stop()
        d = self.when_ready()
        d.addErrback(lambda _: None)  # a failed open was logged; stopping is still safe
        d.addCallback(lambda _: self.d_close())
        return d

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
        try:
            count: int | None = _count_entries(db)
        except plyvel.Error as e:
            log.error("LevelDB database {path} is damaged at close: {msg}",
                      path=self.db_path, msg=_plyvel_message(e))
            count = None
        db.close()
        if count is not None:
            _write_marker(self.db_path, count)
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
            with _registry_lock:
                if self._lazy and _registry.get(self._real_path) is None:
                    _registry.pop(self._real_path, None)
            return self.stop()
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

    @_mapped
    def create_entry(self, key: str, value: str, prefix: str | None = None) -> None:
        """Store ``value`` under ``prefix + key`` (replacing what was there)."""
        k = _full_key(key, prefix)
        v = _encode(value, "value")
        self.raw.put(k, v)

    @_mapped
    def load_entry(self, key: str, prefix: str | None = None) -> bytes | None:
        """The raw bytes stored under ``prefix + key``, or None."""
        k = _full_key(key, prefix)
        result: bytes | None = self.raw.get(k)
        return result

    @_mapped
    def load_entries(self, keys: Iterable[str], prefix: str | None = None) -> list[bytes | None]:
        """:meth:`load_entry` for many keys at once (one thread hop as ``d_load_entries``)."""
        if isinstance(keys, str | bytes):
            raise TypeError("keys must be an iterable of str, not a string")
        full = [_full_key(k, prefix) for k in keys]
        get = self.raw.get
        return [get(k) for k in full]

    @_mapped
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
        try:
            with reader.iterator(prefix=p) as it:
                for k, v in it:
                    try:
                        key = k[cut:].decode("utf-8")
                    except UnicodeDecodeError:
                        log.debug("skipping non-UTF-8 key {key!r}", key=k)
                        continue
                    yield key, v
        except plyvel.Error as e:
            raise translate_plyvel(e, self.db_path) from e

    @_mapped
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

    @_mapped
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
    "translate_plyvel",
]
