"""p2pnet beside kademlia and OpenDHT: the flash-crowd workload, one run, one machine.

For each N (default 50, 200, 1000) and each system, a fresh child process builds N nodes
on 127.0.0.1 in one process, starts the bootstrap node, then starts the other N - 1 *at
once*, each joining through the bootstrap node (a flash crowd).  When every node has
joined (or ``--join-timeout`` has passed) it runs ``--ops`` rounds of: a put of a fresh
64-byte value from a random node, then a get of that key from another random node -- one
operation in flight.  It prints, per system and N:

nodes joined · join seconds · put and get median / p99 · gets that found the value ·
mean lookup hops per put and per get (p2pnet's ``LookupStats``; the others do not say) ·
requests and datagrams sent per put and per get where countable · peak RSS per node ·
CPU seconds -- then the ratios p2pnet/OpenDHT and p2pnet/kademlia, and writes a PNG
chart of the latencies by N (``--chart``, default ``bench/compare.png``).

``--rounds R`` runs every system R times per N, the systems taken in turn (p2pnet,
kademlia, OpenDHT, p2pnet, ...), prints each round's table, then each ratio round by
round with its median: on a machine whose speed drifts (a shared VM), a ratio of two runs
made minutes apart says more about the drift than about the systems.

The peers live only in the bench environment (``./dev bench compare`` builds
``.benchenv`` from the ``bench`` extra); a system that cannot be imported is skipped
with a note.  Prints figures only; asserts nothing.

    ./dev bench compare [--nodes 50 200 1000] [--ops 100] [--systems p2pnet kademlia opendht]
                        [--settle 1] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchlib import (
    RESULT,
    child_env,
    cpu_seconds,
    fmt_cell,
    num,
    pct,
    peak_rss_mib,
    react,
    rss_mib,
    run_for_result,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
VALUE_SIZE = 64
SYSTEMS = ("p2pnet", "kademlia", "opendht")


class Figures:
    def __init__(self, system: str, n: int) -> None:
        self.d: dict[str, Any] = {"system": system, "n": n, "rss_base_mib": rss_mib()}
        self.cpu0 = cpu_seconds()

    def __setitem__(self, k: str, v: Any) -> None:
        self.d[k] = v

    def latencies(self, prefix: str, xs: list[float]) -> None:
        self.d[f"{prefix}_med_ms"] = statistics.median(xs) * 1e3 if xs else float("nan")
        self.d[f"{prefix}_p99_ms"] = pct(xs, 99) * 1e3
        self.d[f"{prefix}_samples_ms"] = [x * 1e3 for x in xs]

    def joined_now(self) -> None:
        self.d["rss_per_node_kib"] = (rss_mib() - self.d["rss_base_mib"]) * 1024 / self.d["n"]

    def finish(self) -> None:
        self.d["cpu_s"] = cpu_seconds() - self.cpu0
        self.d["peak_rss_mib"] = peak_rss_mib()
        self.d["peak_rss_per_node_kib"] = ((self.d["peak_rss_mib"] - self.d["rss_base_mib"])
                                           * 1024 / self.d["n"])
        print(RESULT + json.dumps(self.d), flush=True)


def workload(args: argparse.Namespace, n: int) -> list[tuple[int, int, str, bytes]]:
    """(writer, reader, key, value) per round: the same for every system."""
    rng = random.Random(args.seed * 1_000_003 + n)
    rounds = []
    for i in range(args.ops):
        w = rng.randrange(n)
        r = rng.randrange(n - 1)
        r = r if r < w else r + 1  # another node than the writer
        rounds.append((w, r, f"compare-{n}-{i}", rng.randbytes(VALUE_SIZE)))
    return rounds


async def put_get_rounds(
    args: argparse.Namespace,
    fig: Figures,
    put: Callable[[int, str, bytes], Awaitable[Any]],
    get: Callable[[int, str], Awaitable[Any]],
    counted: Callable[[], tuple[int, int]],
) -> None:
    """The workload's rounds, one at a time: a put by the writer node, then a get by the
    reader node; latencies, gets found, and (requests, datagrams) per op by ``counted``."""
    n = fig.d["n"]
    puts, gets, found = [], [], 0
    put_cost = [0, 0]
    get_cost = [0, 0]
    for w, r, key, value in workload(args, n):
        c0 = counted()
        t = time.perf_counter()
        try:
            await put(w, key, value)
        except Exception:
            pass
        puts.append(time.perf_counter() - t)
        c1 = counted()
        t = time.perf_counter()
        try:
            got = await get(r, key)
        except Exception:
            got = None
        gets.append(time.perf_counter() - t)
        c2 = counted()
        found += got == value
        put_cost = [put_cost[0] + c1[0] - c0[0], put_cost[1] + c1[1] - c0[1]]
        get_cost = [get_cost[0] + c2[0] - c1[0], get_cost[1] + c2[1] - c1[1]]
    ops = max(args.ops, 1)
    fig.latencies("put", puts)
    fig.latencies("get", gets)
    fig["found_pct"] = 100 * found / ops
    fig["req_per_put"], fig["dg_per_put"] = put_cost[0] / ops, put_cost[1] / ops
    fig["req_per_get"], fig["dg_per_get"] = get_cost[0] / ops, get_cost[1] / ops


# -- p2pnet ------------------------------------------------------------------------------


async def run_p2pnet(args: argparse.Namespace) -> None:
    from twisted.internet import defer, reactor, task

    from p2pnet.dht.service import DHTService

    n = args.n
    fig = Figures("p2pnet", n)
    services: list[DHTService] = []

    def counted() -> tuple[int, int]:
        return (sum(s.network.protocol.stats.requests_out for s in services),
                sum(s.network.protocol.stats.datagrams_out for s in services))

    try:
        boot = DHTService(port=0, interface=HOST, reactor=reactor)
        services.append(boot)
        boot.startService()
        await boot.when_joined()
        t0 = time.perf_counter()
        for _ in range(n - 1):
            s = DHTService(port=0, interface=HOST, reactor=reactor,
                           bootstrap=[boot.network.address])
            services.append(s)
            s.startService()
        waits = [s.when_joined() for s in services[1:]]
        joined = {"n": 1, "last": t0}

        def one(ok: Any) -> None:
            if ok is True:
                joined["n"] += 1
                joined["last"] = time.perf_counter()

        for w in waits:
            w.addBoth(one)
        deadline = t0 + args.join_timeout
        while joined["n"] < n and time.perf_counter() < deadline:
            await task.deferLater(reactor, 0.05, lambda: None)
        fig["joined"] = joined["n"]
        fig["join_s"] = joined["last"] - t0
        fig.joined_now()
        await task.deferLater(reactor, args.settle, lambda: None)

        from p2pnet.dht.lookup import LookupStats

        hops: dict[str, list[int]] = {"put": [], "get": []}

        def put(w: int, key: str, value: bytes) -> Any:
            stats = LookupStats()
            d = services[w].network.put(key, value, stats=stats)
            return d.addBoth(lambda r: (hops["put"].append(stats.hops), r)[1])

        def get(r: int, key: str) -> Any:
            stats = LookupStats()
            d = services[r].network.get(key, stats=stats)
            return d.addBoth(lambda res: (hops["get"].append(stats.hops), res)[1])

        await put_get_rounds(args, fig, put, get, counted)
        for op, xs in hops.items():
            fig[f"hops_{op}"] = statistics.mean(xs) if xs else float("nan")
    finally:
        await defer.gatherResults([defer.maybeDeferred(s.stopService)
                                   for s in services if s.running], consumeErrors=True)
    fig.finish()


# -- kademlia (asyncio) -------------------------------------------------------------------


async def run_kademlia(args: argparse.Namespace) -> None:
    import asyncio
    import logging

    from kademlia.network import Server
    from kademlia.protocol import KademliaProtocol

    logging.getLogger("kademlia").setLevel(logging.CRITICAL)
    logging.getLogger("rpcudp").setLevel(logging.CRITICAL)
    n = args.n
    fig = Figures("kademlia", n)
    counts = {"dg": 0, "req": 0}

    class CountingTransport:
        def __init__(self, transport: Any) -> None:
            self._t = transport

        def sendto(self, data: bytes, addr: Any = None) -> None:
            counts["dg"] += 1
            # rpcudp frames: b"\x00" request, b"\x01" response
            counts["req"] += data[:1] == b"\x00"
            self._t.sendto(data, addr)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._t, name)

    class CountingProtocol(KademliaProtocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(CountingTransport(transport))

    class CountingServer(Server):
        protocol_class = CountingProtocol

    servers: list[Server] = []
    try:
        boot = CountingServer()
        await boot.listen(0, interface=HOST)
        servers.append(boot)
        boot_addr = boot.transport.get_extra_info("sockname")[:2]
        t0 = time.perf_counter()
        for _ in range(n - 1):
            s = CountingServer()
            await s.listen(0, interface=HOST)
            servers.append(s)
        joined = {"n": 1, "last": t0}

        async def join(s: Server) -> None:
            try:
                await s.bootstrap([boot_addr])
            except Exception:
                return
            if any(len(b) for b in s.protocol.router.buckets):
                joined["n"] += 1
                joined["last"] = time.perf_counter()

        try:
            await asyncio.wait_for(asyncio.gather(*(join(s) for s in servers[1:])),
                                   args.join_timeout)
        except TimeoutError:
            pass
        fig["joined"] = joined["n"]
        fig["join_s"] = joined["last"] - t0
        fig.joined_now()
        await asyncio.sleep(args.settle)

        await put_get_rounds(args, fig, lambda w, key, value: servers[w].set(key, value),
                             lambda r, key: servers[r].get(key),
                             lambda: (counts["req"], counts["dg"]))
    finally:
        for s in servers:
            s.stop()
        await asyncio.sleep(0)
    fig.finish()


# -- OpenDHT (C++, its own threads) ----------------------------------------------------


def run_opendht(args: argparse.Namespace) -> None:
    import threading

    import opendht as dht

    n = args.n
    fig = Figures("opendht", n)
    nodes: list[Any] = []

    try:
        boot = dht.DhtRunner()
        boot.run(port=0, ipv4=HOST, ipv6="", config=dht.DhtConfig())
        nodes.append(boot)
        port = str(boot.getBound().getPort())
        t0 = time.perf_counter()
        for _ in range(n - 1):
            r = dht.DhtRunner()
            r.run(port=0, ipv4=HOST, ipv6="", config=dht.DhtConfig())
            r.bootstrap(HOST, port)
            nodes.append(r)
        # A node has joined once its routing table holds a node that answered it.
        joined_at: dict[int, float] = {0: t0}
        deadline = t0 + args.join_timeout
        while len(joined_at) < n and time.perf_counter() < deadline:
            for i, r in enumerate(nodes):
                if i not in joined_at and _opendht_joined(r):
                    joined_at[i] = time.perf_counter()
            time.sleep(0.02)
        fig["joined"] = len(joined_at)
        fig["join_s"] = max(joined_at.values()) - t0
        fig.joined_now()
        time.sleep(args.settle)

        puts, gets, found = [], [], 0
        for w, rd, key, value in workload(args, n):
            h = dht.InfoHash.get(key)
            t = time.perf_counter()
            done = threading.Event()
            nodes[w].put(h, dht.Value(value), lambda ok, ns, done=done: done.set())
            done.wait(30)
            puts.append(time.perf_counter() - t)
            t = time.perf_counter()
            got: list[bytes] = []
            first = threading.Event()

            def on_value(v: Any, got: list[bytes] = got, first: threading.Event = first
                         ) -> bool:
                got.append(bytes(v.data))
                first.set()
                return False  # stop the search at the first value, as the others do

            nodes[rd].get(h, on_value, lambda ok, ns, first=first: first.set())
            first.wait(30)
            gets.append(time.perf_counter() - t)
            found += value in got
        ops = max(args.ops, 1)
        fig.latencies("put", puts)
        fig.latencies("get", gets)
        fig["found_pct"] = 100 * found / ops
        # The binding's message counters (getNodeMessageStats) block while searches run
        # on the DHT thread, so OpenDHT's requests and datagrams per op are not counted.
        for k in ("req_per_put", "req_per_get", "dg_per_put", "dg_per_get"):
            fig[k] = float("nan")
        fig.finish()
    finally:
        # DhtRunner.join() can hang once many runners share a process; the figures are
        # out, so stop the runners and leave without waiting for their threads.
        for r in nodes:
            r.shutdown()
        sys.stdout.flush()
        os._exit(0)


def _opendht_joined(runner: Any) -> bool:
    """Whether the node's IPv4 routing table holds a good node (one that answered)."""
    try:
        return "[good]" in runner.getRoutingTablesLog(2)
    except Exception:
        return False


