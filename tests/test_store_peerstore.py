"""Tests for :mod:`p2pnet.store.peerstore` and :mod:`p2pnet.store.peer` (seed 000, SEMANTICS §1)."""

from __future__ import annotations

import os
import random
import sqlite3
import threading

from twisted.application import service
from twisted.internet import defer, task
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from p2pnet.store import peer as peer_module
from p2pnet.store.errors import (
    DatabaseClosedError,
    DatabaseCorruptError,
    DatabaseLockedError,
    StoreError,
)
from p2pnet.store.peer import Peer, PeerState, state_name
from p2pnet.store.peerstore import (
    SQLITE_META_TABLE,
    SQLITE_PEERS_TABLE,
    SYNC_DB_INTERVAL,
    PeerStore,
)
from p2pnet.store.pool import ExecutorStopped

START = 1_700_000_000.25


def garbage(size: int) -> bytes:
    """Random bytes, the same every run."""
    return random.Random(size).randbytes(size)


def rows_of(path: str) -> list[tuple[object, ...]]:
    """Every peers row, read by another connection: (peer_id, uuid, typeof, host, port)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            f"SELECT peer_id, uuid, typeof(uuid), host, port FROM {SQLITE_PEERS_TABLE} "
            "ORDER BY peer_id"
        ).fetchall()
    finally:
        conn.close()


def external_insert(path: str, *rows: tuple[object, object, object]) -> list[int]:
    """Insert peers rows from another connection (another program); their peer_ids."""
    conn = sqlite3.connect(path)
    try:
        ids = []
        for row in rows:
            cur = conn.execute(
                f"INSERT INTO {SQLITE_PEERS_TABLE}(uuid, host, port) VALUES (?, ?, ?)", row
            )
            assert cur.lastrowid is not None
            ids.append(cur.lastrowid)
        conn.commit()
        return ids
    finally:
        conn.close()


class StoreTestMixin:
    """Stores on a temporary file with a ``task.Clock`` and the inline executor."""

    clock: task.Clock

    def db_path(self) -> str:
        return os.path.join(self.mktemp() + "-dir", "peers.db")  # type: ignore[attr-defined]

    def make_store(self, path: str | None, app_uuid: object = None, **kw: object) -> PeerStore:
        if path is not None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        if not hasattr(self, "clock"):
            self.clock = task.Clock()
            self.clock.advance(START)
        store = PeerStore(path, app_uuid, self.clock, inline=True, **kw)  # type: ignore[arg-type]
        self.addCleanup(store.terminate_db)  # type: ignore[attr-defined]
        return store


class PeerTests(SynchronousTestCase):
    def test_address(self) -> None:
        self.assertEqual(Peer(b"abcd", "10.0.0.1", 5555).address, "tcp://10.0.0.1:5555")
        self.assertEqual(Peer(b"abcd", "10.0.0.1").address, "10.0.0.1")
        self.assertEqual(Peer(b"abcd", "ipc:///tmp/x", None).address, "ipc:///tmp/x")

    def test_defaults(self) -> None:
        p = Peer(b"abcd")
        self.assertIsNone(p.host)
        self.assertIsNone(p.port)
        self.assertIsNone(p.db_id)
        self.assertEqual(p.conn_state, PeerState.INITIAL)
        self.assertTrue(p.state_initial)
        self.assertEqual(p.state, "INITIAL")

    def test_uuid_str_is_utf8_bytes(self) -> None:
        self.assertEqual(Peer("pé-1").uuid, "pé-1".encode())
        self.assertEqual(Peer(bytearray(b"abcd")).uuid, b"abcd")
        self.assertRaises(TypeError, Peer, 1234)

    def test_state_numbers(self) -> None:
        self.assertEqual(
            [int(s) for s in PeerState], [1, 2, 3, 4, -1, -2]
        )
        self.assertEqual(peer_module.INITIAL, 1)
        self.assertEqual(peer_module.CONNECTING, 2)
        self.assertEqual(peer_module.CONNECTED, 3)
        self.assertEqual(peer_module.ROUTED, 4)
        self.assertEqual(peer_module.UNREACHABLE, -1)
        self.assertEqual(peer_module.NO_CONNECTION, -2)

    def test_state_names_for_all_six(self) -> None:
        self.assertEqual(
            {v: state_name(v) for v in (1, 2, 3, 4, -1, -2)},
            {
                1: "INITIAL",
                2: "CONNECTING",
                3: "CONNECTED",
                4: "ROUTED",
                -1: "UNREACHABLE",
                -2: "NO_CONNECTION",
            },
        )
        self.assertRaises(ValueError, state_name, 0)
        self.assertRaises(ValueError, state_name, 5)

    def test_state_predicates_and_setter_conversion(self) -> None:
        p = Peer(b"abcd")
        checks = {
            PeerState.INITIAL: "state_initial",
            PeerState.CONNECTING: "state_connecting",
            PeerState.CONNECTED: "state_connected",
            PeerState.ROUTED: "state_routed",
            PeerState.UNREACHABLE: "state_unreachable",
            PeerState.NO_CONNECTION: "state_no_connection",
        }
        for state, attr in checks.items():
            p.conn_state = int(state)  # type: ignore[assignment]
            self.assertIs(p.conn_state, state)
            self.assertEqual(p.state, state.name)
            self.assertEqual([a for a in checks.values() if getattr(p, a)], [attr])
        with self.assertRaises(ValueError):
            p.conn_state = 7  # type: ignore[assignment]

    def test_mutable_identity(self) -> None:
        a, b = Peer(b"abcd"), Peer(b"abcd")
        a.db_id = 3
        self.assertEqual(a.db_id, 3)
        self.assertNotEqual(a, b)
        self.assertEqual(len({a, b}), 2)


class UuidTests(StoreTestMixin, SynchronousTestCase):
    def test_conversions(self) -> None:
        store = self.make_store(None)
        self.assertIsNone(store.uuid)
        store.uuid = "abcd"
        self.assertEqual(store.uuid, b"abcd")
        store.uuid = "žluť"
        self.assertEqual(store.uuid, "žluť".encode())
        store.uuid = b"\x00\x01\x02\x03"
        self.assertEqual(store.uuid, b"\x00\x01\x02\x03")
        store.uuid = 12345
        self.assertEqual(store.uuid, b"12345")

    def test_bad_types(self) -> None:
        store = self.make_store(None)
        for bad in (1.5, None, ["abcd"], object(), bytearray(b"abcdef")):
            with self.assertRaises(ValueError) as cm:
                store.uuid = bad
            self.assertEqual(str(cm.exception), "uuid needs to be a string")

    def test_too_short(self) -> None:
        store = self.make_store(None)
        for short in ("", "abc", b"xyz", 123, -12):
            self.assertRaises(ValueError, setattr, store, "uuid", short)
        store.uuid = "abcd"  # four is enough
        store.uuid = -123
        self.assertEqual(store.uuid, b"-123")

    def test_constructor_same_rules(self) -> None:
        self.assertEqual(self.make_store(None, "abcd").uuid, b"abcd")
        self.assertEqual(self.make_store(None, 1234).uuid, b"1234")
        self.assertEqual(self.make_store(None, b"wxyz").uuid, b"wxyz")
        self.assertRaises(ValueError, self.make_store, None, "abc")
        self.assertRaises(ValueError, self.make_store, None, 12)
        with self.assertRaises(ValueError) as cm:
            self.make_store(None, 1.25)
        self.assertEqual(str(cm.exception), "uuid needs to be a string")

    def test_fresh_uuid4_hex_at_start(self) -> None:
        store = self.make_store(self.db_path())
        store.start_db()
        assert store.uuid is not None
        self.assertEqual(len(store.uuid), 32)
        int(store.uuid, 16)


class SchemaTests(StoreTestMixin, SynchronousTestCase):
    def test_tables_exact(self) -> None:
        path = self.db_path()
        store = self.make_store(path, "local-1")
        store.start_db()
        conn = sqlite3.connect(path)
        self.addCleanup(conn.close)
        tables = {
            name: [tuple(col) for col in conn.execute(f"PRAGMA table_info({name})")]
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        self.assertEqual(
            tables,
            {
                SQLITE_META_TABLE: [
                    (0, "id", "INTEGER", 0, None, 1),
                    (1, "key", "TEXT", 0, None, 0),
                    (2, "value", "TEXT", 0, None, 0),
                    (3, "description", "TEXT", 0, None, 0),
                ],
                SQLITE_PEERS_TABLE: [
                    (0, "peer_id", "INTEGER", 0, None, 1),
                    (1, "uuid", "TEXT", 0, None, 0),
                    (2, "host", "TEXT", 0, None, 0),
                    (3, "port", "INTEGER", 0, None, 0),
                ],
            },
        )
        # key is UNIQUE; the peers table has no other constraint, no index, no trigger.
        meta_indexes = [(row[2], row[3]) for row in conn.execute(
            f"PRAGMA index_list({SQLITE_META_TABLE})")]
        self.assertEqual(meta_indexes, [(1, "u")])
        self.assertEqual(list(conn.execute(f"PRAGMA index_list({SQLITE_PEERS_TABLE})")), [])
        self.assertEqual(
            sorted(conn.execute("SELECT type, name FROM sqlite_master")),
            [
                ("index", f"sqlite_autoindex_{SQLITE_META_TABLE}_1"),
                ("table", SQLITE_META_TABLE),
                ("table", SQLITE_PEERS_TABLE),
            ],
        )

    def test_meta_rows_in_order(self) -> None:
        path = self.db_path()
        store = self.make_store(path, "local-1")
        store.start_db()
        conn = sqlite3.connect(path)
        self.addCleanup(conn.close)
        rows = conn.execute(f"SELECT id, key, value, description FROM {SQLITE_META_TABLE}")
        self.assertEqual(
            list(rows),
            [
                (1, "uuid", b"local-1", "the unique identification of this instance"),
                (2, "db_created", repr(START), "the time when the metadata was inserted"),
            ],
        )
        self.assertEqual(store.db_created, START)
        self.assertIsInstance(store.db_created, float)

    def test_table_exists_and_create_helpers(self) -> None:
        store = self.make_store(None, "local-1")
        conn = sqlite3.connect(":memory:")
        self.addCleanup(conn.close)
        c = conn.cursor()
        self.assertFalse(store.table_exists(c, SQLITE_PEERS_TABLE))
        store.create_peers_table(c)
        self.assertTrue(store.table_exists(c, SQLITE_PEERS_TABLE))
        self.assertFalse(store.table_exists(c, SQLITE_META_TABLE))
        store.create_meta_table(c)
        self.assertTrue(store.table_exists(c, SQLITE_META_TABLE))
        self.assertEqual(
            [r[0] for r in c.execute(f"SELECT key FROM {SQLITE_META_TABLE} ORDER BY id")],
            ["uuid", "db_created"],
        )
        self.assertEqual(store.uuid, b"local-1")
        self.assertEqual(store.db_created, START)

    def test_create_meta_table_allocates_uuid(self) -> None:
        store = self.make_store(None)
        conn = sqlite3.connect(":memory:")
        self.addCleanup(conn.close)
        store.create_meta_table(conn.cursor())
        assert store.uuid is not None
        self.assertEqual(len(store.uuid), 32)


class MetaTests(StoreTestMixin, SynchronousTestCase):
    def test_restart_reads_uuid_and_float_db_created(self) -> None:
        path = self.db_path()
        first = self.make_store(path)
        first.start_db()
        uuid, created = first.uuid, first.db_created
        first.terminate_db()
        self.clock.advance(500)
        second = self.make_store(path)
        second.start_db()
        self.assertEqual(second.uuid, uuid)
        self.assertIsInstance(second.db_created, float)
        self.assertEqual(second.db_created, created)

    def test_database_uuid_wins_over_app_uuid(self) -> None:
        path = self.db_path()
        first = self.make_store(path, "first-uuid")
        first.start_db()
        first.terminate_db()
        second = self.make_store(path, "other-uuid")
        second.start_db()
        self.assertEqual(second.uuid, b"first-uuid")

    def test_every_meta_row_becomes_attribute(self) -> None:
        path = self.db_path()
        first = self.make_store(path, "local-1")
        first.start_db()
        first.terminate_db()
        conn = sqlite3.connect(path)
        conn.execute(
            f"INSERT INTO {SQLITE_META_TABLE}(key, value, description) "
            "VALUES ('colour', 'red', 'a colour')"
        )
        conn.commit()
        conn.close()
        second = self.make_store(path)
        second.start_db()
        self.assertEqual(second.colour, "red")  # type: ignore[attr-defined]
        self.assertEqual(second.meta["colour"], "red")
        self.assertEqual(second.uuid, b"local-1")
        # Meta is read once, at start_db: a later row is not picked up by a sync.
        conn = sqlite3.connect(path)
        conn.execute(f"INSERT INTO {SQLITE_META_TABLE}(key, value) VALUES ('size', 'big')")
        conn.commit()
        conn.close()
        second.sync_database(force=True)
        self.assertFalse(hasattr(second, "size"))

    def test_meta_row_cannot_hide_store_members(self) -> None:
        path = self.db_path()
        first = self.make_store(path, "local-1")
        first.start_db()
        first.terminate_db()
        conn = sqlite3.connect(path)
        conn.executemany(
            f"INSERT INTO {SQLITE_META_TABLE}(key, value) VALUES (?, ?)",
            [("peers", "x"), ("sync_database", "x"), ("_conn", "x"), ("not a name", "x")],
        )
        conn.commit()
        conn.close()
        second = self.make_store(path)
        second.start_db()
        self.assertEqual(second.peers, {})
        self.assertEqual(second.sync_database(force=True), {})
        self.assertNotIn("peers", second.meta)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_p2p0mq_written_database_opens(self) -> None:
        """A database as p2p0mq writes it: uuid BLOB, db_created a REAL turned TEXT."""
        path = self.db_path()
        os.makedirs(os.path.dirname(path))
        conn = sqlite3.connect(path)
        conn.execute(
            "CREATE TABLE p2p0mq_meta (    id INTEGER PRIMARY KEY,    key TEXT UNIQUE,"
            "    value TEXT,    description TEXT)"
        )
        conn.executemany(
            "INSERT INTO p2p0mq_meta(key,value,description)     VALUES(?, ?, ?);",
            [("uuid", b"old-peer-uuid", "u"), ("db_created", 1600000000.5, "d")],
        )
        conn.execute(
            "CREATE TABLE p2p0mq_peers (    peer_id INTEGER PRIMARY KEY,    uuid TEXT,"
            "    host TEXT,    port INTEGER)"
        )
        conn.execute("INSERT INTO p2p0mq_peers(uuid,host,port) VALUES(?, ?, ?)",
                     (b"peer-a", "1.2.3.4", 99))
        conn.commit()
        conn.close()
        store = self.make_store(path)
        store.start_db()
        self.assertEqual(store.uuid, b"old-peer-uuid")
        self.assertEqual(store.db_created, 1600000000.5)
        self.assertEqual(list(store.peers), [b"peer-a"])
        self.assertEqual(store.peers[b"peer-a"].address, "tcp://1.2.3.4:99")


class SyncTests(StoreTestMixin, SynchronousTestCase):
    def started(self, path: str | None = None) -> tuple[PeerStore, str]:
        path = path or self.db_path()
        store = self.make_store(path, "local-1")
        store.start_db()
        return store, path

    def test_memory_peers_inserted_with_lastrowid(self) -> None:
        store, path = self.started()
        a, b = Peer(b"peer-a", "h1", 1), Peer("peer-b", "h2", None)
        store.add_peer(a)
        store.add_peer(b)
        self.assertEqual(store.sync_database(force=True), {})
        self.assertEqual(
            rows_of(path),
            [(a.db_id, b"peer-a", "blob", "h1", 1), (b.db_id, b"peer-b", "blob", "h2", None)],
        )
        self.assertEqual(sorted([a.db_id, b.db_id]), [1, 2])  # type: ignore[type-var]
        store.sync_database(force=True)
        self.assertEqual(len(rows_of(path)), 2)

    def test_external_text_and_blob_rows_load(self) -> None:
        store, path = self.started()
        calls: list[Peer] = []
        store.add_peer = calls.append  # type: ignore[method-assign]
        text_id, blob_id = external_insert(
            path, ("text-peer", "10.0.0.1", 7000), (b"blob-peer", "10.0.0.2", None)
        )
        loaded = store.sync_database(force=True)
        assert loaded is not None
        self.assertEqual(sorted(loaded), [b"blob-peer", b"text-peer"])
        self.assertEqual(calls, [], "add_peer is not called for database peers")
        text_peer = store.peers[b"text-peer"]
        self.assertIs(loaded[b"text-peer"], text_peer)
        self.assertEqual(
            (text_peer.uuid, text_peer.host, text_peer.port, text_peer.db_id),
            (b"text-peer", "10.0.0.1", 7000, text_id),
        )
        self.assertEqual(text_peer.conn_state, PeerState.INITIAL)
        self.assertEqual(store.peers[b"blob-peer"].db_id, blob_id)
        self.assertEqual(store.peers[b"blob-peer"].address, "10.0.0.2")
        # No duplicate insert for either, now or later.
        self.assertEqual(store.sync_database(force=True), {})
        self.assertEqual(len(rows_of(path)), 2)

    def test_memory_object_wins(self) -> None:
        store, path = self.started()
        mine = Peer(b"same", "mine", 1)
        store.add_peer(mine)
        store.sync_database(force=True)
        (row_id,) = external_insert(path, ("same", "theirs", 2))
        self.assertEqual(store.sync_database(force=True), {})
        self.assertIs(store.peers[b"same"], mine)
        self.assertEqual((mine.host, mine.port, mine.db_id), ("mine", 1, 1))
        # Rows of a known uuid follow the memory peer's address.
        self.assertEqual(
            rows_of(path), [(1, b"same", "blob", "mine", 1), (row_id, "same", "text", "mine", 1)]
        )

    def test_row_deleted_by_another_program_comes_back(self) -> None:
        store, path = self.started()
        p = Peer(b"sticky", "h", 1)
        store.add_peer(p)
        store.sync_database(force=True)
        conn = sqlite3.connect(path)
        conn.execute(f"DELETE FROM {SQLITE_PEERS_TABLE}")
        conn.commit()
        conn.close()
        self.assertEqual(store.sync_database(force=True), {})
        self.assertEqual(rows_of(path), [(p.db_id, b"sticky", "blob", "h", 1)])

    def test_address_change_is_saved(self) -> None:
        store, path = self.started()
        p = Peer(b"mover", "old", 1)
        store.add_peer(p)
        store.sync_database(force=True)
        p.host, p.port = "new", 2
        store.sync_database(force=True)
        self.assertEqual(rows_of(path), [(1, b"mover", "blob", "new", 2)])

    def test_rows_without_uuid_are_skipped(self) -> None:
        store, path = self.started()
        external_insert(path, (None, "nowhere", 1), (1234, "numbered", 2))
        loaded = store.sync_database(force=True)
        assert loaded is not None
        self.assertEqual(list(loaded), [b"1234"])

    def test_take_peer_deletes_row_at_next_sync(self) -> None:
        store, path = self.started()
        for name in (b"p-1", b"p-2", b"p-3"):
            store.add_peer(Peer(name, "h", 1))
        store.sync_database(force=True)
        external_insert(path, ("p-2", "dup", 5))
        taken = store.take_peer(b"p-2")
        self.assertEqual(taken.uuid, b"p-2")
        self.assertNotIn(b"p-2", store.peers)
        self.assertEqual(len(rows_of(path)), 4, "the row goes at the next sync, not before")
        self.assertEqual(store.sync_database(force=True), {})
        self.assertEqual([r[1] for r in rows_of(path)], [b"p-1", b"p-3"])
        self.assertNotIn(b"p-2", store.peers, "a taken peer does not come back")
        self.clock.advance(SYNC_DB_INTERVAL)
        store.sync_database()
        self.assertNotIn(b"p-2", store.peers)

    def test_take_peer_argument_forms(self) -> None:
        store, _ = self.started()
        a, b, c = Peer(b"by-peer"), Peer(b"by-bytes"), Peer(b"by-str")
        for p in (a, b, c):
            store.add_peer(p)
        self.assertIs(store.take_peer(Peer(b"by-peer")), a)
        self.assertIs(store.take_peer(b"by-bytes"), b)
        self.assertIs(store.take_peer("by-str"), c)
        self.assertRaises(KeyError, store.take_peer, b"by-peer")
        self.assertRaises(KeyError, store.take_peer, "never-there")
        self.assertEqual(store.peers, {})

    def test_take_then_add_again_keeps_row(self) -> None:
        store, path = self.started()
        store.add_peer(Peer(b"back", "h", 1))
        store.sync_database(force=True)
        store.take_peer(b"back")
        again = Peer(b"back", "h", 1)
        store.add_peer(again)
        store.sync_database(force=True)
        self.assertEqual([r[:2] for r in rows_of(path)], [(1, b"back")])
        self.assertIs(store.peers[b"back"], again)

    def test_add_peer_overwrites(self) -> None:
        store, _ = self.started()
        first, second = Peer(b"peer"), Peer(b"peer")
        store.add_peer(first)
        store.add_peer(second)
        self.assertEqual(store.peers, {b"peer": second})

    def test_sync_timing(self) -> None:
        store = self.make_store(self.db_path(), "local-1")
        # The first sync is due at once.
        self.assertEqual(store.next_peer_db_sync_time, START - SYNC_DB_INTERVAL)
        store.start_db()
        self.assertEqual(store.next_peer_db_sync_time, START + SYNC_DB_INTERVAL)
        store.add_peer(Peer(b"later", "h", 1))
        self.clock.advance(SYNC_DB_INTERVAL - 0.5)
        self.assertIsNone(store.sync_database())
        self.assertIsNone(store.peers[b"later"].db_id)
        self.clock.advance(0.5)
        self.assertEqual(store.sync_database(), {})
        self.assertEqual(store.peers[b"later"].db_id, 1)
        self.assertEqual(store.next_peer_db_sync_time, START + 2 * SYNC_DB_INTERVAL)
        # force ignores the schedule and moves it.
        self.clock.advance(1)
        self.assertEqual(store.sync_database(force=True), {})
        self.assertEqual(store.next_peer_db_sync_time, START + 1 + 2 * SYNC_DB_INTERVAL)

    def test_sync_is_one_transaction(self) -> None:
        """A sync that fails half way leaves the table, the db_ids and the takes as they were."""
        store, path = self.started()
        store.add_peer(Peer(b"keep", "h", 1))
        store.add_peer(Peer(b"gone", "h", 1))
        store.sync_database(force=True)
        conn = sqlite3.connect(path)
        conn.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON {SQLITE_PEERS_TABLE} "
            "WHEN NEW.uuid = X'626164' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        conn.commit()
        store.take_peer(b"gone")
        ok = Peer(b"fine", "h", 1)
        store.add_peer(ok)
        store.add_peer(Peer(b"bad", "h", 1))
        before = rows_of(path)
        self.assertRaises(StoreError, store.sync_database, True)
        self.assertEqual(rows_of(path), before)
        self.assertIsNone(ok.db_id)
        conn.execute("DROP TRIGGER refuse")
        conn.commit()
        conn.close()
        store.sync_database(force=True)
        self.assertEqual(sorted(r[1] for r in rows_of(path)), [b"bad", b"fine", b"keep"])
        self.assertIsNotNone(ok.db_id)

    def test_state_lists(self) -> None:
        store, _ = self.started()
        peers = {
            state: Peer(f"peer-{state.name}".encode(), conn_state=state) for state in PeerState
        }
        for p in peers.values():
            store.add_peer(p)
        self.assertEqual(store.peers_in_initial_state, [peers[PeerState.INITIAL]])
        self.assertEqual(store.peers_connected, [peers[PeerState.CONNECTED]])
        self.assertEqual(store.peers_routed, [peers[PeerState.ROUTED]])
        self.assertEqual(store.peers_unreachable, [peers[PeerState.UNREACHABLE]])
        listed = store.peers_connected
        listed.clear()
        self.assertEqual(store.peers_connected, [peers[PeerState.CONNECTED]], "a new list")

    def test_state_lists_take_the_lock(self) -> None:
        store, _ = self.started()
        store.add_peer(Peer(b"peer"))
        got: list[list[Peer]] = []
        with store.peers_lock:
            t = threading.Thread(target=lambda: got.append(store.peers_in_initial_state))
            t.start()
            t.join(0.05)
            self.assertTrue(t.is_alive(), "the property waits for peers_lock")
        t.join()
        self.assertEqual(len(got[0]), 1)

    def test_in_memory_database(self) -> None:
        store = self.make_store(None, "local-1")
        store.start_db()
        store.add_peer(Peer(b"mem", "h", 1))
        store.sync_database(force=True)
        self.assertEqual(store.peers[b"mem"].db_id, 1)
        self.assertEqual(store.db_created, START)
        other = self.make_store(None, "local-2")
        other.start_db()
        self.assertEqual(other.peers, {})
        store.terminate_db()
        self.assertFalse(os.path.exists(":memory:"))

    def test_start_then_peers_loaded_at_start(self) -> None:
        path = self.db_path()
        first = self.make_store(path, "local-1")
        first.start_db()
        first.add_peer(Peer(b"saved-at-terminate", "h", 1))
        first.terminate_db()
        second = self.make_store(path)
        second.start_db()
        self.assertEqual(list(second.peers), [b"saved-at-terminate"])
        self.assertEqual(second.peers[b"saved-at-terminate"].db_id, 1)


class LifecycleTests(StoreTestMixin, SynchronousTestCase):
    def test_terminate_twice(self) -> None:
        store = self.make_store(self.db_path(), "local-1")
        store.start_db()
        store.terminate_db()
        store.terminate_db()

    def test_terminate_without_start(self) -> None:
        self.make_store(self.db_path(), "local-1").terminate_db()

    def test_use_after_terminate(self) -> None:
        store = self.make_store(self.db_path(), "local-1")
        store.start_db()
        store.terminate_db()
        self.assertRaises(DatabaseClosedError, store.sync_database, True)
        self.assertIsNone(store.sync_database(), "not due: nothing to do, no error")

    def test_start_again_after_terminate(self) -> None:
        path = self.db_path()
        store = self.make_store(path, "local-1")
        store.start_db()
        store.add_peer(Peer(b"p1"))
        store.terminate_db()
        store.start_db()
        self.assertEqual(list(store.peers), [b"p1"])
        self.assertEqual(len(rows_of(path)), 1)

    def test_corrupt_file(self) -> None:
        path = self.db_path()
        os.makedirs(os.path.dirname(path))
        FilePath(path).setContent(garbage(4096))
        store = self.make_store(path)
        with self.assertRaises(DatabaseCorruptError) as cm:
            store.start_db()
        self.assertEqual(cm.exception.path, path)
        self.assertIsInstance(cm.exception.__cause__, sqlite3.DatabaseError)
        store.terminate_db()
        store.terminate_db()
        self.assertRaises(DatabaseClosedError, store.sync_database, True)

    def test_damaged_page(self) -> None:
        """A real database whose table pages were overwritten reads as corrupt."""
        path = self.db_path()
        store = self.make_store(path, "local-1")
        store.start_db()
        for i in range(300):
            store.add_peer(Peer(f"peer-{i:04d}".encode(), "host" * 10, i))
        store.terminate_db()
        with open(path, "r+b") as f:
            f.seek(4096)
            f.write(garbage(8192))
        store = self.make_store(path)
        self.assertRaises(DatabaseCorruptError, store.start_db)

    def test_unopenable_path(self) -> None:
        path = os.path.join(self.mktemp(), "missing-dir", "peers.db")
        store = PeerStore(path, "local-1", task.Clock(), inline=True)
        self.assertRaises(StoreError, store.start_db)
        store.terminate_db()

    def test_locked_database(self) -> None:
        path = self.db_path()
        store = self.make_store(path, "local-1")
        store.start_db()
        store.terminate_db()
        holder = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN EXCLUSIVE")
        locked = self.make_store(path, lock_timeout=0.05)
        with self.assertRaises(DatabaseLockedError) as cm:
            locked.start_db()
        self.assertEqual(cm.exception.path, path)
        locked.terminate_db()
        holder.execute("ROLLBACK")
        locked.start_db()
        self.assertEqual(locked.uuid, b"local-1")

    def test_locked_during_sync(self) -> None:
        path = self.db_path()
        store = self.make_store(path, "local-1", lock_timeout=0.05)
        store.start_db()
        p = Peer(b"waiting", "h", 1)
        store.add_peer(p)
        holder = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN EXCLUSIVE")
        self.assertRaises(DatabaseLockedError, store.sync_database, True)
        self.assertIsNone(p.db_id)
        holder.execute("ROLLBACK")
        store.sync_database(force=True)
        self.assertEqual(p.db_id, 1)


class DeferredApiInlineTests(StoreTestMixin, SynchronousTestCase):
    def test_twins(self) -> None:
        path = self.db_path()
        store = self.make_store(path, "local-1")
        self.successResultOf(store.d_start_db())
        store.add_peer(Peer(b"p1", "h", 1))
        external_insert(path, ("p2", "h", 2))
        loaded = self.successResultOf(store.d_sync_database(force=True))
        assert loaded is not None
        self.assertEqual(list(loaded), [b"p2"])
        self.assertIsNone(self.successResultOf(store.d_sync_database()))
        self.successResultOf(store.d_terminate_db())
        self.failureResultOf(store.d_sync_database(True), DatabaseClosedError)

    def test_typed_error_through_deferred(self) -> None:
        path = self.db_path()
        os.makedirs(os.path.dirname(path))
        FilePath(path).setContent(b"\x00garbage" * 600)
        store = self.make_store(path)
        self.failureResultOf(store.d_start_db(), DatabaseCorruptError)

    def test_threaded_twin_before_start(self) -> None:
        store = PeerStore(None, "local-1", reactor=task.Clock())
        self.failureResultOf(store.d_sync_database(True), ExecutorStopped)


class ServiceClockTests(StoreTestMixin, SynchronousTestCase):
    """The service on ``task.Clock`` with the inline executor."""

    def test_is_a_service(self) -> None:
        from zope.interface.verify import verifyObject

        store = self.make_store(None, "local-1")
        self.assertTrue(verifyObject(service.IService, store))

    def test_start_periodic_stop(self) -> None:
        path = self.db_path()
        store = self.make_store(path, "local-1")
        store.startService()
        self.successResultOf(store.when_ready())
        self.assertTrue(store.running)
        self.assertEqual(store.uuid, b"local-1")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        store.add_peer(Peer(b"p1", "h", 1))
        external_insert(path, ("ext", "h", 2))
        self.clock.advance(SYNC_DB_INTERVAL - 1)
        self.assertEqual([r[1] for r in rows_of(path)], ["ext"])
        self.clock.advance(1)
        self.assertEqual(sorted(store.peers), [b"ext", b"p1"])
        self.assertEqual(sorted(str(r[1]) for r in rows_of(path)), ["b'p1'", "ext"])
        store.add_peer(Peer(b"p2", "h", 3))
        self.clock.advance(SYNC_DB_INTERVAL)
        self.assertEqual(len(rows_of(path)), 3)
        store.add_peer(Peer(b"p3", "h", 4))
        self.successResultOf(store.stopService())
        self.assertFalse(store.running)
        self.assertEqual(len(rows_of(path)), 4, "stop makes the last sync")
        self.assertEqual(self.clock.getDelayedCalls(), [], "the timer is stopped")
        self.assertRaises(DatabaseClosedError, store.sync_database, True)

    def test_timer_survives_a_failed_sync(self) -> None:
        path = self.db_path()
        store = self.make_store(path, "local-1", lock_timeout=0.02)
        store.startService()
        store.add_peer(Peer(b"p1", "h", 1))
        holder = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN EXCLUSIVE")
        self.clock.advance(SYNC_DB_INTERVAL)
        self.assertEqual(len(self.flushLoggedErrors(DatabaseLockedError)), 1)
        holder.execute("ROLLBACK")
        self.clock.advance(SYNC_DB_INTERVAL)
        self.assertEqual(store.peers[b"p1"].db_id, 1)
        self.successResultOf(store.stopService())

    def test_failed_start(self) -> None:
        path = self.db_path()
        os.makedirs(os.path.dirname(path))
        FilePath(path).setContent(garbage(4096))
        store = self.make_store(path)
        from twisted.internet.testing import EventLoggingObserver
        from twisted.logger import formatEvent, globalLogPublisher

        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        store.startService()
        self.failureResultOf(store.when_ready(), DatabaseCorruptError)
        # a typed store error is logged as one line, without a traceback
        [event] = [e for e in events if "failed to start" in formatEvent(e)]
        self.assertIn(path, formatEvent(event))
        self.assertNotIn("log_failure", event)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.successResultOf(store.stopService())

    def test_in_a_multiservice(self) -> None:
        path = self.db_path()
        parent = service.MultiService()
        store = self.make_store(path, "local-1")
        store.setServiceParent(parent)
        parent.startService()
        self.successResultOf(store.when_ready())
        store.add_peer(Peer(b"p1", "h", 1))
        self.successResultOf(parent.stopService())
        self.assertEqual([r[1] for r in rows_of(path)], [b"p1"])


class ThreadedTests(StoreTestMixin, TestCase):
    """The Deferred API on the real reactor and the store's own thread."""

    def threaded_store(self, path: str | None) -> PeerStore:
        if path is not None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        store = PeerStore(path, "local-1")
        return store

    @defer.inlineCallbacks
    def test_many_calls_in_flight_coalesce(self):  # type: ignore[no-untyped-def]
        path = self.db_path()
        store = self.threaded_store(path)
        store.start()
        self.addCleanup(store.stop)
        yield store.d_start_db()
        caller = threading.get_ident()
        results = []
        for i in range(200):
            store.add_peer(Peer(f"peer-{i:03d}".encode(), "h", i))
            results.append(store.d_sync_database(force=True))
        # One call that fails on the store's thread keeps its own error.
        bad = store.submit(lambda: 1 / 0)
        threads = store.submit(threading.get_ident)
        done = yield defer.DeferredList(results, consumeErrors=True)
        self.assertTrue(all(ok for ok, _ in done))
        self.assertTrue(all(v == {} for _, v in done))
        yield self.assertFailure(bad, ZeroDivisionError)
        self.assertNotEqual((yield threads), caller)
        hops = store._executor.hops
        self.assertLess(hops, 20, "calls made in one turn share hops")
        self.assertEqual(len(rows_of(path)), 200)
        yield store.d_terminate_db()
        yield store.stop()

    @defer.inlineCallbacks
    def test_service_on_real_reactor(self):  # type: ignore[no-untyped-def]
        path = self.db_path()
        store = self.threaded_store(path)
        before = threading.active_count()
        store.startService()
        yield store.when_ready()
        self.assertEqual(threading.active_count(), before + 1)
        store.add_peer(Peer(b"p1", "h", 1))
        loaded = yield store.d_sync_database(force=True)
        self.assertEqual(loaded, {})
        yield store.stopService()
        self.assertEqual(threading.active_count(), before)
        self.assertEqual([r[1] for r in rows_of(path)], [b"p1"])

    @defer.inlineCallbacks
    def test_locked_error_through_thread(self):  # type: ignore[no-untyped-def]
        path = self.db_path()
        os.makedirs(os.path.dirname(path))
        holder = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("CREATE TABLE other (x)")
        holder.execute("BEGIN EXCLUSIVE")
        store = PeerStore(path, "local-1", lock_timeout=0.05)
        store.start()
        try:
            yield self.assertFailure(store.d_start_db(), DatabaseLockedError)
        finally:
            yield store.d_terminate_db()
            yield store.stop()


