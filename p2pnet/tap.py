# -*- test-case-name: tests.test_tap -*-
"""``twistd p2pnode``: command-line options to a :class:`~p2pnet.node.P2PNode`.

Defaults: the DHT on UDP port 4455 of every interface, the mesh on TCP ``port + 1``, data
in ``~/.p2pnet``.  ``--bootstrap host:port`` names nodes to join through (repeatable); a
restarted node also rejoins the contacts it kept.  ``--limit NAME=VALUE`` sets a field
of :class:`p2pnet.dht.limits.Limits` (repeatable; ``--limit list`` prints them).

Run under twistd, the pid file (``twistd.pid``) and, in the background, the log
(``p2pnode.log``) go to the data directory unless ``--pidfile`` / ``--logfile`` say
otherwise, so two nodes with two data directories run side by side.  A data directory in
use, a port in use, or a store that cannot open ends the process at once with one line
naming the culprit and a non-zero status.  ``--log-format json`` logs JSON lines;
``--log-level`` (default ``info``) drops the events below it.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, NoReturn

import attrs
from twisted.application import service
from twisted.python import usage

from p2pnet.dht.limits import Limits
from p2pnet.node import (
    DEFAULT_DATA_DIR,
    DEFAULT_INTERFACE,
    DEFAULT_PORT,
    DataDirLock,
    NodeStartError,
    P2PNode,
    one_line,
)
from p2pnet.node import load_node_id as _load_node_id

__all__ = ["DEFAULT_DATA_DIR", "DEFAULT_PORT", "Options", "limit_names", "load_node_id",
           "makeService", "parse_address", "parse_limit"]

PIDFILE = "twistd.pid"
LOGFILE = "p2pnode.log"


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) to a tuple; ``usage.UsageError`` if bad."""
    host, sep, port = text.rpartition(":")
    if (not sep or not host or not (port.isascii() and port.isdigit())
            or not 1 <= int(port) <= 65535):
        raise usage.UsageError(f"not a host:port address: {text!r}")
    return host.strip("[]"), int(port)


def _limit_fields() -> dict[str, Any]:
    return {f.name: f for f in attrs.fields(Limits)}


def limit_names() -> list[str]:
    """The names ``--limit`` takes, with their defaults: ``name=default``."""
    return [f"{name}={field.default!r}" for name, field in sorted(_limit_fields().items())]


