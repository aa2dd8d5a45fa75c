"""kill -9 and a second process: LevelDB stores keep what they acknowledged, locks hold.

Each test runs a child Python (``sys.executable -c SCRIPT``) with the project root on
``PYTHONPATH``.  A writer child prints ``ack <n>`` once record ``n``'s write has
returned (blocking API) or its Deferred has fired (Deferred API); the parent reads acks,
sends SIGKILL while the child is still writing, reopens the database and checks that
every acknowledged record is there.
"""

from __future__ import annotations

import hashlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from typing import IO

import plyvel
from twisted.trial import unittest

from p2pnet.dht.kvptable import LevelDBKVPTable
from p2pnet.store.appointments import AppointmentsDBM
from p2pnet.store.errors import DatabaseLockedError
from p2pnet.store.leveldb import DBManager
from p2pnet.store.pool import StoreExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 60.0
#: Acks to read before the kill; the child goes on writing up to LIMIT.
KILL_AFTER = 400
LIMIT = 1_000_000

APPOINTMENTS_BLOCKING = """
import sys
from p2pnet.store.appointments import AppointmentsDBM
db = AppointmentsDBM(sys.argv[1])
print("ready", flush=True)
for i in range(int(sys.argv[2])):
    u = f"{i:08d}"
    assert db.store_watcher_appointment(u, {"i": i, "blob": "ab" * 50})
    assert db.create_append_locator_map("loc%d" % (i % 10), u)
    if i % 3 == 0:
        db.batch_create_triggered_appointment_flag([u])
    db.store_last_block_hash_watcher("h%d" % i)
    sys.stdout.write("ack %d\\n" % i)
    sys.stdout.flush()
"""

APPOINTMENTS_DEFERRED = """
import sys
from twisted.internet import defer, task
from p2pnet.store.appointments import AppointmentsDBM

def main(reactor):
    db = AppointmentsDBM(sys.argv[1], reactor=reactor)
    db.start()
    limit = int(sys.argv[2])
    state = {"next": 0}

    def issue():
        i = state["next"]
        state["next"] += 1
        db.d_store_watcher_appointment("%08d" % i, {"i": i}).addCallback(ack, i)

    def ack(ok, i):
        assert ok
        sys.stdout.write("ack %d\\n" % i)
        sys.stdout.flush()
        if state["next"] < limit:
            issue()

    print("ready", flush=True)
    for _ in range(100):
        issue()
    return defer.Deferred()

task.react(main)
"""

KVPTABLE_DEFERRED = """
import hashlib, sys
from twisted.internet import defer, task
from p2pnet.dht.table import KVPRecord
from p2pnet.dht.kvptable import LevelDBKVPTable

@defer.inlineCallbacks
def main(reactor):
    table = yield LevelDBKVPTable.open(sys.argv[1], reactor=reactor)
    limit = int(sys.argv[2])
    state = {"next": 0}

    def issue():
        i = state["next"]
        state["next"] += 1
        value = b"value %d " % i * (1 + i % 20)
        record = KVPRecord(
            key=hashlib.sha1(b"key%d" % i).digest(),
            index=hashlib.sha1(value).digest(),
            size=len(value),
            timestamp=float(i),
            is_original=i % 2 == 0,
        )
        table.put(record, value).addCallback(ack, i)

    def ack(_, i):
        sys.stdout.write("ack %d\\n" % i)
        sys.stdout.flush()
        if state["next"] < limit:
            issue()

    print("ready", flush=True)
    for _ in range(50):
        issue()
    yield defer.Deferred()

task.react(main)
"""

OPEN_AND_REPORT = """
import sys
from p2pnet.store.leveldb import DBManager
from p2pnet.store.errors import DatabaseLockedError
try:
    db = DBManager(sys.argv[1])
except DatabaseLockedError as e:
    print("locked:", e, flush=True)
else:
    db.close()
    print("opened", flush=True)
"""

HOLD = """
import sys
from p2pnet.store.leveldb import DBManager
db = DBManager(sys.argv[1])
db.create_entry("held", "yes")
print("holding", flush=True)
sys.stdin.read()
db.close()
"""


def kvp_value(i: int) -> bytes:
    return b"value %d " % i * (1 + i % 20)


