"""LevelDB puts and gets: direct plyvel vs DBManager (blocking) vs its Deferred API.

Run: ``.venv/bin/python bench/bench_leveldb.py [--repeats N] [--ops N]``.

Modes, each for puts then gets, alternating within every repeat:

- ``direct``        plyvel ``put``/``get`` in a loop (the reference);
- ``blocking``      ``DBManager.create_entry`` / ``load_entry`` (str <-> UTF-8 overhead);
- ``deferred x1``   the Deferred twins one call at a time (each awaited: one hop per call);
- ``deferred x100`` / ``x1000``  that many calls kept in flight (a new call as each one
  fires), so the calls of one reactor turn are coalesced into one thread hop;
- ``batch100 x10``  the caller batches: ``d_write_batch`` / ``d_load_entries`` with 100
  keys per call, 10 calls in flight;
- ``no-op x1000``   the executor alone (a no-op per call): the floor of the per-call
  Deferred cost, whatever the store does.

Prints medians of ops/s and the ratio to the direct median; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from p2pnet.store.leveldb import DBManager  # noqa: E402


def in_flight(
    reactor: Any, call: Callable[[int], defer.Deferred[Any]], n: int, window: int
) -> defer.Deferred[float]:
    """Run ``call(0..n-1)`` keeping ``window`` calls in flight; fires with the seconds taken."""
    done: defer.Deferred[float] = defer.Deferred()
    state = {"next": 0, "out": 0}
    start = time.perf_counter()

    def issue() -> None:
        i = state["next"]
        state["next"] = i + 1
        state["out"] += 1
        call(i).addCallbacks(finished, failed)

    def finished(_: object) -> None:
        state["out"] -= 1
        if state["next"] < n:
            issue()
        elif state["out"] == 0:
            done.callback(time.perf_counter() - start)

    def failed(f: Any) -> None:
        if not done.called:
            done.errback(f)

    for _ in range(min(window, n)):
        issue()
    return done


@defer.inlineCallbacks
def one_repeat(reactor: Any, db: DBManager, ops: int, serial_ops: int, value: str) -> Any:
    """One pass over every mode; {(mode, op): ops/s}."""
    raw = db.raw
    keys = [f"k{i:08d}" for i in range(ops)]
    bkeys = [k.encode() for k in keys]
    bvalue = value.encode()
    rates: dict[tuple[str, str], float] = {}

    t = time.perf_counter()
    for k in bkeys:
        raw.put(k, bvalue)
    rates[("direct", "put")] = ops / (time.perf_counter() - t)
    t = time.perf_counter()
    for k in bkeys:
        raw.get(k)
    rates[("direct", "get")] = ops / (time.perf_counter() - t)

    t = time.perf_counter()
    for k in keys:
        db.create_entry(k, value)
    rates[("blocking", "put")] = ops / (time.perf_counter() - t)
    t = time.perf_counter()
    for k in keys:
        db.load_entry(k)
    rates[("blocking", "get")] = ops / (time.perf_counter() - t)

    t = time.perf_counter()
    for k in keys[:serial_ops]:
        yield db.d_create_entry(k, value)
    rates[("deferred x1", "put")] = serial_ops / (time.perf_counter() - t)
    t = time.perf_counter()
    for k in keys[:serial_ops]:
        yield db.d_load_entry(k)
    rates[("deferred x1", "get")] = serial_ops / (time.perf_counter() - t)

    for window in (100, 1000):
        mode = f"deferred x{window}"
        hops0 = db.executor.hops
        secs = yield in_flight(reactor, lambda i: db.d_create_entry(keys[i], value), ops, window)
        rates[(mode, "put")] = ops / secs
        secs = yield in_flight(reactor, lambda i: db.d_load_entry(keys[i]), ops, window)
        rates[(mode, "get")] = ops / secs
        rates[(mode, "calls/hop")] = 2 * ops / max(1, db.executor.hops - hops0)

    # The caller batches: 100 keys per call (one write batch / one multi-get), 10 in flight.
    chunks = [keys[i : i + 100] for i in range(0, ops, 100)]
    secs = yield in_flight(
        reactor, lambda i: db.d_write_batch(puts=[(k, value) for k in chunks[i]]), len(chunks), 10
    )
    rates[("batch100 x10", "put")] = ops / secs
    secs = yield in_flight(reactor, lambda i: db.d_load_entries(chunks[i]), len(chunks), 10)
    rates[("batch100 x10", "get")] = ops / secs

    noop = db.executor
    secs = yield in_flight(reactor, lambda i: noop.submit(int), ops, 1000)
    rates[("no-op x1000", "put")] = rates[("no-op x1000", "get")] = ops / secs
    return rates


@defer.inlineCallbacks
def main(reactor: Any, argv: list[str]) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ops", type=int, default=50_000)
    parser.add_argument("--serial-ops", type=int, default=3_000)
    parser.add_argument("--value-size", type=int, default=100)
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="p2pnet-bench-leveldb-")
    db = DBManager(os.path.join(tmp, "db"), reactor=reactor)
    db.start()
    runs: list[dict[tuple[str, str], float]] = []
    value = "v" * args.value_size
    try:
        started = time.perf_counter()
        for r in range(args.repeats):
            runs.append((yield one_repeat(reactor, db, args.ops, args.serial_ops, value)))
            print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)
        elapsed = time.perf_counter() - started
    finally:
        yield db.stop()
        db.close()
        shutil.rmtree(tmp, ignore_errors=True)

    def median(mode: str, op: str) -> float:
        return statistics.median(run[(mode, op)] for run in runs)

    print(
        f"LevelDB, {args.ops} ops per measurement ({args.serial_ops} for x1), "
        f"{args.value_size}-byte values, medians of {args.repeats} alternating repeats "
        f"({elapsed:.1f} s)"
    )
    print(f"{'mode':<14}{'put ops/s':>12}{'vs direct':>11}{'get ops/s':>12}{'vs direct':>11}")
    modes = [
        "direct",
        "blocking",
        "deferred x1",
        "deferred x100",
        "deferred x1000",
        "batch100 x10",
        "no-op x1000",
    ]
    for mode in modes:
        put, get = median(mode, "put"), median(mode, "get")
        print(
            f"{mode:<14}{put:>12,.0f}{put / median('direct', 'put'):>10.2f}x"
            f"{get:>12,.0f}{get / median('direct', 'get'):>10.2f}x"
        )
    for window in (100, 1000):
        print(f"calls per thread hop, x{window}: {median(f'deferred x{window}', 'calls/hop'):.0f}")


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
