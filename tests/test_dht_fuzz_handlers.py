"""Hypothesis fuzzing of the request handlers (issue 11, "Proof").

Not the decoder (``tests.test_dht_codec`` fuzzes that): here every datagram is a
*well-formed* message, built by the codec from hostile field values -- random keys and
ids (ours and our contacts' among them), store offers of any size and timestamp, inline
values that do not match their index, getvals at any offset, unsolicited answers, stale
and made-up tokens -- sent to a node on the in-memory network from a pool of addresses
(public, private, loopback, and forged ones belonging to honest nodes), at random times.

Afterwards:

* the node still answers an honest node (ping and findnode);
* every table a stranger can grow is within its bound;
* the routing table holds no contact that has not answered the node: every contact is an
  honest node at its own address.  The fuzzing addresses never answer anything, so a
  contact with their address or a forged id means a stranger got in without answering.

The run is bounded (the ``ci`` profile, and ``max_examples`` below) to stay in seconds.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2pnet import ids
from p2pnet.dht import codec
from p2pnet.dht.network import DHTNetwork
from p2pnet.models import MAX_VALUE_SIZE, Node
from tests.dhthelpers import Sim, result_of

NETID = b"p2pnet"
HONEST = 4

#: where hostile datagrams come from: public, private and loopback addresses, and
#: (index < 0) the address of honest node ``-index - 1``, forged
SOURCES: list[tuple[str, int] | int] = [
    ("93.184.216.34", 6881), ("93.184.216.35", 6881), ("93.184.216.34", 6882),
    ("2606:4700::1", 4000), ("10.66.0.1", 4000), ("127.0.0.1", 9999), -1, -2,
]

keys = st.binary(min_size=20, max_size=20)
small_keys = st.sampled_from([b"\x00" * 20, b"\xff" * 20, b"\x42" * 20])
tokens = st.none() | st.binary(min_size=8, max_size=8)
timestamps = st.sampled_from([0.0, 1.0, 1e9, 1e12, 1e15, 2e9]) | st.floats(
    0, 1e16, allow_nan=False, allow_infinity=False)
sizes = st.integers(0, MAX_VALUE_SIZE) | st.sampled_from([0, 1, 1024, 1025, MAX_VALUE_SIZE])


def contacts() -> st.SearchStrategy[Node]:
    hosts = st.sampled_from(["10.0.0.1", "10.77.0.1", "93.184.216.34", "127.0.0.1",
                             "2001:db8::1"])
    return st.builds(Node, keys, hosts, st.integers(1, 65535))


@st.composite
def inline_stores(draw: st.DrawFn) -> codec.StoreRequest:
    data = draw(st.binary(max_size=1200))
    index = ids.key_for(data) if draw(st.booleans()) else draw(keys)
    return codec.StoreRequest(draw(keys | small_keys), index, len(data), draw(timestamps),
                              data, draw(st.integers(0, 2**32 - 1)))


def request_bodies() -> st.SearchStrategy[codec.Body]:
    return st.one_of(
        st.just(codec.PingRequest()),
        st.builds(codec.FindNodeRequest, keys | small_keys),
        st.builds(codec.FindValueRequest, keys | small_keys, st.none() | keys),
        st.builds(codec.StoreRequest, keys | small_keys, keys, sizes, timestamps, st.none(),
                  st.integers(0, 2**32 - 1)),
        inline_stores(),
        st.builds(codec.GetValueRequest, keys | small_keys, keys,
                  st.integers(0, MAX_VALUE_SIZE), st.integers(0, MAX_VALUE_SIZE)),
    )


def response_bodies() -> st.SearchStrategy[tuple[codec.Body, codec.RPC]]:
    return st.one_of(
        st.tuples(st.builds(codec.NodesResponse, st.lists(contacts(), max_size=20).map(tuple)),
                  st.sampled_from([codec.RPC.FIND_NODE, codec.RPC.FIND_VALUE])),
        st.tuples(st.builds(codec.ValuesResponse, st.lists(st.builds(
            codec.ValueInfo, keys, sizes, timestamps), max_size=10).map(tuple)),
            st.just(codec.RPC.FIND_VALUE)),
        st.tuples(st.binary(max_size=40).flatmap(lambda data: st.builds(
            codec.ValuesResponse, st.tuples(st.builds(codec.ValueInfo, keys, st.just(len(data)),
                                                      timestamps)), st.just(data))),
            st.just(codec.RPC.FIND_VALUE)),
        st.tuples(st.builds(codec.GetValueResponse, st.just(10), st.just(0),
                            st.binary(max_size=10)), st.just(codec.RPC.GET_VALUE)),
        st.tuples(st.just(codec.PingResponse()), st.just(codec.RPC.PING)),
        st.tuples(st.builds(codec.ErrorResponse, st.integers(0, 255), st.text(max_size=20)),
                  st.sampled_from(list(codec.RPC))),
    )


@st.composite
def hostile_messages(draw: st.DrawFn) -> tuple[int, int, bytes, float]:
    """(source index, sender choice, datagram, seconds to wait before sending it)."""
    sender_choice = draw(st.integers(0, 3))  # 0 random, 1 the victim's id, 2 an honest id
    source = draw(st.integers(0, len(SOURCES) - 1))
    tid = draw(st.binary(min_size=8, max_size=8))
    if draw(st.integers(0, 4)) == 0:
        body, rpc = draw(response_bodies())
    else:
        body, rpc = draw(request_bodies()), None
    token = draw(tokens)
    padding = draw(st.sampled_from([0, 0, 0, 1, 300]))
    # the sender id is filled in when sent (it depends on the run's node ids)
    data = codec.encode(NETID, tid, b"\x00" * 20, body, rpc, token, padding,
                        draw(tokens))
    return source, sender_choice, data, draw(st.sampled_from([0.0, 0.0, 0.001, 0.1, 1.0]))


class HandlerFuzzTests(SynchronousTestCase):
    def network(self) -> tuple[Sim, DHTNetwork, list[DHTNetwork]]:
        sim = Sim()
        victim = sim.add()
        honest = sim.add_many(HONEST)
        for node in honest:
            result_of(sim.run(node.join_network(victim.address)))
        return sim, victim, honest

    def send(self, sim: Sim, victim: DHTNetwork, honest: list[DHTNetwork], source: int,
             sender_choice: int, data: bytes) -> None:
        where = SOURCES[source]
        address = honest[-where - 1].address if isinstance(where, int) else where
        sender = {0: ids.key_for(data), 1: victim.key, 2: honest[0].key,
                  3: honest[1].key}[sender_choice]
        # the sender id sits right after the header's tid (see codec's layout)
        pos = 2 + len(NETID) + 2 + codec.TID_BYTES
        sim.net.send(address, victim.address, data[:pos] + sender + data[pos + 20:])

    @settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])
    @given(st.lists(hostile_messages(), min_size=1, max_size=40))
    def test_hostile_messages(self, messages: list[tuple[int, int, bytes, float]]) -> None:
        sim, victim, honest = self.network()
        legit = {n.address: n.key for n in [victim, *honest]}
        for source, sender_choice, data, wait in messages:
            self.send(sim, victim, honest, source, sender_choice, data)
            if wait:
                sim.settle(wait)
        sim.settle(180.0)  # every timeout, retry and pull deadline has passed

        # 1. it still answers
        self.assertIsNot(result_of(sim.run(honest[2].ping_address(victim.address))), False)
        found = result_of(sim.run(honest[3].find_nodes_from_node(victim.node, honest[3].key)))
        self.assertIsNotNone(found)

        # 2. the tables a stranger can grow are within their bounds
        limits = victim.limits
        proto = victim.protocol
        self.assertLessEqual(victim.routing_table.num_contacts, 160 * victim.k)
        self.assertLessEqual(len(proto.limiter.sources), limits.rate_max_sources)
        self.assertLessEqual(len(proto.limiter.prefixes), limits.rate_max_sources)
        self.assertLessEqual(len(proto.proof), limits.proven_max)
        self.assertLessEqual(len(proto._tokens), limits.token_cache_max)
        self.assertLessEqual(proto.outstanding, 4 * len(messages) + 64)
        records = sum(1 for _ in _all_records(victim))
        self.assertLessEqual(records, limits.store_max_records)
        sizes = getattr(getattr(victim, "contacts", None), "sizes", None)
        if sizes is not None:
            for name, size in sizes().items():
                self.assertLessEqual(size, 10_000, name)

        # 3. no contact that has not answered: each is an honest node at its own address.
        # (Depends on the routing slice's admission, issue 11 #5/#6.)
        for node in _table_contacts(victim):
            self.assertEqual(legit.get(node.address), node.key,
                             f"{node!r} is in the routing table without having answered")


def _all_records(net: DHTNetwork) -> Any:
    return net.kvp_table.records()


def _table_contacts(net: DHTNetwork) -> list[Node]:
    out = []
    for bucket in net.routing_table.buckets:
        out.extend(bucket.nodes)
        out.extend(getattr(bucket, "replacements", []))
    return out