# -- the parent ---------------------------------------------------------------------------


def child_python(system: str, args: argparse.Namespace) -> str | None:
    module = {"p2pnet": "p2pnet", "kademlia": "kademlia", "opendht": "opendht"}[system]
    for py in (sys.executable, args.bench_python):
        if py and os.access(py, os.X_OK):
            r = subprocess.run([py, "-c", f"import {module}"], capture_output=True,
                               timeout=60, env=child_env(ROOT))
            if r.returncode == 0:
                return py
    return None


def run_child(python: str, system: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [python, os.path.abspath(__file__), "--child", system, "--n", str(n),
           "--ops", str(args.ops), "--seed", str(args.seed),
           "--join-timeout", str(args.join_timeout), "--settle", str(args.settle)]
    limit = args.join_timeout + 60 + args.ops * 70
    out = run_for_result(cmd, limit, env=child_env(ROOT), tail=4)
    return out if isinstance(out, dict) else {"system": system, "n": n, "error": out}


ROWS = [
    ("joined", "nodes joined", "{:.0f}"),
    ("join_s", "join time, all joined (s)", "{:.2f}"),
    ("put_med_ms", "put median (ms)", "{:.2f}"),
    ("put_p99_ms", "put p99 (ms)", "{:.1f}"),
    ("get_med_ms", "get median (ms)", "{:.2f}"),
    ("get_p99_ms", "get p99 (ms)", "{:.1f}"),
    ("found_pct", "gets found (%)", "{:.1f}"),
    ("hops_put", "lookup hops per put (mean)", "{:.2f}"),
    ("hops_get", "lookup hops per get (mean)", "{:.2f}"),
    ("req_per_put", "requests per put", "{:.1f}"),
    ("req_per_get", "requests per get", "{:.1f}"),
    ("dg_per_put", "datagrams sent per put", "{:.1f}"),
    ("dg_per_get", "datagrams sent per get", "{:.1f}"),
    ("rss_per_node_kib", "RSS per node after join (KiB)", "{:.0f}"),
    ("peak_rss_per_node_kib", "peak RSS per node (KiB)", "{:.0f}"),
    ("cpu_s", "CPU seconds", "{:.1f}"),
]


def print_table(n: int, results: dict[str, dict[str, Any]], title: str = "") -> None:
    print(f"\nN = {n} (all joining one bootstrap node at once; {VALUE_SIZE}-byte values)"
          + (f", {title}" if title else ""))
    ok = {s: d for s, d in results.items() if "error" not in d}
    for s, d in results.items():
        if "error" in d:
            print(f"  {s}: FAILED: {d['error']}")
    if not ok:
        return
    systems = list(ok)
    ratio_cols = [ref for ref in ("opendht", "kademlia") if ref in ok and "p2pnet" in ok]
    head = f"  {'figure':<32}" + "".join(f"{s:>11}" for s in systems)
    head += "".join(f"{'p2p/' + ('odht' if r == 'opendht' else 'kad'):>10}" for r in ratio_cols)
    print(head)
    for key, label, fmt in ROWS:
        line = f"  {label:<32}" + "".join(f"{fmt_cell(fmt, ok[s].get(key)):>11}"
                                          for s in systems)
        for ref in ratio_cols:
            a, b = num(ok["p2pnet"].get(key)), num(ok[ref].get(key))
            line += f"{fmt_cell('{:.2f}', a / b if a is not None and b else None):>10}"
        print(line)


#: the figures whose ratios are followed round by round
ROUND_ROWS = [("put_med_ms", "put median"), ("get_med_ms", "get median"),
              ("join_s", "join time"), ("rss_per_node_kib", "RSS per node after join")]


def print_round_ratios(n: int, rounds: list[dict[str, dict[str, Any]]]) -> None:
    """Each ratio p2pnet / peer, round by round, and its median over the rounds."""
    print(f"\nN = {n}, ratios over {len(rounds)} rounds (each round's runs back to back)")
    for ref, short in (("opendht", "odht"), ("kademlia", "kad")):
        for key, label in ROUND_ROWS:
            ratios = []
            for results in rounds:
                mine, theirs = results.get("p2pnet", {}), results.get(ref, {})
                if "error" in mine or "error" in theirs:
                    continue
                a, b = num(mine.get(key)), num(theirs.get(key))
                if a is not None and b:
                    ratios.append(a / b)
            if ratios:
                each = ", ".join(f"{r:.2f}" for r in ratios)
                print(f"  p2p/{short} {label:<26} {each}   median {statistics.median(ratios):.2f}")


def chart(path: str, all_results: dict[int, dict[str, dict[str, Any]]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(no chart: matplotlib is not installed in {sys.executable})")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, op in zip(axes, ("put", "get")):
        for system in SYSTEMS:
            ns, meds, p99s = [], [], []
            for n, results in sorted(all_results.items()):
                d = results.get(system)
                # a system that found under half its values failed fast: its latency
                # would flatter it, so it is left off the chart (the table shows it)
                if (d and "error" not in d and num(d.get(f"{op}_med_ms")) is not None
                        and (num(d.get("found_pct")) or 0) >= 50):
                    ns.append(n)
                    meds.append(d[f"{op}_med_ms"])
                    p99s.append(d[f"{op}_p99_ms"])
            if ns:
                line, = ax.plot(ns, meds, marker="o", label=f"{system} median")
                ax.plot(ns, p99s, marker="x", linestyle="--", color=line.get_color(),
                        label=f"{system} p99")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("nodes (N)")
        ax.set_ylabel(f"{op} latency (ms)")
        ax.set_title(f"{op}: flash crowd, one op in flight")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nchart written to {path}")


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.child == "p2pnet":
        react(ROOT, lambda: run_p2pnet(args))
        return
    if args.child == "kademlia":
        import asyncio

        asyncio.run(run_kademlia(args))
        return
    if args.child == "opendht":
        run_opendht(args)
        return

    t0 = time.perf_counter()
    print(f"compare: {', '.join(args.systems)} on {HOST}, {os.cpu_count()} CPUs, python "
          f"{sys.version.split()[0]}; N = {args.nodes}; {args.ops} put+get rounds; "
          f"seed {args.seed}")
    pythons = {}
    for s in args.systems:
        py = child_python(s, args)
        if py is None:
            print(f"  {s}: not importable by {sys.executable} nor {args.bench_python}; "
                  "skipped (./dev bench compare installs the bench extra)")
        else:
            pythons[s] = py
    all_results: dict[int, dict[str, dict[str, Any]]] = {}
    for n in args.nodes:
        rounds = []
        for r in range(args.rounds):
            results = {s: run_child(py, s, n, args) for s, py in pythons.items()}
            rounds.append(results)
            print_table(n, results, f"round {r + 1} of {args.rounds}" if args.rounds > 1 else "")
            sys.stdout.flush()
        all_results[n] = rounds[-1]
        if args.rounds > 1:
            print_round_ratios(n, rounds)
            sys.stdout.flush()
    if args.chart:
        chart(args.chart, all_results)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s wall")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[50, 200, 1000])
    p.add_argument("--ops", type=int, default=100, help="put+get rounds")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--join-timeout", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds between the last join and the first put")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1,
                   help="runs of every system per N, taken in turn; prints each ratio "
                        "round by round and its median")
    p.add_argument("--chart", default=os.path.join(ROOT, "bench", "compare.png"))
    p.add_argument("--bench-python", default=os.path.join(ROOT, ".benchenv", "bin", "python"))
    p.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.nodes = [max(2, min(n, 2000)) for n in args.nodes]
    args.ops = max(1, min(args.ops, 10_000))
    args.rounds = max(1, min(args.rounds, 20))
    args.join_timeout = max(1.0, min(args.join_timeout, 600.0))
    return args


if __name__ == "__main__":
    main(sys.argv[1:])
