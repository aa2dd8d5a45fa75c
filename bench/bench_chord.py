"""ChordSocket on N real loopback nodes: hops and latency per get and per set.

For each N in ``--nodes`` (default 10, 50 and 200) a child process builds N p2pnet nodes
in one reactor -- a UDP ``DHTService`` and a ZeroMQ ``MeshSocket`` each (``--mesh
memory``: an in-memory mesh on the same reactor instead), the meshes linked as a tree,
a ``ChordSocket`` on each -- and measures, one operation in flight at a time:

* ``--sets`` sets of 64-byte values, each from a random node: latency median / p99 and
  hops mean / max (the socket's ``last_hops``: depth of the deepest node the lookup
  reached), and the seconds until every node's key set holds every key;
* ``--gets`` gets of those keys from random nodes: latency median / p99, hops mean / max,
  success %;
* log2(N) beside the hops (Kademlia's O(log n)), build seconds, CPU seconds.

Beside it, py2p 0.7's ``ChordSocket`` (the seed; run with ``--py2p-python``, default the
bench env ``.benchenv/bin/python``) at each N in ``--py2p-nodes`` (default 10 and 50):
N sockets on loopback, each connected to the first and joined; ``--py2p-ops`` sets from
one node and ``getSync`` of each from another (``--py2p-timeout`` seconds each): latency
and success.  py2p counts no hops.  A child that runs past ``--child-timeout`` is killed
and reported as such.

Prints figures only; asserts nothing.

    python bench/bench_chord.py [--nodes 10 50 200] [--sets 30] [--gets 60]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from typing import Any

from benchlib import RESULT, cpu_seconds, mean, med, pct, run_for_result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
VALUE = 64


# -- p2pnet child ----------------------------------------------------------------------------


def p2pnet_child(n: int, sets: int, gets: int, mesh_kind: str, seed: int) -> dict[str, Any]:
    sys.path.insert(0, ROOT)
    from twisted.internet import defer, task
    from twisted.internet import reactor as global_reactor

    from p2pnet.chord.socket import ChordSocket
    from p2pnet.dht.service import DHTService
    from p2pnet.mesh.limits import MeshLimits
    from p2pnet.mesh.memory import MemoryMeshNetwork
    from p2pnet.mesh.socket import MeshSocket

    reactor: Any = global_reactor
    rng = random.Random(seed)
    out: dict[str, Any] = {"n": n, "mesh": mesh_kind}

    async def pause(seconds: float) -> None:
        await task.deferLater(reactor, seconds, lambda: None)

    async def main() -> None:
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        dhts: list[DHTService] = []
        first = DHTService(0, HOST)
        first.startService()
        dhts.append(first)
        boot = [first.network.address]
        for start in range(1, n, 20):  # join 20 at a time
            batch = [DHTService(0, HOST, bootstrap=boot) for _ in range(start, min(n, start + 20))]
            for d in batch:
                d.startService()
            await defer.gatherResults([d.when_joined() for d in batch])
            dhts += batch
        out["dht_build_s"] = time.perf_counter() - t0
        meshes: list[Any] = []
        if mesh_kind == "zmq":
            for _ in range(n):
                m = MeshSocket(HOST, 0, limits=MeshLimits(handshake_timeout=10.0))
                m.startService()
                await m.when_ready()
                meshes.append(m)
            for i in range(1, n):
                await meshes[i].connect(*meshes[(i - 1) // 2].address)
        else:
            net = MemoryMeshNetwork(reactor, latency=0.0005)
            meshes = [net.node(b"n%04d" % i) for i in range(n)]
            for i in range(1, n):
                net.link(meshes[i].peer_id, meshes[(i - 1) // 2].peer_id)
        socks = [ChordSocket(m, d.network) for m, d in zip(meshes, dhts, strict=True)]
        out["build_s"] = time.perf_counter() - t0
        await pause(0.2)
        await socks[0].d_set(b"warm", b"x")
        await socks[-1].d_get(b"warm")

        value = bytes(rng.getrandbits(8) for _ in range(VALUE))
        set_lat, set_hops = [], []
        written: dict[bytes, bytes] = {}
        for j in range(sets):
            sock = rng.choice(socks)
            key = b"key-%d" % j
            v = value[:-4] + j.to_bytes(4, "big")
            t = time.perf_counter()
            await sock.d_set(key, v)
            set_lat.append(time.perf_counter() - t)
            set_hops.append(sock.last_hops or 0)
            written[key] = v
        t = time.perf_counter()
        want = len(written) + 1
        for _ in range(2000):
            if all(len(s) == want for s in socks):
                break
            await pause(0.005)
        out["keys_everywhere_s"] = time.perf_counter() - t
        out["keys_everywhere"] = sum(1 for s in socks if len(s) == want)

        get_lat, get_hops, ok = [], [], 0
        keys = list(written)
        for _ in range(gets):
            sock = rng.choice(socks)
            key = rng.choice(keys)
            t = time.perf_counter()
            try:
                got = await sock.d_get(key)
            except Exception as e:  # noqa: BLE001 -- counted as a failure
                got = e
            get_lat.append(time.perf_counter() - t)
            get_hops.append(sock.last_hops or 0)
            ok += got == written[key]
        out.update(
            set_med_ms=med(set_lat) * 1e3, set_p99_ms=pct(set_lat, 99) * 1e3,
            set_hops_mean=mean(set_hops), set_hops_max=max(set_hops),
            get_med_ms=med(get_lat) * 1e3, get_p99_ms=pct(get_lat, 99) * 1e3,
            get_hops_mean=mean(get_hops), get_hops_max=max(get_hops),
            get_ok_pct=100.0 * ok / gets, log2n=math.log2(n), cpu_s=cpu_seconds() - cpu0)
        refused: dict[str, int] = {}
        for d in dhts:
            for kind, count in d.network.refused.items():
                refused[kind] = refused.get(kind, 0) + count
        out["dht_refused"] = refused
        out["dht_timeouts"] = sum(d.network.protocol.stats.timeouts for d in dhts)
        out["dht_retries"] = sum(d.network.protocol.stats.retries for d in dhts)
        for s in socks:
            s.stopService()
        if mesh_kind == "zmq":
            for m in meshes:
                await m.stopService()
        for d in dhts:
            await d.stopService()

    def run(_: Any) -> Any:
        return defer.Deferred.fromCoroutine(main())

    try:
        task.react(run)
    except SystemExit:
        pass
    return out


# -- py2p child (runs in the bench env) ----------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (py2p wants a port number, not 0)."""
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def py2p_child(n: int, ops: int, timeout: float, seed: int) -> dict[str, Any]:
    from py2p import chord  # type: ignore[import-not-found]

    out: dict[str, Any] = {"n": n, "seed": seed}
    t0 = time.perf_counter()
    socks = [chord.ChordSocket(HOST, free_port()) for _ in range(n)]
    base = socks[0].addr[1]
    failed_connects = 0
    for s in socks[1:]:
        try:
            s.connect(HOST, base)
        except Exception:  # noqa: BLE001 -- py2p's connect raises socket timeouts
            failed_connects += 1
    out["failed_connects"] = failed_connects
    time.sleep(1.0)
    for s in socks:
        s.join()
    time.sleep(1.0)
    out["build_s"] = time.perf_counter() - t0
    set_lat, get_lat, ok, errors = [], [], 0, {}
    writer, reader = socks[0], socks[-1]
    for j in range(ops):
        key, value = b"key-%d" % j, b"value-%d" % j
        t = time.perf_counter()
        writer.set(key, value)
        set_lat.append(time.perf_counter() - t)
        time.sleep(0.1)
        t = time.perf_counter()
        try:
            got = reader._ChordSocket__getitem(key, timeout=timeout)
        except Exception as e:  # noqa: BLE001 -- what failed, counted by type
            got = None
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        get_lat.append(time.perf_counter() - t)
        ok += got == value
    if failed_connects:
        errors["failed connects"] = failed_connects
    out.update(set_med_ms=med(set_lat) * 1e3, get_med_ms=med(get_lat) * 1e3,
               get_ok_pct=100.0 * ok / ops, errors=errors)
    for s in socks:
        try:
            s.close()
        except Exception:  # noqa: BLE001, S110 -- best effort at exit
            pass
    return out


