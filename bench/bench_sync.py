"""SyncSocket over real loopback ZeroMQ: time for a set to reach the last node, sets/s.

For N in ``--nodes`` (3 5 10 50) and two shapes -- a chain (node i linked to i+1, the set
made at one end) and a random mesh of average degree 4 (a ring plus random links) -- it
builds N :class:`~p2pnet.mesh.socket.MeshSocket` nodes, each with a
:class:`~p2pnet.sync.socket.SyncSocket`, in one process, and prints over ``--rounds``
(20) sets made one after the other on node 0: the median and max time until the *last*
node fired ``'update'`` for it.  Then sets per second from one node: ``--count`` (5000)
sets of distinct keys with at most ``--window`` (200) not yet at the last node, on a
2-node pair and on a 10-node chain.

Beside it, py2p 0.7's ``SyncSocket`` (threads and TCP; it joins every peer it hears of,
so its "chain" is only the order of the first connections) runs the same measures in a
child process with the bench environment's python (``--py2p-python``, default
``.benchenv/bin/python``; py2p is never installed in the test venv), for
``--py2p-nodes`` (3 5 10 50), each size under a time budget: where py2p does not get a
set to every node the script says so and goes on.

Prints figures only; asserts nothing.

    python bench/bench_sync.py [--nodes 10 50] [--rounds 20] [--count 5000] [--no-py2p]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # measure the checkout's p2pnet, not a stale installed copy

from benchlib import chain, random_mesh, turn, wait_until  # noqa: E402


def fmt_times(times: list[float]) -> str:
    if not times:
        return f"{'-':>11}{'-':>9}"
    return f"{statistics.median(times):>11.2f}{max(times):>9.2f}"


# -- p2pnet -----------------------------------------------------------------------------


def run_p2pnet(args: argparse.Namespace) -> None:
    from twisted.internet import defer, task

    from p2pnet.mesh.socket import MeshSocket
    from p2pnet.sync.socket import SyncSocket


    class Net:
        def __init__(self, n: int, edges: list[tuple[int, int]], shared: Any) -> None:
            self.n, self.edges, self.shared = n, edges, shared
            self.meshes: list[MeshSocket] = []
            self.socks: list[SyncSocket] = []
            self.arrivals: dict[bytes, list[float]] = {}

        async def start(self) -> None:
            for _ in range(self.n):
                mesh = MeshSocket("127.0.0.1", 0, zmq_factory=self.shared)
                mesh.startService()
                await mesh.when_ready()
                sync = SyncSocket(mesh, anti_entropy=None)
                sync.on("update", self._arrived)
                self.meshes.append(mesh)
                self.socks.append(sync)
            for a, b in self.edges:
                addr = self.meshes[b].address
                assert addr is not None
                await self.meshes[a].connect(*addr)
            ok = await wait_until(lambda: all(
                len(s._synced) == len(m.peers()) == len(self.degree(i))
                for i, (s, m) in enumerate(zip(self.socks, self.meshes, strict=True))))
            assert ok, "links did not come up"

        def degree(self, i: int) -> list[int]:
            return [b if a == i else a for a, b in self.edges if i in (a, b)]

        def _arrived(self, sock: SyncSocket, key: bytes, value: Any, lease: Any) -> None:
            self.arrivals.setdefault(key, []).append(time.perf_counter())

        async def stop(self) -> None:
            for mesh in self.meshes:
                await mesh.stopService()

    async def latency(net: Net, rounds: int) -> tuple[list[float], int]:
        times, missed = [], 0
        for r in range(rounds):
            key = b"lat-%d" % r
            t0 = time.perf_counter()
            net.socks[0][key] = b"x" * 64
            ok = await wait_until(lambda key=key: len(net.arrivals.get(key, ())) >= net.n, 10)
            if not ok:
                missed += 1
                continue
            times.append((max(net.arrivals[key]) - t0) * 1000)
            await turn(0.002)
        return times, missed

    async def throughput(net: Net, count: int, window: int) -> tuple[float, float]:
        last = net.socks[-1]
        got = [0]
        last.on("update", lambda *a: got.__setitem__(0, got[0] + 1))
        src = net.socks[0]
        t0 = time.perf_counter()
        sent = 0
        local = 0.0
        while sent < count:
            while sent < count and sent - got[0] < window:
                t = time.perf_counter()
                src[b"rate-%d" % sent] = b"y" * 64
                local += time.perf_counter() - t
                sent += 1
            ok = await wait_until(
                lambda sent=sent: sent - got[0] < window // 2 or got[0] >= count, 30)
            if not ok:
                break
        await wait_until(lambda: got[0] >= count, 30)
        return got[0] / (time.perf_counter() - t0), sent / local if local else 0.0

    async def bulk(net: Net, count: int, per_call: int) -> float:
        """Keys/s reaching the last node when written ``per_call`` at a time by update()."""
        last = net.socks[-1]
        got = [0]
        last.on("update", lambda *a: got.__setitem__(0, got[0] + 1))
        t0 = time.perf_counter()
        for start in range(0, count, per_call):
            net.socks[0].update({b"bulk-%d" % i: b"z" * 64
                                 for i in range(start, min(count, start + per_call))})
            await wait_until(lambda start=start: got[0] >= start, 30)
        await wait_until(lambda: got[0] >= count, 30)
        return got[0] / (time.perf_counter() - t0)

    async def main() -> None:
        from txzmq import ZmqFactory

        shared = ZmqFactory()
        rng = random.Random(args.seed)
        print("p2pnet SyncSocket on MeshSocket over loopback ZeroMQ (one process, "
              "one ZeroMQ context)")
        print(f"{'shape':<18}{'N':>4}{'links':>7}{'median ms':>11}{'max ms':>9}"
              f"{'missed':>8}")
        for n in args.nodes:
            for shape, edges in (("chain", chain(n)),
                                 ("random degree 4", random_mesh(n, rng))):
                net = Net(n, edges, shared)
                t0 = time.perf_counter()
                await net.start()
                setup = time.perf_counter() - t0
                times, missed = await latency(net, args.rounds)
                print(f"{shape:<18}{n:>4}{len(edges):>7}{fmt_times(times)}{missed:>8}"
                      f"   (setup {setup:.2f}s)")
                await net.stop()
        print()
        print(f"sets/s from one node ({args.count} distinct keys, 64-byte values, "
              f"window {args.window})")
        for n in (2, 10):
            net = Net(n, chain(n), shared)
            await net.start()
            rate, local = await throughput(net, args.count, args.window)
            print(f"  chain of {n:>2}: {rate:>9.0f} sets/s reaching the last node "
                  f"({local:,.0f}/s for the set call alone)")
            rate = await bulk(net, args.count, 100)
            print(f"  chain of {n:>2}: {rate:>9.0f} keys/s reaching the last node with "
                  f"update() of 100 keys a call (one message each)")
            await net.stop()
        shared.shutdown()

    task.react(lambda _: defer.Deferred.fromCoroutine(main()))


# -- py2p (child process, bench env) --------------------------------------------------------


def free_ports(n: int) -> list[int]:
    held, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        held.append(s)
        ports.append(s.getsockname()[1])
    for s in held:
        s.close()
    return ports


def py2p_child(args: argparse.Namespace) -> None:
    """Runs under the bench env's python; prints one JSON line per measure."""
    import logging

    from py2p import sync  # type: ignore[import-not-found]

    logging.disable(logging.CRITICAL)
    rng = random.Random(args.seed)

    def emit(**kw: Any) -> None:
        print(json.dumps(kw), flush=True)

    def build(n: int, edges: list[tuple[int, int]]) -> tuple[list[Any], float]:
        ports = free_ports(n)
        t0 = time.perf_counter()
        socks: list[Any] = []
        try:
            for p in ports:
                socks.append(sync.SyncSocket("127.0.0.1", p))
            for a, b in edges:
                socks[a].connect("127.0.0.1", ports[b])
                time.sleep(0.02)
        except BaseException:
            close(socks)
            raise
        deadline = time.monotonic() + min(10.0, 1.0 + 0.2 * n)
        while time.monotonic() < deadline:  # wait for the first connections
            if all(len(s.routing_table) >= 1 for s in socks):
                break
            time.sleep(0.01)
        time.sleep(0.5)
        return socks, time.perf_counter() - t0

    def close(socks: list[Any]) -> int:
        errors = sum(len(getattr(s.daemon, "exceptions", ())) for s in socks)
        for s in socks:
            try:
                s.close()
            except Exception:
                pass
        return errors

    def rate() -> None:
        n = min(args.py2p_nodes)
        socks, _ = build(n, chain(n))
        count = min(args.count, 2000)
        t0 = time.perf_counter()
        for i in range(count):
            socks[0].set(b"rate-%d" % i, b"y" * 64)
        local = time.perf_counter() - t0
        last = socks[-1]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and last.get(b"rate-%d" % (count - 1)) is None:
            time.sleep(0.001)
        done = sum(last.get(b"rate-%d" % i) is not None for i in range(count))
        total = time.perf_counter() - t0
        errors = close(socks)
        emit(kind="rate", n=n, count=count, reached=done, seconds=total,
             local=count / local, errors=errors)

    def latency(n: int, shape: str, edges: list[tuple[int, int]]) -> None:
        socks, setup = build(n, edges)
        times: list[float] = []
        reached: list[int] = []
        for r in range(args.rounds):
            key = b"lat-%d" % r
            t0 = time.perf_counter()
            socks[0].set(key, b"x" * 64)
            deadline = t0 + args.py2p_wait
            while time.perf_counter() < deadline:
                if all(s.get(key) is not None for s in socks):
                    break
                time.sleep(0.0002)
            have = sum(s.get(key) is not None for s in socks)
            reached.append(have)
            if have == n:
                times.append((time.perf_counter() - t0) * 1000)
        errors = close(socks)
        emit(kind="latency", shape=shape, n=n, times=times, rounds=args.rounds,
             reached=reached, errors=errors, setup=setup)

    try:
        rate()
    except Exception as e:  # py2p fails in many ways; say so and go on
        emit(kind="error", shape="sets/s", n=min(args.py2p_nodes), error=repr(e))
    for n in args.py2p_nodes:
        for shape, edges in (("chain", chain(n)), ("random degree 4", random_mesh(n, rng))):
            try:
                latency(n, shape, edges)
            except Exception as e:
                emit(kind="error", shape=shape, n=n, error=repr(e))


