"""kill -9 of a process writing to a PeerStore: every acknowledged peer survives."""

from __future__ import annotations

import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import time

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.store.peerstore import SQLITE_PEERS_TABLE, PeerStore

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# argv: db path, first peer number, mode ("blocking" or "deferred").  After each sync
# returns it prints "ack N": peers 0 .. N-1 have been acknowledged as stored.
CHILD = r"""
import sys
from p2pnet.store.peer import Peer
from p2pnet.store.peerstore import PeerStore

path, first, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
PER_SYNC = 7


def add(store, n):
    for i in range(n, n + PER_SYNC):
        store.add_peer(Peer(b"peer-%08d" % i, "10.0.%d.%d" % (i // 256 % 256, i % 256), i))
    return n + PER_SYNC


if mode == "blocking":
    store = PeerStore(path, "killed-writer")
    store.start_db()
    print("started", flush=True)
    n = first
    while True:
        n = add(store, n)
        store.sync_database(force=True)
        print("ack %d" % n, flush=True)
else:
    from twisted.internet import defer, task

    @defer.inlineCallbacks
    def main(reactor):
        store = PeerStore(path, "killed-writer", reactor)
        store.start()
        yield store.d_start_db()
        print("started", flush=True)
        n = first
        while True:
            n = add(store, n)
            # a few calls in flight, so hops carry several syncs
            results = [store.d_sync_database(force=True) for _ in range(3)]
            yield defer.gatherResults(results)
            print("ack %d" % n, flush=True)

    task.react(main)
"""


class KilledWriterTests(SynchronousTestCase):
    def run_and_kill(self, path: str, first: int, mode: str, acks_wanted: int) -> int:
        """Start a writer, read ``acks_wanted`` acks, SIGKILL it; the last acked count."""
        env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, path, str(first), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        acked = first
        acks = 0
        buffer = b""
        selector = selectors.DefaultSelector()
        assert child.stdout is not None
        selector.register(child.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        try:
            while acks < acks_wanted:
                if time.monotonic() > deadline:
                    self.fail(f"the writer sent {acks} acks in 60 s")
                if not selector.select(timeout=1):
                    continue
                chunk = os.read(child.stdout.fileno(), 65536)
                if not chunk:
                    assert child.stderr is not None
                    self.fail(f"the writer died: {child.stderr.read().decode()}")
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.startswith(b"ack "):
                        acked = int(line[4:])
                        acks += 1
            os.kill(child.pid, signal.SIGKILL)
            # Acks that were already on their way count too.
            rest, _ = child.communicate(timeout=30)
            for line in (buffer + rest).split(b"\n"):
                if line.startswith(b"ack "):
                    acked = int(line[4:])
        finally:
            selector.close()
            if child.poll() is None:
                child.kill()
                child.wait()
        self.assertEqual(child.returncode, -signal.SIGKILL)
        return acked

    def check_database(self, path: str, acked: list[int]) -> int:
        """Every acked peer is in the database, which opens cleanly; the row count."""
        conn = sqlite3.connect(path)
        try:
            self.assertEqual(conn.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
        finally:
            conn.close()
        store = PeerStore(path, None, task.Clock(), inline=True)
        store.start_db()
        try:
            self.assertEqual(store.uuid, b"killed-writer")
            missing = [i for i in acked if b"peer-%08d" % i not in store.peers]
            self.assertEqual(missing, [], "acknowledged peers are missing")
            peer = store.peers[b"peer-%08d" % acked[-1]]
            self.assertEqual(peer.port, acked[-1])
            conn = sqlite3.connect(path)
            try:
                uuids = [r[0] for r in conn.execute(f"SELECT uuid FROM {SQLITE_PEERS_TABLE}")]
            finally:
                conn.close()
            self.assertEqual(len(uuids), len(set(uuids)), "no peer stored twice")
            self.assertGreaterEqual(len(uuids), len(acked))
            return len(uuids)
        finally:
            store.terminate_db()

    def kill_rounds(self, mode: str) -> None:
        path = os.path.join(self.mktemp() + "-dir", "peers.db")
        os.makedirs(os.path.dirname(path))
        first = 0
        acked: list[int] = []
        for acks_wanted in (3, 11, 25):
            last = self.run_and_kill(path, first, mode, acks_wanted)
            self.assertGreater(last, first)
            acked.extend(range(first, last))
            self.check_database(path, acked)
            # The next writer starts after anything the killed one may have stored.
            first = last + 10_000

    def test_blocking_writer_killed(self) -> None:
        self.kill_rounds("blocking")

    def test_deferred_writer_killed(self) -> None:
        self.kill_rounds("deferred")
