# -*- test-case-name: tests.test_dht_lookup -*-
"""The iterative Kademlia lookup, bounded, with its hop and contact counts.

A :class:`Lookup` asks ``alpha`` nodes at a time for the nodes (or values) closest to a
key, closest first, until the ``k`` closest nodes that did not fail have answered (the
:class:`~p2pnet.dht.shortlist.Shortlist` rule).  A value lookup may stop sooner: at the
first holder (``until=FIRST_HOLDER``, for a content-addressed value) or once the closest
nodes answered and one of them holds the key (``until=HOLDERS``); a node lookup once the
closest few answered (``until=QUORUM``: a bucket refresh, a put, whose stores prove the
rest).  A lookup may go on from an earlier one's shortlist (``shortlist=``), keeping what
it learned and who failed.

What a stranger can make one lookup do is bounded by :class:`~p2pnet.dht.limits.Limits`:
the candidates it holds (``lookup_max_candidates``), one node per source address, the
answers it processes (``lookup_max_rounds``) and its time (``lookup_max_seconds``).  At a
bound a node lookup ends with the best nodes so far; a value lookup that found no holder
by its time fails with :class:`~p2pnet.dht.errors.LookupTimeoutError`.  Each bound that
bites is counted in the node's ``refused`` counter.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pnet import ids
from p2pnet.dht.errors import LookupTimeoutError
from p2pnet.dht.limits import Limits, RefusalCounter
from p2pnet.dht.routing import RoutingTable
from p2pnet.dht.shortlist import Shortlist
from p2pnet.models import Node

log = Logger()


@attrs.define
class LookupStats:
    """What the lookups of one operation cost.

    ``lookups`` and ``contacts`` (requests sent) add up over the lookups; ``hops`` is the
    depth of the deepest node that answered any of them (a node from our own table has
    depth 1, a node first named by a depth-d node depth d + 1): it grows like log n.
    """

    lookups: int = 0
    hops: int = 0
    contacts: int = 0

    def add(self, shortlist: Shortlist, contacted: int | None = None) -> None:
        """Count one lookup over ``shortlist`` that sent ``contacted`` requests (all the
        shortlist's when None)."""
        self.lookups += 1
        self.contacts += shortlist.contacted if contacted is None else contacted
        self.hops = max(self.hops, shortlist.hops)


class Until(enum.Enum):
    """When a value lookup may stop before the k closest nodes have answered."""

    CLOSEST = "closest"  #: only when the k closest nodes that did not fail answered
    FIRST_HOLDER = "first_holder"  #: at the first node that holds the key
    HOLDERS = "holders"  #: once the closest nodes answered and one holds the key
    QUORUM = "quorum"  #: once the closest few nodes answered (a bucket refresh, a put)


#: With ``Until.HOLDERS`` and ``Until.QUORUM``: how many of the closest nodes must have
#: answered.
HOLDERS_QUORUM = 3


class LookupNode(Protocol):
    """What a lookup needs of the node (:class:`p2pnet.dht.network.DHTNetwork`)."""

    clock: IReactorTime
    k: int
    alpha: int
    limits: Limits
    refused: RefusalCounter
    lookups: int
    lookup_contacts: int

    @property
    def key(self) -> bytes: ...

    @property
    def routing_table(self) -> RoutingTable: ...

    def find_nodes_from_node(self, node: Node, key: bytes) -> defer.Deferred[Any]: ...

    def find_value_from_node(self, node: Node, key: bytes, index: bytes | None = None
                             ) -> defer.Deferred[Any]: ...


class Lookup:
    """One iterative lookup of ``key``; :meth:`run` fires with its shortlist."""

    def __init__(self, net: LookupNode, key: bytes, *, find_value: bool = False,
                 index: bytes | None = None, until: Until = Until.CLOSEST,
                 stats: LookupStats | None = None, shortlist: Shortlist | None = None
                 ) -> None:
        self.net = net
        self.key = key
        self.find_value = find_value
        self.index = index
        self.until = until
        self.stats = stats
        limits = net.limits
        self.max_rounds = limits.lookup_max_rounds
        self.max_seconds = limits.lookup_max_seconds
        #: a lookup may go on from an earlier one's shortlist (what it learned, who failed)
        self.shortlist = shortlist if shortlist is not None else Shortlist(
            key, net.key, net.k, index, max_candidates=limits.lookup_max_candidates,
            one_per_source=limits.lookup_one_per_address)
        self._contacted_before = self.shortlist.contacted
        self.rounds = 0
        self._done: defer.Deferred[Shortlist] = defer.Deferred()
        self._timer: IDelayedCall | None = None
        self._pumping = False
        self._again = False
        self._widened = False
        # A lookup that may stop once the closest few answered asks only among them
        # (fewer requests to nodes that turn out not to matter), then among the k.
        self._among: int | None = (
            HOLDERS_QUORUM if until in (Until.HOLDERS, Until.QUORUM) else None)
        self._widening: set[bytes] = set()  # ids asked by _widen, not answered yet

    def run(self) -> defer.Deferred[Shortlist]:
        sl = self.shortlist
        sl.add_nodes(self.net.routing_table.get_close_nodes(self.key, self.net.k))
        self.net.routing_table.touch(self.key)
        self._timer = self.net.clock.callLater(self.max_seconds, self._out_of_time)
        self._pump()
        return self._done

    # -- answers ------------------------------------------------------------------

    def _answered(self, result: Any, node: Node) -> None:
        if self._done.called:
            return
        sl = self.shortlist
        self.rounds += 1
        self._widening.discard(node.key)
        depth = sl.depth_of(node) + 1
        if result is None:
            sl.mark_node(node, active=False)
        elif self.find_value:
            if result.values is not None:
                sl.mark_node(node, True, useful=True, values=result.values,
                             inline=result.data)
            else:
                sl.add_nodes(result.nodes, depth)
                sl.mark_node(node, True)
        else:
            sl.add_nodes(result, depth)
            sl.mark_node(node, True)
        self._pump()

    def _step(self, result: Any, node: Node) -> None:
        try:
            self._answered(result, node)
        except Exception:
            self._bug(Failure())

    def _bug(self, failure: Failure) -> None:
        log.failure("lookup step failed", failure=failure)
        self._finish(failure)

    # -- the loop -----------------------------------------------------------------

    def _stop_here(self) -> bool:
        sl = self.shortlist
        if sl.is_finished():
            return True
        if self.until is Until.FIRST_HOLDER:
            return bool(sl.useful_nodes)
        if self.until is Until.HOLDERS:
            return sl.holders_settled(HOLDERS_QUORUM)
        if self.until is Until.QUORUM:
            return sl.closest_answered(HOLDERS_QUORUM)
        return False

    def _pump(self) -> None:
        if self._done.called:
            return
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            while True:
                self._again = False
                if self._stop_here() and not self._widening:
                    if not self._widen():
                        self._finish(self.shortlist)
                        return
                if self.rounds >= self.max_rounds:
                    self.net.refused["lookup_rounds"] += 1
                    self._finish(self.shortlist)
                    return
                sl = self.shortlist
                # never more requests than rounds left: the bound holds for requests too
                room = min(self.net.alpha - sl.in_flight,
                           self.max_rounds - self.rounds - sl.in_flight)
                picked = sl.get_nodes_for_contacting(room, self._among)
                if not picked and not sl.in_flight and self._among is not None:
                    self._among = None  # the closest few are done: on to the k closest
                    picked = sl.get_nodes_for_contacting(room)
                self._ask(picked)
                if not self._again:
                    return
        finally:
            self._pumping = False

    def _ask(self, nodes: list[Node]) -> None:
        for node in nodes:
            if self.find_value:
                d = self.net.find_value_from_node(node, self.key, self.index)
            else:
                d = self.net.find_nodes_from_node(node, self.key)
            # one step for both: an answer, or a failure that is a bug (a node's failure
            # arrives as None)
            d.addCallbacks(self._step, self._bug, callbackArgs=(node,))

    def _widen(self) -> bool:
        """Once per lookup, when it ends with no node in the key's own bucket (seen from
        here): ask the ``alpha`` nodes of farther buckets closest to the key too.

        The k closest nodes we know of can all be of one region that never learned of
        the key's: nodes that joined together (a flash crowd) and met only each other.
        Nodes from farther buckets have another view of the network.  In a settled
        network a lookup finds nodes of the key's bucket and this costs nothing.
        """
        if self._widened:
            return False
        self._widened = True
        if self.find_value and self.shortlist.useful_nodes:
            return False
        own = self.net.key
        if self.key == own:
            return False
        b = ids.bucket_number(own, self.key)
        if any(ids.bucket_number(own, n.key) == b for n in self.shortlist.sorted_nodes):
            return False
        far = [n for n in self.net.routing_table.nodes()
               if ids.bucket_number(own, n.key) < b]
        if not far:
            return False
        k = int.from_bytes(self.key, "big")
        far.sort(key=lambda n: n.key_int ^ k)
        nodes = self.shortlist.take(far[: self.net.alpha])
        if not nodes:
            return False
        self._widening.update(n.key for n in nodes)
        self._ask(nodes)
        return True

    def _out_of_time(self) -> None:
        self._timer = None
        if self._done.called:
            return
        self.net.refused["lookup_timeout"] += 1
        if self.find_value and not self.shortlist.useful_nodes:
            self._finish(Failure(LookupTimeoutError(
                f"lookup of {self.key.hex()} ran past {self.max_seconds:g}s")))
        else:
            self._finish(self.shortlist)

    def _finish(self, result: Shortlist | Failure) -> None:
        if self._done.called:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        sl = self.shortlist
        net = self.net
        contacted = sl.contacted - self._contacted_before
        net.lookups += 1
        net.lookup_contacts += contacted
        for kind, count in sl.refused.items():
            net.refused[kind] += count
        sl.refused.clear()  # counted: a lookup going on from this shortlist adds its own
        if self.stats is not None:
            self.stats.add(sl, contacted)
        if isinstance(result, Failure):
            self._done.errback(result)
        else:
            self._done.callback(result)