def run_py2p(args: argparse.Namespace) -> None:
    python = args.py2p_python
    if not os.path.exists(python):
        print(f"\npy2p: no bench environment at {python}; skipped")
        return
    cmd = [python, os.path.abspath(__file__), "--py2p-child", "--rounds", str(args.rounds),
           "--count", str(args.count), "--seed", str(args.seed),
           "--py2p-wait", str(args.py2p_wait),
           "--py2p-nodes", *map(str, args.py2p_nodes)]
    print(f"\npy2p 0.7 SyncSocket (threads + TCP, {python})")
    print(f"{'shape':<18}{'N':>4}{'median ms':>11}{'max ms':>9}{'sets at all nodes':>19}"
          f"{'peer errors':>13}")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.py2p_timeout,
                             cwd="/tmp")
        lines = out.stdout.splitlines()
        if out.returncode:
            tail = out.stderr.strip().splitlines()[-3:]
            print(f"  (py2p child exited with {out.returncode}: {' | '.join(tail)})")
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout or b""
        lines = (stdout.decode() if isinstance(stdout, bytes) else stdout).splitlines()
        print(f"  (py2p child killed after {args.py2p_timeout}s)")
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r["kind"] == "latency":
            full = sum(1 for h in r["reached"] if h == r["n"])
            ratio = f"{full} of {r['rounds']}"
            print(f"{r['shape']:<18}{r['n']:>4}{fmt_times(r['times'])}{ratio:>19}"
                  f"{r['errors']:>13}   (setup {r['setup']:.2f}s)")
        elif r["kind"] == "rate":
            rate = r["reached"] / r["seconds"] if r["seconds"] else 0.0
            print(f"  sets/s, chain of {r['n']}: {r['reached']} of {r['count']} reached the "
                  f"last node, {rate:,.0f} sets/s ({r['local']:,.0f}/s for the set call "
                  f"alone), {r['errors']} peer errors")
        elif r["kind"] == "error":
            print(f"{r['shape']:<18}{r['n']:>4}   failed: {r['error'][:70]}")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[3, 5, 10, 50])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--window", type=int, default=200)
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--no-py2p", action="store_true")
    p.add_argument("--py2p-only", action="store_true")
    p.add_argument("--py2p-python", default=os.path.join(ROOT, ".benchenv", "bin", "python"))
    p.add_argument("--py2p-nodes", type=int, nargs="+", default=[3, 5, 10, 50])
    p.add_argument("--py2p-wait", type=float, default=2.0,
                   help="seconds to wait for one py2p set to reach every node")
    p.add_argument("--py2p-timeout", type=float, default=600.0)
    p.add_argument("--py2p-child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.py2p_child:
        try:
            py2p_child(arguments)
        finally:
            sys.stdout.flush()
            os._exit(0)  # py2p's threads are not daemons: never hang on one
    else:
        if not arguments.no_py2p:
            run_py2p(arguments)  # first: the reactor cannot be restarted after react()
        if not arguments.py2p_only:
            run_p2pnet(arguments)
