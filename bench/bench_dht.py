"""N-node DHT networks on 127.0.0.1: bootstrap, put/get latency, success, cost, memory.

For each N (default 10, 50 and 200) a child process builds N p2pnet ``DHTService`` nodes
in one reactor, joined through one bootstrap node, and measures:

* bootstrap seconds until all N have joined (joins ``--join-batch`` at a time);
* put latency median / p99 (``--puts`` small values, each from a random node, one at a
  time) and get latency median / p99 (``--gets`` gets of those, from random nodes);
* get success %; replicas per put; datagrams sent per put and per get (summed over every
  node's ``protocol.stats.datagrams_out``); nodes contacted per lookup beside log2(N);
* ``--big`` values of 1 MiB: put latency, and gets from ``--big-gets`` random nodes each;
* pings/s between two nodes of the network (100 in flight);
* peak RSS, the RSS the N nodes added (per node), CPU seconds.

When the ``kademlia`` package (asyncio, the reference) can be imported -- here, or in
the interpreter named by ``--reference-python`` (default ``.venv-bench/bin/python`` in
the checkout) -- the same figures are measured for it in a separate child process and
the ratios printed.  Each N runs in fresh processes, so peak RSS is per N.

Prints figures only; asserts nothing.

    python bench/bench_dht.py [--nodes 10 50 200] [--puts 50] [--gets 200] [--big 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from typing import Any

from benchlib import (
    RESULT,
    child_env,
    cpu_seconds,
    fmt_cell,
    med,
    pct,
    peak_rss_mib,
    react,
    rss_mib,
    run_for_result,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
BIG = 1024 * 1024
SMALL = 100  # bytes per small value
PING_INFLIGHT = 100
PING_SECONDS = 1.0
CHILD_TIMEOUT = 600  # seconds, per child process (a bound, never reached normally)


class Figures:
    """What a child measures; printed as one JSON line for the parent."""

    def __init__(self, impl: str, n: int) -> None:
        self.d: dict[str, Any] = {"impl": impl, "n": n}
        self.t0 = time.perf_counter()
        self.cpu0 = cpu_seconds()
        self.d["rss_base_mib"] = rss_mib()

    def __setitem__(self, k: str, v: Any) -> None:
        self.d[k] = v

    def latencies(self, prefix: str, xs: list[float]) -> None:
        self.d[f"{prefix}_med_ms"] = med(xs) * 1e3
        self.d[f"{prefix}_p99_ms"] = pct(xs, 99) * 1e3

    def finish(self) -> None:
        self.d["wall_s"] = time.perf_counter() - self.t0
        self.d["cpu_s"] = cpu_seconds() - self.cpu0
        self.d["peak_rss_mib"] = peak_rss_mib()
        print(RESULT + json.dumps(self.d), flush=True)


# -- p2pnet child ----------------------------------------------------------------------


async def run_p2pnet(args: argparse.Namespace) -> None:
    from twisted.internet import defer, reactor, task

    from p2pnet import ids
    from p2pnet.dht.service import DHTService

    n, rng = args.n, random.Random(args.seed)
    fig = Figures("p2pnet", n)
    services: list[DHTService] = []

    def datagrams() -> int:
        return sum(s.network.protocol.stats.datagrams_out for s in services)

    def lookups() -> tuple[int, int]:
        return (sum(s.network.lookups for s in services),
                sum(s.network.lookup_contacts for s in services))

    def new(bootstrap: list[tuple[str, int]]) -> DHTService:
        s = DHTService(port=0, interface=HOST, bootstrap=bootstrap, reactor=reactor)
        services.append(s)
        s.startService()
        return s

    try:
        t0 = time.perf_counter()
        boot = new([])
        await boot.when_joined()
        joined = 1
        for i in range(1, n, args.join_batch):
            batch = [new([boot.network.address]) for _ in range(min(args.join_batch, n - i))]
            oks = await defer.gatherResults([s.when_joined() for s in batch])
            joined += sum(1 for ok in oks if ok)
        fig["bootstrap_s"] = time.perf_counter() - t0
        fig["joined"] = joined
        fig["rss_nodes_mib"] = rss_mib() - fig.d["rss_base_mib"]
        fig["contacts_med"] = med([s.network.routing_table.num_contacts for s in services])
        await task.deferLater(reactor, 0.2, lambda: None)  # let join stragglers settle

        # small puts, one at a time
        values = {f"key-{i}": rng.randbytes(SMALL) for i in range(args.puts)}
        lat, replicas = [], []
        dg0, (lk0, lc0) = datagrams(), lookups()
        for name, value in values.items():
            s = rng.choice(services)
            t = time.perf_counter()
            try:
                replicas.append(await s.network.put(name, value))
            except Exception:
                replicas.append(0)
            lat.append(time.perf_counter() - t)
        (lk1, lc1) = lookups()
        fig.latencies("put", lat)
        fig["put_ok_pct"] = 100 * sum(1 for r in replicas if r > 0) / max(len(replicas), 1)
        fig["replicas_med"] = med(replicas)
        fig["dg_per_put"] = (datagrams() - dg0) / max(args.puts, 1)
        put_lookups = (lk1 - lk0, lc1 - lc0)

        # small gets from random nodes, one at a time
        lat, ok, local = [], 0, 0
        names = list(values)
        dg0, (lk0, lc0) = datagrams(), lookups()
        for _ in range(args.gets):
            s, name = rng.choice(services), rng.choice(names)
            local += bool(s.network.kvp_table.records_for_key(ids.key_for(name.encode())))
            t = time.perf_counter()
            try:
                got = await s.network.get(name)
            except Exception:
                got = None
            lat.append(time.perf_counter() - t)
            ok += got == values[name]
        (lk1, lc1) = lookups()
        fig.latencies("get", lat)
        fig["get_ok_pct"] = 100 * ok / max(args.gets, 1)
        fig["get_local_pct"] = 100 * local / max(args.gets, 1)
        fig["dg_per_get"] = (datagrams() - dg0) / max(args.gets, 1)
        get_lookups = (lk1 - lk0, lc1 - lc0)
        fig["lookups_counted"] = put_lookups[0] + get_lookups[0]
        fig["contacts_per_put_lookup"] = put_lookups[1] / max(put_lookups[0], 1)
        fig["contacts_per_get_lookup"] = get_lookups[1] / max(get_lookups[0], 1)

        # 1 MiB values: put from a random node, got from --big-gets random nodes
        put_lat, get_lat, big_ok, big_tries = [], [], 0, 0
        for i in range(args.big):
            value = rng.randbytes(BIG)
            s = rng.choice(services)
            t = time.perf_counter()
            try:
                await s.network.put(f"big-{i}", value)
            except Exception:
                pass
            put_lat.append(time.perf_counter() - t)
            for g in rng.sample(services, min(args.big_gets, n)):
                big_tries += 1
                t = time.perf_counter()
                try:
                    got = await g.network.get(f"big-{i}")
                except Exception:
                    got = None
                get_lat.append(time.perf_counter() - t)
                big_ok += got == value
        fig.latencies("big_put", put_lat)
        fig.latencies("big_get", get_lat)
        fig["big_get_ok_pct"] = 100 * big_ok / big_tries if big_tries else float("nan")

        # pings/s between two nodes of the network
        if n >= 2:
            a, b = services[-1].network, services[-2].network
            fig["pings_per_s"] = await _p2pnet_pings(a, b.address)
    finally:
        await defer.gatherResults([s.stopService() for s in services if s.running])
    fig.finish()


async def _p2pnet_pings(net: Any, address: tuple[str, int]) -> float:
    from twisted.internet import defer, reactor, task

    state = {"done": 0, "go": True, "out": 0}
    drained: defer.Deferred[None] = defer.Deferred()

    def fired(result: Any) -> None:
        state["out"] -= 1
        state["done"] += result is not False
        if state["go"]:
            one()
        elif state["out"] == 0 and not drained.called:
            drained.callback(None)

    def one() -> None:
        state["out"] += 1
        net.ping_address(address).addCallback(fired)

    t0 = time.perf_counter()
    for _ in range(PING_INFLIGHT):
        one()
    await task.deferLater(reactor, PING_SECONDS, lambda: None)
    rate = state["done"] / (time.perf_counter() - t0)
    state["go"] = False
    if state["out"]:
        await drained.addTimeout(10, reactor)
    return rate


# -- kademlia (asyncio) child -----------------------------------------------------------


async def run_kademlia(args: argparse.Namespace) -> None:
    import asyncio
    import logging

    from kademlia import crawling
    from kademlia.network import Server
    from kademlia.protocol import KademliaProtocol
    from kademlia.utils import digest

    logging.getLogger("kademlia").setLevel(logging.CRITICAL)
    logging.getLogger("rpcudp").setLevel(logging.CRITICAL)
    n, rng = args.n, random.Random(args.seed)
    fig = Figures("kademlia", n)
    counts = {"datagrams": 0, "lookups": 0, "contacts": 0}

    class CountingTransport:
        def __init__(self, transport: Any) -> None:
            self._t = transport

        def sendto(self, data: bytes, addr: Any = None) -> None:
            counts["datagrams"] += 1
            self._t.sendto(data, addr)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._t, name)

    class CountingProtocol(KademliaProtocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(CountingTransport(transport))

        async def call_find_node(self, node_to_ask: Any, node_to_find: Any) -> Any:
            counts["contacts"] += 1
            return await super().call_find_node(node_to_ask, node_to_find)

        async def call_find_value(self, node_to_ask: Any, node_to_find: Any) -> Any:
            counts["contacts"] += 1
            return await super().call_find_value(node_to_ask, node_to_find)

    spider_init = crawling.SpiderCrawl.__init__

    def counting_init(self: Any, *a: Any, **kw: Any) -> None:
        counts["lookups"] += 1
        spider_init(self, *a, **kw)

    crawling.SpiderCrawl.__init__ = counting_init  # type: ignore[method-assign]

    class CountingServer(Server):
        protocol_class = CountingProtocol

    servers: list[Server] = []

    async def new() -> Server:
        s = CountingServer()
        await s.listen(0, interface=HOST)
        servers.append(s)
        return s

    def address(s: Server) -> tuple[str, int]:
        return s.transport.get_extra_info("sockname")[:2]

    try:
        t0 = time.perf_counter()
        boot = await new()
        boot_addr = address(boot)
        joined = 1
        for i in range(1, n, args.join_batch):
            batch = [await new() for _ in range(min(args.join_batch, n - i))]
            await asyncio.gather(*(s.bootstrap([boot_addr]) for s in batch))
            joined += sum(1 for s in batch
                          if any(len(b) for b in s.protocol.router.buckets))
        fig["bootstrap_s"] = time.perf_counter() - t0
        fig["joined"] = joined
        fig["rss_nodes_mib"] = rss_mib() - fig.d["rss_base_mib"]
        fig["contacts_med"] = med([sum(len(b) for b in s.protocol.router.buckets)
                                   for s in servers])
        await asyncio.sleep(0.2)

        values = {f"key-{i}": rng.randbytes(SMALL) for i in range(args.puts)}
        lat, oks = [], []
        dg0, lk0, lc0 = counts["datagrams"], counts["lookups"], counts["contacts"]
        for name, value in values.items():
            s = rng.choice(servers)
            t = time.perf_counter()
            try:
                oks.append(bool(await s.set(name, value)))
            except Exception:
                oks.append(False)
            lat.append(time.perf_counter() - t)
        fig.latencies("put", lat)
        fig["put_ok_pct"] = 100 * sum(oks) / max(len(oks), 1)
        fig["replicas_med"] = float("nan")  # kademlia's set() does not say
        fig["dg_per_put"] = (counts["datagrams"] - dg0) / max(args.puts, 1)
        fig["contacts_per_put_lookup"] = ((counts["contacts"] - lc0)
                                          / max(counts["lookups"] - lk0, 1))
        lk0, lc0 = counts["lookups"], counts["contacts"]

        lat, ok, local = [], 0, 0
        names = list(values)
        dg0 = counts["datagrams"]
        for _ in range(args.gets):
            s, name = rng.choice(servers), rng.choice(names)
            local += s.storage.get(digest(name)) is not None
            t = time.perf_counter()
            try:
                got = await s.get(name)
            except Exception:
                got = None
            lat.append(time.perf_counter() - t)
            ok += got == values[name]
        fig.latencies("get", lat)
        fig["get_ok_pct"] = 100 * ok / max(args.gets, 1)
        fig["get_local_pct"] = 100 * local / max(args.gets, 1)
        fig["dg_per_get"] = (counts["datagrams"] - dg0) / max(args.gets, 1)
        fig["contacts_per_get_lookup"] = ((counts["contacts"] - lc0)
                                          / max(counts["lookups"] - lk0, 1))
        # 1 MiB values do not fit: rpcudp caps a request at 8 KiB (one datagram).
        for k in ("big_put_med_ms", "big_put_p99_ms", "big_get_med_ms", "big_get_p99_ms",
                  "big_get_ok_pct"):
            fig[k] = float("nan")

        if n >= 2:
            fig["pings_per_s"] = await _kademlia_pings(servers[-1], address(servers[-2]))
    finally:
        for s in servers:
            s.stop()
        await asyncio.sleep(0)
    fig.finish()


async def _kademlia_pings(server: Any, addr: tuple[str, int]) -> float:
    import asyncio

    state = {"done": 0, "go": True}

    async def worker() -> None:
        while state["go"]:
            ok, _ = await server.protocol.ping(addr, server.node.id)
            state["done"] += bool(ok)

    t0 = time.perf_counter()
    workers = [asyncio.ensure_future(worker()) for _ in range(PING_INFLIGHT)]
    await asyncio.sleep(PING_SECONDS)
    rate = state["done"] / (time.perf_counter() - t0)
    state["go"] = False
    await asyncio.wait_for(asyncio.gather(*workers), 15)
    return rate


# -- the parent: one child per (implementation, N), then the table ------------------------


def reference_python(args: argparse.Namespace) -> str | None:
    """An interpreter that can import ``kademlia``, or None."""
    candidates = [sys.executable]
    if args.reference_python:
        candidates.insert(0, args.reference_python)
    for py in candidates:
        if not os.access(py, os.X_OK):
            continue
        r = subprocess.run([py, "-c", "import kademlia"], capture_output=True, timeout=60)
        if r.returncode == 0:
            return py
    return None


def run_child(python: str, impl: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    env = child_env(ROOT)
    cmd = [python, os.path.abspath(__file__), "--child", impl, "--n", str(n),
           "--puts", str(args.puts), "--gets", str(args.gets), "--big", str(args.big),
           "--big-gets", str(args.big_gets), "--join-batch", str(args.join_batch),
           "--seed", str(args.seed)]
    out = run_for_result(cmd, CHILD_TIMEOUT, env=env, tail=5)
    return out if isinstance(out, dict) else {"impl": impl, "n": n, "error": out}


ROWS = [
    # key, label, format, better ("lower" / "higher" / "")
    ("joined", "nodes joined", "{:.0f}", "higher"),
    ("bootstrap_s", "bootstrap, all N (s)", "{:.2f}", "lower"),
    ("contacts_med", "routing contacts per node (median)", "{:.0f}", ""),
    ("put_med_ms", "put latency median (ms)", "{:.1f}", "lower"),
    ("put_p99_ms", "put latency p99 (ms)", "{:.1f}", "lower"),
    ("put_ok_pct", "puts stored (%)", "{:.1f}", "higher"),
    ("replicas_med", "replicas per put (median)", "{:.0f}", ""),
    ("get_med_ms", "get latency median (ms)", "{:.1f}", "lower"),
    ("get_p99_ms", "get latency p99 (ms)", "{:.1f}", "lower"),
    ("get_ok_pct", "get success (%)", "{:.1f}", "higher"),
    ("get_local_pct", "gets by a node holding the key (%)", "{:.1f}", ""),
    ("dg_per_put", "datagrams sent per put", "{:.1f}", "lower"),
    ("dg_per_get", "datagrams sent per get", "{:.1f}", "lower"),
    ("contacts_per_put_lookup", "nodes contacted per put lookup", "{:.1f}", ""),
    ("contacts_per_get_lookup", "nodes contacted per get lookup", "{:.1f}", ""),
    ("big_put_med_ms", "1 MiB put latency median (ms)", "{:.0f}", "lower"),
    ("big_get_med_ms", "1 MiB get latency median (ms)", "{:.0f}", "lower"),
    ("big_get_p99_ms", "1 MiB get latency p99 (ms)", "{:.0f}", "lower"),
    ("big_get_ok_pct", "1 MiB get success (%)", "{:.1f}", "higher"),
    ("pings_per_s", "pings/s between two nodes", "{:,.0f}", "higher"),
    ("peak_rss_mib", "peak RSS (MiB)", "{:.1f}", "lower"),
    ("rss_per_node_kib", "RSS per node (KiB)", "{:.0f}", "lower"),
    ("cpu_s", "CPU seconds (whole run)", "{:.2f}", "lower"),
    ("wall_s", "wall seconds (whole run)", "{:.2f}", "lower"),
]


def print_table(n: int, mine: dict[str, Any], ref: dict[str, Any] | None) -> None:
    print(f"\nN = {n} nodes on {HOST} (log2 N = {math.log2(n):.2f})")
    for d in (mine, ref):
        if d and "error" in d:
            print(f"  {d['impl']} FAILED: {d['error']}")
    if "error" in mine:
        return
    if ref is not None and "error" in ref:
        ref = None
    for d in (mine, ref):
        if d:
            d["rss_per_node_kib"] = d["rss_nodes_mib"] * 1024 / n
    head = f"  {'figure':<36}{'p2pnet':>12}"
    if ref is not None:
        head += f"{'kademlia':>12}{'p2pnet/kad':>12}  better"
    print(head)
    for key, label, fmt, better in ROWS:
        line = f"  {label:<36}{fmt_cell(fmt, mine.get(key)):>12}"
        if ref is not None:
            a, b = mine.get(key), ref.get(key)
            ratio = (a / b if isinstance(a, (int, float)) and isinstance(b, (int, float))
                     and b and not math.isnan(a) and not math.isnan(b) else None)
            line += f"{fmt_cell(fmt, b):>12}{fmt_cell('{:.2f}', ratio):>12}  {better}"
        print(line)
    print(f"  (contacts per lookup: nodes sent a findnode/findval in one iterative "
          f"lookup, alpha = 3 per step; p2pnet ends a lookup when the k = 20 closest have "
          f"answered, so it contacts at least min(N - 1, 20) and then grows about like "
          f"log2 N = {math.log2(n):.2f}; kademlia's get stops at the first holder, and "
          f"a get by a node holding the key makes no lookup in kademlia)")


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.child == "p2pnet":
        react(ROOT, lambda: run_p2pnet(args))
        return
    if args.child == "kademlia":
        import asyncio

        asyncio.run(run_kademlia(args))
        return

    t0 = time.perf_counter()
    print("p2pnet DHT benchmark: N-node networks on 127.0.0.1, each N in fresh processes")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {args.puts} puts of "
          f"{SMALL} B values, {args.gets} gets, {args.big} x 1 MiB values got from "
          f"{args.big_gets} nodes each; joins {args.join_batch} at a time; seed {args.seed}")
    ref_py = None if args.no_reference else reference_python(args)
    if ref_py:
        print(f"reference: kademlia (asyncio) run by {ref_py}")
    elif args.no_reference:
        print("reference: skipped (--no-reference)")
    else:
        print("reference: kademlia is not importable here nor by --reference-python "
              f"({args.reference_python}); skipped.  Install it in its own environment:\n"
              f"  python3 -m venv {ROOT}/.venv-bench && "
              f"{ROOT}/.venv-bench/bin/pip install twisted attrs zope.interface plyvel "
              "txzmq kademlia\n  (or the `bench` extra: pip install '.[bench]')")
    for n in args.nodes:
        mine = run_child(sys.executable, "p2pnet", n, args)
        ref = run_child(ref_py, "kademlia", n, args) if ref_py else None
        print_table(n, mine, ref)
        sys.stdout.flush()
    print(f"\ntotal {time.perf_counter() - t0:.1f} s wall")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[10, 50, 200],
                   help="network sizes (each 2..1000)")
    p.add_argument("--puts", type=int, default=50)
    p.add_argument("--gets", type=int, default=200)
    p.add_argument("--big", type=int, default=3, help="1 MiB values to put")
    p.add_argument("--big-gets", type=int, default=5, help="gets of each 1 MiB value")
    p.add_argument("--join-batch", type=int, default=20, help="nodes joining at once")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--reference-python", default=os.path.join(ROOT, ".venv-bench", "bin",
                                                              "python"))
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--child", choices=["p2pnet", "kademlia"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.nodes = [max(2, min(n, 1000)) for n in args.nodes]
    args.puts = max(1, min(args.puts, 10_000))
    args.gets = max(1, min(args.gets, 100_000))
    args.big = max(0, min(args.big, 20))
    args.big_gets = max(1, min(args.big_gets, 50))
    args.join_batch = max(1, min(args.join_batch, 1000))
    return args


if __name__ == "__main__":
    main(sys.argv[1:])
