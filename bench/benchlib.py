"""Measuring helpers shared by the bench scripts (stdlib only at import time).

The bench scripts run as ``python bench/bench_X.py`` (or ``./dev bench X``), so this
directory is first on ``sys.path`` and they import this module as ``benchlib``.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

RESULT = "RESULT "  # a child prints its figures as one line: RESULT {json}


# -- this process ----------------------------------------------------------------------


def rss_mib() -> float:
    """Current resident set size of this process (NaN where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- statistics ------------------------------------------------------------------------


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (NaN for no samples)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


# -- child processes and tables ------------------------------------------------------------


def result_of(stdout: str) -> dict[str, Any] | None:
    """The figures a child printed on its ``RESULT`` line, or None."""
    for line in stdout.splitlines():
        if line.startswith(RESULT):
            result: dict[str, Any] = json.loads(line[len(RESULT):])
            return result
    return None


def num(v: Any) -> float | None:
    """``v`` as a float, or None when it is missing, NaN or not a number."""
    if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
        return float(v)
    return None


def fmt_cell(fmt: str, v: Any) -> str:
    """``fmt.format(v)``, or ``n/a`` for a missing or NaN figure."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return fmt.format(v)


# -- mesh shapes and waiting on the reactor ------------------------------------------------


def chain(n: int) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(n - 1)]


def random_mesh(n: int, rng: random.Random, degree: int = 4) -> list[tuple[int, int]]:
    """A ring plus random links until the mean degree is about ``degree``."""
    edges = {(i, (i + 1) % n) for i in range(n)} if n > 2 else set(chain(n))
    edges = {(min(a, b), max(a, b)) for a, b in edges}
    tries = 0
    while len(edges) < n * degree // 2 and tries < 100 * n:
        tries += 1
        a, b = rng.randrange(n), rng.randrange(n)
        if a != b:
            edges.add((min(a, b), max(a, b)))
    return sorted(edges)


async def turn(seconds: float = 0.0) -> None:
    """Let the global reactor run for ``seconds``."""
    from twisted.internet import reactor, task

    await task.deferLater(reactor, seconds, lambda: None)


async def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``cond`` on the reactor until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await turn(0.0005)
    return True


# -- the parent and child processes ---------------------------------------------------------


def child_env(root: str) -> dict[str, str]:
    """This environment, with the checkout ``root`` first on a child's ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [root, env.get("PYTHONPATH")] if p)
    return env


def react(root: str, main: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """Run the coroutine ``main()`` on the Twisted reactor to its end (this exits), with
    the checkout ``root`` first on ``sys.path``."""
    sys.path.insert(0, root)
    from twisted.internet import defer, task

    task.react(lambda _r: defer.ensureDeferred(main()))


def run_for_result(cmd: list[str], timeout: float, env: dict[str, str] | None = None,
                   tail: int = 5, cwd: str | None = None) -> dict[str, Any] | str:
    """Run a child to its end: the figures of its ``RESULT`` line, or why there are none
    (the timeout, or its exit status and the last ``tail`` lines it wrote)."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                           cwd=cwd)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    result = result_of(r.stdout)
    if result is not None:
        return result
    lines = (r.stderr or r.stdout).strip().splitlines()[-tail:]
    return f"exit {r.returncode}: " + " | ".join(lines)


def lines_process() -> Any:
    """A Twisted ``ProcessProtocol`` that queues the child's stdout lines (``.lines``, a
    ``DeferredQueue``), passes its stderr on, and fires ``.ended`` when it exits; ``.pid``
    once started.  (Twisted is imported here, not at module import.)"""
    from twisted.internet import defer, protocol

    class LinesProcess(protocol.ProcessProtocol):
        def __init__(self) -> None:
            self.buf = b""
            self.lines: defer.DeferredQueue[str] = defer.DeferredQueue()
            self.ended: defer.Deferred[None] = defer.Deferred()
            self.pid = 0

        def connectionMade(self) -> None:
            self.pid = self.transport.pid

        def outReceived(self, data: bytes) -> None:
            self.buf += data
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                self.lines.put(line.decode())

        def errReceived(self, data: bytes) -> None:
            sys.stderr.write(data.decode("utf-8", "replace"))

        def processEnded(self, reason: Any) -> None:
            self.ended.callback(None)

    return LinesProcess()
