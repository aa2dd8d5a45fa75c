# -*- test-case-name: tests.test_store_peerstore -*-
"""The sqlite peer store (p2p0mq's ``PeerStore``), with a blocking and a Deferred API.

The schema is p2p0mq's, so an existing p2p0mq database opens unchanged:

* ``p2p0mq_meta (id INTEGER PRIMARY KEY, key TEXT UNIQUE, value TEXT, description TEXT)``,
  read once at :meth:`PeerStore.start_db`; every row becomes an attribute of the store.
* ``p2p0mq_peers (peer_id INTEGER PRIMARY KEY, uuid TEXT, host TEXT, port INTEGER)``,
  merged with :attr:`PeerStore.peers` by :meth:`PeerStore.sync_database`, by uuid only.
  Peer uuids are bytes in memory and are written as BLOBs (as p2p0mq writes them); rows
  whose uuid another program wrote as TEXT load too (UTF-8 encoded).

**Threads.**  There is one sqlite connection, opened with ``check_same_thread=False``
and used by one thread at a time: every use holds the store's database lock for a whole
transaction.  The Deferred API (``d_*``) runs on the store's own
:class:`~p2pnet.store.pool.StoreExecutor` thread; calls that arrive in one reactor turn
share one thread hop and one transaction (each call in its own savepoint, so each keeps
its own result or error).  The blocking API (:meth:`~PeerStore.start_db`,
:meth:`~PeerStore.sync_database`, :meth:`~PeerStore.terminate_db`) runs in the caller's
thread; it is for code outside the reactor and waits for a hop in progress, so the
reactor thread should use the ``d_*`` twins.  ``add_peer``, ``take_peer`` and the
``peers_*`` properties only touch memory (under ``peers_lock``) and are fine anywhere.

**Writes go through transactions** (``BEGIN IMMEDIATE`` … ``COMMIT``), so a sync is all
or nothing and a process killed at any point leaves the last committed sync on disk.
A database held by another writer raises
:class:`~p2pnet.store.errors.DatabaseLockedError` (after ``lock_timeout`` seconds of
sqlite's busy wait); a file that is not a sqlite database or is damaged raises
:class:`~p2pnet.store.errors.DatabaseCorruptError`.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid as uuid_module
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ParamSpec, TypeVar

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pnet.observer import OneShotObserver
from p2pnet.store.errors import (
    DatabaseClosedError,
    DatabaseCorruptError,
    DatabaseLockedError,
    StoreError,
)
from p2pnet.store.peer import Peer, PeerState, check_host, check_port
from p2pnet.store.pool import StoreExecutor
from p2pnet.timers import Periodic

P = ParamSpec("P")
R = TypeVar("R")

SYNC_DB_INTERVAL = 10.0
SQLITE_PEERS_TABLE = "p2p0mq_peers"
SQLITE_META_TABLE = "p2p0mq_meta"

#: Exact DDL of p2p0mq's tables.
META_TABLE_SQL = (
    f"CREATE TABLE {SQLITE_META_TABLE} ("
    "id INTEGER PRIMARY KEY, key TEXT UNIQUE, value TEXT, description TEXT)"
)
PEERS_TABLE_SQL = (
    f"CREATE TABLE {SQLITE_PEERS_TABLE} ("
    "peer_id INTEGER PRIMARY KEY, uuid TEXT, host TEXT, port INTEGER)"
)

_META_DESCRIPTIONS = {
    "uuid": "the unique identification of this instance",
    "db_created": "the time when the metadata was inserted",
}

# sqlite primary result codes (extended codes carry them in the low byte).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

# uuid -> [(peer_id, host, port), ...] in peer_id order.
_Rows = dict[bytes, list[tuple[int, Any, Any]]]


def local_uuid(value: object) -> bytes:
    """The local uuid as bytes: ``str`` UTF-8, ``bytes`` kept, ``int`` its decimal text.

    Anything else raises ``ValueError("uuid needs to be a string")``; fewer than four
    bytes raise ``ValueError`` too.
    """
    if isinstance(value, str):
        result = value.encode("utf-8")
    elif isinstance(value, bytes):
        result = value
    elif isinstance(value, int) and not isinstance(value, bool):
        result = str(value).encode("ascii")
    else:
        raise ValueError("uuid needs to be a string")
    if len(result) < 4:
        raise ValueError("uuid needs to be at least 4 characters long")
    return result


def _translate(exc: sqlite3.Error, path: str) -> StoreError:
    """A typed store error for a sqlite error."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc).lower()
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in text:
        return DatabaseLockedError(f"peer database {path} is locked: {exc}", path)
    if (
        primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
        or "not a database" in text
        or "malformed" in text
    ):
        return DatabaseCorruptError(f"peer database {path} is damaged: {exc}", path)
    return StoreError(f"peer database {path}: {exc}")


