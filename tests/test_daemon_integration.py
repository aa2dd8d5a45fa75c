"""Three ``twistd -n p2pnode`` processes on loopback, driven with the ``p2pnet`` command.

One test walks through what a user does: start three nodes, put through one and get
through another, sync and chord across nodes, a refused second start on a busy data
directory, a refused start on a taken port, a restart without ``--bootstrap`` that
rejoins, and a SIGTERM for every node with no traceback in any log.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.trial import unittest

from p2pnet.cli.main import main as cli_main

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


def free_port_pair() -> int:
    """A port P with UDP P and TCP P + 1 free on 127.0.0.1 (the node's DHT and mesh).

    Drawn below Linux's ephemeral range (32768+), so a port-0 bind elsewhere (another
    trial worker) cannot be handed the same port between this check and the node's start.
    """
    for _ in range(200):
        port = random.randrange(20_000, 32_000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no free port pair")


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def cli(*argv: str, stdin: bytes = b"") -> tuple[int, bytes, str]:
    out, err = io.BytesIO(), io.StringIO()
    status = cli_main(list(argv), stdin=io.BytesIO(stdin), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


class Node:
    def __init__(self, test: DaemonTests, name: str, port: int,
                 bootstrap: int | None = None) -> None:
        self.test = test
        self.dir = os.path.join(test.base, name)
        self.port = port
        self.bootstrap = bootstrap
        self.log = os.path.join(self.dir, "node.log")
        self.proc: subprocess.Popen[bytes] | None = None
        os.makedirs(self.dir, exist_ok=True)

    def args(self) -> list[str]:
        args = ["-n", f"--logfile={self.log}", "p2pnode", "--data-dir", self.dir,
                "--interface", "127.0.0.1", "--port", str(self.port)]
        if self.bootstrap is not None:
            args += ["--bootstrap", f"127.0.0.1:{self.bootstrap}"]
        return args

    def start(self) -> Node:
        self.proc = self.test.spawn(self.args())
        return self

    def status(self) -> dict[str, Any] | None:
        code, out, _ = cli("-d", self.dir, "--json", "--timeout", "5", "status")
        return json.loads(out) if code == 0 else None

    def wait_ready(self) -> dict[str, Any]:
        def ready() -> Any:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.dir} exited: {self.proc.returncode}\n"
                                     + self.read_log())
            s = self.status()
            return s if s and s["ready"] and s["joined"] else None
        status: dict[str, Any] = wait_for(f"{self.dir} ready", ready, START_TIMEOUT)
        return status

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(STOP_TIMEOUT)

    def read_log(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""


class DaemonTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        if not os.access(TWISTD, os.X_OK):
            raise unittest.SkipTest(f"no twistd beside {sys.executable}")
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in [CHECKOUT, os.environ.get("PYTHONPATH")] if p)

    def spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([TWISTD, *args], env=self.env, cwd=self.base,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)

        def reap() -> None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

        self.addCleanup(reap)
        return proc

    def refused_start(self, args: list[str]) -> tuple[int, str]:
        proc = self.spawn(args)
        out, _ = proc.communicate(timeout=START_TIMEOUT)
        return proc.returncode, out.decode("utf-8", "replace")

    def test_three_nodes(self) -> None:
        pa, pb, pc = free_port_pair(), free_port_pair(), free_port_pair()
        a = Node(self, "a", pa).start()
        b = Node(self, "b", pb, bootstrap=pa).start()
        c = Node(self, "c", pc, bootstrap=pa).start()
        for node in (a, b, c):
            node.wait_ready()

        # The pid file and the control file live in the data directory, the latter 0600.
        self.assertTrue(os.path.exists(os.path.join(a.dir, "twistd.pid")))
        self.assertEqual(os.stat(os.path.join(a.dir, "control.json")).st_mode & 0o777, 0o600)

        # put through one node, get through another
        code, out, err = cli("-d", a.dir, "put", "greeting", "-", stdin=b"hello\x00world")
        self.assertEqual(code, 0, err)
        code, out, err = cli("-d", c.dir, "get", "greeting")
        self.assertEqual((code, out, err), (0, b"hello\x00world", ""))
        code, out, err = cli("-d", b.dir, "get", "no-such-key")
        self.assertEqual((code, out), (1, b""))
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn("not found", err)

        # sync and chord across nodes
        self.assertEqual(cli("-d", a.dir, "sync", "set", "colour", "blue")[0], 0)
        wait_for("sync on c", lambda: cli("-d", c.dir, "sync", "get", "colour")[1] == b"blue",
                 10)
        self.assertEqual(cli("-d", b.dir, "chord", "set", "fruit", "apple")[0], 0)
        wait_for("chord on c", lambda: cli("-d", c.dir, "chord", "get", "fruit")[1]
                 == b"apple", 10)
        wait_for("chord keys on a",
                 lambda: cli("-d", a.dir, "chord", "keys")[1] == b"fruit\n", 10)

        # A second node on a's busy data directory: one line naming it and a's pid.
        assert a.proc is not None
        code, out = self.refused_start(Node(self, "a", free_port_pair()).args())
        self.assertNotEqual(code, 0)
        lines = out.strip().splitlines()
        self.assertEqual(len(lines), 1, out)
        self.assertIn(a.dir, lines[0])
        self.assertIn(str(a.proc.pid), lines[0])
        # A taken port: one line naming it.
        code, out = self.refused_start(Node(self, "d", pa).args())
        self.assertNotEqual(code, 0)
        lines = [line for line in out.strip().splitlines() if "p2pnode:" in line]
        self.assertEqual(len(lines), 1, out)
        self.assertIn(f"port {pa}", lines[0])
        self.assertNotIn("Traceback", out)
        self.assertIsNotNone(a.status())  # a still runs

        # c restarts with no --bootstrap and rejoins through the contacts it kept.
        self.assertEqual(c.stop(), -signal.SIGTERM)
        c.bootstrap = None
        c.start()
        status = c.wait_ready()  # "ready and joined": a join through a kept contact
        self.assertGreater(status["routing_table"], 0)
        restarted = c.read_log().split("Server Shut Down")[-1]
        self.assertRegex(restarted, r"rejoining through [12] DHT contacts kept")
        self.assertRegex(restarted, rf"joined the DHT through 127\.0\.0\.1:({pa}|{pb})")
        code, out, _ = cli("-d", c.dir, "get", "greeting")
        self.assertEqual((code, out), (0, b"hello\x00world"))
        # the mesh reconnected to the peers it kept too: a new sync key reaches c
        wait_for("c's mesh peers", lambda: (c.status() or {}).get("peers", {}).get("mesh"), 10)
        self.assertEqual(cli("-d", a.dir, "sync", "set", "after", "restart")[0], 0)
        wait_for("sync after restart",
                 lambda: cli("-d", c.dir, "sync", "get", "after")[1] == b"restart", 10)

        for node in (a, b, c):
            self.assertEqual(node.stop(), -signal.SIGTERM)
        for node in (a, b, c):
            text = node.read_log()
            self.assertIn("Server Shut Down", text)
            self.assertNotIn("Traceback", text)
            self.assertFalse(os.path.exists(os.path.join(node.dir, "control.json")))
            self.assertFalse(os.path.exists(os.path.join(node.dir, "twistd.pid")))
