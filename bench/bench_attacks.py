"""Wire-level attacks on a DHT node, before and after the defences (issue 11 #13, #14).

1. **Amplification** (in-memory network, exact byte counts): every RPC's request is sent
   with a forged source address (a third party's); the bytes that party receives, divided
   by the bytes of the request, is the amplification ratio.  "before" is the node with
   ``Limits(answer_amplification=0)`` (the bound off: the answers of the landed code, with
   the v2 framing); "after" is the default limits.  The same requests from an address that
   proved itself are answered in full (last column).

2. **Request flood** (real loopback UDP; the target in a child process, so the flood
   competes for its CPU as it would): one address sends pings as fast as it can while an
   honest node pings the target 50 times a second; printed are the honest pings answered,
   their latency, the attacker's answers, the target's refusals and its RSS.  "before" is
   the target with its rate limits off, "after" the defaults.

Prints figures only; asserts nothing.

    python bench/bench_attacks.py [--flood-seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchlib import child_env, lines_process  # noqa: E402
from twisted.internet import defer, protocol, reactor, stdio, task  # noqa: E402

from p2pnet import ids  # noqa: E402
from p2pnet.dht import codec  # noqa: E402
from p2pnet.dht.limits import Limits  # noqa: E402
from p2pnet.dht.network import DHTNetwork  # noqa: E402
from p2pnet.dht.protocol import tune_udp_port  # noqa: E402
from p2pnet.dht.table import KVPRecord  # noqa: E402
from p2pnet.sim.memory import MemoryNetwork  # noqa: E402

NETID = b"p2pnet"
VICTIM = ("93.184.216.34", 80)
OFF = Limits(rate_per_source=0, rate_per_prefix=0, rate_global=0)

# -- 1. amplification ------------------------------------------------------------------


def _settle(clock: task.Clock, seconds: float) -> None:
    end = clock.seconds() + seconds
    while clock.getDelayedCalls() and clock.seconds() < end:
        nxt = min(c.getTime() for c in clock.getDelayedCalls())
        clock.advance(max(0.0, min(nxt, end) - clock.seconds()) + 1e-9)


def amplification() -> None:
    rows: dict[str, list[Any]] = {}
    for label, limits in [("before", Limits(answer_amplification=0)), ("after", Limits())]:
        clock = task.Clock()
        net = MemoryNetwork(clock)
        node = DHTNetwork(clock, limits=limits)
        net.attach(node.protocol, "10.0.0.1", 4000)
        peers = []
        for i in range(20):  # 20 contacts, so findnode answers are full
            p = DHTNetwork(clock)
            net.attach(p.protocol, f"10.0.{i + 1}.1", 4000)
            p.ping_address(node.address)
            peers.append(p)
        _settle(clock, 1)
        now = clock.seconds()
        value = os.urandom(64 * 1024)
        key, index = b"\x42" * 20, ids.key_for(value)
        node.kvp_table.put(KVPRecord(key, index, len(value), now), value)
        many = b"\x43" * 20
        for i in range(codec.MAX_VALUES):
            v = b"value %d" % i
            node.kvp_table.put(KVPRecord(many, ids.key_for(v), len(v), now + i), v)
        _settle(clock, 1)
        requests: list[tuple[str, codec.Body]] = [
            ("ping", codec.PingRequest()),
            ("findnode", codec.FindNodeRequest(b"\x00" * 20)),
            ("findval (nodes)", codec.FindValueRequest(b"\x00" * 20)),
            ("findval (64 values)", codec.FindValueRequest(many)),
            ("store (pull offer)", codec.StoreRequest(key, b"\x01" * 20, 1000, now)),
            ("getval 16 KiB", codec.GetValueRequest(key, index, 0, 16 * 1024)),
            ("getval 60 KiB", codec.GetValueRequest(key, index, 0, 60 * 1024)),
            ("getval not held", codec.GetValueRequest(b"\x09" * 20, index, 0, 60 * 1024)),
        ]
        got: dict[tuple[str, int], int] = {}
        def count(s: Any, d: Any, data: bytes, got: dict[Any, int] = got) -> None:
            got[d] = got.get(d, 0) + len(data)

        net.observers.append(count)
        proven = peers[0]
        for name, body in requests:
            data = codec.encode(NETID, b"\x07" * 8, b"\xee" * 20, body)
            got.clear()
            net.send(VICTIM, node.address, data)
            _settle(clock, 0.5)
            forged = got.get(VICTIM, 0)
            # the same request from a proven address (it answered the node's ping)
            node.ping_address(proven.address)
            _settle(clock, 0.5)
            got.clear()
            net.send(proven.address, node.address, data)
            _settle(clock, 0.5)
            rows.setdefault(name, [len(data)]).append(forged / len(data))
            if label == "after":
                rows[name].append(got.get(proven.address, 0) / len(data))
        print(f"  refusals ({label}): {node.refused.as_dict()}")
    print(f"\n  {'rpc':<22}{'request B':>10}{'before':>9}{'after':>9}{'proven':>9}")
    for name, (size, before, after, proven_ratio) in rows.items():
        print(f"  {name:<22}{size:>10}{before:>8.1f}x{after:>8.1f}x{proven_ratio:>8.1f}x")
    print("  before/after: bytes a forged source's owner receives per request byte; "
          "proven: the same request from an address that answered the node")


# -- 2. request flood ---------------------------------------------------------------------


class _StopOnEOF(protocol.Protocol):
    def connectionLost(self, reason: Any = None) -> None:
        if reactor.running:
            reactor.stop()


def serve(mode: str) -> None:
    """Child: a DHT node with the given limits; prints its port, then its refusals and RSS
    on each line read from stdin."""
    limits = OFF if mode == "off" else Limits()
    node = DHTNetwork(reactor, limits=limits)
    port = reactor.listenUDP(0, node.protocol, interface="127.0.0.1")
    tune_udp_port(port, limits.udp_receive_buffer)

    class Control(_StopOnEOF):
        def dataReceived(self, data: bytes) -> None:
            rss = _rss_kib(os.getpid())
            sys.stdout.write(json.dumps({"refused": node.refused.as_dict(), "rss_kib": rss,
                                         "requests": node.protocol.stats.requests_in}) + "\n")
            sys.stdout.flush()

    stdio.StandardIO(Control())
    sys.stdout.write(f"PORT {port.getHost().port}\n")
    sys.stdout.flush()
    reactor.run()


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Flooder:
    """Sends pings from one socket as fast as the reactor lets it, in small batches."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.target = target
        self.sent = 0
        self.answers = 0
        self.running = False
        self.ping = codec.encode(NETID, b"\x07" * 8, b"\xee" * 20, codec.PingRequest())

    def tick(self) -> None:
        if not self.running:
            return
        for _ in range(200):
            try:
                self.sock.sendto(self.ping, self.target)
                self.sent += 1
            except BlockingIOError:
                break
        while True:
            try:
                self.sock.recv(2048)
                self.answers += 1
            except BlockingIOError:
                break
        reactor.callLater(0, self.tick)