class PeerStore(service.Service):
    """The peers we know of, kept in memory and merged with a sqlite table.

    ``peers`` maps uuid (bytes) to :class:`~p2pnet.store.peer.Peer`; use it only while
    holding ``peers_lock`` (a ``threading.Lock``).  ``db_file_path=None`` keeps the
    database in memory.  ``reactor`` is the clock (``seconds()``) and the reactor of the
    store's thread pool; the global reactor when not given.  ``inline=True`` runs the
    Deferred API synchronously in the calling thread (tests with ``task.Clock``).

    As an :class:`~twisted.application.service.IService`, starting opens the database
    and syncs (see :meth:`when_ready`), a timer syncs every ``SYNC_DB_INTERVAL`` seconds,
    and stopping makes a last sync and closes.
    """

    log = Logger()
    sync_interval = SYNC_DB_INTERVAL

    def __init__(
        self,
        db_file_path: str | None = None,
        app_uuid: str | bytes | int | None = None,
        reactor: Any = None,
        *,
        inline: bool = False,
        lock_timeout: float = 5.0,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self.db_file_path = db_file_path
        self.lock_timeout = lock_timeout
        self.peers: dict[bytes, Peer] = {}
        self.peers_lock = threading.Lock()
        self.next_peer_db_sync_time: float = self._clock.seconds() - SYNC_DB_INTERVAL
        self._uuid: bytes | None = None
        if app_uuid is not None:
            self.uuid = app_uuid
        self.db_created: float | None = None
        #: Every row of the meta table, as read (or written) by ``start_db``.
        self.meta: dict[str, Any] = {}
        self._meta_attrs: set[str] = set()

        # uuids given to take_peer whose rows the next sync deletes.
        self._taken: set[bytes] = set()
        # The connection and what lives with it; only touched under _db_lock.
        self._db_lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._batch_depth = 0
        self._txn_undo: list[Callable[[], None]] = []
        self._row_cache: _Rows | None = None
        self._cache_version = -1

        if inline:
            self._executor = StoreExecutor.inline(batch_context=self._batch)
        else:
            self._executor = StoreExecutor(
                reactor, name="p2pnet-peerstore", batch_context=self._batch
            )
        self._syncer = Periodic(self._clock, job=self._periodic_sync, name="periodic peer sync")
        self._ready: OneShotObserver[None] = OneShotObserver()
        self._started_once = False

    # -- local identity ------------------------------------------------------------

    @property
    def uuid(self) -> bytes | None:
        """The local peer's unique identifier (bytes; see :func:`local_uuid`)."""
        return self._uuid

    @uuid.setter
    def uuid(self, value: object) -> None:
        self._uuid = local_uuid(value)

    @property
    def _path(self) -> str:
        return self.db_file_path if self.db_file_path is not None else ":memory:"

    # -- memory --------------------------------------------------------------------

    def add_peer(self, peer: Peer) -> None:
        """Add (or replace) a peer from code; the database never calls this."""
        with self.peers_lock:
            self.peers[peer.uuid] = peer

    def take_peer(self, peer: Peer | bytes | str) -> Peer:
        """Remove and return a peer; its row goes at the next sync.  ``KeyError`` if unknown."""
        if isinstance(peer, Peer):
            key = peer.uuid
        elif isinstance(peer, str):
            key = peer.encode("utf-8")
        else:
            key = bytes(peer)
        with self.peers_lock:
            taken = self.peers.pop(key)
            self._taken.add(key)
        return taken

    def _untake(self, keys: set[bytes]) -> None:
        with self.peers_lock:
            self._taken.update(keys - self.peers.keys())

    def _peers_in(self, state: PeerState) -> list[Peer]:
        with self.peers_lock:
            return [p for p in self.peers.values() if p.conn_state == state]

    @property
    def peers_in_initial_state(self) -> list[Peer]:
        """A new list of the peers in state INITIAL."""
        return self._peers_in(PeerState.INITIAL)

    @property
    def peers_connected(self) -> list[Peer]:
        """A new list of the peers in state CONNECTED."""
        return self._peers_in(PeerState.CONNECTED)

    @property
    def peers_routed(self) -> list[Peer]:
        """A new list of the peers in state ROUTED."""
        return self._peers_in(PeerState.ROUTED)

    @property
    def peers_unreachable(self) -> list[Peer]:
        """A new list of the peers in state UNREACHABLE."""
        return self._peers_in(PeerState.UNREACHABLE)

    # -- blocking API --------------------------------------------------------------

    def start_db(self) -> None:
        """Open the database, read (or create) the meta table, then force a sync."""
        self._executor.call_blocking(self._start_db)

    def sync_database(self, force: bool = False) -> dict[bytes, Peer] | None:
        """Merge memory and the peers table; the peers loaded, or ``None`` when not due."""
        return self._executor.call_blocking(self._sync_database, force)

    def terminate_db(self) -> None:
        """Make a last sync and close; safe after a failed ``start_db`` and when repeated."""
        self._executor.call_blocking(self._terminate_db)

    def transaction(self) -> AbstractContextManager[None]:
        """Run several blocking calls in one transaction: ``with store.transaction(): ...``.

        It holds the database for the whole block (the Deferred API waits), and commits
        at its end; an exception raised out of the block rolls everything back.
        """
        return self._batch()

    # -- Deferred API (p2pnet's store scheme: ``d_m`` is the Deferred twin of ``m``) ------

    def start(self) -> None:
        """Start the store's thread: the Deferred API works from now on."""
        self._executor.start()

    def stop(self) -> defer.Deferred[None]:
        """Run the queued calls, then stop the store's thread; the database stays open."""
        return self._executor.stop()

    def submit(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> defer.Deferred[R]:
        """Run ``fn(*args, **kwargs)`` on the store's thread, inside its transaction."""
        return self._executor.submit(fn, *args, **kwargs)

    def d_start_db(self) -> defer.Deferred[None]:
        """Deferred twin of :meth:`start_db`, run on the store's thread."""
        return self._executor.submit(self._start_db)

    def d_sync_database(self, force: bool = False) -> defer.Deferred[dict[bytes, Peer] | None]:
        """Deferred twin of :meth:`sync_database`, run on the store's thread."""
        return self._executor.submit(self._sync_database, force)

    def d_terminate_db(self) -> defer.Deferred[None]:
        """Deferred twin of :meth:`terminate_db`, run on the store's thread."""
        return self._executor.submit(self._terminate_db)

    # -- service ---------------------------------------------------------------------

    def startService(self) -> None:
        """Start the thread, open and sync the database, then sync periodically."""
        super().startService()
        if self._ready.fired:
            self._ready.reset()
        self._started_once = True
        self._executor.start()
        d = self.d_start_db()
        d.addCallbacks(self._started, self._start_failed)

    def when_ready(self) -> defer.Deferred[None]:
        """A new Deferred that fires when the service's start has opened the database
        (fails with the start's error)."""
        return self._ready.when_fired()

    def stopService(self) -> defer.Deferred[None]:
        """Stop the timer, make the last sync, close, stop the thread."""
        super().stopService()
        self._syncer.stop()  # a sync under way is queued before the close on the store thread
        d = self.when_ready() if self._started_once else defer.succeed(None)
        d.addErrback(lambda _: None)  # a failed start was logged; closing is still safe
        d.addCallback(lambda _: self.d_terminate_db())

        def _stop_thread(result: object) -> object:
            stopped = self._executor.stop()
            stopped.addCallback(lambda _: result)
            return stopped

        d.addBoth(_stop_thread)
        return d

    def _started(self, _: object) -> None:
        self._set_start_outcome(None)
        if not self.running:
            return
        self._syncer.interval = self.sync_interval
        self._syncer.start()

    def _start_failed(self, failure: Failure) -> None:
        if failure.check(StoreError):  # a typed error says it all: one line, no traceback
            self.log.error("peer store {path} failed to start: {error}", path=self._path,
                           error=str(failure.value))
        else:
            self.log.failure("peer store {path} failed to start", failure, path=self._path)
        self._set_start_outcome(failure)

    def _set_start_outcome(self, outcome: Failure | None) -> None:
        self._ready.fire_if_unfired(outcome)

    def _periodic_sync(self) -> defer.Deferred[None]:
        def _done(result: object) -> None:
            if isinstance(result, Failure):
                self.log.failure("periodic peer sync failed", result)

        return self.d_sync_database(force=True).addBoth(_done)

    # -- tables (p2p0mq's helpers) -----------------------------------------------------

    def table_exists(self, c: sqlite3.Cursor, name: str) -> bool:
        """Whether table ``name`` exists."""
        c.execute("SELECT name FROM sqlite_master WHERE type='table' AND name=?", (name,))
        return c.fetchone() is not None

    def create_peers_table(self, c: sqlite3.Cursor) -> None:
        """Create ``p2p0mq_peers``."""
        c.execute(PEERS_TABLE_SQL)

    def create_meta_table(self, c: sqlite3.Cursor) -> None:
        """Create ``p2p0mq_meta`` with its ``uuid`` and ``db_created`` rows."""
        c.execute(META_TABLE_SQL)
        if self._uuid is None:
            self.uuid = uuid_module.uuid4().hex
        self.db_created = float(self._clock.seconds())
        self._insert_meta(c, "uuid")
        self._insert_meta(c, "db_created")

    def _insert_meta(self, c: sqlite3.Cursor, key: str) -> None:
        # The uuid as bytes (a BLOB, as p2p0mq writes it); db_created as repr() text,
        # which float() reads back exactly.
        value: object = self._uuid if key == "uuid" else repr(self.db_created)
        c.execute(
            f"INSERT INTO {SQLITE_META_TABLE}(key, value, description) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value, _META_DESCRIPTIONS[key]),
        )
        self.meta[key] = value

    def _read_meta(self, c: sqlite3.Cursor) -> None:
        self.meta = {}
        c.execute(f"SELECT key, value FROM {SQLITE_META_TABLE} ORDER BY id")
        for key, value in c.fetchall():
            self._apply_meta(key, value)
        if "uuid" not in self.meta:
            if self._uuid is None:
                self.uuid = uuid_module.uuid4().hex
            self._insert_meta(c, "uuid")
        if "db_created" not in self.meta:
            self.db_created = float(self._clock.seconds())
            self._insert_meta(c, "db_created")

    def _apply_meta(self, key: object, value: Any) -> None:
        if not isinstance(key, str) or not key.isidentifier() or key.startswith("_"):
            self.log.warn("ignoring meta row {key!r}: not a usable name", key=key)
            return
        if key == "uuid":
            self.uuid = value
        elif key == "db_created":
            try:
                self.db_created = float(value)
            except (TypeError, ValueError):
                self.log.warn("meta db_created {value!r} is not a number", value=value)
                self.db_created = None
        elif key in self._meta_attrs or not hasattr(self, key):
            setattr(self, key, value)
            self._meta_attrs.add(key)
        else:
            self.log.warn("ignoring meta row {key!r}: it would hide the store's own", key=key)
            return
        self.meta[key] = value

    # -- connection and transactions ---------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        path = self._path
        try:
            conn = sqlite3.connect(
                path,
                timeout=self.lock_timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=path.startswith("file:"),
            )
        except sqlite3.Error as exc:
            raise _translate(exc, path) from exc
        self.log.debug("opened peer database {path}", path=path)
        return conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        self._row_cache = None
        if conn is None:
            return
        try:
            if conn.in_transaction:
                self._rollback(conn)
        finally:
            conn.close()
            self.log.debug("closed peer database {path}", path=self._path)

    @contextmanager
    def _batch(self) -> Iterator[None]:
        """One transaction around a hop's calls (the executor's ``batch_context``)."""
        with self._db_lock:
            self._batch_depth += 1
            try:
                yield
            except BaseException:
                if self._batch_depth == 1 and self._conn is not None:
                    self._rollback(self._conn)
                raise
            else:
                if self._batch_depth == 1 and self._conn is not None:
                    self._commit(self._conn)
            finally:
                self._batch_depth -= 1

    def _commit(self, conn: sqlite3.Connection) -> None:
        if not conn.in_transaction:
            self._txn_undo.clear()
            return
        try:
            conn.commit()
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise _translate(exc, self._path) from exc
        self._txn_undo.clear()

    def _rollback(self, conn: sqlite3.Connection) -> None:
        self._row_cache = None
        undo, self._txn_undo = self._txn_undo, []
        for fn in reversed(undo):
            fn()
        try:
            conn.rollback()
        except sqlite3.Error as exc:
            self.log.warn("rollback of {path} failed: {exc}", path=self._path, exc=exc)

    @contextmanager
    def _operation(self, undo: list[Callable[[], None]]) -> Iterator[sqlite3.Cursor]:
        """One call inside the batch's transaction, in its own savepoint.

        On failure the savepoint is rolled back and ``undo`` runs (memory changes made
        by the call); on success ``undo`` joins the transaction's, for a failed commit.
        """
        conn = self._conn
        if conn is None:
            raise DatabaseClosedError(f"peer database {self._path} is not open")
        try:
            if not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")
            conn.execute("SAVEPOINT p2pnet_op")
        except sqlite3.Error as exc:
            raise _translate(exc, self._path) from exc
        c = conn.cursor()
        try:
            yield c
        except BaseException as exc:
            self._row_cache = None
            for fn in reversed(undo):
                fn()
            try:
                conn.execute("ROLLBACK TO p2pnet_op")
                conn.execute("RELEASE p2pnet_op")
            except sqlite3.Error:
                self._rollback(conn)
            if isinstance(exc, sqlite3.Error):
                raise _translate(exc, self._path) from exc
            if isinstance(exc, OverflowError | TypeError | ValueError):
                # A value sqlite cannot bind (a peer changed behind its validators).
                raise StoreError(f"peer database {self._path}: {exc}") from exc
            raise
        else:
            try:
                conn.execute("RELEASE p2pnet_op")
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise _translate(exc, self._path) from exc
            self._txn_undo.extend(undo)
        finally:
            c.close()

    # -- the work, on whichever thread holds the database --------------------------------

    def _start_db(self) -> None:
        opened = self._conn is None
        if opened:
            self._conn = self._open()
        try:
            with self._operation([]) as c:
                if self.table_exists(c, SQLITE_META_TABLE):
                    self._read_meta(c)
                else:
                    self.create_meta_table(c)
                if not self.table_exists(c, SQLITE_PEERS_TABLE):
                    self.create_peers_table(c)
            self._sync_database(True)
        except BaseException:
            if opened:
                self._close()
            raise
        self.log.info(
            "peer database {path} started: uuid {uuid!r}, {count} peers",
            path=self._path,
            uuid=self._uuid,
            count=len(self.peers),
        )

    def _terminate_db(self) -> None:
        if self._conn is None:
            return
        try:
            self._sync_database(True)
            self._commit(self._conn)
        finally:
            self._close()

    def _read_rows(self, c: sqlite3.Cursor) -> _Rows:
        """The peers table by uuid, read again only when another connection changed it.

        ``PRAGMA data_version`` changes when another connection commits to the file
        (read inside our ``BEGIN IMMEDIATE``, so nobody can commit after it); our own
        writes keep the cache up to date, and a rollback drops it.
        """
        c.execute("PRAGMA data_version")
        version = c.fetchone()[0]
        if self._row_cache is not None and self._cache_version == version:
            return self._row_cache
        rows: _Rows = {}
        # CAST gives TEXT as its UTF-8 bytes, BLOB as is, a number as its text; NULL stays.
        c.execute(
            f"SELECT peer_id, CAST(uuid AS BLOB), host, port FROM {SQLITE_PEERS_TABLE} "
            "ORDER BY peer_id"
        )
        for peer_id, key, host, port in c.fetchall():
            if key is None:
                continue
            found = rows.get(key)
            if found is None:
                rows[key] = [(peer_id, host, port)]
            else:
                found.append((peer_id, host, port))
        self._row_cache, self._cache_version = rows, version
        return rows

    def _sync_database(self, force: bool) -> dict[bytes, Peer] | None:
        now = self._clock.seconds()
        if not force and self.next_peer_db_sync_time > now:
            return None
        undo: list[Callable[[], None]] = []
        with self._operation(undo) as c:
            rows = self._read_rows(c)
            with self.peers_lock:
                doomed = self._taken - self.peers.keys()
                self._taken.clear()
            undo.append(lambda: self._untake(doomed))

            # Rows of taken peers go.
            gone = [row[0] for key in doomed if key in rows for row in rows.pop(key)]
            if gone:
                c.executemany(
                    f"DELETE FROM {SQLITE_PEERS_TABLE} WHERE peer_id = ?",
                    [(peer_id,) for peer_id in gone],
                )

            # Match by uuid: the memory peer wins; unknown rows become INITIAL peers.
            loaded: dict[bytes, Peer] = {}
            skipped: set[bytes] = set()
            with self.peers_lock:
                for key, key_rows in rows.items():
                    if key in self.peers or key in self._taken:
                        continue
                    peer_id, host, port = key_rows[0]
                    try:
                        loaded[key] = Peer(uuid=key, host=host, port=port, db_id=peer_id)
                    except (TypeError, ValueError) as e:
                        # A row another program wrote: skipped (and kept), never loaded.
                        self.log.warn("skipping peer row {peer_id}: {e}", peer_id=peer_id, e=e)
                        skipped.add(key)
                self.peers.update(loaded)
                missing: list[Peer] = []
                stale: list[tuple[Peer, list[tuple[int, Any, Any]]]] = []
                relinked: list[tuple[Peer, int]] = []
                for key, peer in self.peers.items():
                    if not _writable(peer):
                        skipped.add(key)
                        continue
                    found = rows.get(key)
                    if found is None:
                        missing.append(peer)
                        continue
                    if peer.db_id not in {row[0] for row in found}:
                        # A re-added peer still names a deleted row: point it at its row.
                        relinked.append((peer, found[0][0]))
                    if len(found) == 1:
                        _, host, port = found[0]
                        if host != peer.host or port != peer.port:
                            stale.append((peer, found))
                    elif any((h, pt) != (peer.host, peer.port) for _, h, pt in found):
                        stale.append((peer, found))

            # Memory wins on the address too: rows of a known uuid follow its peer.
            for peer, key_rows in stale:
                host, port = peer.host, peer.port
                c.executemany(
                    f"UPDATE {SQLITE_PEERS_TABLE} SET host = ?, port = ? WHERE peer_id = ?",
                    [(host, port, row[0]) for row in key_rows],
                )
                key_rows[:] = [(row[0], host, port) for row in key_rows]

            # Peers only in memory get a row.
            new_ids: list[tuple[Peer, int]] = []
            for peer in missing:
                host, port = peer.host, peer.port
                c.execute(
                    f"INSERT INTO {SQLITE_PEERS_TABLE}(uuid, host, port) VALUES (?, ?, ?)",
                    (peer.uuid, host, port),
                )
                row_id = c.lastrowid
                assert row_id is not None
                rows[peer.uuid] = [(row_id, host, port)]
                new_ids.append((peer, row_id))
            for peer, row_id in new_ids + relinked:
                undo.append(_db_id_restorer(peer))
                peer.db_id = row_id

        self.next_peer_db_sync_time = self._clock.seconds() + SYNC_DB_INTERVAL
        self.log.debug(
            "synced peers: {loaded} loaded, {saved} saved, {deleted} deleted, {skipped} "
            "skipped, {total} total",
            loaded=len(loaded),
            skipped=len(skipped),
            saved=len(missing),
            deleted=len(gone),
            total=len(self.peers),
        )
        return loaded


def _writable(peer: Peer) -> bool:
    """Whether the peer's address can be written (one bad peer must not fail a sync)."""
    try:
        check_host(None, None, peer.host)
        check_port(None, None, peer.port)
    except (TypeError, ValueError) as e:
        PeerStore.log.warn("not saving peer {uuid!r}: {e}", uuid=peer.uuid, e=e)
        return False
    return True


def _db_id_restorer(peer: Peer) -> Callable[[], None]:
    old = peer.db_id

    def restore() -> None:
        peer.db_id = old

    return restore

