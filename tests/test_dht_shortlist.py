"""Tests for :mod:`p2pnet.dht.shortlist`: the bookkeeping of an iterative lookup.

Unit tests pin each rule (candidates, in flight, dropped, finished, the value tally); a
hypothesis simulation drives a shortlist against a random "network" -- a dict of node to
the nodes it knows -- with random answer order and random failures, as
:class:`p2pnet.dht.lookup.Lookup` does.
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2pnet import ids
from p2pnet.dht.codec import ValueInfo
from p2pnet.dht.shortlist import NETWORK_PARALLELISM, Shortlist
from p2pnet.models import Node

TARGET = bytes(20)  # the key looked up: a node's distance is its id as an integer
OWN = b"\xff" * 20  # the local node, far from the target unless a test says otherwise
IDX_A = b"\xa1" * 20
IDX_B = b"\xb2" * 20


def nid(i: int) -> bytes:
    """The id at distance ``i`` from TARGET."""
    return ids.int_to_key(i)


def node(i: int, port: int = 4000) -> Node:
    return Node(nid(i), "10.0.0.1", port)


def distances(nodes: list[Node]) -> list[int]:
    return [ids.distance(n.key, TARGET) for n in nodes]


class AddAndContactTests(SynchronousTestCase):
    def test_add_nodes_ignores_own_key_and_duplicates(self) -> None:
        sl = Shortlist(TARGET, OWN)
        self.assertEqual(sl.add_nodes([node(5), node(3), Node(OWN, "10.0.0.9", 1)]), 2)
        self.assertEqual(sl.add_nodes([node(5), node(5, 9999), node(3), node(7)]), 1)
        self.assertEqual(distances(sl.get_nodes_for_contacting(10)), [3, 5, 7])
        self.assertEqual(sl.add_nodes([node(3), node(5)]), 0)  # contacted: not again
        self.assertEqual(sl.get_nodes_for_contacting(10), [])

    def test_own_key_never_handed_out(self) -> None:
        sl = Shortlist(TARGET, nid(1))
        sl.add_nodes([node(1), node(2)])
        self.assertEqual(distances(sl.get_nodes_for_contacting(5)), [2])

    def test_closest_uncontacted_first_never_more_than_asked(self) -> None:
        sl = Shortlist(TARGET, OWN)
        sl.add_nodes([node(i) for i in (9, 1, 8, 2, 7, 3)])
        self.assertEqual(distances(sl.get_nodes_for_contacting()), [1, 2, 3])  # alpha = 3
        self.assertEqual(NETWORK_PARALLELISM, 3)
        self.assertEqual(sl.in_flight, 3)
        self.assertEqual(distances(sl.get_nodes_for_contacting(1)), [7])
        sl.add_nodes([node(4), node(0)])
        self.assertEqual(distances(sl.get_nodes_for_contacting(2)), [0, 4])
        self.assertEqual(sl.get_nodes_for_contacting(0), [])
        self.assertEqual(sl.get_nodes_for_contacting(-3), [])
        self.assertEqual(distances(sl.get_nodes_for_contacting(10)), [8, 9])
        self.assertEqual(sl.get_nodes_for_contacting(10), [])
        self.assertEqual(sl.contacted, 8)
        self.assertEqual(sl.in_flight, 8)

    def test_only_the_k_closest_alive_are_handed_out(self) -> None:
        sl = Shortlist(TARGET, OWN, k=3)
        sl.add_nodes([node(i) for i in range(1, 8)])
        self.assertEqual(distances(sl.get_nodes_for_contacting(10)), [1, 2, 3])
        self.assertEqual(sl.get_nodes_for_contacting(10), [])
        sl.mark_node(node(2), active=False)  # one of the k closest fails: 4 moves up
        self.assertEqual(distances(sl.get_nodes_for_contacting(10)), [4])

    def test_mark_inactive_drops_for_good(self) -> None:
        sl = Shortlist(TARGET, OWN)
        sl.add_nodes([node(1), node(2)])
        first, second = sl.get_nodes_for_contacting(2)
        sl.mark_node(first, active=False)
        sl.mark_node(second, active=True)
        self.assertEqual(sl.in_flight, 0)
        self.assertEqual(sl.add_nodes([node(1), node(1, 5555)]), 0)
        self.assertEqual(sl.get_nodes_for_contacting(5), [])
        self.assertEqual(sl.sorted_nodes, [second])
        self.assertEqual(sl.nodes, {second})
        self.assertEqual(sl.closest(), [second])
        # a late "answer" does not bring it back
        sl.mark_node(first, active=True)
        self.assertEqual(sl.sorted_nodes, [second])
        self.assertTrue(sl.is_finished())

    def test_answered_then_failed_is_dropped(self) -> None:
        """A node that answered and then failed (say, the value fetch) leaves the result."""
        sl = Shortlist(TARGET, OWN)
        sl.add_nodes([node(1), node(2)])
        n1, n2 = sl.get_nodes_for_contacting(2)
        sl.mark_node(n1, True, useful=True, values=[ValueInfo(IDX_A, 1, 1.0)])
        sl.mark_node(n2, True)
        sl.mark_node(n1, active=False)
        self.assertEqual(sl.sorted_nodes, [n2])
        self.assertEqual(sl.nodes, {n2})
        self.assertEqual(sl.useful_nodes, set())
        self.assertIsNone(sl.get_common_kvp_exchange_info())

    def test_inline_values_kept_only_when_they_match(self) -> None:
        """Inline bytes are kept per announcement only when their size and SHA-1 match
        it; the first copy stays, and the bytes kept are bounded in all."""
        from p2pnet import ids
        from p2pnet.dht.shortlist import INLINE_KEPT_MAX
        sl = Shortlist(TARGET, OWN)
        sl.add_nodes([node(i) for i in range(1, 7)])
        n1, n2, n3, n4, n5, n6 = sl.get_nodes_for_contacting(6)
        good = b"value"
        info = ValueInfo(ids.key_for(good), len(good), 1.0)
        sl.mark_node(n1, True, useful=True, values=[info], inline=b"VALUE")  # wrong hash
        sl.mark_node(n2, True, useful=True, values=[info], inline=b"valu")  # wrong size
        self.assertIsNone(sl.inline_value(info))
        self.assertEqual(sl.refused["lookup_inline_mismatch"], 2)
        sl.mark_node(n3, True, useful=True, values=[info], inline=good)
        self.assertEqual(sl.inline_value(info), good)
        self.assertEqual(sl.useful_nodes, {n1, n2, n3})  # the announcements all count
        big = bytes(INLINE_KEPT_MAX - len(good))
        big_info = ValueInfo(ids.key_for(big), len(big), 2.0)
        sl.mark_node(n4, True, useful=True, values=[big_info], inline=big)
        self.assertEqual(sl.inline_value(big_info), big)
        more = b"one byte too many"
        more_info = ValueInfo(ids.key_for(more), len(more), 3.0)
        sl.mark_node(n5, True, useful=True, values=[more_info], inline=more)
        self.assertIsNone(sl.inline_value(more_info))  # over the bound: not kept
        sl.mark_node(n6, True, useful=True, values=[], inline=good)  # nothing announced
        self.assertEqual(sl.refused["lookup_inline_mismatch"], 2)

    def test_mark_unknown_node_is_ignored(self) -> None:
        sl = Shortlist(TARGET, OWN)
        sl.add_nodes([node(1)])
        sl.mark_node(node(50), True, useful=True, values=[ValueInfo(IDX_A, 1, 1.0)])
        sl.mark_node(node(51), False)
        self.assertEqual(sl.sorted_nodes, [])
        self.assertEqual(sl.nodes, set())
        self.assertEqual(sl.useful_nodes, set())
        self.assertEqual(distances(sl.get_nodes_for_contacting()), [1])

    def test_sorted_nodes_and_closest(self) -> None:
        sl = Shortlist(TARGET, OWN, k=2)
        sl.add_nodes([node(i) for i in (6, 2, 4)])
        for n in sl.get_nodes_for_contacting(2):
            sl.mark_node(n, True)
        sl.add_nodes([node(1)])
        for n in sl.get_nodes_for_contacting(2):
            sl.mark_node(n, True)
        self.assertEqual(distances(sl.sorted_nodes), [1, 2, 4])
        self.assertEqual(distances(sl.closest()), [1, 2])
        self.assertEqual(distances(sl.closest(10)), [1, 2, 4])
        self.assertEqual(sl.get_nodes_for_contacting(5), [])  # 6 is not among the k closest


class FinishedTests(SynchronousTestCase):
    def test_empty_is_finished(self) -> None:
        self.assertTrue(Shortlist(TARGET, OWN).is_finished())

    def test_not_finished_with_candidates(self) -> None:
        sl = Shortlist(TARGET, OWN)
        sl.add_nodes([node(1)])
        self.assertFalse(sl.is_finished())

    def test_not_finished_while_k_closest_in_flight(self) -> None:
        sl = Shortlist(TARGET, OWN, k=2)
        sl.add_nodes([node(1), node(2), node(3)])
        n1, n2 = sl.get_nodes_for_contacting(2)
        self.assertFalse(sl.is_finished())
        sl.mark_node(n1, True)
        self.assertFalse(sl.is_finished())
        sl.mark_node(n2, True)
        self.assertTrue(sl.is_finished())  # node 3 is beyond the k closest

    def test_a_closer_node_reopens_the_lookup(self) -> None:
        sl = Shortlist(TARGET, OWN, k=2)
        sl.add_nodes([node(2), node(3)])
        for n in sl.get_nodes_for_contacting(2):
            sl.mark_node(n, True)
        self.assertTrue(sl.is_finished())
        sl.add_nodes([node(1)])
        self.assertFalse(sl.is_finished())
        (n1,) = sl.get_nodes_for_contacting()
        self.assertEqual(distances([n1]), [1])
        sl.mark_node(n1, True)
        self.assertTrue(sl.is_finished())

    def test_failures_let_farther_nodes_in(self) -> None:
        sl = Shortlist(TARGET, OWN, k=2)
        sl.add_nodes([node(i) for i in (1, 2, 3, 4)])
        for n in sl.get_nodes_for_contacting(2):
            sl.mark_node(n, False)
        self.assertFalse(sl.is_finished())
        for n in sl.get_nodes_for_contacting(5):
            sl.mark_node(n, True)
        self.assertTrue(sl.is_finished())
        self.assertEqual(distances(sl.sorted_nodes), [3, 4])

    def test_all_failed_is_finished(self) -> None:
        sl = Shortlist(TARGET, OWN)
        sl.add_nodes([node(1), node(2)])
        for n in sl.get_nodes_for_contacting(5):
            sl.mark_node(n, False)
        self.assertTrue(sl.is_finished())
        self.assertEqual(sl.sorted_nodes, [])

    def test_finished_with_farther_node_in_flight(self) -> None:
        sl = Shortlist(TARGET, OWN, k=1)
        sl.add_nodes([node(1)])
        (n1,) = sl.get_nodes_for_contacting()
        sl.mark_node(n1, False)
        sl.add_nodes([node(2), node(3)])
        (n2,) = sl.get_nodes_for_contacting()
        self.assertFalse(sl.is_finished())
        sl.mark_node(n2, True)
        self.assertTrue(sl.is_finished())


class ValueTallyTests(SynchronousTestCase):
    def answered(self, values: dict[int, list[ValueInfo] | None], k: int = 20,
                 index: bytes | None = None) -> Shortlist:
        """A shortlist where node i answered with ``values[i]`` (None: not a holder)."""
        sl = Shortlist(TARGET, OWN, k=k, index=index)
        sl.add_nodes([node(i) for i in values])
        for n in sl.get_nodes_for_contacting(len(values)):
            vals = values[ids.distance(n.key, TARGET)]
            sl.mark_node(n, True, useful=vals is not None, values=vals)
        return sl

    def test_useful_nodes_and_holders(self) -> None:
        a = ValueInfo(IDX_A, 10, 5.0)
        b = ValueInfo(IDX_B, 20, 5.0)
        sl = self.answered({7: [a], 3: [a, b], 5: None, 1: [b], 9: [a]})
        self.assertEqual(set(distances(list(sl.useful_nodes))), {1, 3, 7, 9})
        self.assertEqual(distances(sl.holders(IDX_A, 10, 5.0)), [3, 7, 9])
        self.assertEqual(distances(sl.holders(IDX_B, 20, 5.0)), [1, 3])
        self.assertEqual(sl.holders(IDX_A, 11, 5.0), [])  # size must match
        self.assertEqual(sl.holders(IDX_A, 10, 6.0), [])  # timestamp must match

    def test_useful_with_no_values(self) -> None:
        sl = self.answered({1: []})
        self.assertEqual(distances(list(sl.useful_nodes)), [1])
        self.assertIsNone(sl.get_common_kvp_exchange_info())

    def test_no_holder(self) -> None:
        self.assertIsNone(self.answered({1: None, 2: None}).get_common_kvp_exchange_info())
        self.assertIsNone(Shortlist(TARGET, OWN).get_common_kvp_exchange_info())

    def test_newest_timestamp_wins(self) -> None:
        old = ValueInfo(IDX_A, 10, 100.0)
        new = ValueInfo(IDX_B, 20, 200.0)
        sl = self.answered({1: [old], 2: [old], 3: [old], 4: [new]})
        self.assertEqual(sl.get_common_kvp_exchange_info(), new)

    def test_equal_timestamps_most_agreed(self) -> None:
        x = ValueInfo(IDX_A, 10, 100.0)
        y = ValueInfo(IDX_A, 11, 100.0)  # same index and time, another size
        sl = self.answered({1: [y], 2: [x], 3: [x], 4: [y], 5: [x]})
        self.assertEqual(sl.get_common_kvp_exchange_info(), x)
        sl = self.answered({1: [y], 2: [x], 3: [y]})
        self.assertEqual(sl.get_common_kvp_exchange_info(), y)

    def test_agreement_counts_nodes_not_announcements(self) -> None:
        """One node repeating an entry does not outvote two nodes that agree."""
        x = ValueInfo(IDX_A, 10, 100.0)
        y = ValueInfo(IDX_B, 10, 100.0)
        sl = self.answered({1: [y] * 5, 2: [x], 3: [x]})
        self.assertEqual(sl.get_common_kvp_exchange_info(), x)

    def test_index_filter(self) -> None:
        a_old = ValueInfo(IDX_A, 10, 100.0)
        a_new = ValueInfo(IDX_A, 12, 150.0)
        b_newest = ValueInfo(IDX_B, 20, 300.0)
        sl = self.answered({1: [a_old, b_newest], 2: [a_new], 3: [a_old]})
        self.assertEqual(sl.get_common_kvp_exchange_info(), b_newest)
        self.assertEqual(sl.get_common_kvp_exchange_info(IDX_A), a_new)
        self.assertEqual(sl.get_common_kvp_exchange_info(IDX_B), b_newest)
        self.assertIsNone(sl.get_common_kvp_exchange_info(b"\x00" * 20))

    def test_failed_holder_no_longer_counts(self) -> None:
        x = ValueInfo(IDX_A, 10, 100.0)
        newer = ValueInfo(IDX_B, 10, 200.0)
        sl = self.answered({1: [x], 2: [newer]})
        sl.mark_node(node(2), active=False)
        self.assertEqual(sl.get_common_kvp_exchange_info(), x)
        self.assertEqual(sl.holders(IDX_B, 10, 200.0), [])

    @given(st.dictionaries(
        st.integers(1, 40),
        st.lists(st.builds(ValueInfo, st.sampled_from([IDX_A, IDX_B]), st.integers(0, 2),
                           st.sampled_from([1.0, 2.0, 3.0])), max_size=4),
        max_size=12))
    def test_common_info_vs_model(self, announced: dict[int, list[ValueInfo]]) -> None:
        sl = self.answered(dict(announced))
        for index in (None, IDX_A, IDX_B):
            votes: dict[ValueInfo, int] = {}
            for vals in announced.values():
                for v in set(vals):
                    if index is None or v.index == index:
                        votes[v] = votes.get(v, 0) + 1
            got = sl.get_common_kvp_exchange_info(index)
            if not votes:
                self.assertIsNone(got)
                continue
            assert got is not None
            newest = max(v.timestamp for v in votes)
            self.assertEqual(got.timestamp, newest)
            self.assertEqual(votes[got], max(c for v, c in votes.items()
                                             if v.timestamp == newest))
            self.assertEqual(distances(sl.holders(got.index, got.size, got.timestamp)),
                             sorted(i for i, vals in announced.items() if got in vals))


# -- the simulation --------------------------------------------------------------------


@st.composite
def networks(draw: st.DrawFn, routable: bool) -> dict[str, object]:
    """A random network around TARGET: ``knows`` maps each node id to the ids it knows.

    With ``routable`` it is a network where a Kademlia lookup must find the true k
    closest: every node knows the next closer node, and the k closest know each other
    (the local node, which a lookup never asks, is left out of both).  A purely random
    graph gives no such guarantee: a close node known only to a far node that is never
    among the k closest seen is never found.
    """
    k = draw(st.integers(1, 6))
    count = draw(st.integers(1, 40))
    density = draw(st.sampled_from([0.0, 0.05, 0.3]))
    rnd = draw(st.randoms(use_true_random=False))
    node_ids = sorted({ids.random_key(rnd.randbytes) for _ in range(count)},
                      key=lambda i: ids.distance(i, TARGET))
    own = rnd.choice(node_ids + [OWN])  # sometimes the local node is in the network
    knows: dict[bytes, set[bytes]] = {
        i: {j for j in node_ids if j != i and rnd.random() < density} for i in node_ids}
    failing: set[bytes] = set()
    if routable:
        others = [i for i in node_ids if i != own]
        for closer, i in zip(others, others[1:]):
            knows[i].add(closer)
        for i in others[:k]:
            knows[i].update(j for j in others[:k] if j != i)
    else:
        p = draw(st.sampled_from([0.0, 0.2, 0.6]))
        failing = {i for i in node_ids if rnd.random() < p}
    start = rnd.sample(node_ids, min(len(node_ids), draw(st.integers(1, 5))))
    return {"k": k, "own": own, "knows": knows, "failing": failing, "start": start,
            "alpha": draw(st.integers(1, 4)), "rnd": rnd}


def as_node(i: bytes) -> Node:
    return Node(i, "10.0.0.1", 1 + i[0])


class SimulationTests(SynchronousTestCase):
    def run_lookup(self, net: dict[str, object]
                   ) -> tuple[Shortlist, set[bytes], set[bytes], set[bytes]]:
        """Drive a shortlist as Lookup does; returns it, the ids it was given,
        the ids it contacted and the ids that failed."""
        k: int = net["k"]  # type: ignore[assignment]
        own: bytes = net["own"]  # type: ignore[assignment]
        knows: dict[bytes, set[bytes]] = net["knows"]  # type: ignore[assignment]
        failing: set[bytes] = net["failing"]  # type: ignore[assignment]
        alpha: int = net["alpha"]  # type: ignore[assignment]
        rnd: random.Random = net["rnd"]  # type: ignore[assignment]
        start: list[bytes] = net["start"]  # type: ignore[assignment]

        sl = Shortlist(TARGET, own, k=k)
        sl.add_nodes(as_node(i) for i in start)
        given_ids = set(start) - {own}
        contacted: set[bytes] = set()
        dropped: set[bytes] = set()
        in_flight: list[Node] = []
        bound = 2 * len(knows) + 5
        for _ in range(bound):
            if sl.is_finished():
                break
            asked = sl.get_nodes_for_contacting(alpha - sl.in_flight)
            self.assertLessEqual(len(asked), max(alpha - len(in_flight), 0))
            for n in asked:
                self.assertNotIn(n.key, contacted, "a node was contacted twice")
                self.assertNotEqual(n.key, own)
                contacted.add(n.key)
            in_flight.extend(asked)
            self.assertEqual(sl.in_flight, len(in_flight))
            self.assertTrue(in_flight, "not finished, yet nothing to ask and nothing in flight")
            n = in_flight.pop(rnd.randrange(len(in_flight)))  # answers come in any order
            if n.key in failing:
                sl.mark_node(n, active=False)
                dropped.add(n.key)
            else:
                # a Kademlia node names the k closest it knows, leaving out the asker
                # (DHTNetwork.close_nodes_for)
                named = sorted(knows[n.key] - {own}, key=lambda i: ids.distance(i, TARGET))[:k]
                sl.add_nodes(as_node(i) for i in named)
                given_ids.update(named)
                given_ids.discard(own)
                sl.mark_node(n, active=True)
        else:
            self.fail(f"the lookup did not finish in {bound} steps")
        self.assertEqual(sl.contacted, len(contacted))
        return sl, given_ids, contacted, dropped

    @given(networks(routable=False))
    def test_terminates_and_keeps_its_rules(self, net: dict[str, object]) -> None:
        """Any network, with failures: the lookup ends, asks no node twice, and its
        result is the k closest of the nodes it heard of that did not fail -- each of
        which answered."""
        sl, given_ids, contacted, dropped = self.run_lookup(net)
        k: int = net["k"]  # type: ignore[assignment]
        result = [n.key for n in sl.sorted_nodes]
        self.assertEqual(result, sorted(result, key=lambda i: ids.distance(i, TARGET)))
        self.assertTrue(set(result) <= contacted - dropped)
        alive = sorted(given_ids - dropped, key=lambda i: ids.distance(i, TARGET))
        self.assertEqual([n.key for n in sl.closest()], alive[:k])
        self.assertNotIn(net["own"], contacted)

    @given(networks(routable=True))
    def test_finds_the_true_k_closest(self, net: dict[str, object]) -> None:
        """No failures, in a routable network: the k closest nodes reachable from the
        start nodes (the node itself left out) are exactly the lookup's result."""
        sl, _, _, dropped = self.run_lookup(net)
        self.assertEqual(dropped, set())
        k: int = net["k"]  # type: ignore[assignment]
        own: bytes = net["own"]  # type: ignore[assignment]
        knows: dict[bytes, set[bytes]] = net["knows"]  # type: ignore[assignment]
        reachable: set[bytes] = set()
        todo = list(net["start"])  # type: ignore[call-overload]
        while todo:
            i = todo.pop()
            if i != own and i not in reachable:  # the lookup never asks the local node
                reachable.add(i)
                todo.extend(knows[i])
        expected = sorted(reachable, key=lambda i: ids.distance(i, TARGET))[:k]
        self.assertEqual([n.key for n in sl.closest()], expected)
        self.assertTrue(sl.is_finished())

    def test_simple_network_by_hand(self) -> None:
        """Three hops to the closest node."""
        knows = {nid(100): {nid(50)}, nid(50): {nid(10), nid(60)}, nid(10): {nid(1), nid(2)},
                 nid(60): set(), nid(1): {nid(2)}, nid(2): {nid(1)}}
        sl = Shortlist(TARGET, OWN, k=2)
        sl.add_nodes([as_node(nid(100))])
        asked_order = []
        while not sl.is_finished():
            for n in sl.get_nodes_for_contacting(1):
                asked_order.append(ids.key_to_int(n.key))
                sl.add_nodes(as_node(i) for i in knows[n.key])
                sl.mark_node(n, True)
        self.assertEqual(asked_order, [100, 50, 10, 1, 2])
        self.assertEqual(distances(sl.closest()), [1, 2])


