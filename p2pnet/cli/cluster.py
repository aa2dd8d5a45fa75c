# -*- test-case-name: tests.test_cli -*-
"""``p2pnet cluster N``: N real nodes (``twistd -n p2pnode`` processes) on loopback.

Node 0 listens on the base port (UDP; its mesh on base + 1), node i on base + 2i and joins
through node 0.  Each has its own data directory under one parent directory, and logs
to ``node.log`` there.  The command waits until every node is ready and joined, prints
how to talk to them, and on Ctrl-C (or SIGTERM) stops them all with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import IO, Any

from p2pnet.cli.client import CliError, ControlClient

#: seconds to wait for the nodes to start and join, and to stop
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
MAX_NODES = 64


def twistd_command() -> list[str]:
    """How to run twistd from this Python (the script beside it, or ``-m twisted``)."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "twisted"]


def node_command(data_dir: str, port: int, bootstrap: int | None) -> list[str]:
    cmd = twistd_command() + [
        "-n", f"--pidfile={os.path.join(data_dir, 'twistd.pid')}",
        f"--logfile={os.path.join(data_dir, 'node.log')}",
        "p2pnode", "--data-dir", data_dir, "--interface", "127.0.0.1", "--port", str(port)]
    if bootstrap is not None:
        cmd += ["--bootstrap", f"127.0.0.1:{bootstrap}"]
    return cmd


def _status(data_dir: str) -> dict[str, Any] | None:
    try:
        status: dict[str, Any] = ControlClient(data_dir, timeout=2.0).json("GET", "/status")
        return status
    except (CliError, urllib.error.URLError, OSError):
        return None


def run_cluster(n: int, *, base_port: int = 14455, parent: str | None = None,
                out: IO[str] = sys.stderr) -> int:
    """Start the nodes, wait for Ctrl-C, stop them; the exit status."""
    if not 1 <= n <= MAX_NODES:
        raise CliError(f"a cluster has 1..{MAX_NODES} nodes", 2)
    if not 1024 <= base_port <= 65535 - 2 * n:
        raise CliError(f"--base-port must leave room for {2 * n} ports below 65536", 2)
    parent = os.path.abspath(parent) if parent else tempfile.mkdtemp(prefix="p2pnet-cluster-")
    os.makedirs(parent, exist_ok=True)
    env = dict(os.environ)
    procs: list[subprocess.Popen[bytes]] = []
    dirs = [os.path.join(parent, f"node{i}") for i in range(n)]
    stopping = False

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_signal)
    try:
        for i, data_dir in enumerate(dirs):
            os.makedirs(data_dir, exist_ok=True)
            port = base_port + 2 * i
            cmd = node_command(data_dir, port, None if i == 0 else base_port)
            procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE))
        out.write(f"starting {n} nodes in {parent} ...\n")
        out.flush()
        from p2pnet.cli.main import Progress

        with Progress(out, f"waiting for {n} nodes to start and join"):
            _wait_ready(procs, dirs)
        out.write(f"{n} nodes ready and joined\n")
        _print_help(dirs, base_port, parent, out)
        # no reactor runs in this process (the nodes are children): block until one of
        # them exits, without reaping it (WNOWAIT: its Popen still reads its status)
        while all(p.poll() is None for p in procs):
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        dead = [i for i, p in enumerate(procs) if p.poll() is not None]
        out.write(f"node {dead[0]} exited (status {procs[dead[0]].returncode}); see "
                  f"{os.path.join(dirs[dead[0]], 'node.log')}; stopping the others\n")
        return 1
    except KeyboardInterrupt:
        stopping = True
        out.write("\nstopping the nodes ...\n")
        return 0
    finally:
        signal.signal(signal.SIGTERM, old)
        _stop_all(procs, out)
        if stopping:
            out.write(f"stopped; data kept in {parent}\n")
        out.flush()


def _wait_ready(procs: list[subprocess.Popen[bytes]], dirs: list[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    pending = set(range(len(dirs)))
    while pending:
        for i in sorted(pending):
            proc = procs[i]
            if proc.poll() is not None:
                err = (proc.stderr.read() if proc.stderr else b"").decode("utf-8", "replace")
                line = err.strip().splitlines()[-1] if err.strip() else ""
                raise CliError(f"node {i} exited at start (status {proc.returncode})"
                               + (f": {line}" if line else
                                  f"; see {os.path.join(dirs[i], 'node.log')}"))
            s = _status(dirs[i])
            if s is not None and s.get("ready") and s.get("joined"):
                pending.discard(i)
        if pending and time.monotonic() > deadline:
            raise CliError(f"nodes {sorted(pending)} did not become ready within "
                           f"{START_TIMEOUT:g}s; see their node.log")
        if pending:
            # a poll of the nodes' status files, in a process that runs no reactor
            time.sleep(0.2)


def _print_help(dirs: list[str], base_port: int, parent: str, out: IO[str]) -> None:
    lines = ["", "node  DHT (UDP)        mesh (TCP)       data directory"]
    for i, d in enumerate(dirs):
        s = _status(d) or {}
        a = s.get("addresses", {})
        lines.append(f"{i:<5} {a.get('dht') or '-':<16} {a.get('mesh') or '-':<16} {d}")
    first, last = dirs[0], dirs[-1]
    lines += [
        "",
        "talk to them with the p2pnet command, e.g.:",
        f"  p2pnet -d {first} put greeting hello",
        f"  p2pnet -d {last} get greeting",
        f"  p2pnet -d {first} sync set colour blue",
        f"  p2pnet -d {last} sync get colour",
        f"  p2pnet -d {last} status",
        f"join another node: twistd -n p2pnode -d DIR --interface 127.0.0.1 "
        f"--port {base_port + 2 * len(dirs)} --bootstrap 127.0.0.1:{base_port}",
        "",
        "Ctrl-C stops them all.",
        "",
    ]
    out.write("\n".join(lines))
    out.flush()


def _stop_all(procs: list[subprocess.Popen[bytes]], out: IO[str]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_TIMEOUT
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            out.write(f"node pid {p.pid} did not stop in time; killing it\n")
            p.kill()
            p.wait()
        if p.stderr is not None:
            p.stderr.close()


__all__ = ["node_command", "run_cluster", "twistd_command"]
