"""A hypothesis state machine for the PeerStore merge against a plain dict model."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.store.peer import Peer
from p2pnet.store.peerstore import SQLITE_PEERS_TABLE, PeerStore

UUIDS = st.sampled_from([b"peer-0", b"peer-1", b"peer-2", b"peer-3", b"peer-4"])
HOSTS = st.sampled_from(["10.0.0.1", "10.0.0.2", "example.org"])
PORTS = st.none() | st.integers(min_value=1, max_value=3)

Address = tuple[str | None, int | None]


class PeerStoreMachine(RuleBasedStateMachine):
    """Rules change memory and the table; ``sync`` and ``restart`` check the merge.

    The model is ``{uuid: (host, port)}`` of the peers memory should hold, plus what the
    next sync must apply: external rows inserted since the last sync and uuids taken
    since then (their rows go).
    """

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="peerstore-machine-")
        self.path = os.path.join(self.dir, "peers.db")
        self.clock = task.Clock()
        self.store = self.new_store()
        self.model: dict[bytes, Address] = {}
        self.taken: set[bytes] = set()
        self.taken_objects: list[Peer] = []
        self.pending_rows: list[tuple[bytes, str, int | None]] = []

    def new_store(self) -> PeerStore:
        store = PeerStore(self.path, "local-uuid", self.clock, inline=True)
        store.start_db()
        return store

    def teardown(self) -> None:
        self.store.terminate_db()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- rules ------------------------------------------------------------------------

    @rule(uuid=UUIDS, host=HOSTS, port=PORTS)
    def add_peer(self, uuid: bytes, host: str, port: int | None) -> None:
        self.store.add_peer(Peer(uuid, host, port))
        self.model[uuid] = (host, port)
        self.taken.discard(uuid)

    @rule(data=st.data())
    def add_taken_peer_again(self, data: st.DataObject) -> None:
        """Re-add an object that was taken before (it may carry a stale db_id)."""
        if not self.taken_objects:
            return
        peer = data.draw(st.sampled_from(self.taken_objects))
        self.store.add_peer(peer)
        self.model[peer.uuid] = (peer.host, peer.port)
        self.taken.discard(peer.uuid)

    @rule(uuid=UUIDS)
    def take_peer(self, uuid: bytes) -> None:
        if uuid not in self.model:
            try:
                self.store.take_peer(uuid)
            except KeyError:
                return
            raise AssertionError(f"take_peer({uuid!r}) of an unknown peer did not raise")
        peer = self.store.take_peer(uuid)
        assert peer.uuid == uuid
        del self.model[uuid]
        self.taken.add(uuid)
        self.taken_objects.append(peer)

    @rule(uuid=UUIDS, host=HOSTS, port=PORTS, as_text=st.booleans())
    def external_insert(self, uuid: bytes, host: str, port: int | None, as_text: bool) -> None:
        conn = sqlite3.connect(self.path)
        try:
            conn.execute(
                f"INSERT INTO {SQLITE_PEERS_TABLE}(uuid, host, port) VALUES (?, ?, ?)",
                (uuid.decode() if as_text else uuid, host, port),
            )
            conn.commit()
        finally:
            conn.close()
        self.pending_rows.append((uuid, host, port))

    @rule()
    def sync(self) -> None:
        expected = self.apply_sync_to_model()
        loaded = self.store.sync_database(force=True)
        assert loaded is not None
        assert {k: (p.host, p.port) for k, p in loaded.items()} == expected, (loaded, expected)
        self.check()

    @rule(
        steps=st.lists(
            st.one_of(
                st.tuples(st.just("add"), UUIDS, HOSTS, PORTS),
                st.tuples(st.just("take"), UUIDS),
                st.just(("sync",)),
            ),
            max_size=8,
        )
    )
    def syncs_in_one_transaction(self, steps: list[tuple[object, ...]]) -> None:
        """Several syncs sharing one transaction (as coalesced Deferred calls do)."""
        with self.store.transaction():
            for step in steps:
                if step[0] == "add":
                    self.add_peer(*step[1:])  # type: ignore[arg-type]
                elif step[0] == "take":
                    self.take_peer(*step[1:])  # type: ignore[arg-type]
                else:
                    expected = self.apply_sync_to_model()
                    loaded = self.store.sync_database(force=True)
                    assert loaded is not None
                    assert {k: (p.host, p.port) for k, p in loaded.items()} == expected
                    memory = {k: (p.host, p.port) for k, p in self.store.peers.items()}
                    assert memory == self.model, (memory, self.model)
        self.sync()

    @rule()
    def restart(self) -> None:
        self.apply_sync_to_model()
        self.store.terminate_db()
        self.store = self.new_store()
        self.check()

    # -- model ------------------------------------------------------------------------

    def apply_sync_to_model(self) -> dict[bytes, Address]:
        """What a sync does to the model; returns the peers it should load."""
        loaded: dict[bytes, Address] = {}
        for uuid, host, port in self.pending_rows:
            if uuid in self.model or uuid in self.taken:
                continue  # memory wins / the taken peer's rows are deleted
            self.model[uuid] = loaded[uuid] = (host, port)
        self.pending_rows.clear()
        self.taken.clear()
        return loaded

    def check(self) -> None:
        """After a sync: memory peers == rows == model."""
        memory = {k: (p.host, p.port) for k, p in self.store.peers.items()}
        assert all(k == p.uuid for k, p in self.store.peers.items())
        assert memory == self.model, (memory, self.model)
        conn = sqlite3.connect(self.path)
        try:
            rows = conn.execute(
                f"SELECT peer_id, uuid, host, port FROM {SQLITE_PEERS_TABLE}"
            ).fetchall()
        finally:
            conn.close()
        by_uuid: dict[bytes, set[Address]] = {}
        ids: dict[bytes, set[int]] = {}
        for peer_id, raw, host, port in rows:
            key = raw.encode() if isinstance(raw, str) else raw
            by_uuid.setdefault(key, set()).add((host, port))
            ids.setdefault(key, set()).add(peer_id)
        assert by_uuid == {k: {v} for k, v in self.model.items()}, (by_uuid, self.model)
        for key, peer in self.store.peers.items():
            assert peer.db_id is None or peer.db_id in ids[key], (peer, ids[key])


class PeerStoreMachineTests(SynchronousTestCase):
    def test_merge_against_model(self) -> None:
        run_state_machine_as_test(
            PeerStoreMachine,
            settings=settings(max_examples=60, stateful_step_count=30),
        )
