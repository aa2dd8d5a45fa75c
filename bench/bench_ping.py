"""Ping RPCs per second between two p2pnet nodes, beside a bare Twisted UDP echo.

Both run on 127.0.0.1 with the same number of requests in flight, alternating, several
rounds, in the same run; the figures are medians and the ratio p2pnet / bare echo.

Variants, all printed:

* ``bare echo``: a ``DatagramProtocol`` that echoes, and a client protocol that sends a
  new datagram (of a p2pnet ping's size) for each one that comes back -- the reactor's
  floor for a UDP request/response.
* ``p2pnet protocol.request``: ``DHTProtocol.request(PingRequest())`` -- framing, the
  transaction table, the timeout timer, a Deferred per request.
* ``p2pnet ping_address``: ``DHTNetwork.ping_address(address)`` -- the public call (also
  updates both routing tables on every message).

One process (both ends in one reactor) and, unless ``--one-process``, two processes
(the answering end in a child process).  Prints figures only; asserts nothing.

The p2pnet nodes run with their request rate limits raised out of reach (one client
sending thousands of pings a second is exactly what a node's per-source limit refuses),
but the limiter still charges every request, so its cost is in the figures; their ports
are tuned as :class:`~p2pnet.dht.service.DHTService` tunes them (``tune_udp_port``).

    python bench/bench_ping.py [--inflight 100] [--rounds 5] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # measure the checkout's p2pnet, not a stale installed copy

from benchlib import child_env, med  # noqa: E402
from twisted.internet import defer, protocol, reactor, stdio, task  # noqa: E402
from twisted.internet.protocol import DatagramProtocol  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

import p2pnet  # noqa: E402
from p2pnet.dht import codec  # noqa: E402
from p2pnet.dht.limits import Limits  # noqa: E402
from p2pnet.dht.network import DHTNetwork  # noqa: E402
from p2pnet.dht.protocol import tune_udp_port  # noqa: E402

HOST = "127.0.0.1"
#: A bare-echo payload as long as a p2pnet ping (version, netid, kind, rpc, tid, sender).
PING_SIZE = len(codec.encode(b"p2pnet", b"\0" * 8, b"\0" * 20, codec.PingRequest()))
DRAIN_SECONDS = 5.0


# -- the bare reference --------------------------------------------------------------


class Echo(DatagramProtocol):
    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.transport.write(data, addr)


class EchoClient(DatagramProtocol):
    """Keeps ``inflight`` datagrams travelling to ``server`` until told to stop."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.payload = b"x" * PING_SIZE
        self.count = 0
        self.sending = False
        self.outstanding = 0
        self.drained: defer.Deferred[None] | None = None

    def start(self, inflight: int) -> None:
        self.sending = True
        for _ in range(inflight):
            self.outstanding += 1
            self.transport.write(self.payload, self.server)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.count += 1
        if self.sending:
            self.transport.write(self.payload, self.server)
            return
        self.outstanding -= 1
        if self.outstanding == 0 and self.drained is not None:
            d, self.drained = self.drained, None
            d.callback(None)

    def stop(self) -> defer.Deferred[None]:
        self.sending = False
        if self.outstanding == 0:
            return defer.succeed(None)
        self.drained = defer.Deferred()
        return self.drained


async def measure_echo(client: EchoClient, inflight: int, seconds: float
                       ) -> tuple[float, float, int]:
    """(round trips/s, CPU seconds of this process per round trip, 0)."""
    client.count = 0
    t0, c0 = time.perf_counter(), time.process_time()
    client.start(inflight)
    await task.deferLater(reactor, seconds, lambda: None)
    done, elapsed, cpu = client.count, time.perf_counter() - t0, time.process_time() - c0
    try:
        await client.stop().addTimeout(DRAIN_SECONDS, reactor)
    except defer.TimeoutError:
        print(f"  (bare echo: {client.outstanding} datagrams lost)")
        client.drained, client.outstanding = None, 0
    return done / elapsed, cpu / max(done, 1), 0


# -- p2pnet -----------------------------------------------------------------------------