class BoundsTests(SynchronousTestCase):
    """What a stranger can make one shortlist hold (issue 11 #1)."""

    def test_candidates_capped_closer_newcomers_push_out_the_farthest(self) -> None:
        sl = Shortlist(TARGET, OWN, k=2, max_candidates=5)
        self.assertEqual(sl.add_nodes(node(i, 4000 + i) for i in range(10, 20)), 5)
        self.assertEqual(sl.held, 5)
        self.assertEqual(sl.refused["lookup_candidates"], 5)
        asked = sl.get_nodes_for_contacting(2)  # 10 and 11 are in flight: never pushed out
        self.assertEqual(distances(asked), [10, 11])
        self.assertEqual(sl.add_nodes([node(1, 5001), node(2, 5002), node(3, 5003),
                                       node(4, 5004)]), 3)
        self.assertEqual(sl.held, 5)
        sl.mark_node(asked[0], True)
        sl.mark_node(asked[1], True)
        self.assertEqual(distances(sl.get_nodes_for_contacting(5)), [1, 2])

    def test_one_node_per_source_address(self) -> None:
        sl = Shortlist(TARGET, OWN, one_per_source=True)
        same = [Node(nid(i), "10.0.0.9", 4000 + i) for i in range(1, 4)]
        self.assertEqual(sl.add_nodes(same), 1)  # one IP, whatever the port
        self.assertEqual(sl.refused["lookup_same_address"], 2)
        loop = [Node(nid(i), "127.0.0.1", 4000 + i) for i in range(10, 13)]
        self.assertEqual(sl.add_nodes(loop), 3)  # on loopback, IP and port
        self.assertEqual(sl.add_nodes([Node(nid(20), "127.0.0.1", 4010)]), 0)

    def test_depths_and_hops(self) -> None:
        sl = Shortlist(TARGET, OWN, k=3)
        sl.add_nodes([node(50)])
        (first,) = sl.get_nodes_for_contacting(1)
        sl.add_nodes([node(20), node(30)], depth=sl.depth_of(first) + 1)
        sl.mark_node(first, True)
        self.assertEqual(sl.hops, 1)
        for n in sl.get_nodes_for_contacting(2):
            sl.mark_node(n, True)
        self.assertEqual(sl.hops, 2)
        self.assertEqual(sl.depth_of(node(20)), 2)
        self.assertEqual(sl.depth_of(node(99)), 0)

    def test_take_hands_out_nodes_beyond_the_k_closest(self) -> None:
        sl = Shortlist(TARGET, OWN, k=1)
        sl.add_nodes([node(1)])
        self.assertEqual(distances(sl.take([node(90), node(1)])), [90, 1])
        self.assertEqual(sl.in_flight, 2)
        self.assertEqual(sl.take([node(90)]), [])  # asked already

    def test_holders_settled_and_closest_answered(self) -> None:
        sl = Shortlist(TARGET, OWN)
        sl.add_nodes(node(i) for i in range(1, 6))
        a, b, c = sl.get_nodes_for_contacting(3)
        sl.mark_node(a, True)
        sl.mark_node(b, True, useful=True, values=[ValueInfo(IDX_A, 1, 1.0)])
        self.assertFalse(sl.closest_answered(3))
        self.assertFalse(sl.holders_settled(3))
        sl.mark_node(c, True)
        self.assertTrue(sl.closest_answered(3))
        self.assertTrue(sl.holders_settled(3))
        self.assertFalse(sl.is_finished())

    def test_announcements_newest_first_then_most_agreed(self) -> None:
        sl = Shortlist(TARGET, OWN)
        sl.add_nodes(node(i) for i in range(1, 4))
        old, new, other = (ValueInfo(IDX_A, 1, 1.0), ValueInfo(IDX_B, 1, 9.0),
                           ValueInfo(IDX_A, 2, 1.0))
        n1, n2, n3 = sl.get_nodes_for_contacting(3)
        sl.mark_node(n1, True, useful=True, values=[old, new])
        sl.mark_node(n2, True, useful=True, values=[old])
        sl.mark_node(n3, True, useful=True, values=[other])
        self.assertEqual(sl.announcements(), [new, old, other])
        self.assertEqual(sl.announcements(IDX_A), [old, other])
        self.assertEqual(sl.get_common_kvp_exchange_info(), new)
