"""sqlite peer syncs: direct sqlite3 vs PeerStore (blocking) vs its Deferred API.

Run: ``.venv/bin/python bench/bench_sqlite.py [--repeats N] [--budget S] [--per-sync K]
[--dir /dev/shm]``.

A *sync* adds ``K`` new peers and merges memory with a table that starts with
``--base`` rows.  Every measurement starts from a fresh database file in a temporary
directory and runs for ``--budget`` seconds (or ``--syncs`` syncs).  Every commit is
durable (sqlite's default ``synchronous=FULL``), so on a disk the fsync per commit
sets the pace of the modes that commit once per sync.  Modes,
rotated in order from one repeat to the next:

- ``direct``        plain sqlite3, one transaction per sync: ``BEGIN IMMEDIATE``, read
  every row, insert the ``K`` rows, ``COMMIT`` (the reference);
- ``direct 1 txn``  plain sqlite3, every sync's rows inserted in one single transaction
  with one read of the table (the raw insert rate: no merge, one commit);
- ``blocking``      ``PeerStore.add_peer`` x K + ``sync_database(force=True)``;
- ``deferred x1``   the same through ``d_sync_database``, each awaited (one hop, one
  transaction per sync);
- ``deferred x100`` / ``x1000``  that many syncs kept in flight (a new one as each
  fires); the syncs of one reactor turn share a thread hop and a transaction.

Prints medians of syncs/s and rows written/s with the ratio to ``direct``; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from p2pnet.store.peer import Peer  # noqa: E402
from p2pnet.store.peerstore import SQLITE_PEERS_TABLE, PeerStore  # noqa: E402

MODES = ["direct", "direct 1 txn", "blocking", "deferred x1", "deferred x100", "deferred x1000"]


def in_flight(
    call: Callable[[int], defer.Deferred[Any]], n: int, window: int, budget: float
) -> defer.Deferred[tuple[float, int]]:
    """Run ``call(0..n-1)`` keeping ``window`` calls in flight, issuing none after
    ``budget`` seconds; fires with (seconds taken, calls done)."""
    done: defer.Deferred[tuple[float, int]] = defer.Deferred()
    state = {"next": 0, "out": 0}
    start = time.perf_counter()
    deadline = start + budget

    def issue() -> None:
        i = state["next"]
        state["next"] = i + 1
        state["out"] += 1
        call(i).addCallbacks(finished, failed)

    def finished(_: object) -> None:
        state["out"] -= 1
        if state["next"] < n and time.perf_counter() < deadline:
            issue()
        elif state["out"] == 0:
            done.callback((time.perf_counter() - start, state["next"]))

    def failed(f: Any) -> None:
        if not done.called:
            done.errback(f)

    for _ in range(min(window, n)):
        issue()
    return done


class Workload:
    """Fresh databases with ``base`` peers, and the peers each sync adds."""

    def __init__(self, tmp: str, base: int, per_sync: int) -> None:
        self.tmp = tmp
        self.base = base
        self.per_sync = per_sync
        self.count = 0

    def fresh_db(self, reactor: Any) -> tuple[str, PeerStore]:
        self.count += 1
        path = os.path.join(self.tmp, f"peers-{self.count}.db")
        store = PeerStore(path, "bench-local", reactor)
        store.start_db()
        for i in range(self.base):
            store.add_peer(Peer(b"base-%08d" % i, "10.0.0.1", i))
        store.sync_database(force=True)
        return path, store

    def peers(self, sync: int) -> Iterator[Peer]:
        first = sync * self.per_sync
        for i in range(first, first + self.per_sync):
            yield Peer(b"new-%08d" % i, f"10.1.{i // 256 % 256}.{i % 256}", 1000 + i % 5000)


def run_direct(path: str, work: Workload, syncs: int, budget: float) -> tuple[float, int]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        start = time.perf_counter()
        deadline = start + budget
        s = 0
        while s < syncs and time.perf_counter() < deadline:
            rows = [(p.uuid, p.host, p.port) for p in work.peers(s)]
            conn.execute("BEGIN IMMEDIATE")
            known = {
                r[1]
                for r in conn.execute(f"SELECT peer_id, uuid, host, port FROM {SQLITE_PEERS_TABLE}")
            }
            conn.executemany(
                f"INSERT INTO {SQLITE_PEERS_TABLE}(uuid, host, port) VALUES (?, ?, ?)",
                [r for r in rows if r[0] not in known],
            )
            conn.execute("COMMIT")
            s += 1
        return time.perf_counter() - start, s
    finally:
        conn.close()


def run_direct_one_txn(path: str, work: Workload, syncs: int, budget: float) -> tuple[float, int]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        start = time.perf_counter()
        deadline = start + budget
        conn.execute("BEGIN IMMEDIATE")
        known = {r[0] for r in conn.execute(f"SELECT uuid FROM {SQLITE_PEERS_TABLE}")}
        s = 0
        while s < syncs and time.perf_counter() < deadline:
            conn.executemany(
                f"INSERT INTO {SQLITE_PEERS_TABLE}(uuid, host, port) VALUES (?, ?, ?)",
                [(p.uuid, p.host, p.port) for p in work.peers(s) if p.uuid not in known],
            )
            s += 1
        conn.execute("COMMIT")
        return time.perf_counter() - start, s
    finally:
        conn.close()


def run_blocking(
    store: PeerStore, work: Workload, syncs: int, budget: float
) -> tuple[float, int]:
    start = time.perf_counter()
    deadline = start + budget
    s = 0
    while s < syncs and time.perf_counter() < deadline:
        for p in work.peers(s):
            store.add_peer(p)
        store.sync_database(force=True)
        s += 1
    return time.perf_counter() - start, s


@defer.inlineCallbacks
def run_serial(store: PeerStore, work: Workload, syncs: int, budget: float) -> Any:
    start = time.perf_counter()
    deadline = start + budget
    s = 0
    while s < syncs and time.perf_counter() < deadline:
        for p in work.peers(s):
            store.add_peer(p)
        yield store.d_sync_database(force=True)
        s += 1
    return time.perf_counter() - start, s


def run_window(
    store: PeerStore, work: Workload, syncs: int, window: int, budget: float
) -> defer.Deferred[tuple[float, int]]:
    def one(s: int) -> defer.Deferred[Any]:
        for p in work.peers(s):
            store.add_peer(p)
        return store.d_sync_database(force=True)

    return in_flight(one, syncs, window, budget)


@defer.inlineCallbacks
def measure(reactor: Any, mode: str, work: Workload, syncs: int, budget: float) -> Any:
    """(seconds, syncs done, thread hops) for one mode on a fresh database."""
    path, store = work.fresh_db(reactor)
    try:
        if mode == "direct":
            store.terminate_db()
            return (*run_direct(path, work, syncs, budget), 0)
        if mode == "direct 1 txn":
            store.terminate_db()
            return (*run_direct_one_txn(path, work, syncs, budget), 0)
        if mode == "blocking":
            return (*run_blocking(store, work, syncs, budget), 0)
        store.start()
        hops0 = store._executor.hops
        if mode == "deferred x1":
            secs, done = yield run_serial(store, work, syncs, budget)
        else:
            window = int(mode.split("x")[1])
            secs, done = yield run_window(store, work, syncs, window, budget)
        return secs, done, store._executor.hops - hops0
    finally:
        yield store.stop()
        store.terminate_db()
        for suffix in ("", "-journal"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)


@defer.inlineCallbacks
def main(reactor: Any, argv: list[str]) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--syncs", type=int, default=500, help="most syncs per measurement")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--per-sync", type=int, default=10)
    parser.add_argument("--base", type=int, default=1000)
    parser.add_argument(
        "--dir", default=None, help="where the temporary directory goes (e.g. /dev/shm)"
    )
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="p2pnet-bench-sqlite-", dir=args.dir)
    work = Workload(tmp, args.base, args.per_sync)
    runs: list[dict[str, tuple[float, float]]] = []
    started = time.perf_counter()
    try:
        for r in range(args.repeats):
            rates: dict[str, tuple[float, float]] = {}
            order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
            for mode in order:
                secs, done, hops = yield measure(reactor, mode, work, args.syncs, args.budget)
                rates[mode] = (done / secs, done / hops if hops else 0.0)
            runs.append(rates)
            print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - started

    def median(mode: str, i: int = 0) -> float:
        return statistics.median(run[mode][i] for run in runs)

    print(
        f"sqlite {sqlite3.sqlite_version} peer syncs on {tmp.rsplit(os.sep, 1)[0]}: "
        f"{args.per_sync} new peers per sync, table of {args.base}+ rows, up to {args.syncs} "
        f"syncs or {args.budget:g} s per measurement, medians of {args.repeats} rotating "
        f"repeats ({elapsed:.1f} s)"
    )
    print(f"{'mode':<16}{'syncs/s':>10}{'rows/s':>10}{'vs direct':>11}{'syncs/hop':>11}")
    direct = median("direct")
    for mode in MODES:
        rate = median(mode)
        per_hop = median(mode, 1)
        hop_text = f"{per_hop:>11.1f}" if per_hop else f"{'-':>11}"
        print(
            f"{mode:<16}{rate:>10,.0f}{rate * args.per_sync:>10,.0f}{rate / direct:>10.2f}x"
            f"{hop_text}"
        )


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