# -- parent ------------------------------------------------------------------------------------


def run_child(python: str, args: list[str], timeout: float) -> dict[str, Any] | str:
    return run_for_result([python, os.path.abspath(__file__), *args], timeout, tail=1,
                          cwd=ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[10, 50, 200])
    ap.add_argument("--sets", type=int, default=30)
    ap.add_argument("--gets", type=int, default=60)
    ap.add_argument("--mesh", choices=["zmq", "memory"], default="zmq")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--py2p-python", default=os.path.join(ROOT, ".benchenv", "bin", "python"))
    ap.add_argument("--py2p-nodes", type=int, nargs="*", default=[10, 50])
    ap.add_argument("--py2p-ops", type=int, default=5)
    ap.add_argument("--py2p-timeout", type=float, default=3.0)
    ap.add_argument("--child-timeout", type=float, default=300.0)
    ap.add_argument("--child", choices=["p2pnet", "py2p"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.child == "p2pnet":
        print(RESULT + json.dumps(p2pnet_child(a.n, a.sets, a.gets, a.mesh, a.seed)))
        return
    if a.child == "py2p":
        print(RESULT + json.dumps(py2p_child(a.n, a.py2p_ops, a.py2p_timeout, a.seed)))
        return

    print(f"ChordSocket on loopback: {a.sets} sets, {a.gets} gets of {VALUE}-byte values, "
          f"one in flight; mesh: {a.mesh}")
    print(f"{'N':>5} {'log2N':>6} | {'set ms med/p99':>15} {'set hops mean/max':>18} | "
          f"{'get ms med/p99':>15} {'get hops mean/max':>18} {'get ok':>7} | "
          f"{'keys everywhere':>16} {'build s':>8} {'cpu s':>6}")
    for n in a.nodes:
        r = run_child(sys.executable, ["--child", "p2pnet", "--n", str(n), "--sets",
                                       str(a.sets), "--gets", str(a.gets), "--mesh", a.mesh,
                                       "--seed", str(a.seed)], a.child_timeout)
        if isinstance(r, str):
            print(f"{n:>5} p2pnet {r}")
            continue
        print(f"{n:>5} {r['log2n']:>6.2f} | {r['set_med_ms']:>7.1f}/{r['set_p99_ms']:<7.1f} "
              f"{r['set_hops_mean']:>9.2f}/{r['set_hops_max']:<8} | "
              f"{r['get_med_ms']:>7.1f}/{r['get_p99_ms']:<7.1f} "
              f"{r['get_hops_mean']:>9.2f}/{r['get_hops_max']:<8} {r['get_ok_pct']:>6.0f}% | "
              f"{r['keys_everywhere']:>4}/{n:<4} {r['keys_everywhere_s']:>5.2f}s "
              f"{r['build_s']:>8.1f} {r['cpu_s']:>6.1f}  (DHT joins {r['dht_build_s']:.1f}s)")
        print(f"{'':>14}DHT request timeouts {r['dht_timeouts']}, retries {r['dht_retries']}, "
              f"refusals {r['dht_refused'] or '-'}")

    if not a.py2p_nodes:
        return
    if not os.path.exists(a.py2p_python):
        print(f"py2p: no interpreter at {a.py2p_python} (create the bench env: "
              f"python3 -m venv .benchenv && .benchenv/bin/pip install py2p)")
        return
    print(f"\npy2p 0.7 ChordSocket (reference): {a.py2p_ops} sets on one node, getSync of "
          f"each on another ({a.py2p_timeout:g}s timeout); py2p counts no hops")
    print(f"{'N':>5} | {'set ms med':>10} {'get ms med':>10} {'get ok':>7} | errors")
    for n in a.py2p_nodes:
        r = run_child(a.py2p_python, ["--child", "py2p", "--n", str(n), "--py2p-ops",
                                      str(a.py2p_ops), "--py2p-timeout",
                                      str(a.py2p_timeout), "--seed", str(a.seed)],
                      a.child_timeout)
        if isinstance(r, str):
            print(f"{n:>5} | py2p {r}")
            continue
        print(f"{n:>5} | {r['set_med_ms']:>10.1f} {r['get_med_ms']:>10.1f} "
              f"{r['get_ok_pct']:>6.0f}% | {r['errors'] or '-'}")


if __name__ == "__main__":
    main()