async def flood_round(mode: str, seconds: float) -> dict[str, Any]:
    child = lines_process()
    env = child_env(ROOT)
    reactor.spawnProcess(child, sys.executable,
                         [sys.executable, os.path.abspath(__file__), "--serve", mode], env=env)
    line = await child.lines.get()
    target = ("127.0.0.1", int(line.split()[1]))
    honest = DHTNetwork(reactor, limits=Limits())
    hport = reactor.listenUDP(0, honest.protocol, interface="127.0.0.1")
    flooder = Flooder(target)
    latencies: list[float] = []
    lost = 0
    try:
        flooder.running = True
        flooder.tick()
        end = time.monotonic() + seconds
        pings = []
        while time.monotonic() < end:
            pings.append(honest.ping_address(target))
            await task.deferLater(reactor, 0.02, lambda: None)
        flooder.running = False
        results = await defer.gatherResults(pings)
        for r in results:
            if r is False:
                lost += 1
            else:
                latencies.append(r[0])
        child.transport.write(b"stats\n")
        stats = json.loads(await child.lines.get())
    finally:
        flooder.running = False
        flooder.sock.close()
        await hport.stopListening()
        child.transport.closeStdin()
        await child.ended
    latencies.sort()
    return {
        "honest_ok": len(latencies), "honest_lost": lost,
        "p50_ms": statistics.median(latencies) * 1e3 if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1e3 if latencies else float("nan"),
        "flood_sent": flooder.sent, "flood_answered": flooder.answers,
        "target_handled": stats["requests"], "refused": stats["refused"],
        "rss_mib": stats["rss_kib"] / 1024,
    }


async def flood(seconds: float) -> None:
    print(f"\n2. one address floods a node with pings for {seconds:g} s (real loopback UDP, "
          "target in a child process); an honest node pings it every 20 ms")
    out = {}
    for mode in ("off", "on"):
        out[mode] = await flood_round(mode, seconds)
    print(f"  {'':<28}{'before (limits off)':>22}{'after (defaults)':>20}")
    for key, fmt in [("honest_ok", "{:d}"), ("honest_lost", "{:d}"), ("p50_ms", "{:.2f}"),
                     ("p99_ms", "{:.2f}"), ("flood_sent", "{:,}"), ("flood_answered", "{:,}"),
                     ("target_handled", "{:,}"), ("rss_mib", "{:.1f}")]:
        print(f"  {key:<28}{fmt.format(out['off'][key]):>22}{fmt.format(out['on'][key]):>20}")
    print(f"  refusals after: {out['on']['refused']}")


async def main(args: argparse.Namespace) -> None:
    print("p2pnet wire attacks benchmark")
    print("\n1. amplification: bytes sent to a forged source per request byte")
    amplification()
    if not args.no_flood:
        await flood(args.flood_seconds)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flood-seconds", type=float, default=5.0)
    p.add_argument("--no-flood", action="store_true")
    p.add_argument("--serve", choices=["off", "on"], help=argparse.SUPPRESS)
    a = p.parse_args()
    a.flood_seconds = max(1.0, min(a.flood_seconds, 60.0))
    if a.serve:
        serve(a.serve)
    else:
        task.react(lambda _r: defer.ensureDeferred(main(a)))