async def measure_requests(issue: Callable[[], defer.Deferred[Any]], inflight: int,
                           seconds: float) -> tuple[float, float, int]:
    """Keep ``inflight`` calls of ``issue`` going for ``seconds``.

    Returns (calls/s, CPU seconds of this process per call, failed calls).
    """
    state = {"done": 0, "failed": 0, "outstanding": 0, "sending": True}
    drained: defer.Deferred[None] = defer.Deferred()

    def finished(result: Any) -> None:
        state["outstanding"] -= 1
        if result is False or isinstance(result, Failure):
            state["failed"] += 1
        else:
            state["done"] += 1
        if state["sending"]:
            one()
        elif state["outstanding"] == 0 and not drained.called:
            drained.callback(None)

    def one() -> None:
        # one callback sees either outcome (the echo client's bookkeeping is as light)
        state["outstanding"] += 1
        issue().addBoth(finished)

    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(inflight):
        one()
    await task.deferLater(reactor, seconds, lambda: None)
    done, elapsed, cpu = state["done"], time.perf_counter() - t0, time.process_time() - c0
    state["sending"] = False
    if state["outstanding"]:
        await drained.addTimeout(DRAIN_SECONDS, reactor)
    return done / elapsed, cpu / max(done, 1), state["failed"]


#: the default limits, with request rates out of reach of one benchmark client
BENCH_LIMITS = Limits(rate_per_source=1e9, rate_per_source_burst=1e9, rate_per_prefix=1e9,
                      rate_per_prefix_burst=1e9, rate_global=1e9, rate_global_burst=1e9)


def p2pnet_node(port: int = 0) -> tuple[DHTNetwork, Any]:
    net = DHTNetwork(reactor, limits=BENCH_LIMITS)
    listening = reactor.listenUDP(port, net.protocol, interface=HOST)
    tune_udp_port(listening)
    return net, listening


# -- the answering end in a child process ---------------------------------------------


class _StopOnEOF(protocol.Protocol):
    def connectionLost(self, reason: Any = None) -> None:
        if reactor.running:
            reactor.stop()


def serve(kind: str) -> None:
    """Child process: answer pings (``p2pnet``) or echo (``echo``) until stdin closes."""
    if kind == "p2pnet":
        _net, listening = p2pnet_node()
    else:
        listening = reactor.listenUDP(0, Echo(), interface=HOST)
    stdio.StandardIO(_StopOnEOF())
    sys.stdout.write(f"PORT {listening.getHost().port}\n")
    sys.stdout.flush()
    reactor.run()


