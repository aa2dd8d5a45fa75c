"""MeshSocket floods over real loopback ZeroMQ: time to reach the last node, and rate.

For N in ``--nodes`` (10 50) and two shapes -- a chain (node i linked to i+1, the
broadcast starts at one end) and a random mesh of average degree 4 (a ring plus random
links) -- it builds N :class:`~p2pnet.mesh.socket.MeshSocket` nodes in one process and
prints, over ``--rounds`` (20) broadcasts sent one after the other from node 0: the
median and max time until the *last* node received it, and the duplicates dropped per
broadcast.  Then broadcasts per second from one node: ``--count`` (5000) small
broadcasts with at most ``--window`` (200) not yet at the last node, on a 2-node pair
and on the 10-node chain.

Each node has its own ZeroMQ context (one I/O thread each), as separate processes
would; ``--shared-context`` puts all nodes on one I/O thread (about half the rate on 2
cores: that thread does every node's TCP work).
Prints figures only; asserts nothing.

    python bench/bench_mesh.py [--nodes 10 50] [--rounds 20] [--count 5000]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # measure the checkout's p2pnet, not a stale installed copy

from benchlib import chain, random_mesh, turn, wait_until  # noqa: E402
from twisted.internet import defer, task  # noqa: E402

from p2pnet.mesh.interfaces import MeshMessage  # noqa: E402
from p2pnet.mesh.socket import MeshSocket  # noqa: E402


class Net:
    def __init__(self, n: int, edges: list[tuple[int, int]], shared: Any) -> None:
        self.n = n
        self.edges = edges
        self.shared = shared
        self.nodes: list[MeshSocket] = []
        self.arrivals: dict[bytes, list[float]] = {}

    async def start(self) -> None:
        for _ in range(self.n):
            sock = MeshSocket("127.0.0.1", 0, zmq_factory=self.shared)
            sock.startService()
            await sock.when_ready()
            sock.handle(b"b", self._arrived)
            self.nodes.append(sock)
        for a, b in self.edges:
            addr = self.nodes[b].address
            assert addr is not None
            await self.nodes[a].connect(*addr)
        ok = await wait_until(lambda: all(
            self.nodes[a].peer_id in self.nodes[b].peers() for a, b in self.edges))
        assert ok, "links did not come up"

    def _arrived(self, msg: MeshMessage) -> None:
        assert msg.msg_id is not None
        self.arrivals.setdefault(msg.msg_id, []).append(time.perf_counter())

    def dropped(self) -> int:
        return sum(s.stats["broadcast_seen"] for s in self.nodes)

    async def stop(self) -> None:
        for sock in self.nodes:
            await sock.stopService()


async def latency(net: Net, rounds: int) -> tuple[list[float], float]:
    times = []
    before = net.dropped()
    for _ in range(rounds):
        t0 = time.perf_counter()
        mid = net.nodes[0].broadcast(b"x" * 64, channel=b"b")
        ok = await wait_until(lambda mid=mid: len(net.arrivals.get(mid, ())) >= net.n - 1, 10)
        if not ok:
            print(f"    broadcast reached {len(net.arrivals.get(mid, ()))} of {net.n - 1}")
            continue
        times.append((max(net.arrivals[mid]) - t0) * 1000)
        await turn(0.002)
    for mid, got in net.arrivals.items():
        if len(got) != net.n - 1:
            print(f"    !! {mid.hex()} delivered {len(got)} times for {net.n - 1} nodes")
    return times, (net.dropped() - before) / max(1, rounds)


async def throughput(net: Net, count: int, window: int) -> float:
    last = net.nodes[-1]
    got = [0]
    last.handle(b"r", lambda m: got.__setitem__(0, got[0] + 1))
    src = net.nodes[0]
    t0 = time.perf_counter()
    sent = 0
    while sent < count:
        while sent < count and sent - got[0] < window:
            src.broadcast(b"y" * 64, channel=b"r")
            sent += 1
        ok = await wait_until(lambda sent=sent: sent - got[0] < window // 2 or got[0] >= count,
                              30)
        if not ok:
            break
    await wait_until(lambda: got[0] >= count, 30)
    return got[0] / (time.perf_counter() - t0)


async def main(args: argparse.Namespace) -> None:
    from txzmq import ZmqFactory

    shared = ZmqFactory() if args.shared_context else None
    rng = random.Random(args.seed)
    contexts = "one context" if shared else "a context per node"
    print(f"MeshSocket flood over loopback ZeroMQ ({contexts})")
    print(f"{'shape':<18}{'N':>4}{'links':>7}{'median ms':>11}{'max ms':>9}{'dups/bcast':>12}")
    for n in args.nodes:
        for shape, edges in (("chain", chain(n)), ("random degree 4", random_mesh(n, rng))):
            net = Net(n, edges, shared)
            t0 = time.perf_counter()
            await net.start()
            setup = time.perf_counter() - t0
            times, dups = await latency(net, args.rounds)
            if times:
                print(f"{shape:<18}{n:>4}{len(edges):>7}{statistics.median(times):>11.2f}"
                      f"{max(times):>9.2f}{dups:>12.1f}   (setup {setup:.2f}s)")
            await net.stop()
    print()
    print(f"broadcasts/s from one node ({args.count} of 64 bytes, window {args.window})")
    for n in (2, 10):
        net = Net(n, chain(n), shared)
        await net.start()
        rate = await throughput(net, args.count, args.window)
        print(f"  chain of {n:>2}: {rate:>9.0f} broadcasts/s reaching the last node")
        await net.stop()
    if shared is not None:
        shared.shutdown()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[10, 50])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--window", type=int, default=200)
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--shared-context", action="store_true")
    return p.parse_args()


if __name__ == "__main__":
    arguments = parse()
    task.react(lambda _: defer.Deferred.fromCoroutine(main(arguments)))