class Child:
    """A child Python process running ``script``; stdout read line by line, with a deadline."""

    def __init__(self, test: unittest.SynchronousTestCase, script: str, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._buffer = b""
        self._lines: list[str] = []
        self._test = test
        test.addCleanup(self.cleanup)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self._stderr.close()

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def read_lines(self, count: int) -> list[str]:
        """The next ``count`` complete lines (fails the test on EOF or after TIMEOUT)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + TIMEOUT
        while len(self._lines) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._test.fail(f"child too slow; stderr:\n{self.stderr()}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                self.proc.wait()
                self._test.fail(f"child ended early; stderr:\n{self.stderr()}")
            self._buffer += chunk
            *complete, self._buffer = self._buffer.split(b"\n")
            self._lines.extend(line.decode() for line in complete)
        lines, self._lines = self._lines[:count], self._lines[count:]
        return lines

    def kill_and_drain(self) -> list[str]:
        """SIGKILL the child; every complete line it wrote and nobody has read yet."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        assert self.proc.stdout is not None
        self._buffer += self.proc.stdout.read()
        *complete, _partial = self._buffer.split(b"\n")
        lines = self._lines + [line.decode() for line in complete]
        self._buffer, self._lines = b"", []
        return lines


def acked(lines: list[str]) -> list[int]:
    out = []
    for line in lines:
        word, _, n = line.partition(" ")
        if word != "ack":
            raise AssertionError(f"unexpected line from the child: {line!r}")
        out.append(int(n))
    return out


class KilledWriterTests(unittest.SynchronousTestCase):
    def run_and_kill(self, script: str, path: str) -> list[int]:
        child = Child(self, script, path, str(LIMIT))
        self.assertEqual(child.read_lines(1), ["ready"])
        lines = child.read_lines(KILL_AFTER)
        lines += child.kill_and_drain()
        self.assertEqual(child.proc.returncode, -signal.SIGKILL)
        ids = acked(lines)
        self.assertGreaterEqual(len(ids), KILL_AFTER)
        self.assertLess(max(ids), LIMIT - 1, "the child finished before it was killed")
        return ids

    def test_appointments_blocking_api(self) -> None:
        path = os.path.abspath(self.mktemp())
        ids = self.run_and_kill(APPOINTMENTS_BLOCKING, path)
        self.assertEqual(ids, list(range(len(ids))))  # one at a time, in order
        db = AppointmentsDBM(path)
        self.addCleanup(db.close)
        appointments = db.load_watcher_appointments(include_triggered=True)
        triggered = set(db.load_all_triggered_flags())
        maps = {f"loc{n}": set(db.load_locator_map(f"loc{n}") or []) for n in range(10)}
        for i in ids:
            u = f"{i:08d}"
            self.assertEqual(appointments.get(u), {"i": i, "blob": "ab" * 50})
            self.assertIn(u, maps[f"loc{i % 10}"])
            if i % 3 == 0:
                self.assertIn(u, triggered)
        last = db.load_last_block_hash_watcher()
        assert last is not None
        self.assertGreaterEqual(int(last[1:]), max(ids))

    def test_appointments_deferred_api(self) -> None:
        path = os.path.abspath(self.mktemp())
        ids = self.run_and_kill(APPOINTMENTS_DEFERRED, path)
        self.assertEqual(len(set(ids)), len(ids))
        db = AppointmentsDBM(path)
        self.addCleanup(db.close)
        appointments = db.load_watcher_appointments()
        missing = [i for i in ids if appointments.get(f"{i:08d}") != {"i": i}]
        self.assertEqual(missing, [])

    def test_kvptable(self) -> None:
        path = os.path.abspath(self.mktemp())
        ids = self.run_and_kill(KVPTABLE_DEFERRED, path)
        table = LevelDBKVPTable(DBManager(path, executor=StoreExecutor.inline()), owns_db=True)
        self.addCleanup(table.stop)
        self.assertGreaterEqual(len(table), len(ids))
        for i in ids:
            value = kvp_value(i)
            k, index = hashlib.sha1(b"key%d" % i).digest(), hashlib.sha1(value).digest()
            record = table.get_record(k, index)
            assert record is not None, i
            self.assertEqual((record.size, record.timestamp), (len(value), float(i)))
            self.assertEqual(record.is_original, i % 2 == 0)
            self.assertEqual(self.successResultOf(table.read(k, index)), value)
        # every record held has its value: a put is all or nothing
        for record in table.records():
            self.assertEqual(
                len(self.successResultOf(table.read(record.key, record.index))), record.size
            )


class SecondProcessTests(unittest.SynchronousTestCase):
    def open_in_child(self, path: str) -> str:
        child = Child(self, OPEN_AND_REPORT, path)
        (line,) = child.read_lines(1)
        child.proc.wait()
        return line

    def test_second_process_gets_lock_error(self) -> None:
        path = os.path.abspath(self.mktemp())
        db = DBManager(path)
        self.addCleanup(db.close)
        line = self.open_in_child(path)
        self.assertTrue(line.startswith("locked:"), line)
        self.assertIn(path, line)
        self.assertIn("another process holds it", line)
        db.close()
        self.assertEqual(self.open_in_child(path), "opened")

    def test_refused_second_open_keeps_the_lock(self) -> None:
        """The in-process refusal never touches plyvel, so the process keeps its lock."""
        path = os.path.abspath(self.mktemp())
        db = DBManager(path)
        self.addCleanup(db.close)
        self.assertRaises(DatabaseLockedError, DBManager, path)
        self.assertRaises(DatabaseLockedError, AppointmentsDBM, path)
        self.assertTrue(self.open_in_child(path).startswith("locked:"))

    def test_why_the_registry_exists(self) -> None:
        """A raw second plyvel open in this process drops the lock (the trap it avoids)."""
        path = os.path.abspath(self.mktemp())
        raw = plyvel.DB(path, create_if_missing=True)
        self.addCleanup(raw.close)
        self.assertRaises(plyvel.IOError, plyvel.DB, path)
        self.assertEqual(self.open_in_child(path), "opened")

    def test_parent_locked_out_by_child(self) -> None:
        path = os.path.abspath(self.mktemp())
        child = Child(self, HOLD, path)
        self.assertEqual(child.read_lines(1), ["holding"])
        e = self.assertRaises(DatabaseLockedError, DBManager, path)
        self.assertIn(path, str(e))
        self.assertIn("another process holds it", str(e))
        self.assertEqual(e.path, path)
        # a kill -9 releases the lock; the database opens cleanly with the child's data
        child.kill_and_drain()
        with DBManager(path) as db:
            self.assertEqual(db.load_entry("held"), b"yes")

    def test_child_exits_cleanly_when_told(self) -> None:
        path = os.path.abspath(self.mktemp())
        child = Child(self, HOLD, path)
        self.assertEqual(child.read_lines(1), ["holding"])
        assert child.proc.stdin is not None
        child.proc.stdin.close()
        self.assertEqual(child.proc.wait(TIMEOUT), 0)
        with DBManager(path) as db:
            self.assertEqual(db.load_entry("held"), b"yes")
