"""Floods against a DHT node, before and after the issue 11 defences, side by side.

For each scenario the same script runs twice: once with ``PYTHONPATH`` at the code before
the hardening (a git worktree of commit dbccd2a, ``--before``) and once at the current
checkout (``--after``).  Each run is three processes on real UDP on 127.0.0.1:

* the **victim**: a ``DHTService`` with a LevelDB value table (as ``twistd p2pnode``
  runs), default limits, holding a 4 KiB value (what the honest node gets) and a 1 MiB
  value (what the read flood asks for); alone in its process, so its RSS is its own;
* the **attacker**: one UDP socket (one source port, so one address; see below), plain
  sockets and the codec of the same tree, no reactor;
* the **driver**: an honest ``DHTNetwork`` that gets the 4 KiB value from the victim
  every 100 ms during the attack, and measures (it drops any copy of the value it was
  handed first, so every get asks the victim).

Scenarios (issue 11 numbers): ``idle`` (no attacker), ``ping`` and ``findnode`` request
floods (#14), ``getval`` read flood of the held 1 MiB value (#15), ``store0`` flood of
zero-byte records (#8), ``lookup``: the victim joins through a peer whose every findnode
answer holds 20 new closer ids at its own address (#1), ``pullbomb``: 16 store offers of
1 MiB answered 1 byte per ``--pace`` seconds (#2; the issue's 1.5 s shortened), plus an
honest store offered every second, ``table``: 4,000 pings with crafted ids from one
address, then a new honest node joins through the victim and another asks it for the
nodes closest to a random key (#6).  Then the same attacks from many source ports (see
below): ``table-ports``, ``getval-ports``, ``store0-ports`` (200 ports),
``lookup-ports`` (the fake ids sit at 200 ports, so one-node-per-address within a lookup
does not stop it and the lookup's caps must), ``pullslow-ports`` (2 offers of 1 MiB from
each of 8 ports, every chunk answered whole just before the 2 s request timeout, so the
pull is slow but never short; at least 16 s).

**Loopback limitation.**  Every node of a local network shares 127.0.0.1, so the
per-address limits (rate buckets, routing one-per-address, store quotas, pulls per
source) key on (address, port) on loopback.  An attacker with one source port is one
address here, as on the internet; an attacker that rotates source ports looks like many
addresses on loopback, which it would not on the internet (``table-ports`` shows it).
The ``sim-*`` scenarios run the victim on the in-memory network (``p2pnet.sim.memory``,
driven by the real reactor, all in one process) with the attacker on 203.0.113.66 and
the honest node on 198.51.100.7, so the per-IP keys bite as on the internet, also
against an attacker that rotates ports (``sim-ping-ports``, ``sim-store0-ports``,
``sim-table-ports``: 200 ports; ``sim-pullslow-ports``: 8 ports).

Prints figures only; asserts nothing.  The machine is shared: expect noise.

    python bench/bench_floods.py [--before /tmp/before] [--seconds 8] [--only ping,table]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from benchlib import lines_process

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NETID = b"p2pnet"
SMALL = random.Random(1).randbytes(4096)
BIG = random.Random(2).randbytes(1024 * 1024)
K_SMALL = hashlib.sha1(b"bench_floods small").digest()
K_BIG = hashlib.sha1(b"bench_floods big").digest()
ATTACKER_ID = hashlib.sha1(b"bench_floods attacker").digest()

LOOPBACK = ["idle", "ping", "findnode", "getval", "store0", "lookup", "pullbomb", "table",
            "table-ports", "getval-ports", "store0-ports", "lookup-ports", "pullslow-ports"]
SIM = ["sim-idle", "sim-ping-ports", "sim-store0-ports", "sim-table-ports",
       "sim-pullslow-ports"]


def sha1(b: bytes) -> bytes:
    return hashlib.sha1(b).digest()


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q * len(values))) - 1))]


# ======================================================================================
# victim (child process)
# ======================================================================================


def _open_table(path: str) -> Any:
    try:
        from p2pnet.dht.kvptable import LevelDBKVPTable  # after
    except ImportError:
        from p2pnet.store.kvptable import LevelDBKVPTable  # type: ignore[no-redef]  # before
    from twisted.internet import reactor
    return LevelDBKVPTable.open(path, reactor=reactor)


def victim_main() -> None:
    from twisted.internet import defer, reactor, stdio
    from twisted.internet.protocol import Protocol

    from p2pnet.dht.service import DHTService
    from p2pnet.dht.table import KVPRecord

    state: dict[str, Any] = {"join": None}
    tmp = tempfile.mkdtemp(prefix="bench_floods_")

    async def setup() -> None:
        table = await _open_table(os.path.join(tmp, "kvp"))
        now = time.time()
        for key, value in ((K_SMALL, SMALL), (K_BIG, BIG)):
            await table.put(KVPRecord(key, sha1(value), len(value), now, is_original=True),
                            value)
        svc = DHTService(port=0, interface="127.0.0.1", kvp_table=table)
        svc.startService()
        state["svc"], state["table"] = svc, table
        net = svc.network
        stdio.StandardIO(Control())
        sys.stdout.write(f"READY {net.address[1]} {net.key.hex()} {tmp}\n")
        sys.stdout.flush()

    def stats() -> dict[str, Any]:
        net = state["svc"].network
        out: dict[str, Any] = {
            "contacts": net.routing_table.num_contacts,
            "records": len(state["table"]),
            "join": state["join"],
            "pulls": len(getattr(net.store, "_pulls", {})),
            "stats_refused": net.stats_refused, "stats_stored": net.stats_stored,
            "rss_kib": rss_kib(os.getpid()), "hwm_kib": rss_kib(os.getpid(), "VmHWM"),
        }
        refused = getattr(net, "refused", None)
        if refused is not None:
            out["refused"] = dict(refused)
        pstats = getattr(net.protocol, "stats", None)
        if pstats is not None:
            out["requests_in"] = getattr(pstats, "requests_in", None)
            out["send_failures"] = getattr(pstats, "send_failures", None)
        return out

    def join(port: int) -> None:
        net = state["svc"].network
        t0 = time.monotonic()
        state["join"] = "running"

        def done(r: Any) -> None:
            state["join"] = f"{'ok' if r is True else r!r} in {time.monotonic() - t0:.1f} s"

        def failed(f: Any) -> None:
            state["join"] = f"failed ({f.value!r}) after {time.monotonic() - t0:.1f} s"

        net.join_network(("127.0.0.1", port)).addCallbacks(done, failed)

    class Control(Protocol):
        buf = b""

        def dataReceived(self, data: bytes) -> None:
            self.buf += data
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                words = line.decode().split()
                if not words:
                    continue
                if words[0] == "stats":
                    reply: Any = stats()
                elif words[0] == "join":
                    join(int(words[1]))
                    reply = {"ok": True}
                elif words[0] == "has":
                    node = state["svc"].network.routing_table
                    want = bytes.fromhex(words[1])
                    reply = {"has": any(n.key == want for n in node.get_close_nodes(want, 1))}
                else:
                    reply = {"error": line.decode()}
                sys.stdout.write(json.dumps(reply) + "\n")
                sys.stdout.flush()

        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:
                reactor.stop()

    defer.ensureDeferred(setup()).addErrback(lambda f: (f.printTraceback(), reactor.stop()))
    try:
        reactor.run()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    os._exit(0)  # the store thread may be busy with a queue of reads: do not wait for it


# ======================================================================================
# attacker (child process: plain sockets, the tree's codec)
# ======================================================================================


class Wire:
    """Encodes and decodes with the tree's codec (v1 before, v2 after: tokens)."""

    def __init__(self) -> None:
        from p2pnet.dht import codec
        self.codec = codec
        self.v2 = getattr(codec, "VERSION", 1) >= 2
        self.token: bytes | None = None

    def encode(self, body: Any, tid: bytes | None = None, sender: bytes = ATTACKER_ID,
               rpc: Any = None, token: bool = True) -> bytes:
        kw = {"token": self.token} if (self.v2 and token and self.token) else {}
        return self.codec.encode(NETID, tid or os.urandom(8), sender, body, rpc, **kw)

    def decode(self, data: bytes) -> Any:
        try:
            msg = self.codec.decode(data)
        except Exception:
            return None
        tok = getattr(msg, "token", None)
        if tok is not None and msg.kind != self.codec.Kind.REQUEST:
            self.token = tok
        return msg


