"""Coverage-guided fuzzing (atheris) of the DHT codec and request handlers.

Two targets, chosen by the input's first byte:

* **codec** -- the rest of the input is a datagram: :func:`p2pnet.dht.codec.decode` must
  return a valid message (which re-encodes to a message that decodes the same) or raise
  :class:`~p2pnet.dht.errors.DecodeError`; anything else is a finding.
* **handlers** -- the rest of the input drives a ``FuzzedDataProvider`` that builds a few
  well-formed messages (any body type, hostile field values, any sender id, token,
  padding and source address) and sends them to a node on the in-memory network, whose
  clock then moves on.  Any exception escaping the node, a bound exceeded, or a routing
  table contact that never answered (the fuzzing sources never answer) is a finding.

Atheris is not a test dependency: install it into its own environment, never ``.venv``::

    python3 -m venv /tmp/fuzzenv
    /tmp/fuzzenv/bin/pip install atheris twisted attrs zope.interface
    PYTHONPATH=. /tmp/fuzzenv/bin/python fuzz/fuzz_dht.py --seeds /tmp/fuzz-corpus
    PYTHONPATH=. /tmp/fuzzenv/bin/python fuzz/fuzz_dht.py -max_total_time=300 \\
        -max_len=2048 -rss_limit_mb=2048 /tmp/fuzz-corpus

(libFuzzer options follow the script: ``-runs=N``, ``-max_total_time=S``, a corpus
directory.)  A crash writes ``crash-<sha1>`` with the input; replay it with
``PYTHONPATH=. /tmp/fuzzenv/bin/python fuzz/fuzz_dht.py crash-<sha1>``.
"""

from __future__ import annotations

import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["p2pnet"]):
    from twisted.internet import task

    from p2pnet import ids
    from p2pnet.dht import codec
    from p2pnet.dht.errors import DecodeError
    from p2pnet.dht.network import DHTNetwork
    from p2pnet.models import MAX_VALUE_SIZE, Node
    from p2pnet.sim.memory import MemoryNetwork

NETID = b"p2pnet"
SOURCES = [("93.184.216.34", 6881), ("93.184.216.35", 6881), ("2606:4700::1", 4000),
           ("10.66.0.1", 4000), ("127.0.0.1", 9999), ("10.0.0.2", 4000)]
RESET_EVERY = 2000


class World:
    """A victim node and one honest node on an in-memory network (rebuilt now and then)."""

    def __init__(self) -> None:
        self.clock = task.Clock()
        self.net = MemoryNetwork(self.clock)
        self.victim = DHTNetwork(self.clock, node_id=b"\x11" * 20)
        self.honest = DHTNetwork(self.clock, node_id=b"\x22" * 20)
        self.net.attach(self.victim.protocol, "10.0.0.1", 4000)
        self.net.attach(self.honest.protocol, "10.0.0.2", 4000)
        self.honest.ping_address(self.victim.address)
        self.clock.advance(1)
        self.runs = 0


WORLD = World()


def _key(fdp: Any) -> bytes:
    choice = fdp.ConsumeIntInRange(0, 3)
    if choice == 0:
        return b"\x11" * 20
    if choice == 1:
        return b"\x22" * 20
    return fdp.ConsumeBytes(20).ljust(20, b"\x00")


def _body(fdp: Any) -> tuple[codec.Body, codec.RPC | None]:
    kind = fdp.ConsumeIntInRange(0, 10)
    ts = fdp.ConsumeFloat()
    if ts != ts or ts < 0 or ts == float("inf"):
        ts = 0.0
    if kind == 0:
        return codec.PingRequest(), None
    if kind == 1:
        return codec.FindNodeRequest(_key(fdp)), None
    if kind == 2:
        return codec.FindValueRequest(_key(fdp), _key(fdp) if fdp.ConsumeBool() else None), None
    if kind == 3:
        data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1500))
        index = ids.key_for(data) if fdp.ConsumeBool() else _key(fdp)
        return codec.StoreRequest(_key(fdp), index, len(data), ts, data,
                                  fdp.ConsumeIntInRange(0, 2**32 - 1)), None
    if kind == 4:
        return codec.StoreRequest(_key(fdp), _key(fdp), fdp.ConsumeIntInRange(
            0, MAX_VALUE_SIZE), ts, None, fdp.ConsumeIntInRange(0, 2**32 - 1)), None
    if kind == 5:
        return codec.GetValueRequest(_key(fdp), _key(fdp),
                                     fdp.ConsumeIntInRange(0, MAX_VALUE_SIZE),
                                     fdp.ConsumeIntInRange(0, MAX_VALUE_SIZE)), None
    if kind == 6:
        hosts = ["10.0.0.2", "10.0.0.3", "127.0.0.1", "93.184.216.34", "2001:db8::1"]
        nodes = tuple(Node(_key(fdp), hosts[fdp.ConsumeIntInRange(0, len(hosts) - 1)],
                           fdp.ConsumeIntInRange(1, 65535))
                      for _ in range(fdp.ConsumeIntInRange(0, 20)))
        return codec.NodesResponse(nodes), codec.RPC.FIND_NODE
    if kind == 7:
        return codec.ValuesResponse(tuple(
            codec.ValueInfo(_key(fdp), fdp.ConsumeIntInRange(0, MAX_VALUE_SIZE), ts)
            for _ in range(fdp.ConsumeIntInRange(0, 10)))), codec.RPC.FIND_VALUE
    if kind == 8:
        data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 100))
        total = fdp.ConsumeIntInRange(len(data), MAX_VALUE_SIZE)
        return codec.GetValueResponse(total, fdp.ConsumeIntInRange(0, total - len(data)),
                                      data), codec.RPC.GET_VALUE
    if kind == 9:
        return codec.ErrorResponse(fdp.ConsumeIntInRange(0, 255),
                                   fdp.ConsumeUnicodeNoSurrogates(40)), codec.RPC(
            fdp.ConsumeIntInRange(1, 5))
    return codec.PingResponse(), codec.RPC.PING