def parse_limit(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` for a :class:`Limits` field, with the value of the field's type."""
    name, sep, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name:
        raise usage.UsageError(f"--limit takes NAME=VALUE, not {text!r}")
    fields = _limit_fields()
    field = fields.get(name)
    if field is None:
        raise usage.UsageError(
            f"unknown limit {name!r} (--limit list shows the {len(fields)} names)")
    default = field.default
    raw = raw.strip()
    try:
        value: Any
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError("not a boolean")
            value = raw.lower() in ("true", "1", "yes", "on")
        elif isinstance(default, int):
            value = int(raw)
        elif isinstance(default, float):
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError("not finite")
        else:
            raise usage.UsageError(f"limit {name!r} cannot be set from the command line")
    except ValueError:
        kind = type(default).__name__
        raise usage.UsageError(f"limit {name} needs a {kind}, not {raw!r}") from None
    if not isinstance(value, bool) and value < 0:
        raise usage.UsageError(f"limit {name} cannot be negative: {raw!r}")
    return name, value


def load_node_id(data_dir: str) -> bytes:
    """The node id of ``data_dir`` (made if missing); ``usage.UsageError`` if unreadable."""
    try:
        return _load_node_id(data_dir)
    except ValueError as e:
        raise usage.UsageError(str(e)) from e


def _fail(message: str) -> NoReturn:
    """One line on the real stderr, then exit 1 (no traceback, no usage text)."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"p2pnode: {message}\n")
    stream.flush()
    raise SystemExit(1)


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Run a p2pnet node: a Kademlia DHT peer with a mesh, sync and chord "
                "sockets and a local control API (see the p2pnet command), its data "
                "kept in --data-dir.")
    optParameters = [
        ["port", "p", DEFAULT_PORT, "UDP port of the DHT.", int],
        ["interface", "i", DEFAULT_INTERFACE, "Interface to bind the DHT and the mesh to."],
        ["mesh-port", None, None, "TCP port of the mesh [default: --port + 1].", int],
        ["advertise-host", None, None,
         "Host the mesh tells peers to reach it at [default: the interface, or this "
         "machine's address when the interface is 0.0.0.0 or ::]."],
        ["data-dir", "d", DEFAULT_DATA_DIR,
         "Directory for the node id, stores, pid file and control file."],
        ["network-id", None, "p2pnet", "Network id: nodes of other networks are ignored."],
        ["log-format", None, "text", "Log format: text (one line per event) or json."],
        ["log-level", None, "info", "Lowest level logged: debug, info, warn, error."],
    ]
    optFlags = [
        ["memory", "m", "Keep values and peers in memory only (nothing written but the "
                        "node id)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["bootstrap"] = []
        self["limits"] = {}
        self.lock: DataDirLock | None = None

    def opt_bootstrap(self, value: str) -> None:
        """Join through this host:port (repeatable)."""
        self["bootstrap"].append(parse_address(value))

    opt_b = opt_bootstrap

    def opt_limit(self, value: str) -> None:
        """Set a DHT limit, NAME=VALUE (repeatable); "--limit list" prints them all."""
        if value.strip() == "list":
            try:
                sys.stdout.write("\n".join(limit_names()) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:  # `| head`: fine, and no traceback at exit either
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(0)
        name, parsed = parse_limit(value)
        self["limits"][name] = parsed

    def postOptions(self) -> None:  # noqa: N802 - usage.Options
        self["data-dir"] = os.path.abspath(os.path.expanduser(self["data-dir"]))
        if not 0 <= self["port"] <= 65535:
            raise usage.UsageError("port must be in 0..65535")
        if self["mesh-port"] is not None and not 0 <= self["mesh-port"] <= 65535:
            raise usage.UsageError("mesh port must be in 0..65535")
        if (self["mesh-port"] is None and self["port"] == 65535):
            raise usage.UsageError("with --port 65535 give --mesh-port (default: port + 1)")
        nid = self["network-id"].encode("utf-8")
        if not 1 <= len(nid) <= 32:
            raise usage.UsageError("network id must be 1..32 bytes")
        self["network-id"] = nid
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(f"log format must be text or json, not "
                                   f"{self['log-format']!r}")
        if self["log-level"] not in LOG_LEVELS:
            raise usage.UsageError(f"log level must be one of {', '.join(LOG_LEVELS)}, not "
                                   f"{self['log-level']!r}")
        try:
            self["limits-object"] = Limits(**self["limits"])
        except (TypeError, ValueError) as e:
            raise usage.UsageError(f"bad limits: {e}") from e
        parent = getattr(self, "parent", None)
        if parent is not None:
            self._configure_twistd(parent)

    def _configure_twistd(self, parent: Any) -> None:
        """Under twistd: pid file and log in the data directory, the JSON logger, and the
        data directory taken now (before twistd's own pid-file check)."""
        data_dir = self["data-dir"]
        if parent.get("pidfile") in (PIDFILE, None, ""):
            parent["pidfile"] = os.path.join(data_dir, PIDFILE)
        if not parent.get("nodaemon") and not parent.get("logfile"):
            parent["logfile"] = os.path.join(data_dir, LOGFILE)
        if not parent.get("syslog") and not parent.get("logger"):
            global _log_settings
            _log_settings = (self["log-format"], self["log-level"], parent.get("logfile"),
                             bool(parent.get("nodaemon")))
            parent["logger"] = f"{__name__}.log_observer"
        self.take_lock()

    def take_lock(self) -> DataDirLock:
        """Hold the data directory for this process, or exit with one line naming the
        directory and the pid holding it."""
        if self.lock is None:
            try:
                self.lock = DataDirLock.acquire(self["data-dir"])
            except NodeStartError as e:
                _fail(str(e))
            except OSError as e:
                _fail(f"cannot use data directory {self['data-dir']}: {one_line(e)}")
        return self.lock


LOG_LEVELS = ("debug", "info", "warn", "error")
#: What :func:`log_observer` makes: (format, level, twistd's logfile, twistd's nodaemon).
_log_settings: tuple[str, str, str | None, bool] = ("text", "info", None, True)


def log_observer() -> Any:
    """twistd ``--logger`` factory (``p2pnet.tap.log_observer``): text (one line per
    event) or JSON lines, from ``--log-level`` up, to where twistd would log (stdout with
    ``-n`` and no log file, else the log file, rotated as twistd rotates it)."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        jsonFileLogObserver,
        textFileLogObserver,
    )
    from twisted.python import logfile as twisted_logfile

    fmt, level, logfile, nodaemon = _log_settings
    stream: Any
    if logfile == "-" or (nodaemon and not logfile):
        stream = sys.stdout
    else:
        stream = twisted_logfile.LogFile.fromFullPath(logfile or LOGFILE)
    observer = (jsonFileLogObserver(stream, recordSeparator="") if fmt == "json"
                else textFileLogObserver(stream))
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    return FilteringLogObserver(observer, [predicate])


class DaemonService(service.MultiService):
    """The node under twistd: a start failure becomes one line and a non-zero exit."""

    def __init__(self, node: P2PNode, pidfile: str | None) -> None:
        super().__init__()
        self.node = node
        self.pidfile = pidfile
        node.setServiceParent(self)

    def startService(self) -> None:  # noqa: N802 - IService
        try:
            super().startService()
        except NodeStartError as e:  # a port in use: nothing has started yet
            self.node.lock.release()
            self._remove_pidfile()
            _fail(str(e))
        self.node.when_ready().addErrback(self._failed)

    def _remove_pidfile(self) -> None:
        if self.pidfile:
            try:
                os.unlink(self.pidfile)
            except OSError:
                pass

    def _failed(self, failure: Any) -> None:
        """A part failed after start (the node logged the one line): stop, exit 1."""
        from twisted.internet import reactor

        def exit_now() -> None:
            self._remove_pidfile()
            for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                try:
                    if stream is not None:
                        stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(1)

        reactor.addSystemEventTrigger("after", "shutdown", exit_now)
        reactor.stop()


def makeService(options: Options) -> service.IService:  # noqa: N802 - twistd plugin API
    """The node for ``options`` (see :class:`Options`)."""
    from p2pnet.store.errors import StoreError

    parent = getattr(options, "parent", None)
    try:
        node = P2PNode(
            options["data-dir"],
            port=options["port"],
            interface=options["interface"],
            mesh_port=options["mesh-port"],
            bootstrap=options["bootstrap"],
            network_id=options["network-id"],
            memory=options["memory"],
            limits=options.get("limits-object"),
            lock=options.lock,
            advertise_host=options.get("advertise-host"),
        )
    except (NodeStartError, StoreError, ValueError) as e:  # ValueError: a damaged node_id
        if parent is None:
            raise usage.UsageError(str(e)) from e
        _fail(str(e))
    if parent is None:
        return node
    return DaemonService(node, parent.get("pidfile"))
