# -*- test-case-name: tests.test_cli -*-
"""``p2pnet``: the command line of a running node (and ``p2pnet cluster N``).

The command finds the node through its data directory (``-d DIR``, default
``~/.p2pnet``, as ``twistd p2pnode``): the node writes its control API's address and
token to ``DIR/control.json``.  Every error is one line on stderr and a non-zero exit
status (1: failed or not found, 2: bad usage); ``--json`` prints machine-readable output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from p2pnet.cli.client import CliError, ControlClient, NotFound, key_path
from p2pnet.control import DEFAULT_DATA_DIR


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (and exit status 2)."""

    def error(self, message: str) -> Any:
        raise CliError(f"{message} (see {self.prog} --help)", 2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="p2pnet", description="Talk to a running p2pnet node (twistd p2pnode).")
    p.add_argument("-d", "--data-dir", default=DEFAULT_DATA_DIR,
                   help="the node's data directory (default: ~/.p2pnet)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the node (default: 60)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.add_parser("status", help="node id, addresses, peers, values, uptime, counters")
    sub.add_parser("peers", help="the DHT contacts and the mesh peers")
    put = sub.add_parser("put", help="put a value in the DHT (VALUE '-' reads stdin)")
    put.add_argument("key")
    put.add_argument("value")
    get = sub.add_parser("get", help="write a DHT value's bytes to stdout")
    get.add_argument("key")
    for area, listing in (("sync", "list"), ("chord", "keys")):
        a = sub.add_parser(area, help=f"the {area} socket: set, get, del, {listing}")
        ops = a.add_subparsers(dest="op", metavar="OP", parser_class=_Parser)
        s = ops.add_parser("set", help="set KEY to VALUE ('-' reads stdin)")
        s.add_argument("key")
        s.add_argument("value")
        ops.add_parser("get", help="write KEY's value to stdout").add_argument("key")
        ops.add_parser("del", help="delete KEY").add_argument("key")
        ops.add_parser(listing, help="list the keys")
    c = sub.add_parser("cluster", help="run N nodes on loopback until Ctrl-C")
    c.add_argument("n", type=int, metavar="N")
    c.add_argument("--base-port", type=int, default=14455,
                   help="DHT port of the first node; node i uses base + 2i (default: 14455)")
    c.add_argument("--dir", default=None,
                   help="parent of the nodes' data directories (default: a new temp dir)")
    return p


class Progress:
    """A spinner with the seconds waited, on a terminal only, while a request runs."""

    def __init__(self, stream: IO[str], what: str) -> None:
        self.stream = stream
        self.what = what
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self.stream.isatty():
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        start = time.monotonic()
        frames = "|/-\\"
        i = 0
        if self._stop.wait(0.5):  # quick answers show nothing
            return
        while not self._stop.is_set():
            waited = time.monotonic() - start
            self.stream.write(f"\r{frames[i % 4]} {self.what} ({waited:.0f}s)")
            self.stream.flush()
            i += 1
            self._stop.wait(0.25)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _value(text: str, stdin: IO[bytes]) -> bytes:
    return stdin.read() if text == "-" else os.fsencode(text)


def _fmt_status(s: dict[str, Any]) -> str:
    addr = s.get("addresses", {})
    vals = s.get("values", {})
    counters = s.get("counters", {})
    peers = s.get("peers", {})
    refused = counters.get("refused", {})
    dropped = counters.get("dropped", {})
    lines = [
        f"node id      {s.get('node_id')}",
        f"network      {s.get('network_id')}   data {s.get('data_dir')}   pid {s.get('pid')}",
        f"DHT          {addr.get('dht') or '-'} (UDP)   joined: "
        f"{'yes' if s.get('joined') else 'no'}",
        f"mesh         {addr.get('mesh') or '-'} (TCP)",
        f"control      {addr.get('control') or '-'}",
        f"peers        {peers.get('dht', 0)} DHT contacts, {peers.get('mesh', 0)} mesh peers",
        f"routing      {s.get('routing_table', 0)} contacts in the routing table",
        f"values       {vals.get('records', 0)} held, {vals.get('bytes', 0)} bytes",
        f"uptime       {s.get('uptime', 0):.0f}s",
        f"dropped      {counters.get('dropped_total', 0)}"
        + _kinds(dropped),
        f"refused      {counters.get('refused_total', 0)}" + _kinds(refused),
    ]
    return "\n".join(lines)


def _kinds(counts: dict[str, int]) -> str:
    nonzero = {k: v for k, v in sorted(counts.items()) if v}
    if not nonzero:
        return ""
    return " (" + ", ".join(f"{k} {v}" for k, v in nonzero.items()) + ")"


def _fmt_peers(p: dict[str, Any]) -> str:
    lines = [f"DHT contacts ({len(p.get('dht', []))})"]
    lines += [f"  {c['id']}  {c['address']}" for c in p.get("dht", [])]
    lines.append(f"mesh peers ({len(p.get('mesh', []))})")
    lines += [f"  {m['id']}  {m.get('address', '')}".rstrip() for m in p.get("mesh", [])]
    return "\n".join(lines)


def run(args: argparse.Namespace, stdin: IO[bytes], stdout: IO[bytes], stderr: IO[str]
        ) -> int:
    """Run one parsed command; the exit status."""
    def out(text: str) -> None:
        stdout.write(text.encode("utf-8") + b"\n")

    if args.command == "cluster":
        from p2pnet.cli.cluster import run_cluster

        return run_cluster(args.n, base_port=args.base_port, parent=args.dir, out=stderr)
    if args.command in ("sync", "chord") and args.op is None:
        raise CliError(f"{args.command} needs an operation: set, get, del, "
                       f"{'list' if args.command == 'sync' else 'keys'}", 2)
    data_dir = os.path.abspath(os.path.expanduser(args.data_dir))
    client = ControlClient(data_dir, timeout=args.timeout)

    def show(obj: Any, text: str) -> None:
        out(json.dumps(obj, sort_keys=True) if args.json else text)

    if args.command == "status":
        s = client.json("GET", "/status")
        show(s, _fmt_status(s))
    elif args.command == "peers":
        p = client.json("GET", "/peers")
        show(p, _fmt_peers(p))
    elif args.command == "put":
        value = _value(args.value, stdin)
        with Progress(stderr, f"storing {len(value)} bytes"):
            r = client.json("PUT", key_path("dht", args.key), value)
        n = r.get("replicas")
        show(r, f"stored {args.key!r} ({r.get('bytes')} bytes) on {n} node"
                f"{'' if n == 1 else 's'}")
    elif args.command == "get":
        try:
            with Progress(stderr, "looking up"):
                data, _ = client.request("GET", key_path("dht", args.key))
        except NotFound:
            raise NotFound(f"{args.key}: not found") from None
        _write_value(args, data, stdout)
    elif args.command in ("sync", "chord"):
        return _socket_op(args, client, stdin, stdout, stderr, show)
    else:
        raise CliError("a command is needed (see p2pnet --help)", 2)
    return 0


def _write_value(args: argparse.Namespace, data: bytes, stdout: IO[bytes]) -> None:
    if args.json:
        stdout.write(json.dumps({"key": args.key,
                                 "value": data.decode("utf-8", "backslashreplace"),
                                 "bytes": len(data)}).encode() + b"\n")
    else:
        stdout.write(data)


def _socket_op(args: argparse.Namespace, client: ControlClient, stdin: IO[bytes],
               stdout: IO[bytes], stderr: IO[str], show: Callable[[Any, str], None]) -> int:
    area, op = args.command, args.op
    if op in ("list", "keys"):
        r = client.json("GET", f"/{area}")
        show(r, "\n".join(r.get("keys", [])))
        return 0
    path = key_path(area, args.key)
    try:
        if op == "set":
            value = _value(args.value, stdin)
            with Progress(stderr, f"storing {len(value)} bytes"):
                r = client.json("PUT", path, value)
            show(r, f"set {args.key!r} ({len(value)} bytes)")
        elif op == "get":
            with Progress(stderr, "looking up"):
                data, _ = client.request("GET", path)
            _write_value(args, data, stdout)
        else:
            with Progress(stderr, "deleting"):
                r = client.json("DELETE", path)
            show(r, f"deleted {args.key!r}")
    except NotFound:
        raise NotFound(f"{args.key}: not found") from None
    return 0


def main(argv: Sequence[str] | None = None, *, stdin: IO[bytes] | None = None,
         stdout: IO[bytes] | None = None, stderr: IO[str] | None = None) -> int:
    """The ``p2pnet`` console script; returns the exit status (never raises, but for
    ``--help``'s ``SystemExit(0)``)."""
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout.buffer
    stderr = stderr if stderr is not None else sys.stderr
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise CliError("a command is needed: status, peers, put, get, sync, chord, "
                           "cluster (see p2pnet --help)", 2)
        status = run(args, stdin, stdout, stderr)
    except CliError as e:
        stderr.write(f"p2pnet: {e}\n")
        status = e.status
    except KeyboardInterrupt:
        stderr.write("p2pnet: interrupted\n")
        status = 130
    except BrokenPipeError:
        status = 1
    except Exception as e:  # a bug: still one line, never a traceback
        stderr.write(f"p2pnet: unexpected error: {type(e).__name__}: {e}\n")
        status = 1
    try:
        stdout.flush()
    except (BrokenPipeError, ValueError):
        pass
    return status


def console_script() -> None:
    """Entry point of the ``p2pnet`` console script."""
    sys.exit(main())