class BadPeerTests(StoreTestMixin, SynchronousTestCase):
    """Issue 11 #17: a Peer checks its address; one bad peer never poisons a sync."""

    def test_peer_validates_host_and_port(self) -> None:
        for port in (2**70, -1, 65536):
            self.assertRaises(ValueError, Peer, b"abcd", "h", port)
        for port in ("80", 1.5, True):
            self.assertRaises(TypeError, Peer, b"abcd", "h", port)
        for host in (b"h", 5, ["h"]):
            self.assertRaises(TypeError, Peer, b"abcd", host, 1)
        for host in ("", "a b", "h\x00", "x" * (peer_module.MAX_HOST_LENGTH + 1)):
            self.assertRaises(ValueError, Peer, b"abcd", host, 1)
        Peer(b"abcd", "ipc:///tmp/x", None)
        Peer(b"abcd", "::1", 0)
        Peer(b"abcd", "h", 65535)

    def test_setting_a_bad_address_is_refused(self) -> None:
        p = Peer(b"abcd", "h", 1)
        with self.assertRaises(ValueError):
            p.port = 2**70
        with self.assertRaises(TypeError):
            p.host = 7  # type: ignore[assignment]
        self.assertEqual((p.host, p.port), ("h", 1))

    def test_peer_bad_behind_its_validators_does_not_poison_sync(self) -> None:
        path = self.db_path()
        store = self.make_store(path)
        store.start_db()
        bad = Peer(b"bad-peer", "h", 1)
        object.__setattr__(bad, "port", 2**70)  # past the validators
        store.add_peer(bad)
        store.add_peer(Peer(b"good-1", "h1", 1))
        store.sync_database(force=True)
        store.add_peer(Peer(b"good-2", "h2", 2))
        store.sync_database(force=True)
        store.terminate_db()  # and the last sync works too
        uuids = sorted(row[1] for row in rows_of(path))
        self.assertEqual(uuids, [b"good-1", b"good-2"])

    def test_bad_rows_written_by_another_program_are_skipped(self) -> None:
        path = self.db_path()
        store = self.make_store(path)
        store.start_db()
        store.terminate_db()
        external_insert(path, (b"port-too-big", "h", 2**62), (b"host-blob", b"h", 5),
                        (b"fine", "h", 7))
        again = self.make_store(path)
        again.start_db()
        self.assertEqual(sorted(again.peers), [b"fine"])
        again.add_peer(Peer(b"later", "h", 8))
        again.sync_database(force=True)
        self.assertEqual(len(rows_of(path)), 4)  # the bad rows stay, untouched

    def test_unbindable_value_is_a_store_error(self) -> None:
        from p2pnet.store.errors import StoreError

        path = self.db_path()
        store = self.make_store(path)
        store.start_db()

        def overflow(c: object) -> None:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")

        with store._db_lock, self.assertRaises(StoreError):
            with store._operation([]) as c:
                overflow(c)


class ReadyTests(TestCase):
    """``when_ready`` is a OneShotObserver: one Deferred per caller, reset on restart."""

    def test_each_caller_own_deferred(self) -> None:
        clock = task.Clock()
        store = PeerStore(None, reactor=clock, inline=True)
        a, b = store.when_ready(), store.when_ready()
        self.assertIsNot(a, b)
        self.assertFalse(a.called)
        store.startService()
        self.assertIsNone(self.successResultOf(a))
        self.assertIsNone(self.successResultOf(b))
        self.successResultOf(store.stopService())
        store.startService()
        self.assertIsNone(self.successResultOf(store.when_ready()))
        self.successResultOf(store.stopService())

    def test_stop_without_start(self) -> None:
        store = PeerStore(None, reactor=task.Clock(), inline=True)
        self.successResultOf(store.stopService())