def _socket(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.setblocking(False)
    return s


def attacker_main(scenario: str, target_port: int, seconds: float, rate: float,
                  pace: float, victim_id: bytes) -> None:
    w = Wire()
    c = w.codec
    target = ("127.0.0.1", target_port)
    ports = scenario.endswith("-ports")
    scenario = scenario.removesuffix("-ports") if scenario != "table-ports" else scenario
    socks = [_socket() for _ in range((8 if scenario == "pullslow" else 200) if ports else 1)]
    sock = socks[0]
    out: dict[str, Any] = {"sent": 0, "answers": 0, "errors": {}, "requests_in": 0,
                           "port": sock.getsockname()[1]}
    sys.stdout.write(f"STARTED {out['port']}\n")
    sys.stdout.flush()
    start = time.monotonic()
    end = start + seconds

    def send(data: bytes, s: socket.socket = sock, to: Any = target) -> bool:
        try:
            s.sendto(data, to)
        except (BlockingIOError, OSError):
            return False
        out["sent"] += 1
        return True

    def note_answer(msg: Any) -> None:
        out["answers"] += 1
        if msg.kind == c.Kind.ERROR:
            name = c.ErrorCode(msg.body.code).name if msg.body.code in set(
                int(x) for x in c.ErrorCode) else str(msg.body.code)
            out["errors"][name] = out["errors"].get(name, 0) + 1

    def incoming(wait: float) -> Iterator[tuple[socket.socket, Any, Any]]:
        """(socket, message, sender) of every decodable datagram waiting on ``socks``,
        after waiting up to ``wait`` seconds for one."""
        ready, _, _ = select.select(socks, [], [], wait)
        for s in ready:
            while True:
                try:
                    data, addr = s.recvfrom(65536)
                except (BlockingIOError, OSError):
                    break
                msg = w.decode(data)
                if msg is not None:
                    yield s, msg, addr

    if scenario in ("ping", "findnode", "getval", "store0"):
        # prove the address first where the code asks for it (a real attacker would)
        send(w.encode(c.FindNodeRequest(os.urandom(20))))
        time.sleep(0.2)
        empty = sha1(b"")
        big_index = sha1(BIG)

        def request() -> bytes:
            if scenario == "ping":
                return w.encode(c.PingRequest())
            if scenario == "findnode":
                return w.encode(c.FindNodeRequest(os.urandom(20)))
            if scenario == "getval":
                off = random.randrange(64) * 16384
                return w.encode(c.GetValueRequest(K_BIG, big_index, off, 16384))
            return w.encode(c.StoreRequest(os.urandom(20), empty, 0, time.time(), b""))

        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = int((now - start) * rate) - out["sent"]
            for _ in range(min(due, 256)):
                if not send(request(), s=socks[out["sent"] % len(socks)]):
                    break
            got = False
            ready = select.select(socks, [], [], 0)[0] if ports else socks
            for s in ready:
                while True:
                    try:
                        data = s.recv(65536)
                    except (BlockingIOError, OSError):
                        break
                    got = True
                    msg = w.decode(data)
                    if msg is not None:
                        note_answer(msg)
            if due <= 0 and not got:
                time.sleep(0.0005)
    elif scenario == "lookup":
        closest: dict[bytes, int] = {}
        fake = 0
        pports = [s.getsockname()[1] for s in socks]
        while time.monotonic() < end:
            for s, msg, addr in incoming(0.05):
                if msg.kind != c.Kind.REQUEST:
                    continue
                out["requests_in"] += 1
                if msg.rpc == c.RPC.PING:
                    send(w.encode(c.PingResponse(), msg.tid, token=False), s=s, to=addr)
                elif msg.rpc in (c.RPC.FIND_NODE, c.RPC.FIND_VALUE):
                    # 20 ids, each strictly closer to the key than any handed out
                    # before for it: distances m-1 .. m-20, then m drops by 20; at
                    # the attacker's one port, or (-ports) at 20 of its 200 ports
                    key = int.from_bytes(msg.body.key, "big")
                    m = closest.get(msg.body.key, 1 << 150)
                    closest[msg.body.key] = m - 20
                    nodes = [_node((key ^ (m - j)).to_bytes(20, "big"),
                                   pports[(fake + j) % len(pports)])
                             for j in range(1, 21)]
                    fake += 20
                    send(w.encode(c.NodesResponse(tuple(nodes)), msg.tid, rpc=msg.rpc,
                                  token=False), s=s, to=addr)
        out["fake_ids_sent"] = fake
    elif scenario in ("pullbomb", "pullslow"):
        # pullbomb: 16 offers from one port, each getval answered with 1 byte after
        # ``pace`` s.  pullslow: 2 offers from each of 8 ports, each getval answered in
        # full just before the requester's 2 s timeout, and a new offer as soon as the
        # victim answers one (so the pull slots stay taken)
        slow = scenario == "pullslow"
        pending: list[tuple[float, socket.socket, Any, bytes, Any]] = []
        size = 1024 * 1024
        offers = 0

        def offer(s: socket.socket) -> None:
            nonlocal offers
            offers += 1
            send(w.encode(c.StoreRequest(sha1(b"bomb %d" % offers),
                                         sha1(b"bomb value %d" % offers), size,
                                         time.time())), s=s)

        for i in range(16):
            offer(socks[i % len(socks)])
        out["bytes_out"] = 0
        while time.monotonic() < end:
            now = time.monotonic()
            while pending and pending[0][0] <= now:
                _, s, addr, tid, body = pending.pop(0)
                chunk = (bytes(max(0, min(body.length, size - body.offset))) if slow
                         else b"x")
                data = w.encode(c.GetValueResponse(size, body.offset, chunk), tid,
                                token=False)
                if send(data, s=s, to=addr):
                    out["bytes_out"] += len(data)
            wait = max(0.0, min(0.05, (pending[0][0] - now) if pending else 0.05))
            for s, msg, addr in incoming(wait):
                if msg.kind != c.Kind.REQUEST:
                    note_answer(msg)
                    if slow and msg.rpc == c.RPC.STORE:
                        offer(s)
                    continue
                out["requests_in"] += 1
                if msg.rpc == c.RPC.PING:
                    send(w.encode(c.PingResponse(), msg.tid, token=False), s=s, to=addr)
                elif msg.rpc == c.RPC.GET_VALUE:
                    pending.append((time.monotonic() + (1.8 if slow else pace), s, addr,
                                    msg.tid, msg.body))
                    pending.sort(key=lambda p: p[0])
        out["getvals_held_at_end"] = len(pending)
        out["offers"] = offers
    elif scenario in ("table", "table-ports"):
        # 4,000 pings with crafted ids spread over the victim's buckets; ping-backs are
        # answered (by each socket, with the id it last claimed), so they can enter
        vid = int.from_bytes(victim_id, "big")
        claimed: dict[int, bytes] = {}
        total = 4000
        i = 0
        per_batch = 50
        next_batch = time.monotonic()
        while time.monotonic() < end:
            now = time.monotonic()
            if i < total and now >= next_batch:
                for _ in range(per_batch):
                    b = 159 - (i % 150)
                    nid = (vid ^ (1 << b) ^ random.getrandbits(b)).to_bytes(20, "big")
                    s = socks[i % len(socks)]
                    claimed[s.fileno()] = nid
                    send(w.encode(c.PingRequest(), sender=nid), s=s)
                    i += 1
                next_batch = now + 0.03  # 4,000 in about 2.4 s, as in the issue
            for s, msg, addr in incoming(0.01):
                if msg.kind != c.Kind.REQUEST:
                    note_answer(msg)
                    continue
                out["requests_in"] += 1
                if msg.rpc == c.RPC.PING:
                    nid = claimed.get(s.fileno(), ATTACKER_ID)
                    send(w.encode(c.PingResponse(), msg.tid, sender=nid, token=False),
                         s=s, to=addr)
        out["ports"] = [s.getsockname()[1] for s in socks]
    out["elapsed"] = time.monotonic() - start
    for s in socks:
        s.close()
    sys.stdout.write("RESULT " + json.dumps(out) + "\n")
    sys.stdout.flush()


def _node(nid: bytes, port: int) -> Any:
    from p2pnet.models import Node
    return Node(nid, "127.0.0.1", port)


# ======================================================================================
# driver (child process per tree and scenario): honest node, measurements
# ======================================================================================




async def _with_timeout(d: Any, seconds: float) -> Any:
    from twisted.internet import reactor
    d.addTimeout(seconds, reactor)
    return await d


def drop_local(net: Any) -> int:
    """Forget the honest node's own copy of the 4 KiB value before a get: the current code
    hands a newcomer the records it should hold (Kademlia 2.5) and a get falls back to a
    local copy, so without this a get might not ask the victim at all."""
    dropped = 0
    for r in list(net.kvp_table.records_for_key(K_SMALL)):
        net.kvp_table.delete(r.key, r.index)
        dropped += 1
    return dropped


class Honest:
    """An honest node on loopback that gets the victim's 4 KiB value on a fixed beat."""

    def __init__(self) -> None:
        from twisted.internet import reactor

        from p2pnet.dht.network import DHTNetwork
        self.net = DHTNetwork(reactor)
        self.port = reactor.listenUDP(0, self.net.protocol, interface="127.0.0.1")
        self.port.maxPacketSize = 65508  # read whole datagrams in both trees
        self.latencies: list[float] = []
        self.failed = 0
        self.started = 0
        self.pending: set[Any] = set()
        self.local_dropped = 0
        self.why: dict[str, int] = {}

    def get_once(self) -> None:
        from twisted.internet import defer
        self.local_dropped += drop_local(self.net)
        t0 = time.monotonic()
        self.started += 1
        d: Any = defer.maybeDeferred(self.net.get, K_SMALL)

        def ok(v: bytes) -> None:
            if v == SMALL:
                self.latencies.append(time.monotonic() - t0)
            else:
                self.failed += 1

        def bad(f: Any) -> None:
            self.failed += 1
            why = f"{type(f.value).__name__}: {f.value}"[:70]
            self.why[why] = self.why.get(why, 0) + 1

        d.addCallbacks(ok, bad)
        self.pending.add(d)
        d.addBoth(lambda _: self.pending.discard(d))

    async def settle(self, grace: float) -> int:
        from twisted.internet import reactor, task
        end = time.monotonic() + grace
        while self.pending and time.monotonic() < end:
            await task.deferLater(reactor, 0.1, lambda: None)
        return len(self.pending)

    def summary(self, unfinished: int) -> dict[str, Any]:
        lat = [x * 1e3 for x in self.latencies]
        return {"gets": self.started, "gets_ok": len(lat), "local_dropped": self.local_dropped,
                "get_errors": self.why,
                "gets_failed": self.failed, "gets_unfinished": unfinished,
                "get_p50_ms": statistics.median(lat) if lat else float("nan"),
                "get_p99_ms": pct(lat, 0.99)}


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    from twisted.internet import reactor, task

    scen = args.driver
    secs = max(args.seconds, 16.0) if scen.startswith("pullslow") else args.seconds
    env = dict(os.environ)
    me = os.path.abspath(__file__)
    victim = lines_process()
    reactor.spawnProcess(victim, sys.executable, [sys.executable, me, "--victim"], env=env)
    ready = (await _with_timeout(victim.lines.get(), 30)).split()
    vport, vid = int(ready[1]), bytes.fromhex(ready[2])
    vaddr = ("127.0.0.1", vport)
    result: dict[str, Any] = {}
    rss_samples: list[int] = []
    sampler = task.LoopingCall(lambda: rss_samples.append(rss_kib(victim.pid)))
    attacker = None
    honest2 = None
    try:
        honest = Honest()
        pong = await honest.net.ping_address(vaddr)
        if not pong:
            raise RuntimeError("the victim does not answer")
        vnode = pong[1]
        await task.deferLater(reactor, 0.5, lambda: None)
        result["rss_start_mib"] = rss_kib(victim.pid) / 1024
        sampler.start(0.1)
        if scen != "idle":
            attacker = lines_process()
            reactor.spawnProcess(attacker, sys.executable,
                                 [sys.executable, me, "--attacker", scen, "--target",
                                  str(vport), "--seconds", str(secs), "--rate",
                                  str(args.rate), "--pace", str(args.pace), "--victim-id",
                                  vid.hex()], env=env)
            aport = int((await _with_timeout(attacker.lines.get(), 30)).split()[1])
            if scen.startswith("lookup"):
                victim.transport.write(f"join {aport}\n".encode())
                await _with_timeout(victim.lines.get(), 10)
        stores_ok = stores = 0
        t_end = time.monotonic() + secs
        next_store = time.monotonic() + 1.0
        while time.monotonic() < t_end:
            honest.get_once()
            if scen.startswith("pull") and time.monotonic() >= next_store:
                next_store += 1.0
                v = os.urandom(4096)
                stores += 1
                d = honest.net.store_to_node(vnode, os.urandom(20), sha1(v), v, time.time())

                def stored(ok: Any) -> None:
                    nonlocal stores_ok
                    stores_ok += ok is True

                d.addCallback(stored)
            await task.deferLater(reactor, 0.1, lambda: None)
        unfinished = await honest.settle(6.0)
        result.update(honest.summary(unfinished))
        hs = honest.net.protocol.stats
        result["honest_proto"] = f"{hs.requests_out} | {hs.retries} | {hs.timeouts}"
        if scen.startswith("pull"):
            result["honest_stores"] = f"{stores_ok}/{stores}"
        if attacker is not None:
            while True:
                line = await _with_timeout(attacker.lines.get(), 30)
                if line.startswith("RESULT "):
                    result["attacker"] = json.loads(line[7:])
                    break
        if scen.startswith("table"):
            # a new honest node joins through the victim; then one asks for close nodes
            # (the attacker has stopped: contacts it planted now time out)
            honest2 = Honest()
            t0 = time.monotonic()
            try:
                joined = await _with_timeout(honest2.net.join_network(vaddr), 10)
                result["newcomer_join"] = f"{joined} in {time.monotonic() - t0:.1f} s"
            except Exception:
                result["newcomer_join"] = "unfinished after 10 s"
            aports = set(result["attacker"]["ports"])
            nodes = await honest.net.find_nodes_from_node(vnode, os.urandom(20))
            nodes = list(nodes or [])
            result["findnode_attacker"] = (
                f"{sum(1 for n in nodes if n.port in aports)}/{len(nodes)}")
            victim.transport.write(f"has {honest2.net.key.hex()}\n".encode())
            result["newcomer_admitted"] = json.loads(
                await _with_timeout(victim.lines.get(), 15))["has"]
        sampler.stop()
        result["rss_peak_mib"] = max(rss_samples + [0]) / 1024
        result["hwm_mib"] = rss_kib(victim.pid, "VmHWM") / 1024
        result["rss_end_mib"] = rss_kib(victim.pid) / 1024
        victim.transport.write(b"stats\n")
        try:
            result["victim"] = json.loads(await _with_timeout(victim.lines.get(), 15))
        except Exception:
            result["victim"] = {"error": "no answer to stats within 15 s"}
        await honest.port.stopListening()
        if honest2 is not None:
            await honest2.port.stopListening()
    finally:
        if sampler.running:
            sampler.stop()
        for child in (attacker, victim):
            if child is None:
                continue
            try:
                child.transport.closeStdin()
            except Exception:
                pass
        for child in (attacker, victim):
            if child is None:
                continue
            end = time.monotonic() + 5
            while not child.ended.called and time.monotonic() < end:
                await task.deferLater(reactor, 0.1, lambda: None)
            if not child.ended.called:  # busy (an endless lookup, a read queue): kill it
                try:
                    child.transport.signalProcess("KILL")
                except Exception:
                    pass
                await child.ended
        if len(ready) > 3 and os.path.basename(ready[3]).startswith("bench_floods_"):
            shutil.rmtree(ready[3], ignore_errors=True)  # the victim's, if it was killed
    return result


def driver_main(args: argparse.Namespace) -> None:
    from twisted.internet import defer, task

    import p2pnet

    async def main(_r: Any) -> None:
        try:
            if args.driver.startswith("sim-"):
                res = await sim_drive(args)
            else:
                res = await drive(args)
        except Exception as e:  # report it as a result: the table shows the failure
            import traceback
            traceback.print_exc()
            res = {"error": repr(e)}
        res["tree"] = os.path.dirname(os.path.dirname(p2pnet.__file__))
        sys.stdout.write("RESULT " + json.dumps(res) + "\n")
        sys.stdout.flush()

    task.react(lambda r: defer.ensureDeferred(main(r)))


# ======================================================================================
# the in-memory network: distinct IPs (driver process; victim, honest and attacker in it)
# ======================================================================================


async def sim_drive(args: argparse.Namespace) -> dict[str, Any]:
    """Victim at 192.0.2.1, honest at 198.51.100.7, attacker at 203.0.113.66 rotating
    over 200 source ports, on the in-memory network driven by the real reactor."""
    from twisted.internet import reactor, task

    from p2pnet.dht.network import DHTNetwork
    from p2pnet.dht.table import KVPRecord, MemoryKVPTable
    from p2pnet.sim.memory import MemoryNetwork

    scen = args.driver
    pid = os.getpid()
    w = Wire()
    c = w.codec
    net = MemoryNetwork(reactor, latency=0.0005)
    table = MemoryKVPTable()
    now = time.time()
    await table.put(KVPRecord(K_SMALL, sha1(SMALL), len(SMALL), now, is_original=True), SMALL)
    victim = DHTNetwork(reactor, kvp_table=table)
    net.attach(victim.protocol, "192.0.2.1", 4000)
    honest = DHTNetwork(reactor)
    net.attach(honest.protocol, "198.51.100.7", 4000)
    pong = await honest.ping_address(victim.address)
    if not pong:
        raise RuntimeError("the sim victim does not answer")
    await task.deferLater(reactor, 0.3, lambda: None)
    att_ip = "203.0.113.66"
    ports = list(range(20000, 20200))
    claimed: dict[int, bytes] = {}
    counts = {"sent": 0, "answers": 0}

    class AttackerPort:
        """Answers what reaches one attacker port (ping-backs, with its claimed id)."""

        def __init__(self, port: int) -> None:
            self.p = port

        def makeConnection(self, transport: Any) -> None:
            self.transport = transport

        def doStop(self) -> None:
            pass

        def datagramReceived(self, data: bytes, addr: Any) -> None:
            msg = w.decode(data)
            if msg is None:
                return
            if msg.kind != c.Kind.REQUEST:
                counts["answers"] += 1
                if slow and msg.rpc == c.RPC.STORE:
                    sim_offer(self.p)
                return
            if msg.rpc == c.RPC.PING:
                reply = w.encode(c.PingResponse(), msg.tid,
                                 sender=claimed.get(self.p, ATTACKER_ID), token=False)
                net.send((att_ip, self.p), addr, reply)
            elif slow and msg.rpc == c.RPC.GET_VALUE:
                b = msg.body
                chunk = bytes(max(0, min(b.length, SIZE - b.offset)))
                reply = w.encode(c.GetValueResponse(SIZE, b.offset, chunk), msg.tid,
                                 token=False)
                reactor.callLater(1.8, net.send, (att_ip, self.p), addr, reply)

    slow = scen == "sim-pullslow-ports"
    SIZE = 1024 * 1024

    def sim_offer(port: int) -> None:
        counts["offers"] = n = counts.get("offers", 0) + 1
        net.send((att_ip, port), victim.address, w.encode(
            c.StoreRequest(sha1(b"bomb %d" % n), sha1(b"bomb value %d" % n), SIZE,
                           time.time())))
        counts["sent"] += 1

    for p in ports:
        net.attach(AttackerPort(p), att_ip, p)  # type: ignore[arg-type]
    result: dict[str, Any] = {"rss_start_mib": rss_kib(pid) / 1024}
    hon = {"lat": [], "failed": 0, "started": 0}
    vid = int.from_bytes(victim.key, "big")
    empty = sha1(b"")
    state = {"i": 0}

    def attack_batch() -> None:
        for _ in range(50):
            i = state["i"]
            state["i"] += 1
            port = ports[i % len(ports)]
            if scen == "sim-table-ports":
                if i >= 4000:
                    return
                b = 159 - (i % 150)
                nid = (vid ^ (1 << b) ^ random.getrandbits(b)).to_bytes(20, "big")
                claimed[port] = nid
                data = w.encode(c.PingRequest(), sender=nid)
            elif scen == "sim-ping-ports":
                data = w.encode(c.PingRequest())
            else:
                data = w.encode(c.StoreRequest(os.urandom(20), empty, 0, time.time(), b""))
            net.send((att_ip, port), victim.address, data)
            counts["sent"] += 1

    flood = task.LoopingCall(attack_batch)
    rss_samples: list[int] = []
    sampler = task.LoopingCall(lambda: rss_samples.append(rss_kib(pid)))
    sampler.start(0.1)
    if slow:
        for i in range(16):
            sim_offer(ports[i % 8])
    elif scen != "sim-idle":
        # table: 4,000 pings in ~2.4 s; ping/store: 50 per 5 ms, up to 10,000/s
        flood.start(0.03 if scen == "sim-table-ports" else 0.005)
    pending: set[Any] = set()
    t_end = time.monotonic() + (max(args.seconds, 16.0) if slow else args.seconds)
    stores = {"ok": 0, "n": 0}
    next_store = time.monotonic() + 1.0
    while time.monotonic() < t_end:
        hon["local"] = hon.get("local", 0) + drop_local(honest)
        t0 = time.monotonic()
        hon["started"] += 1
        if slow and t0 >= next_store:
            next_store += 1.0
            v = os.urandom(4096)
            stores["n"] += 1
            honest.store_to_node(pong[1], os.urandom(20), sha1(v), v, time.time()).addCallback(
                lambda ok: stores.__setitem__("ok", stores["ok"] + (ok is True)))
        d = honest.get(K_SMALL)

        def ok(v: bytes, t0: float = t0) -> None:
            if v == SMALL:
                hon["lat"].append(time.monotonic() - t0)
            else:
                hon["failed"] += 1

        def bad(_: Any) -> None:
            hon["failed"] += 1

        d.addCallbacks(ok, bad)
        pending.add(d)
        d.addBoth(lambda _, d=d: pending.discard(d))
        await task.deferLater(reactor, 0.1, lambda: None)
    if flood.running:
        flood.stop()
    end = time.monotonic() + 6
    while pending and time.monotonic() < end:
        await task.deferLater(reactor, 0.1, lambda: None)
    lat = [x * 1e3 for x in hon["lat"]]
    result.update({"gets": hon["started"], "gets_ok": len(lat), "gets_failed": hon["failed"],
                   "local_dropped": hon.get("local", 0),
                   "gets_unfinished": len(pending),
                   "get_p50_ms": statistics.median(lat) if lat else float("nan"),
                   "get_p99_ms": pct(lat, 0.99)})
    if slow:
        result["honest_stores"] = f"{stores['ok']}/{stores['n']}"
    if scen == "sim-table-ports":
        newcomer = DHTNetwork(reactor)
        net.attach(newcomer.protocol, "198.51.100.8", 4000)
        t0 = time.monotonic()
        try:
            joined = await _with_timeout(newcomer.join_network(victim.address), 10)
            result["newcomer_join"] = f"{joined} in {time.monotonic() - t0:.1f} s"
        except Exception:
            result["newcomer_join"] = "unfinished after 10 s"
        nodes = list(await honest.find_nodes_from_node(pong[1], os.urandom(20)) or [])
        result["findnode_attacker"] = (
            f"{sum(1 for n in nodes if n.host == att_ip)}/{len(nodes)}")
        result["newcomer_admitted"] = any(
            n.key == newcomer.key for n in victim.routing_table.get_close_nodes(newcomer.key, 1))
    sampler.stop()
    result["rss_peak_mib"] = max(rss_samples + [0]) / 1024
    result["hwm_mib"] = rss_kib(pid, "VmHWM") / 1024
    result["rss_end_mib"] = rss_kib(pid) / 1024
    result["attacker"] = dict(counts, ports=len(ports))
    result["victim"] = {"contacts": victim.routing_table.num_contacts, "records": len(table),
                        "pulls": len(getattr(victim.store, "_pulls", {})),
                        "requests_in": victim.protocol.stats.requests_in,
                        "stats_refused": victim.stats_refused,
                        "refused": dict(getattr(victim, "refused", {}) or {})}
    return result


# ======================================================================================
# orchestrator: runs every scenario on both trees, prints the tables
# ======================================================================================


def run_driver(tree: str, scen: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = tree
    cmd = [sys.executable, os.path.abspath(__file__), "--driver", scen, "--seconds",
           str(args.seconds), "--rate", str(args.rate), "--pace", str(args.pace)]
    try:
        proc = subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), capture_output=True,
                              text=True, timeout=args.seconds + 120)
    except subprocess.TimeoutExpired as e:
        return {"error": f"driver timed out ({e.timeout:.0f} s)"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            res: dict[str, Any] = json.loads(line[7:])
            if "error" in res:
                res["stderr"] = proc.stderr[-2000:]
            return res
    return {"error": f"no result (exit {proc.returncode})", "stderr": proc.stderr[-2000:]}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _ratio(b: Any, a: Any) -> str:
    if isinstance(b, bool) or isinstance(a, bool):
        return ""
    if isinstance(b, (int, float)) and isinstance(a, (int, float)) and b == b and a == a:
        if a == 0:
            return "inf" if b else "="
        return f"{b / a:.2f}x"
    return ""


ROWS: list[tuple[str, Any]] = [
    ("honest gets ok / started", lambda r: f"{r.get('gets_ok')}/{r.get('gets')}"),
    ("honest gets failed | unfinished",
     lambda r: f"{r.get('gets_failed')} | {r.get('gets_unfinished')}"),
    ("honest get p50 ms", lambda r: r.get("get_p50_ms")),
    ("honest get p99 ms", lambda r: r.get("get_p99_ms")),
    ("victim RSS start MiB", lambda r: r.get("rss_start_mib")),
    ("victim RSS peak MiB (VmHWM)", lambda r: r.get("hwm_mib")),
    ("victim RSS end MiB", lambda r: r.get("rss_end_mib")),
    ("victim routing contacts", lambda r: r.get("victim", {}).get("contacts")),
    ("victim records", lambda r: r.get("victim", {}).get("records")),
    ("attacker datagrams sent", lambda r: r.get("attacker", {}).get("sent")),
    ("attacker answers received", lambda r: r.get("attacker", {}).get("answers")),
    ("victim requests to attacker", lambda r: r.get("attacker", {}).get("requests_in")),
    ("victim requests handled (decoded)", lambda r: r.get("victim", {}).get("requests_in")),
    ("victim send failures", lambda r: r.get("victim", {}).get("send_failures")),
    ("honest requests | retries | timeouts", lambda r: r.get("honest_proto")),
    ("honest's own copies dropped", lambda r: r.get("local_dropped")),
]
EXTRA: dict[str, list[tuple[str, Any]]] = {
    "lookup": [("fake ids handed out", lambda r: r.get("attacker", {}).get("fake_ids_sent")),
               ("victim join", lambda r: r.get("victim", {}).get("join"))],
    "pullbomb": [("honest stores accepted", lambda r: r.get("honest_stores")),
                 ("victim pulls in progress at end", lambda r: r.get("victim", {}).get("pulls")),
                 ("attacker bytes sent", lambda r: r.get("attacker", {}).get("bytes_out"))],
    "table": [("findnode answer: attacker's", lambda r: r.get("findnode_attacker")),
              ("newcomer join", lambda r: r.get("newcomer_join")),
              ("newcomer admitted", lambda r: r.get("newcomer_admitted"))],
}
EXTRA["table-ports"] = EXTRA["table"]
EXTRA["lookup-ports"] = EXTRA["lookup"]
EXTRA["pullslow-ports"] = EXTRA["pullbomb"] + [
    ("attacker offers made", lambda r: r.get("attacker", {}).get("offers"))]
EXTRA["sim-pullslow-ports"] = EXTRA["pullslow-ports"]
EXTRA["sim-table-ports"] = EXTRA["table"]

TITLES = {
    "idle": "no attacker (baseline)",
    "ping": "ping flood from one address (#14)",
    "findnode": "findnode flood from one address (#14)",
    "getval": "getval read flood of the held 1 MiB value, 16 KiB chunks (#15)",
    "store0": "store flood of zero-byte records from one address (#8)",
    "lookup": "victim joins through an endless-lookup peer (#1)",
    "pullbomb": "pull bomb: 16 offers of 1 MiB, 1 byte per chunk per {pace} s (#2)",
    "table": "table flood: 4,000 pings, crafted ids, one address (#6)",
    "table-ports": "table flood over 200 source ports (loopback: 200 addresses)",
    "getval-ports": "getval read flood over 200 source ports (loopback: 200 addresses)",
    "store0-ports": "zero-byte store flood over 200 source ports (loopback: 200 addresses)",
    "lookup-ports": "endless-lookup peer whose fake ids sit at 200 ports (200 addresses)",
    "pullslow-ports": "slow pulls: 2 offers of 1 MiB from each of 8 ports, every chunk "
                      "answered whole after 1.8 s, re-offered at once; >= 16 s",
    "sim-pullslow-ports": "in-memory: slow pulls as above, from one IP over 8 ports; >= 16 s",
    "sim-idle": "in-memory network, distinct IPs: no attacker (baseline)",
    "sim-ping-ports": "in-memory: ping flood from one IP over 200 ports",
    "sim-store0-ports": "in-memory: zero-byte store flood from one IP over 200 ports",
    "sim-table-ports": "in-memory: table flood, 4,000 crafted ids, one IP, 200 ports",
}


def print_table(scen: str, before: dict[str, Any], after: dict[str, Any],
                args: argparse.Namespace) -> None:
    title = TITLES[scen].format(pace=args.pace)
    print(f"\n== {scen}: {title}")
    for label, r in (("before", before), ("after", after)):
        if "error" in r:
            print(f"  {label} FAILED: {r['error']}")
            if r.get("stderr"):
                print("    " + r["stderr"].strip().replace("\n", "\n    ")[-1500:])
    print(f"  {'':<34}{'before':>22}{'after':>22}{'before/after':>14}")
    for label, get in ROWS + EXTRA.get(scen, []):
        b, a = get(before), get(after)
        if b is None and a is None:
            continue
        print(f"  {label:<34}{_fmt(b):>22}{_fmt(a):>22}{_ratio(b, a):>14}")
    ref = after.get("victim", {}).get("refused")
    if ref:
        print(f"  after: refusals {ref}")
    for label, r in (("before", before), ("after", after)):
        if r.get("get_errors"):
            print(f"  {label}: honest get errors {r['get_errors']}")
    errs = after.get("attacker", {}).get("errors")
    if errs:
        print(f"  after: error answers to the attacker {errs}")


def orchestrate(args: argparse.Namespace) -> None:
    before = os.path.abspath(args.before)
    after = os.path.abspath(args.after)
    if not os.path.isdir(os.path.join(before, "p2pnet")):
        sys.exit(f"no p2pnet under {before}: git worktree add {before} dbccd2a")
    scens = args.only.split(",") if args.only else LOOPBACK + SIM
    print(f"p2pnet DHT floods, before ({before}) and after ({after})")
    print(f"  {args.seconds:g} s per scenario, attacker rate cap {args.rate:,.0f}/s, "
          f"pull-bomb pace {args.pace:g} s; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores (shared: expect noise)")
    summary = []
    for scen in scens:
        b = run_driver(before, scen, args)
        a = run_driver(after, scen, args)
        print_table(scen, b, a, args)
        sys.stdout.flush()
        summary.append((scen, b, a))
    print("\n== summary (before -> after)")
    print(f"  {'scenario':<18}{'gets ok':>16}{'get p50 ms':>20}{'get p99 ms':>22}"
          f"{'RSS peak MiB':>20}")
    for scen, b, a in summary:
        def pair(key: str, b: dict[str, Any] = b, a: dict[str, Any] = a) -> str:
            return f"{_fmt(b.get(key))} -> {_fmt(a.get(key))}"
        oks = f"{b.get('gets_ok')}/{b.get('gets')} -> {a.get('gets_ok')}/{a.get('gets')}"
        print(f"  {scen:<18}{oks:>16}{pair('get_p50_ms'):>20}{pair('get_p99_ms'):>22}"
              f"{pair('hwm_mib'):>20}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", default="/tmp/before",
                   help="a checkout of the code before the hardening (git worktree of dbccd2a)")
    p.add_argument("--after", default=ROOT, help="the checkout to compare (this one)")
    p.add_argument("--seconds", type=float, default=8.0, help="attack length (capped at 20)")
    p.add_argument("--rate", type=float, default=20000.0,
                   help="attacker datagrams per second at most (one socket)")
    p.add_argument("--pace", type=float, default=0.25,
                   help="pull bomb: seconds between the 1-byte chunks (the issue: 1.5)")
    p.add_argument("--only", default="", help="comma-separated scenarios: "
                   + ",".join(LOOPBACK + SIM))
    p.add_argument("--victim", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--driver", help=argparse.SUPPRESS)
    p.add_argument("--attacker", help=argparse.SUPPRESS)
    p.add_argument("--target", type=int, help=argparse.SUPPRESS)
    p.add_argument("--victim-id", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.seconds = max(1.0, min(args.seconds, 20.0))
    if args.victim:
        victim_main()
    elif args.attacker:
        attacker_main(args.attacker, args.target, args.seconds, args.rate, args.pace,
                      bytes.fromhex(args.victim_id) if args.victim_id else b"\0" * 20)
    elif args.driver:
        driver_main(args)
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
