# -*- test-case-name: tests.test_tap -*-
"""``twistd p2pnode``: options, the node id file, the service, and the installed plugin."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sys
from typing import Any

import attrs
from twisted.internet import defer, error, protocol, reactor
from twisted.python import usage
from twisted.trial import unittest

from p2pnet import ids, tap
from p2pnet.dht.limits import Limits
from p2pnet.dht.network import NETWORK_ID
from p2pnet.dht.service import DHTService
from p2pnet.dht.table import MemoryKVPTable
from p2pnet.node import DataDirLock, P2PNode

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
        self.assertEqual(parse("--port", "65535", "--mesh-port", "1")["port"], 65535)
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


class NewOptionsTests(unittest.SynchronousTestCase):
    """The options the node object added: mesh port, limits, log format."""

    def test_mesh_port(self) -> None:
        self.assertIsNone(parse()["mesh-port"])
        self.assertEqual(parse("--mesh-port", "7000")["mesh-port"], 7000)
        for bad in ["-1", "65536", "x"]:
            with self.assertRaises(usage.UsageError, msg=repr(bad)):
                parse("--mesh-port", bad)
        # port + 1 would not be a port
        self.assertRaises(usage.UsageError, parse, "--port", "65535")
        self.assertEqual(parse("--port", "65535", "--mesh-port", "1")["mesh-port"], 1)

    def test_log_format(self) -> None:
        self.assertEqual(parse()["log-format"], "text")
        self.assertEqual(parse("--log-format", "json")["log-format"], "json")
        with self.assertRaises(usage.UsageError) as cm:
            parse("--log-format", "xml")
        self.assertIn("text or json", str(cm.exception))

    def test_log_level(self) -> None:
        self.assertEqual(parse()["log-level"], "info")
        self.assertEqual(parse("--log-level", "debug")["log-level"], "debug")
        with self.assertRaises(usage.UsageError) as cm:
            parse("--log-level", "loud")
        self.assertIn("debug, info, warn, error", str(cm.exception))

    def test_limits_default(self) -> None:
        o = parse()
        self.assertEqual(o["limits"], {})
        self.assertEqual(o["limits-object"], Limits())

    def test_every_limit_settable(self) -> None:
        """Each field of Limits, whatever its type, is set by --limit NAME=VALUE."""
        for field in attrs.fields(Limits):
            default = field.default
            if isinstance(default, bool):
                text, want = str(not default).lower(), not default
            elif isinstance(default, int):
                text, want = str(default + 7), default + 7
            elif isinstance(default, float):
                text, want = str(default + 0.5), default + 0.5
            else:  # a field no command line can spell: refused with a clear message
                with self.assertRaises(usage.UsageError) as cm:
                    parse("--limit", f"{field.name}=1")
                self.assertIn("cannot be set from the command line", str(cm.exception))
                continue
            o = parse("--limit", f"{field.name}={text}")
            self.assertEqual(getattr(o["limits-object"], field.name), want, field.name)
            # every other field keeps its default
            self.assertEqual(attrs.evolve(o["limits-object"], **{field.name: default}),
                             Limits())

    def test_limit_dashes_and_repeats(self) -> None:
        name = attrs.fields(Limits)[0].name
        o = parse("--limit", f"{name.replace('_', '-')}=5", "--limit", f"{name}=6")
        self.assertEqual(getattr(o["limits-object"], name), 6)

    def test_limit_errors(self) -> None:
        int_name = next(f.name for f in attrs.fields(Limits)
                        if type(f.default) is int)
        float_name = next(f.name for f in attrs.fields(Limits)
                          if type(f.default) is float)
        cases = {
            "no_such_limit=1": "unknown limit 'no_such_limit'",
            "noequals": "NAME=VALUE",
            "=5": "NAME=VALUE",
            f"{int_name}=abc": f"limit {int_name} needs a int, not 'abc'",
            f"{int_name}=1.5": f"limit {int_name} needs a int",
            f"{int_name}=-3": "cannot be negative",
            f"{float_name}=nan": f"limit {float_name} needs a float",
            f"{float_name}=inf": f"limit {float_name} needs a float",
            f"{float_name}=": f"limit {float_name} needs a float",
        }
        for text, message in cases.items():
            with self.assertRaises(usage.UsageError, msg=text) as cm:
                parse("--limit", text)
            self.assertIn(message, str(cm.exception), text)

    def test_limit_names(self) -> None:
        names = tap.limit_names()
        self.assertEqual(len(names), len(attrs.fields(Limits)))
        self.assertTrue(all("=" in n for n in names))


class _Parent(dict):  # type: ignore[type-arg]
    """Stands in for twistd's ServerOptions (the plugin options' ``parent``)."""


def parse_under_twistd(parent: dict[str, Any], *argv: str) -> tap.Options:
    options = tap.Options()
    options.parent = _Parent(parent)  # type: ignore[attr-defined]
    options.parseOptions(list(argv))
    return options


class TwistdIntegrationTests(unittest.SynchronousTestCase):
    """What postOptions arranges with twistd: pid file, log file, JSON logger, lock."""

    def release(self, o: tap.Options) -> None:
        if o.lock is not None:
            self.addCleanup(o.lock.release)

    def test_pidfile_and_logfile_in_the_data_dir(self) -> None:
        data_dir = os.path.abspath(self.mktemp())
        o = parse_under_twistd({"pidfile": "twistd.pid", "logfile": None, "nodaemon": False},
                               "--data-dir", data_dir)
        self.release(o)
        parent: Any = o.parent  # type: ignore[attr-defined]
        self.assertEqual(parent["pidfile"], os.path.join(data_dir, "twistd.pid"))
        self.assertEqual(parent["logfile"], os.path.join(data_dir, "p2pnode.log"))

    def test_given_pidfile_and_logfile_kept(self) -> None:
        o = parse_under_twistd({"pidfile": "/x/y.pid", "logfile": "-", "nodaemon": True},
                               "--data-dir", self.mktemp())
        self.release(o)
        parent: Any = o.parent  # type: ignore[attr-defined]
        self.assertEqual((parent["pidfile"], parent["logfile"]), ("/x/y.pid", "-"))

    def test_json_logger(self) -> None:
        o = parse_under_twistd({"pidfile": "twistd.pid", "logfile": None, "nodaemon": True},
                               "--data-dir", self.mktemp(), "--log-format", "json")
        self.release(o)
        parent: Any = o.parent  # type: ignore[attr-defined]
        self.assertEqual(parent["logger"], "p2pnet.tap.log_observer")
        self.assertEqual(tap._log_settings[:2], ("json", "info"))

    def test_busy_data_dir_is_one_line_and_exit_1(self) -> None:
        data_dir = os.path.abspath(self.mktemp())
        holder = DataDirLock.acquire(data_dir)
        self.addCleanup(holder.release)
        err = io.StringIO()
        self.patch(sys, "__stderr__", err)
        with self.assertRaises(SystemExit) as cm:
            parse_under_twistd({"pidfile": "twistd.pid", "nodaemon": True},
                               "--data-dir", data_dir)
        self.assertEqual(cm.exception.code, 1)
        self.assertEqual(err.getvalue(),
                         f"p2pnode: data directory {data_dir} is in use by process "
                         f"{os.getpid()}\n")


class MakeServiceTests(unittest.SynchronousTestCase):
    def make(self, o: Any) -> Any:
        node: Any = tap.makeService(o)
        self.addCleanup(node.lock.release)
        return node

    def test_service_from_options(self) -> None:
        data_dir = self.mktemp()
        o = parse("--port", "0", "--interface", "127.0.0.1", "--data-dir", data_dir,
                  "--network-id", "testnet", "--bootstrap", "127.0.0.1:4455",
                  "--bootstrap", "10.1.2.3:5", "--limit", "lookup_max_rounds=7")
        node = self.make(o)
        self.assertIsInstance(node, P2PNode)
        s = node.getServiceNamed("dht")
        self.assertIs(s, node.dht)
        self.assertIsInstance(s, DHTService)
        self.assertEqual(s.port, 0)
        self.assertEqual(s.interface, "127.0.0.1")
        self.assertEqual(s.bootstrap, [("127.0.0.1", 4455), ("10.1.2.3", 5)])
        self.assertEqual(s.network.protocol.network_id, b"testnet")
        self.assertEqual(s.network.key, tap.load_node_id(data_dir))
        self.assertEqual(s.network.limits.lookup_max_rounds, 7)
        self.assertFalse(s.running)
        self.assertEqual(node.mesh_port, 0)  # follows port 0
        self.assertEqual(node.db.db_path, os.path.join(os.path.abspath(data_dir), "leveldb"))

    def test_advertise_host(self) -> None:
        node = self.make(parse("--memory", "--data-dir", self.mktemp(),
                               "--advertise-host", "203.0.113.9"))
        self.assertEqual(node.advertise_host, "203.0.113.9")
        node = self.make(parse("--memory", "--data-dir", self.mktemp(),
                               "--interface", "127.0.0.1"))
        self.assertEqual(node.advertise_host, "127.0.0.1")

    def test_mesh_port_follows_the_dht_port(self) -> None:
        node = self.make(parse("--memory", "--data-dir", self.mktemp(), "--port", "5000"))
        self.assertEqual((node.port, node.mesh_port), (5000, 5001))
        node2 = self.make(parse("--memory", "--data-dir", self.mktemp(), "--port", "5000",
                                "--mesh-port", "6000"))
        self.assertEqual(node2.mesh_port, 6000)

    def test_memory_option(self) -> None:
        node = self.make(parse("--memory", "--data-dir", self.mktemp()))
        self.assertIsNone(node.db)
        self.assertIsNone(node.peers.db_file_path)
        self.assertIsInstance(node.dht.network.kvp_table, MemoryKVPTable)

    def test_defaults(self) -> None:
        data_dir = self.mktemp()
        node = self.make(parse("--memory", "--data-dir", data_dir))
        self.assertEqual((node.port, node.mesh_port, node.interface), (4455, 4456, "0.0.0.0"))
        self.assertEqual(node.dht.network.key, tap.load_node_id(data_dir))

    def test_data_dir_in_use_is_a_usage_error(self) -> None:
        o = parse("--data-dir", self.mktemp())
        self.make(o)
        with self.assertRaises(usage.UsageError) as cm:
            tap.makeService(o)
        self.assertIn("is in use by process", str(cm.exception))

    def test_bad_node_id_is_a_usage_error(self) -> None:
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        with open(os.path.join(data_dir, "node_id"), "w") as f:
            f.write("garbage\n")
        self.assertRaises(usage.UsageError, tap.makeService, parse("--data-dir", data_dir))
        # the lock was released: the directory can be used once the file is fixed
        os.unlink(os.path.join(data_dir, "node_id"))
        self.make(parse("--data-dir", data_dir))


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

    def test_json_log_format(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._json_log())

    async def _json_log(self) -> None:
        base = os.path.abspath(self.mktemp())
        data_dir = os.path.join(base, "data")
        os.makedirs(base)
        pythonpath = os.pathsep.join(p for p in [CHECKOUT, os.environ.get("PYTHONPATH")] if p)
        args = ["-n", "--logfile=-", "p2pnode", "--port", "0", "--interface", "127.0.0.1",
                "--data-dir", data_dir, "--log-format", "json"]
        proto = self._spawn(args, b"ready: DHT", _env(PYTHONPATH=pythonpath), base)
        await _bounded(proto.seen, START_TIMEOUT)
        # the pid file went to the data directory (no --pidfile given)
        self.assertTrue(os.path.exists(os.path.join(data_dir, "twistd.pid")))
        proto.transport.signalProcess("TERM")  # type: ignore[union-attr]
        await _bounded(proto.ended, STOP_TIMEOUT)
        lines = proto.output.decode("utf-8").splitlines()
        events = [json.loads(line) for line in lines]  # every line is one JSON event
        self.assertTrue(any("ready: DHT" in e.get("log_format", "") for e in events), lines)
        self.assertTrue(any("Server Shut Down" in e.get("log_format", "") for e in events))
        # --log-level info (the default) drops the debug events
        self.assertEqual([e for e in events if e["log_level"]["name"] == "debug"], [])
        self.assertFalse(os.path.exists(os.path.join(data_dir, "twistd.pid")))
        self.assertEqual(sorted(os.listdir(base)), ["data"])

    def test_store_failure_exits_1_without_traceback(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._store_failure())

    async def _store_failure(self) -> None:
        base = os.path.abspath(self.mktemp())
        data_dir = os.path.join(base, "data")
        os.makedirs(data_dir)
        with open(os.path.join(data_dir, "leveldb"), "w") as f:
            f.write("a file where the database should be")
        pythonpath = os.pathsep.join(p for p in [CHECKOUT, os.environ.get("PYTHONPATH")] if p)
        args = ["-n", "--logfile=-", "p2pnode", "--port", "0", "--interface", "127.0.0.1",
                "--data-dir", data_dir]
        proto = self._spawn(args, None, _env(PYTHONPATH=pythonpath), base)
        reason = await _bounded(proto.ended, START_TIMEOUT)
        out = proto.output.decode("utf-8", "replace")
        self.assertIsInstance(reason, error.ProcessTerminated, out)
        self.assertEqual(reason.exitCode, 1, out)
        failed = [line for line in out.splitlines() if "node failed to start" in line]
        self.assertEqual(len(failed), 1, out)
        self.assertIn(os.path.join(data_dir, "leveldb"), failed[0])
        self.assertNotIn("Traceback", out)
        self.assertFalse(os.path.exists(os.path.join(data_dir, "twistd.pid")))