def fuzz_codec(data: bytes) -> None:
    try:
        msg = codec.decode(data)
    except DecodeError:
        return
    again = codec.encode(msg.network_id, msg.tid, msg.sender, msg.body, msg.rpc, msg.token,
                         msg.padding, msg.grant)
    back = codec.decode(again)
    if isinstance(msg.body, codec.NodesResponse):
        assert back.body == codec.NodesResponse(msg.body.nodes), (msg, back)
    elif isinstance(msg.body, codec.ErrorResponse):
        assert msg.body.message.startswith(back.body.message)  # type: ignore[union-attr]
    else:
        assert back == msg, (msg, back)


def fuzz_handlers(data: bytes) -> None:
    global WORLD
    world = WORLD
    world.runs += 1
    if world.runs > RESET_EVERY:
        WORLD = world = World()
    fdp = atheris.FuzzedDataProvider(data)
    for _ in range(fdp.ConsumeIntInRange(1, 8)):
        body, rpc = _body(fdp)
        token = fdp.ConsumeBytes(8) if fdp.ConsumeBool() else None
        grant = fdp.ConsumeBytes(8) if fdp.ConsumeBool() else None
        try:
            datagram = codec.encode(NETID, fdp.ConsumeBytes(8).ljust(8, b"\x00"), _key(fdp),
                                    body, rpc, token if token and len(token) == 8 else None,
                                    fdp.ConsumeIntInRange(0, 400),
                                    grant if grant and len(grant) == 8 else None)
        except ValueError:
            continue  # a message the codec refuses to encode (e.g. too large)
        if fdp.ConsumeBool() and datagram:  # and sometimes a flipped byte
            pos = fdp.ConsumeIntInRange(0, len(datagram) - 1)
            datagram = datagram[:pos] + bytes((fdp.ConsumeIntInRange(0, 255),)) + datagram[
                pos + 1:]
        source = SOURCES[fdp.ConsumeIntInRange(0, len(SOURCES) - 1)]
        world.net.send(source, world.victim.address, datagram)
        world.clock.advance(fdp.ConsumeIntInRange(0, 3000) / 1000)
    world.clock.advance(30)
    victim = world.victim
    limits = victim.limits
    assert len(victim.protocol.limiter.sources) <= limits.rate_max_sources
    assert len(victim.protocol.proof) <= limits.proven_max
    assert victim.routing_table.num_contacts <= 160 * victim.k
    for bucket in victim.routing_table.buckets:
        for node in bucket.nodes:  # only the honest node ever answers the victim
            assert node.address == world.honest.address and node.key == world.honest.key, node


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        fuzz_codec(data[1:])
    else:
        fuzz_handlers(data[1:])


def make_seeds(directory: str) -> None:
    """Write one valid datagram of each kind (codec target) and a few handler inputs."""
    import hashlib
    import os

    os.makedirs(directory, exist_ok=True)
    n = Node(b"\x33" * 20, "10.0.0.3", 4000)
    bodies: list[tuple[codec.Body, codec.RPC | None]] = [
        (codec.PingRequest(), None), (codec.PingResponse(), None),
        (codec.FindNodeRequest(b"\x01" * 20), None),
        (codec.NodesResponse((n, Node(b"\x34" * 20, "2001:db8::1", 1))), codec.RPC.FIND_NODE),
        (codec.NodesResponse((n,)), codec.RPC.FIND_VALUE),
        (codec.FindValueRequest(b"\x01" * 20, b"\x02" * 20), None),
        (codec.ValuesResponse((codec.ValueInfo(b"\x02" * 20, 5, 1.0),)), None),
        (codec.StoreRequest(b"\x01" * 20, ids.key_for(b"abc"), 3, 1.0, b"abc", 7), None),
        (codec.StoreRequest(b"\x01" * 20, b"\x02" * 20, 5000, 1.0), None),
        (codec.StoreResponse(codec.StoreStatus.STORED), None),
        (codec.GetValueRequest(b"\x01" * 20, b"\x02" * 20, 0, 100), None),
        (codec.GetValueResponse(10, 2, b"abc"), None),
        (codec.ErrorResponse(4, "prove"), codec.RPC.GET_VALUE),
    ]
    seeds = []
    for body, rpc in bodies:
        seeds.append(b"\x01" + codec.encode(NETID, b"t" * 8, b"s" * 20, body, rpc,
                                             b"k" * 8, 3, b"g" * 8))
        seeds.append(b"\x01" + codec.encode(NETID, b"t" * 8, b"s" * 20, body, rpc))
    seeds += [b"\x00" + bytes(range(i, i + 64)) for i in range(0, 192, 16)]
    for seed in seeds:
        name = hashlib.sha1(seed).hexdigest()
        with open(os.path.join(directory, name), "wb") as f:
            f.write(seed)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        make_seeds(sys.argv[2])
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
