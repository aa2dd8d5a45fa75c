"""The ``p2pnet`` command, run in process against a real node on loopback.

The command is blocking (urllib), so each run goes to a thread while the test's reactor
serves the node.
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any

from twisted.internet import defer, threads
from twisted.trial import unittest

from p2pnet.cli import cluster
from p2pnet.cli.main import Progress, main
from p2pnet.testing import start_node


def run_cli(*argv: str, stdin: bytes = b"") -> tuple[int, bytes, str]:
    out, err = io.BytesIO(), io.StringIO()
    code = main(list(argv), stdin=io.BytesIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def cli(*argv: str, stdin: bytes = b"") -> defer.Deferred[tuple[int, bytes, str]]:
    return threads.deferToThread(run_cli, *argv, stdin=stdin)


class OfflineTests(unittest.SynchronousTestCase):
    """Errors found before any node is asked: one line, a non-zero status."""

    def assertOneLine(self, err: str) -> None:  # noqa: N802
        self.assertTrue(err.startswith("p2pnet: "), err)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertNotIn("Traceback", err)

    def test_no_command(self) -> None:
        code, out, err = run_cli()
        self.assertEqual((code, out), (2, b""))
        self.assertOneLine(err)
        self.assertIn("a command is needed", err)

    def test_usage_errors(self) -> None:
        for argv in (["frobnicate"], ["put", "k"], ["get"], ["sync"], ["sync", "zap", "k"],
                     ["chord", "list"], ["--timeout", "x", "status"], ["cluster", "many"]):
            code, _, err = run_cli(*argv)
            self.assertEqual(code, 2, argv)
            self.assertOneLine(err)

    def test_no_node(self) -> None:
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        code, out, err = run_cli("-d", data_dir, "status")
        self.assertEqual((code, out), (1, b""))
        self.assertOneLine(err)
        self.assertIn(f"no node is running on {data_dir}", err)

    def test_default_data_dir(self) -> None:
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        self.patch(os, "environ", {**os.environ, "HOME": home})
        code, _, err = run_cli("status")
        self.assertEqual(code, 1)
        self.assertIn(os.path.join(home, ".p2pnet"), err)

    def test_stale_control_file(self) -> None:
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        with open(os.path.join(data_dir, "control.json"), "w") as f:
            json.dump({"url": "http://127.0.0.1:1/", "token": "t"}, f)
        code, _, err = run_cli("-d", data_dir, "status")
        self.assertEqual(code, 1)
        self.assertOneLine(err)
        self.assertIn("does not answer", err)

    def test_garbage_control_file(self) -> None:
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        with open(os.path.join(data_dir, "control.json"), "w") as f:
            f.write("{not json")
        code, _, err = run_cli("-d", data_dir, "get", "k")
        self.assertEqual(code, 1)
        self.assertOneLine(err)
        self.assertIn("cannot read", err)

    def test_cluster_arguments(self) -> None:
        for argv in (["cluster", "0"], ["cluster", "65"], ["cluster", "2", "--base-port", "80"],
                     ["cluster", "3", "--base-port", "65530"]):
            code, _, err = run_cli(*argv)
            self.assertEqual(code, 2, argv)
            self.assertOneLine(err)

    def test_cluster_commands(self) -> None:
        cmd = cluster.node_command("/d/n1", 5000, 4998)
        self.assertIn("p2pnode", cmd)
        i = cmd.index("p2pnode")
        self.assertEqual(cmd[i + 1:], ["--data-dir", "/d/n1", "--interface", "127.0.0.1",
                                       "--port", "5000", "--bootstrap", "127.0.0.1:4998"])
        self.assertIn("--pidfile=/d/n1/twistd.pid", cmd)
        self.assertNotIn("--bootstrap", cluster.node_command("/d/n0", 4998, None))


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class ProgressTests(unittest.SynchronousTestCase):
    def test_shown_on_a_terminal_for_long_waits(self) -> None:
        tty = _Tty()
        with Progress(tty, "storing 1048576 bytes"):
            time.sleep(0.9)
        self.assertIn("storing 1048576 bytes (", tty.getvalue())
        self.assertTrue(tty.getvalue().endswith("\r\x1b[K"))

    def test_silent_for_quick_answers_and_pipes(self) -> None:
        tty, pipe = _Tty(), io.StringIO()
        with Progress(tty, "x"):
            pass
        self.assertNotIn("x (", tty.getvalue())
        with Progress(pipe, "x"):
            time.sleep(0.7)
        self.assertEqual(pipe.getvalue(), "")


class OnlineTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.node = yield start_node(self)
        self.dir = self.node.data_dir

    @defer.inlineCallbacks
    def test_status(self) -> Any:
        code, out, err = yield cli("-d", self.dir, "status")
        self.assertEqual((code, err), (0, ""))
        text = out.decode()
        self.assertIn(f"node id      {self.node.node_id.hex()}", text)
        self.assertIn(f"127.0.0.1:{self.node.dht_address[1]} (UDP)", text)
        self.assertIn("0 DHT contacts", text)
        code, out, _ = yield cli("-d", self.dir, "--json", "status")
        s = json.loads(out)
        self.assertEqual(s["node_id"], self.node.node_id.hex())
        self.assertIn("refused", s["counters"])

    @defer.inlineCallbacks
    def test_peers(self) -> Any:
        other = yield start_node(self, bootstrap=[self.node.dht_address])
        yield other.dht.when_joined()
        code, out, _ = yield cli("-d", self.dir, "peers")
        self.assertEqual(code, 0)
        self.assertIn(other.node_id.hex(), out.decode())
        code, out, _ = yield cli("-d", self.dir, "--json", "peers")
        self.assertEqual([c["id"] for c in json.loads(out)["dht"]], [other.node_id.hex()])

    @defer.inlineCallbacks
    def test_put_get(self) -> Any:
        code, out, err = yield cli("-d", self.dir, "put", "greeting", "hello")
        self.assertEqual((code, err), (0, ""))
        self.assertIn(b"stored 'greeting' (5 bytes)", out)
        code, out, err = yield cli("-d", self.dir, "get", "greeting")
        self.assertEqual((code, out, err), (0, b"hello", ""))
        self.assertEqual((yield self.node.dht.network.get("greeting")), b"hello")

    @defer.inlineCallbacks
    def test_put_from_stdin(self) -> Any:
        value = os.urandom(200_000)
        code, _, err = yield cli("-d", self.dir, "put", "blob", "-", stdin=value)
        self.assertEqual((code, err), (0, ""))
        code, out, _ = yield cli("-d", self.dir, "get", "blob")
        self.assertEqual((code, out), (0, value))

    @defer.inlineCallbacks
    def test_get_absent(self) -> Any:
        code, out, err = yield cli("-d", self.dir, "get", "nobody")
        self.assertEqual((code, out, err), (1, b"", "p2pnet: nobody: not found\n"))

    @defer.inlineCallbacks
    def test_get_json(self) -> Any:
        yield cli("-d", self.dir, "put", "k", "v")
        code, out, _ = yield cli("-d", self.dir, "--json", "get", "k")
        self.assertEqual(json.loads(out), {"key": "k", "value": "v", "bytes": 1})

    @defer.inlineCallbacks
    def test_sync(self) -> Any:
        self.assertEqual((yield cli("-d", self.dir, "sync", "set", "colour", "blue"))[0], 0)
        self.assertEqual(self.node.sync[b"colour"], b"blue")
        self.assertEqual((yield cli("-d", self.dir, "sync", "get", "colour"))[:2], (0, b"blue"))
        self.assertEqual((yield cli("-d", self.dir, "sync", "list"))[:2], (0, b"colour\n"))
        code, out, _ = yield cli("-d", self.dir, "--json", "sync", "list")
        self.assertEqual(json.loads(out), {"keys": ["colour"]})
        self.assertEqual((yield cli("-d", self.dir, "sync", "del", "colour"))[0], 0)
        self.assertEqual((yield cli("-d", self.dir, "sync", "get", "colour")),
                         (1, b"", "p2pnet: colour: not found\n"))
        self.assertEqual((yield cli("-d", self.dir, "sync", "del", "colour"))[0], 1)

    @defer.inlineCallbacks
    def test_chord(self) -> Any:
        self.assertEqual((yield cli("-d", self.dir, "chord", "set", "fruit", "apple"))[0], 0)
        self.assertEqual((yield cli("-d", self.dir, "chord", "get", "fruit"))[:2],
                         (0, b"apple"))
        self.assertEqual((yield cli("-d", self.dir, "chord", "keys"))[:2], (0, b"fruit\n"))
        self.assertEqual((yield cli("-d", self.dir, "chord", "del", "fruit"))[0], 0)
        code, _, err = yield cli("-d", self.dir, "chord", "get", "fruit")
        self.assertEqual((code, err), (1, "p2pnet: fruit: not found\n"))

    @defer.inlineCallbacks
    def test_server_errors_are_one_line(self) -> Any:
        code, _, err = yield cli("-d", self.dir, "put", "big", "-",
                                 stdin=b"x" * (1024 * 1024 + 1))
        self.assertEqual(code, 1)
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn("HTTP 413", err)
