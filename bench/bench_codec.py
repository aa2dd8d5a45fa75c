"""The DHT codec: p2pnet's binary format beside JSON (base64 keys) and msgpack.

Each format turns the same :class:`p2pnet.dht.codec.Message` into bytes and back into an
equal ``Message`` (nodes as validated ``Node`` objects, keys checked), so the figures
compare like with like:

* ``p2pnet binary``: ``codec.encode`` / ``codec.decode`` (struct, strict decoder);
* ``JSON + base64``: bytestag's style -- a JSON object, keys and ids in base64;
* ``msgpack``: a msgpack array with raw bytes (skipped if msgpack is not importable).

Messages: a findnode answer with 20 nodes, and a ping request.  Each figure is the
median of ``--repeats`` runs, alternating between the formats, in CPU time;
ratios are against p2pnet's binary codec.  A second table
shows the serialisation alone (``json.dumps``/``loads``, ``msgpack.packb``/``unpackb`` of
ready-made Python values, no ``Message`` built), the floor each format could reach.

    python bench/bench_codec.py [--repeats 7] [--seconds 0.15]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # measure the checkout's p2pnet, not a stale installed copy

import p2pnet  # noqa: E402
from p2pnet.dht import codec  # noqa: E402
from p2pnet.dht.errors import DecodeError  # noqa: E402
from p2pnet.models import Node  # noqa: E402

try:
    import msgpack
except ImportError:  # pragma: no cover - depends on the environment
    msgpack = None

NETWORK_ID = b"p2pnet"


# -- the sample messages ---------------------------------------------------------------


def sample_messages() -> dict[str, codec.Message]:
    rnd = os.urandom
    nodes = tuple(Node(rnd(20), f"10.0.{i // 250}.{i % 250 + 1}", 4455 + i) for i in range(20))
    return {
        "findnode answer, 20 nodes": codec.Message(
            NETWORK_ID, codec.Kind.RESPONSE, codec.RPC.FIND_NODE, rnd(8), rnd(20),
            codec.NodesResponse(nodes)),
        "ping request": codec.Message(
            NETWORK_ID, codec.Kind.REQUEST, codec.RPC.PING, rnd(8), rnd(20),
            codec.PingRequest()),
    }


# -- p2pnet ------------------------------------------------------------------------------


def binary_encode(m: codec.Message) -> bytes:
    return codec.encode(m.network_id, m.tid, m.sender, m.body, m.rpc)


binary_decode = codec.decode


# -- JSON with base64 keys (bytestag's style) ---------------------------------------------


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: Any, size: int | None = None) -> bytes:
    if not isinstance(s, str):
        raise DecodeError("expected base64 text")
    try:
        b = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("bad base64") from None
    if size is not None and len(b) != size:
        raise DecodeError("wrong length")
    return b


def _body_fields(m: codec.Message) -> list[tuple[bytes, str, int]] | None:
    if isinstance(m.body, codec.NodesResponse):
        return [(n.key, n.host, n.port) for n in m.body.nodes]
    if isinstance(m.body, (codec.PingRequest, codec.PingResponse)):
        return None
    raise TypeError("this benchmark encodes ping and findnode messages only")


def _build(network_id: bytes, kind: int, rpc: int, tid: bytes, sender: bytes,
           nodes: list[tuple[bytes, str, int]] | None) -> codec.Message:
    try:
        k, r = codec.Kind(kind), codec.RPC(rpc)
        if nodes is None:
            body: codec.Body = codec.PingRequest() if k == codec.Kind.REQUEST \
                else codec.PingResponse()
        else:
            body = codec.NodesResponse(tuple(Node(key, host, port)
                                             for key, host, port in nodes))
    except (TypeError, ValueError) as e:
        raise DecodeError(str(e)) from None
    return codec.Message(network_id, k, r, tid, sender, body)


def json_encode(m: codec.Message) -> bytes:
    d: dict[str, Any] = {"v": codec.VERSION, "netid": _b64(m.network_id), "kind": int(m.kind),
                         "rpc": int(m.rpc), "tid": _b64(m.tid), "nodeid": _b64(m.sender)}
    nodes = _body_fields(m)
    if nodes is not None:
        d["nodes"] = [[_b64(k), h, p] for k, h, p in nodes]
    return json.dumps(d, separators=(",", ":")).encode("utf-8")


def json_decode(data: bytes) -> codec.Message:
    try:
        d = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise DecodeError("not JSON") from None
    if not isinstance(d, dict) or d.get("v") != codec.VERSION:
        raise DecodeError("bad message")
    nodes = d.get("nodes")
    if nodes is not None:
        if not isinstance(nodes, list) or len(nodes) > codec.MAX_NODES:
            raise DecodeError("bad nodes")
        try:
            nodes = [(_unb64(k, 20), h, p) for k, h, p in nodes]
        except (TypeError, ValueError):
            raise DecodeError("bad node") from None
    return _build(_unb64(d.get("netid")), d.get("kind"), d.get("rpc"),
                  _unb64(d.get("tid"), 8), _unb64(d.get("nodeid"), 20), nodes)


# -- msgpack -------------------------------------------------------------------------------


def msgpack_encode(m: codec.Message) -> bytes:
    nodes = _body_fields(m)
    return msgpack.packb([codec.VERSION, m.network_id, int(m.kind), int(m.rpc), m.tid,
                          m.sender, None if nodes is None else [list(n) for n in nodes]],
                         use_bin_type=True)


def msgpack_decode(data: bytes) -> codec.Message:
    try:
        a = msgpack.unpackb(data, raw=False)
    except Exception:  # msgpack raises several types for bad input
        raise DecodeError("not msgpack") from None
    if not isinstance(a, list) or len(a) != 7 or a[0] != codec.VERSION:
        raise DecodeError("bad message")
    _, netid, kind, rpc, tid, sender, nodes = a
    if not (isinstance(netid, bytes) and isinstance(tid, bytes) and len(tid) == 8
            and isinstance(sender, bytes) and len(sender) == 20):
        raise DecodeError("bad header")
    if nodes is not None:
        if not isinstance(nodes, list) or len(nodes) > codec.MAX_NODES:
            raise DecodeError("bad nodes")
        try:
            nodes = [(k, h, p) for k, h, p in nodes]
        except (TypeError, ValueError):
            raise DecodeError("bad node") from None
    return _build(netid, kind, rpc, tid, sender, nodes)


# -- measuring -------------------------------------------------------------------------------


def calibrate(fn: Callable[[], Any], seconds: float) -> int:
    """How many calls of ``fn`` take about ``seconds`` of CPU."""
    number, t = 1, 0.0
    while number < 10_000_000:
        t0 = time.process_time()
        for _ in range(number):
            fn()
        t = time.process_time() - t0
        if t >= seconds / 4:
            break
        number *= 4
    return max(1, int(number * seconds / max(t, 1e-9)))


def rates(fns: dict[str, Callable[[], Any]], seconds: float, repeats: int
          ) -> dict[str, float]:
    """Median calls per CPU second of each function, the functions timed in turn.

    CPU time (``time.process_time``), not wall time: on a shared, busy machine the time
    this process waits for a core is not the codec's cost.  Rounds alternate between
    the functions so a slow spell of the machine hits them alike.
    """
    numbers = {name: calibrate(fn, seconds) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for name in order:
            fn, number = fns[name], numbers[name]
            t0 = time.process_time()
            for _ in range(number):
                fn()
            samples[name].append(number / max(time.process_time() - t0, 1e-9))
    return {name: statistics.median(xs) for name, xs in samples.items()}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seconds", type=float, default=0.15, help="seconds per timed run")
    args = p.parse_args(argv)
    repeats = max(1, min(args.repeats, 50))
    seconds = max(0.01, min(args.seconds, 2.0))

    formats: dict[str, tuple[Callable[[codec.Message], bytes], Callable[[bytes], Any]]] = {
        "p2pnet binary": (binary_encode, binary_decode),
        "JSON + base64": (json_encode, json_decode),
    }
    if msgpack is not None:
        formats["msgpack"] = (msgpack_encode, msgpack_decode)

    print(f"p2pnet codec benchmark -- p2pnet from {os.path.dirname(p2pnet.__file__)}")
    print(f"python {sys.version.split()[0]}; msgpack "
          f"{'.'.join(map(str, msgpack.version)) if msgpack else 'not importable (skipped)'};"
          f" median of {repeats} alternating runs of ~{seconds:g} CPU s each")
    for title, msg in sample_messages().items():
        print(f"\n{title}: encode + decode to an equal Message")
        print(f"  {'format':<16}{'bytes':>7}{'size ratio':>12}{'enc+dec/CPU s':>15}"
              f"{'CPU us':>9}{'speed vs p2pnet':>17}")
        sizes, fns = {}, {}
        for name, (enc, dec) in formats.items():
            data = enc(msg)
            if dec(data) != msg:
                print(f"  {name:<16} does not round-trip: skipped")
                continue
            sizes[name] = len(data)
            fns[name] = lambda enc=enc, dec=dec, msg=msg: dec(enc(msg))
        if isinstance(msg.body, codec.NodesResponse):
            nodes = msg.body.nodes
            fns["Node() x 20"] = lambda nodes=nodes: [Node(n.key, n.host, n.port)
                                                      for n in nodes]
        got = rates(fns, seconds, repeats)
        base_rate, base_size = got["p2pnet binary"], sizes["p2pnet binary"]
        for name, size in sizes.items():
            r = got[name]
            print(f"  {name:<16}{size:>7}{size / base_size:>12.2f}{r:>15,.0f}"
                  f"{1e6 / r:>9.2f}{r / base_rate:>17.2f}")
        if "Node() x 20" in got:
            print(f"  (of each decode above, building the 20 validated Node objects alone "
                  f"costs {1e6 / got['Node() x 20']:.2f} CPU us)")

    print("\nserialisation alone (ready-made Python values, no Message, no validation):")
    print(f"  {'message':<28}{'format':<10}{'dumps+loads/CPU s':>19}{'CPU us':>9}")
    for title, msg in sample_messages().items():
        nodes = _body_fields(msg)
        jd: dict[str, Any] = {"v": 1, "netid": _b64(msg.network_id), "kind": 1, "rpc": 2,
                              "tid": _b64(msg.tid), "nodeid": _b64(msg.sender)}
        if nodes is not None:
            jd["nodes"] = [[_b64(k), h, p] for k, h, p in nodes]
        fns = {"json": lambda jd=jd: json.loads(json.dumps(jd, separators=(",", ":")))}
        if msgpack is not None:
            md = [1, msg.network_id, 1, 2, msg.tid, msg.sender,
                  None if nodes is None else [list(n) for n in nodes]]
            fns["msgpack"] = lambda md=md: msgpack.unpackb(msgpack.packb(md, use_bin_type=True),
                                                          raw=False)
        for name, r in rates(fns, seconds, repeats).items():
            print(f"  {title:<28}{name:<10}{r:>19,.0f}{1e6 / r:>9.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
