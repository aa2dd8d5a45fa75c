# -*- test-case-name: tests.test_tap -*-
"""``twistd p2pnode``: options, the node id file, the service, and the installed plugin."""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any

from twisted.internet import defer, error, protocol, reactor
from twisted.python import usage
from twisted.trial import unittest

from p2pnet import ids, tap
from p2pnet.dht.network import NETWORK_ID
from p2pnet.dht.service import DHTService
from p2pnet.dht.table import MemoryKVPTable
from p2pnet.dht.kvptable import LevelDBKVPTable

#: The checkout (parent of ``tests/``): put first on the twistd subprocess's path so it
#: runs this code, while the plugin is still found in the installed ``twisted/plugins``.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The twistd script of the environment running the tests (the venv's ``bin/``).
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
#: Bounds on the subprocess tests (seconds).
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


class OptionsTests(unittest.SynchronousTestCase):
    def test_defaults(self) -> None:
        o = parse()
        self.assertEqual(o["port"], tap.DEFAULT_PORT)
        self.assertEqual(o["port"], 4455)
        self.assertEqual(o["interface"], "0.0.0.0")
        self.assertEqual(o["data-dir"], os.path.abspath(os.path.expanduser("~/.p2pnet")))
        self.assertTrue(os.path.isabs(o["data-dir"]))
        self.assertNotIn("~", o["data-dir"])
        self.assertEqual(o["bootstrap"], [])
        self.assertEqual(o["network-id"], b"p2pnet")
        self.assertEqual(o["network-id"], NETWORK_ID)
        self.assertFalse(o["memory"])

    def test_each_instance_has_its_own_bootstrap_list(self) -> None:
        parse("--bootstrap", "10.0.0.1:1")
        self.assertEqual(parse()["bootstrap"], [])

    def test_values(self) -> None:
        o = parse("--port", "5000", "--interface", "127.0.0.1", "--network-id", "testnet",
                  "--memory")
        self.assertEqual(o["port"], 5000)
        self.assertEqual(o["interface"], "127.0.0.1")
        self.assertEqual(o["network-id"], b"testnet")
        self.assertTrue(o["memory"])

    def test_short_options(self) -> None:
        o = parse("-p", "0", "-i", "::1", "-d", "/tmp/x", "-m", "-b", "h:1")
        self.assertEqual((o["port"], o["interface"], o["data-dir"], o["memory"],
                          o["bootstrap"]), (0, "::1", "/tmp/x", True, [("h", 1)]))

    def test_data_dir_expanded(self) -> None:
        home = self.mktemp()
        os.makedirs(home)
        self.patch(os, "environ", {**os.environ, "HOME": home})
        self.assertEqual(parse("--data-dir", "~/node")["data-dir"],
                         os.path.join(os.path.abspath(home), "node"))

    def test_data_dir_relative_made_absolute(self) -> None:
        self.assertEqual(parse("--data-dir", "rel/dir")["data-dir"],
                         os.path.join(os.getcwd(), "rel", "dir"))

    def test_bootstrap_repeatable(self) -> None:
        o = parse("--bootstrap", "127.0.0.1:4455", "--bootstrap", "example.org:1",
                  "-b", "[::1]:65535")
        self.assertEqual(o["bootstrap"],
                         [("127.0.0.1", 4455), ("example.org", 1), ("::1", 65535)])

    def test_bootstrap_errors(self) -> None:
        for bad in ["127.0.0.1", "127.0.0.1:", ":4455", "host:0", "host:65536",
                    "host:-1", "host:port", "host: 80", "host:80 ", "", ":"]:
            with self.assertRaises(usage.UsageError, msg=repr(bad)):
                parse("--bootstrap", bad)

    def test_bootstrap_non_ascii_digits(self) -> None:
        # str.isdigit() is true for "²" (int() then raises ValueError) and "٣" (port 3).
        for bad in ["host:²", "host:٣"]:
            with self.assertRaises(usage.UsageError, msg=repr(bad)):
                parse("--bootstrap", bad)

    def test_parse_address(self) -> None:
        self.assertEqual(tap.parse_address("a.b:1"), ("a.b", 1))
        self.assertEqual(tap.parse_address("[fe80::1]:80"), ("fe80::1", 80))
        self.assertRaises(usage.UsageError, tap.parse_address, "nocolon")

    def test_port_bounds(self) -> None:
        self.assertEqual(parse("--port", "0")["port"], 0)
        self.assertEqual(parse("--port", "65535")["port"], 65535)
        for bad in ["-1", "65536", "abc", ""]:
            with self.assertRaises(usage.UsageError, msg=repr(bad)):
                parse("--port", bad)

    def test_network_id_bounds(self) -> None:
        self.assertEqual(parse("--network-id", "x")["network-id"], b"x")
        self.assertEqual(parse("--network-id", "n" * 32)["network-id"], b"n" * 32)
        # The bound is on the UTF-8 bytes, not the characters.
        self.assertEqual(parse("--network-id", "é" * 16)["network-id"],
                         ("é" * 16).encode("utf-8"))
        for bad in ["", "n" * 33, "é" * 17]:
            with self.assertRaises(usage.UsageError, msg=repr(bad)):
                parse("--network-id", bad)

    def test_unknown_option(self) -> None:
        self.assertRaises(usage.UsageError, parse, "--no-such-option")


