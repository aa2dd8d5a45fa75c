"""A flash crowd: N DHT nodes in one process all join one bootstrap node at once.

Then ``--ops`` times: a random node puts a 64-byte value under a new key, and another
random node gets it (one operation in flight).  Prints the nodes joined, the time until
the last one joined, put and get median and p99, gets found, and datagrams (sent by all
nodes, requests and answers) per put and per get.

Without ``--loss`` the nodes run on real loopback UDP in the global reactor (times are
wall-clock).  With ``--loss`` (or ``--memory``) they run on the in-memory network with
that datagram loss rate and 1 ms latency, on a simulated clock (times are simulated; the
CPU seconds the simulation took are printed too).

    python bench/bench_flashcrowd.py --nodes 1000
    python bench/bench_flashcrowd.py --nodes 1000 --loss 0.02

Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchlib import cpu_seconds, pct  # noqa: E402

VALUE_SIZE = 64


def joined_of(s: Any) -> bool:
    return getattr(s, "joined", None) is True


def report(args: argparse.Namespace, mode: str, services: list[Any], join_s: float,
           puts: list[float], gets: list[float], found: int, dg_put: int, dg_get: int,
           cpu_s: float, join_cpu: float | None = None, idle: int | None = None) -> None:
    n = len(services)
    ops = max(args.ops, 1)
    print(f"mode {mode}  N={n}  loss={args.loss:g}  seed={args.seed}")
    print(f"joined           {sum(joined_of(s) for s in services)} of {n}")
    print(f"join time        {join_s:.2f} s (until the last node joined)")
    if join_cpu is not None:
        print(f"join cpu         {join_cpu:.1f} s (CPU seconds until the last node joined)")
    retried = sum(1 for s in services if getattr(getattr(s, "joiner", None), "rounds", 1) > 1)
    print(f"joined after >1 round  {retried} nodes")
    contacts = statistics.median(s.network.routing_table.num_contacts for s in services)
    print(f"contacts median  {contacts:.0f}")
    print(f"put median/p99   {statistics.median(puts) * 1e3:.1f} / {pct(puts, 99) * 1e3:.1f} ms"
          if puts else "put              none")
    print(f"get median/p99   {statistics.median(gets) * 1e3:.1f} / {pct(gets, 99) * 1e3:.1f} ms"
          if gets else "get              none")
    print(f"gets found       {found} of {args.ops} ({100 * found / ops:.1f}%)")
    print(f"datagrams/put    {dg_put / ops:.1f}")
    print(f"datagrams/get    {dg_get / ops:.1f}")
    if idle is not None:
        print(f"idle datagrams/s {idle} (all nodes, in the second before the first put)")
    print(f"cpu seconds      {cpu_s:.1f}")


def datagrams(services: list[Any]) -> int:
    return sum(s.network.protocol.stats.datagrams_out for s in services)


async def workload(args: argparse.Namespace, services: list[Any], now: Any,
                   rng: random.Random) -> tuple[list[float], list[float], int, int, int]:
    puts: list[float] = []
    gets: list[float] = []
    found = dg_put = dg_get = 0
    for i in range(args.ops):
        writer, reader = rng.sample(services, 2)
        value = rng.randbytes(VALUE_SIZE)
        name = f"flash-{args.seed}-{i}"
        d0, t = datagrams(services), now()
        try:
            await writer.network.put(name, value)
        except Exception as e:
            print(f"put {i} failed: {e!r}")
        puts.append(now() - t)
        d1, t = datagrams(services), now()
        dg_put += d1 - d0
        try:
            got = await reader.network.get(name)
        except Exception as e:
            got = None
            if args.verbose:
                print(f"get {i} failed: {e!r}")
        gets.append(now() - t)
        dg_get += datagrams(services) - d1
        found += got == value
    return puts, gets, found, dg_put, dg_get


def run_udp(args: argparse.Namespace) -> None:
    from twisted.internet import defer, reactor, task

    from p2pnet.dht.service import DHTService

    rng = random.Random(args.seed)
    services: list[DHTService] = []
    out: dict[str, Any] = {}
    cpu0 = cpu_seconds()

    async def main() -> None:
        boot = DHTService(port=0, interface="127.0.0.1", reactor=reactor,
                          join_policy=policy(args))
        services.append(boot)
        boot.startService()
        address = boot.network.address
        t0 = time.perf_counter()
        for _ in range(args.nodes - 1):
            s = DHTService(port=0, interface="127.0.0.1", bootstrap=[address],
                           reactor=reactor, join_policy=policy(args))
            services.append(s)
            s.startService()
        last = [t0]

        def one_joined(_: object) -> None:
            last[0] = time.perf_counter()
            out["join_cpu"] = cpu_seconds() - cpu0

        for s in services[1:]:
            s.when_joined().addCallback(one_joined)
        while time.perf_counter() - t0 < args.join_timeout:
            if all(joined_of(s) for s in services):
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        out["join_s"] = last[0] - t0
        await task.deferLater(reactor, args.settle, lambda: None)
        d0 = datagrams(services)
        await task.deferLater(reactor, 1.0, lambda: None)
        out["idle"] = datagrams(services) - d0
        out["w"] = await defer.Deferred.fromCoroutine(
            workload(args, services, time.perf_counter, rng))

    def stop(result: Any) -> Any:
        d = defer.gatherResults([s.stopService() for s in services if s.running],
                                consumeErrors=True)
        d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]
        return result

    def start() -> None:
        d = defer.Deferred.fromCoroutine(main())
        d.addErrback(lambda f: print(f.getTraceback()))
        d.addBoth(stop)

    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if "w" in out:
        report(args, "udp", services, out["join_s"], *out["w"], cpu_seconds() - cpu0,
               out.get("join_cpu"), out.get("idle"))


def policy(args: argparse.Namespace) -> Any:
    from p2pnet.dht.service import JoinPolicy

    if args.young is None:
        return None
    young = tuple(float(x) for x in args.young.split(",") if x)
    return JoinPolicy(young_refreshes=young)


def run_memory(args: argparse.Namespace) -> None:
    from twisted.internet import defer

    from p2pnet.dht.service import DHTService
    from p2pnet.sim.memory import MemoryNetwork
    from p2pnet.sim.reactor import HeapClock, MemoryReactor

    rng = random.Random(args.seed)
    clock = HeapClock()
    net = MemoryNetwork(clock, latency=0.001, loss=args.loss, seed=args.seed)
    reactor = MemoryReactor(clock, net)
    cpu0 = cpu_seconds()
    ids = random.Random(args.seed * 7919)
    boot = DHTService(port=4000, interface="127.0.0.1", reactor=reactor,
                      node_id=ids.randbytes(20), rng=random.Random(args.seed),
                      join_policy=policy(args))
    services = [boot]
    boot.startService()
    for i in range(1, args.nodes):
        s = DHTService(port=4000 + i, interface="127.0.0.1", bootstrap=[boot.network.address],
                       reactor=reactor, node_id=ids.randbytes(20),
                       rng=random.Random(args.seed * 100_003 + i),
                       join_policy=policy(args))
        services.append(s)
        s.startService()
    state = {"last": 0.0, "count": 0}

    def one_joined(_: object) -> None:
        state["count"] += 1
        state["last"] = clock.seconds()
        state["cpu"] = cpu_seconds() - cpu0

    for s in services:
        s.when_joined().addCallback(one_joined)

    def all_joined() -> bool:
        return state["count"] == len(services)

    clock.run_until(all_joined, args.join_timeout)
    clock.advance(args.settle)
    d0 = datagrams(services)
    clock.advance(1.0)
    idle = datagrams(services) - d0
    d = clock.run_deferred(defer.Deferred.fromCoroutine(
        workload(args, services, clock.seconds, rng)), 3600.0)
    result: list[Any] = []
    d.addBoth(result.append)
    for s in services:
        s.stopService()
    if result and isinstance(result[0], tuple):
        report(args, "memory", services, state["last"], *result[0], cpu_seconds() - cpu0,
               state.get("cpu"), idle)
    else:
        print("workload did not finish:", result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", "-n", type=int, default=200)
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--memory", action="store_true", help="in-memory network even at 0 loss")
    p.add_argument("--ops", type=int, default=100, help="put+get pairs")
    p.add_argument("--join-timeout", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=40.0,
                   help="seconds after joining (past the young bucket refreshes)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--young", default=None,
                   help="seconds of the young bucket refreshes, comma-separated "
                        "(default: JoinPolicy's; '' for none)")
    p.add_argument("--verbose", "-v", action="store_true")
    args = p.parse_args()
    if args.loss or args.memory:
        run_memory(args)
    else:
        run_udp(args)


if __name__ == "__main__":
    main()