class _Child(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.buf = b""
        self.port: defer.Deferred[int] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.buf += data
        if not self.port.called and b"\n" in self.buf:
            line = self.buf.split(b"\n", 1)[0].decode()
            if line.startswith("PORT "):
                self.port.callback(int(line.split()[1]))
            else:
                self.port.errback(RuntimeError(f"child said {line!r}"))

    def errReceived(self, data: bytes) -> None:
        sys.stderr.write(data.decode("utf-8", "replace"))

    def processEnded(self, reason: Any) -> None:
        if not self.port.called:
            self.port.errback(RuntimeError(f"child ended: {reason.value}"))
        self.ended.callback(None)


async def start_child(kind: str) -> tuple[_Child, int]:
    child = _Child()
    env = child_env(ROOT)
    reactor.spawnProcess(child, sys.executable,
                         [sys.executable, os.path.abspath(__file__), "--serve", kind],
                         env=env)
    port = await child.port.addTimeout(20, reactor)
    return child, port


async def stop_child(child: _Child) -> None:
    child.transport.closeStdin()
    try:
        await child.ended.addTimeout(5, reactor)
    except defer.TimeoutError:
        child.transport.signalProcess("KILL")
        await child.ended


# -- the run --------------------------------------------------------------------------


def report(title: str, results: dict[str, list[tuple[float, float]]], failures: int,
           cpu_note: str) -> None:
    bare = med([r for r, _ in results["bare echo"]])
    bare_cpu = med([c for _, c in results["bare echo"]])
    print(f"\n{title}")
    print(f"  {'variant':<26}{'median/s':>10}{'min/s':>10}{'max/s':>10}{'ratio':>7}"
          f"{'CPU us/RPC':>12}{'CPU ratio':>11}")
    for name, xs in results.items():
        rates = [r for r, _ in xs]
        m = med(rates)
        cpu = med([c for _, c in xs])
        print(f"  {name:<26}{m:>10,.0f}{min(rates):>10,.0f}{max(rates):>10,.0f}"
              f"{m / bare:>7.2f}{cpu * 1e6:>12.1f}{bare_cpu / cpu:>11.2f}")
    print(f"  ratio = median rate / bare echo's; CPU ratio = bare echo's CPU per RPC / this "
          f"one ({cpu_note})")
    print(f"  rounds per variant: {len(results['bare echo'])}; failed p2pnet requests: "
          f"{failures}")


async def alternate(variants: dict[str, Callable[[float], Any]], rounds: int,
                    seconds: float) -> tuple[dict[str, list[tuple[float, float]]], int]:
    """A short warm-up of each variant, then ``rounds`` rounds, the order flipping.

    Returns, per variant, a (rate, CPU per RPC) pair per round, and the failures.
    """
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    failures = 0
    for run in variants.values():
        await run(min(0.2, seconds))
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            rate, cpu, failed = await variants[name](seconds)
            failures += failed
            results[name].append((rate, cpu))
    return results, failures


async def one_process(inflight: int, rounds: int, seconds: float) -> dict[str, Any]:
    server_echo = reactor.listenUDP(0, Echo(), interface=HOST)
    client_echo = EchoClient((HOST, server_echo.getHost().port))
    client_echo_port = reactor.listenUDP(0, client_echo, interface=HOST)
    a, a_port = p2pnet_node()
    b, b_port = p2pnet_node()
    target = b.address
    ping_body = codec.PingRequest()
    variants: dict[str, Callable[[float], Any]] = {
        "bare echo": lambda secs: measure_echo(client_echo, inflight, secs),
        "p2pnet protocol.request": lambda secs: measure_requests(
            lambda: a.protocol.request(target, ping_body), inflight, secs),
        "p2pnet ping_address": lambda secs: measure_requests(
            lambda: a.ping_address(target), inflight, secs),
    }
    try:
        results, failures = await alternate(variants, rounds, seconds)
    finally:
        for port in (server_echo, client_echo_port, a_port, b_port):
            await port.stopListening()
    report(f"one reactor (client and server in this process), {inflight} in flight, "
           f"{seconds:g} s per round", results, failures, "both ends, this process")
    return {"results": results, "failures": failures,
            "stats": (a.protocol.stats, b.protocol.stats)}


async def two_process(inflight: int, rounds: int, seconds: float) -> None:
    echo_child, echo_port = await start_child("echo")
    p2p_child, p2p_port = await start_child("p2pnet")
    client_echo = EchoClient((HOST, echo_port))
    client_echo_port = reactor.listenUDP(0, client_echo, interface=HOST)
    a, a_port = p2pnet_node()
    target = (HOST, p2p_port)
    variants: dict[str, Callable[[float], Any]] = {
        "bare echo": lambda secs: measure_echo(client_echo, inflight, secs),
        "p2pnet ping_address": lambda secs: measure_requests(
            lambda: a.ping_address(target), inflight, secs),
    }
    try:
        results, failures = await alternate(variants, rounds, seconds)
    finally:
        await client_echo_port.stopListening()
        await a_port.stopListening()
        await stop_child(echo_child)
        await stop_child(p2p_child)
    report(f"two processes (server in a child process), {inflight} in flight, "
           f"{seconds:g} s per round", results, failures, "client end only")


async def main(args: argparse.Namespace) -> None:
    print(f"p2pnet ping benchmark -- p2pnet from {os.path.dirname(p2pnet.__file__)}")
    print(f"python {sys.version.split()[0]}, reactor {type(reactor).__name__}, "
          f"{os.cpu_count()} CPUs, ping datagram {PING_SIZE} bytes")
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    out = await one_process(args.inflight, args.rounds, args.seconds)
    sa, sb = out["stats"]
    print(f"  client protocol: {sa.requests_out} requests, {sa.retries} retries, "
          f"{sa.timeouts} timeouts, {sa.dropped} dropped; server answered {sb.requests_in}")
    if not args.one_process:
        await two_process(args.inflight, args.rounds, args.seconds)
    print(f"\ntotal {time.perf_counter() - t0:.1f} s wall, {time.process_time() - cpu0:.1f} s "
          "CPU in this process")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inflight", type=int, default=100, help="requests in flight")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per variant")
    p.add_argument("--seconds", type=float, default=1.0, help="seconds per round")
    p.add_argument("--one-process", action="store_true", help="skip the two-process run")
    p.add_argument("--serve", choices=["echo", "p2pnet"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.inflight = max(1, min(args.inflight, 10_000))
    args.rounds = max(1, min(args.rounds, 50))
    args.seconds = max(0.1, min(args.seconds, 10.0))
    return args


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    if arguments.serve:
        serve(arguments.serve)
    else:
        task.react(lambda _r: defer.ensureDeferred(main(arguments)))