class NodeIdTests(unittest.SynchronousTestCase):
    def test_created_then_reused(self) -> None:
        data_dir = os.path.join(self.mktemp(), "deep", "data")
        node_id = tap.load_node_id(data_dir)
        self.assertEqual(len(node_id), ids.KEY_BYTES)
        path = os.path.join(data_dir, "node_id")
        with open(path, encoding="ascii") as f:
            self.assertEqual(f.read().strip(), node_id.hex())
        self.assertEqual(tap.load_node_id(data_dir), node_id)
        self.assertEqual(tap.load_node_id(data_dir), node_id)
        self.assertEqual(os.listdir(data_dir), ["node_id"])  # no temporary file left

    def test_two_dirs_two_ids(self) -> None:
        self.assertNotEqual(tap.load_node_id(self.mktemp()), tap.load_node_id(self.mktemp()))

    def test_existing_file_read(self) -> None:
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        with open(os.path.join(data_dir, "node_id"), "w") as f:
            f.write("AB" * 20 + "\n")
        self.assertEqual(tap.load_node_id(data_dir), b"\xab" * 20)

    def test_garbage_rejected(self) -> None:
        for content in [b"", b"not hex at all", b"ab" * 19, b"ab" * 21, b"\xff\xfe\x00" * 7,
                        b"zz" * 20]:
            data_dir = self.mktemp()
            os.makedirs(data_dir)
            path = os.path.join(data_dir, "node_id")
            with open(path, "wb") as f:
                f.write(content)
            with self.assertRaises(usage.UsageError, msg=repr(content)):
                tap.load_node_id(data_dir)
            with open(path, "rb") as f:  # a bad file is reported, never overwritten
                self.assertEqual(f.read(), content)


class MakeServiceTests(unittest.SynchronousTestCase):
    def make(self, o: Any) -> Any:
        top: Any = tap.makeService(o)
        try:
            values = top.getServiceNamed("values")
        except KeyError:
            pass
        else:
            self.addCleanup(values.close)
        return top

    def test_service_from_options(self) -> None:
        data_dir = self.mktemp()
        o = parse("--port", "0", "--interface", "127.0.0.1", "--data-dir", data_dir,
                  "--network-id", "testnet", "--bootstrap", "127.0.0.1:4455",
                  "--bootstrap", "10.1.2.3:5")
        top = self.make(o)
        s = top.getServiceNamed("dht")
        self.assertIsInstance(s, DHTService)
        self.assertEqual(s.port, 0)
        self.assertEqual(s.interface, "127.0.0.1")
        self.assertEqual(s.bootstrap, [("127.0.0.1", 4455), ("10.1.2.3", 5)])
        self.assertEqual(s.network.protocol.network_id, b"testnet")
        self.assertEqual(s.network.key, tap.load_node_id(data_dir))
        self.assertFalse(s.running)
        # Values persist in LevelDB in the data dir; the table starts before the DHT.
        values = top.getServiceNamed("values")
        self.assertIsInstance(values, LevelDBKVPTable)
        self.assertIs(s.network.kvp_table, values)
        self.assertEqual(list(top), [values, s])
        self.assertTrue(os.path.isdir(os.path.join(data_dir, "values")))

    def test_memory_option(self) -> None:
        top = self.make(parse("--memory", "--data-dir", self.mktemp()))
        self.assertIsInstance(top.getServiceNamed("dht").network.kvp_table, MemoryKVPTable)
        self.assertRaises(KeyError, top.getServiceNamed, "values")

    def test_same_node_id_across_services(self) -> None:
        data_dir = self.mktemp()
        o = parse("--memory", "--data-dir", data_dir)
        first: Any = self.make(o).getServiceNamed("dht")
        second: Any = self.make(o).getServiceNamed("dht")
        self.assertEqual(first.network.key, second.network.key)
        self.assertEqual(first.port, 4455)
        self.assertEqual(first.interface, "0.0.0.0")

    def test_data_dir_in_use_is_a_usage_error(self) -> None:
        o = parse("--data-dir", self.mktemp())
        self.make(o)
        with self.assertRaises(usage.UsageError) as cm:
            tap.makeService(o)
        self.assertIn("cannot open the value table", str(cm.exception))

    def test_bad_node_id_is_a_usage_error(self) -> None:
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        with open(os.path.join(data_dir, "node_id"), "w") as f:
            f.write("garbage\n")
        self.assertRaises(usage.UsageError, tap.makeService, parse("--data-dir", data_dir))


class _Collect(protocol.ProcessProtocol):
    """Collects a child's output; fires ``ended`` with its exit reason (``ProcessDone``
    or ``ProcessTerminated``) and ``seen``
    once ``needle`` shows up in the output (or fails it if the child exits first)."""

    def __init__(self, needle: bytes | None = None) -> None:
        self.output = b""
        self.needle = needle
        self.ended: defer.Deferred[Any] = defer.Deferred()
        self.seen: defer.Deferred[bytes] = defer.Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self.needle is not None and not self.seen.called and self.needle in self.output:
            self.seen.callback(self.output)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.running = False
        if self.needle is not None and not self.seen.called:
            self.seen.errback(AssertionError(
                f"exited before {self.needle!r}: {reason.value}\n"
                + self.output.decode("utf-8", "replace")))
        self.ended.callback(reason.value)  # the exception (a Failure would errback)


def _bounded(d: defer.Deferred[Any], seconds: float) -> defer.Deferred[Any]:
    """``d``, failing with ``defer.TimeoutError`` after ``seconds``."""
    return d.addTimeout(seconds, reactor)  # type: ignore[arg-type]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


class TwistdTests(unittest.TestCase):
    """The installed ``twistd`` finds the plugin and runs a node."""

    timeout = 60

    def setUp(self) -> None:
        if not os.access(TWISTD, os.X_OK):
            raise unittest.SkipTest(
                f"no twistd beside {sys.executable} ({TWISTD}): p2pnet's environment is "
                "not installed here (run ./dev test)")

    def _spawn(self, args: list[str], needle: bytes | None, env: dict[str, str], cwd: str
               ) -> _Collect:
        proto = _Collect(needle)
        reactor.spawnProcess(proto, TWISTD, [TWISTD, *args], env=env,  # type: ignore[attr-defined]
                             path=cwd)
        self.addCleanup(self._reap, proto)
        return proto

    @staticmethod
    def _reap(proto: _Collect) -> defer.Deferred[Any] | None:
        if not proto.running:
            return None
        try:
            proto.transport.signalProcess("KILL")  # type: ignore[union-attr]
        except error.ProcessExitedAlready:
            pass
        return proto.ended.addErrback(lambda _: None)

    def test_help_lists_p2pnode(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._help())

    async def _help(self) -> None:
        cwd = self.mktemp()
        os.makedirs(cwd)
        proto = self._spawn(["--help"], None, _env(), cwd)
        reason = await _bounded(proto.ended, STOP_TIMEOUT)
        self.assertIsInstance(reason, error.ProcessDone, proto.output)
        text = proto.output.decode("utf-8", "replace")
        self.assertRegex(text, r"(?m)^\s+p2pnode\s+\S", text)

    def test_node_runs_and_stops(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._run_node())

    async def _run_node(self) -> None:
        base = os.path.abspath(self.mktemp())
        data_dir = os.path.join(base, "data")
        pidfile = os.path.join(base, "twistd.pid")
        os.makedirs(base)
        pythonpath = os.pathsep.join(p for p in [CHECKOUT, os.environ.get("PYTHONPATH")] if p)
        args = ["-n", f"--pidfile={pidfile}", "--logfile=-", "p2pnode",
                "--port", "0", "--interface", "127.0.0.1", "--data-dir", data_dir]
        proto = self._spawn(args, b"listening on", _env(PYTHONPATH=pythonpath), base)

        output = await _bounded(proto.seen, START_TIMEOUT)
        text = output.decode("utf-8", "replace")
        m = re.search(r"DHT node ([0-9a-f]{40}) listening on 127\.0\.0\.1:(\d+)", text)
        self.assertIsNotNone(m, text)
        assert m is not None
        logged_id, port = bytes.fromhex(m.group(1)), int(m.group(2))
        self.assertNotEqual(port, 0)
        self.assertTrue(os.path.exists(pidfile))
        with open(os.path.join(data_dir, "node_id"), encoding="ascii") as f:
            self.assertEqual(bytes.fromhex(f.read().strip()), logged_id)

        # The daemon answers DHT pings with the id it logged and wrote.
        client = DHTService(port=0, interface="127.0.0.1", timeout=1.0, retries=2)
        client.startService()
        self.addCleanup(lambda: client.stopService() if client.running else None)
        pong = await _bounded(client.network.ping_address(("127.0.0.1", port)),
                              STOP_TIMEOUT)
        self.assertNotEqual(pong, False, text)
        self.assertEqual(pong[1].key, logged_id)
        await client.stopService()

        proto.transport.signalProcess("TERM")  # type: ignore[union-attr]
        reason = await _bounded(proto.ended, STOP_TIMEOUT)
        out = proto.output.decode("utf-8", "replace")
        # twistd stops the reactor and the services on SIGTERM, then re-raises the signal
        # on itself (twisted.application.app._exitWithSignal) so the exit status tells
        # how it ended: "killed by SIGTERM" after an orderly shutdown is the clean end.
        if isinstance(reason, error.ProcessTerminated):
            self.assertEqual((reason.signal, reason.exitCode), (signal.SIGTERM, None), out)
        else:
            self.assertIsInstance(reason, error.ProcessDone, f"{reason}\n{out}")
        self.assertIn("Received SIGTERM, shutting down.", out)
        self.assertIn("Stopping protocol <p2pnet.dht.protocol.DHTProtocol", out)
        self.assertIn("Server Shut Down", out)
        self.assertNotIn("Traceback", out)
        self.assertFalse(os.path.exists(pidfile))
        self.assertEqual(tap.load_node_id(data_dir), logged_id)
        # Nothing written outside the temporary directory given to twistd.
        self.assertEqual(sorted(os.listdir(base)), ["data"])
