# -*- test-case-name: tests.test_dht_shortlist -*-
"""The shortlist of an iterative Kademlia lookup (pure bookkeeping, no I/O).

Nodes are *candidates* until handed out by :meth:`Shortlist.get_nodes_for_contacting`,
then *in flight* until :meth:`Shortlist.mark_node` says they answered (*active*) or failed
(*dropped*: a failed node never comes back in this lookup).  The lookup is finished when
the ``k`` closest nodes not dropped have all answered, or when nothing is left to ask.

A shortlist also bounds what a stranger can make a lookup hold: at most
``max_candidates`` nodes (a closer newcomer pushes out the farthest node not yet asked;
both a push-out and a refusal count as ``lookup_candidates``),
and with ``one_per_source`` at most one node id per source address (the IP, or the
``(ip, port)`` on loopback: :func:`p2pnet.dht.limits.source_key`).  Refusals are counted
in :attr:`Shortlist.refused` by kind.  It remembers each node's *depth*: 1 for the nodes
it started with, ``d + 1`` for a node first named by a node of depth ``d``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from p2pnet.dht.codec import ValueInfo
from p2pnet.dht.limits import RefusalCounter, source_key
from p2pnet.models import Node

#: source_key parses the address; a lookup asks it for every node it is handed
_source_key = functools.lru_cache(maxsize=8192)(source_key)

K = 20
NETWORK_PARALLELISM = 3


class Shortlist:
    """Close nodes to ``key``, and what the ones that hold it said about its values."""

    def __init__(self, key: bytes, own_key: bytes, k: int = K,
                 index: bytes | None = None, *, max_candidates: int | None = None,
                 one_per_source: bool = False) -> None:
        self.key = key
        self.index = index
        self.k = k
        self.max_candidates = max_candidates
        self.one_per_source = one_per_source
        self._key_int = int.from_bytes(key, "big")
        self._own = own_key
        self._known: dict[bytes, Node] = {}  # node id -> node, every node held
        self._depth: dict[bytes, int] = {}
        self._sources: dict[tuple[str, int], bytes] = {}  # source key -> the id it has
        self._candidates: set[bytes] = set()
        self._in_flight: set[bytes] = set()
        self._active: set[bytes] = set()
        self._dropped: set[bytes] = set()
        self._useful: dict[bytes, list[ValueInfo]] = {}
        self._order: list[bytes] = []  # ids of _known, closest first (when not dirty)
        self._dirty = False
        self.contacted = 0
        self.refused = RefusalCounter()

    def _dist(self, node_id: bytes) -> int:
        return self._known[node_id].key_int ^ self._key_int

    def _sorted(self) -> list[bytes]:
        if self._dirty:
            self._order.sort(key=self._dist)
            self._dirty = False
        return self._order

    def add_nodes(self, nodes: Iterable[Node], depth: int = 1) -> int:
        """Add possible nodes to contact (named by a node of depth ``depth - 1``);
        returns how many were new."""
        added = 0
        for n in nodes:
            if n.key == self._own or n.key in self._known:
                continue
            source = _source_key(n.address) if self.one_per_source else None
            if source is not None and source in self._sources:
                self.refused["lookup_same_address"] += 1
                continue
            if (self.max_candidates is not None
                    and len(self._known) >= self.max_candidates
                    and not self._make_room(n)):
                self.refused["lookup_candidates"] += 1
                continue
            self._known[n.key] = n
            self._depth[n.key] = depth
            if source is not None:
                self._sources[source] = n.key
            self._candidates.add(n.key)
            self._order.append(n.key)
            self._dirty = True
            added += 1
        return added

    def _make_room(self, newcomer: Node) -> bool:
        """Push out the farthest node never asked, if ``newcomer`` is closer than it."""
        order = self._sorted()
        far = self._key_int ^ newcomer.key_int
        for i in range(len(order) - 1, -1, -1):
            victim = order[i]
            if self._dist(victim) < far:
                return False
            if victim in self._candidates:
                del order[i]
                self._candidates.discard(victim)
                node = self._known.pop(victim)
                self._depth.pop(victim, None)
                if self.one_per_source:
                    self._sources.pop(_source_key(node.address), None)
                self.refused["lookup_candidates"] += 1  # pushed out
                return True
        return False

    @property
    def held(self) -> int:
        """How many nodes the shortlist holds."""
        return len(self._known)

    def depth_of(self, node: Node) -> int:
        """The node's depth (0 for a node this shortlist does not hold)."""
        return self._depth.get(node.key, 0)

    @property
    def hops(self) -> int:
        """The depth of the deepest node that answered."""
        return max((self._depth[i] for i in self._active), default=0)

    def _closest_alive(self, count: int | None = None) -> list[bytes]:
        count = self.k if count is None else count
        out: list[bytes] = []
        for i in self._sorted():
            if i not in self._dropped:
                out.append(i)
                if len(out) == count:
                    break
        return out

    def get_nodes_for_contacting(self, count: int = NETWORK_PARALLELISM,
                                 among: int | None = None) -> list[Node]:
        """Up to ``count`` uncontacted nodes among the k (or ``among``) closest alive,
        closest first."""
        if count <= 0:
            return []
        picked = [i for i in self._closest_alive(among) if i in self._candidates][:count]
        for i in picked:
            self._candidates.discard(i)
            self._in_flight.add(i)
        self.contacted += len(picked)
        return [self._known[i] for i in picked]

    def take(self, nodes: Iterable[Node], depth: int = 1) -> list[Node]:
        """Hand out ``nodes`` for contacting even though they are not among the k closest
        (added first when new); those already asked are left out."""
        nodes = list(nodes)
        self.add_nodes(nodes, depth)
        picked = [n for n in nodes if n.key in self._candidates]
        for n in picked:
            self._candidates.discard(n.key)
            self._in_flight.add(n.key)
        self.contacted += len(picked)
        return [self._known[n.key] for n in picked]

    def mark_node(self, node: Node, active: bool, useful: bool = False,
                  values: Iterable[ValueInfo] | None = None) -> None:
        """Record the outcome of contacting ``node``.

        A failed node is dropped for good: a later answer does not bring it back.  A node
        this shortlist does not know is ignored.
        """
        if node.key not in self._known or node.key in self._dropped:
            return
        self._in_flight.discard(node.key)
        self._candidates.discard(node.key)
        if not active:
            self._dropped.add(node.key)
            self._active.discard(node.key)
            self._useful.pop(node.key, None)
            return
        self._active.add(node.key)
        if useful:
            self._useful[node.key] = list(values or ())

    def is_finished(self) -> bool:
        """True when the k closest alive nodes have answered (or nothing is left)."""
        closest = self._closest_alive()
        if all(i in self._active for i in closest):
            return True
        return not self._in_flight and not any(i in self._candidates for i in closest)

    def closest_answered(self, count: int) -> bool:
        """True when the ``count`` closest nodes not dropped have all answered."""
        closest = self._closest_alive(count)
        return bool(closest) and all(i in self._active for i in closest)

    def closest_failed(self, count: int) -> bool:
        """True when the ``count`` closest nodes known, alive or not, were all asked and
        all failed: what the key's likely holders would have said is unknown."""
        closest = self._sorted()[:count]
        return bool(closest) and all(i in self._dropped for i in closest)

    def holders_settled(self, quorum: int) -> bool:
        """True when the ``quorum`` closest nodes not dropped have all answered and at
        least one of them holds a value for the key: a value lookup may stop there (the
        k closest nodes are where a put stores, the closest of them hold the newest)."""
        closest = self._closest_alive(quorum)
        return (bool(closest) and all(i in self._active for i in closest)
                and any(i in self._useful for i in closest))

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def nodes(self) -> set[Node]:
        """Every node that answered."""
        return {self._known[i] for i in self._active}

    @property
    def sorted_nodes(self) -> list[Node]:
        """The nodes that answered, closest first."""
        return [self._known[i] for i in self._sorted() if i in self._active]

    def alive(self, count: int | None = None) -> list[Node]:
        """The ``count`` (default: all) closest nodes that did not fail, closest first:
        answered, in flight or never asked."""
        return [self._known[i] for i in self._closest_alive(
            len(self._known) if count is None else count)]

    def closest(self, count: int | None = None) -> list[Node]:
        """The ``count`` (default k) closest nodes that answered."""
        return self.sorted_nodes[: self.k if count is None else count]

    @property
    def useful_nodes(self) -> set[Node]:
        """The nodes that said they hold a value for the key."""
        return {self._known[i] for i in self._useful}

    def holders(self, index: bytes, size: int, timestamp: float) -> list[Node]:
        """The nodes that announced exactly this value, closest first."""
        ids_ = [i for i, vals in self._useful.items()
                if any(v.index == index and v.size == size and v.timestamp == timestamp
                       for v in vals)]
        return [self._known[i] for i in sorted(ids_, key=self._dist)]

    def announcements(self, index: bytes | None = None) -> list[ValueInfo]:
        """Every distinct value announced (for ``index``, when given), the one to try
        first first: newest, then the one most nodes agree on."""
        tally: dict[ValueInfo, int] = {}
        for vals in self._useful.values():
            for v in set(vals):  # one vote per node
                if index is None or v.index == index:
                    tally[v] = tally.get(v, 0) + 1
        return sorted(tally, key=lambda v: (v.timestamp, tally[v], v.index), reverse=True)

    def get_common_kvp_exchange_info(self, index: bytes | None = None) -> ValueInfo | None:
        """The value to fetch: the newest announced one (for ``index``, when given).

        Among announcements of the same timestamp the one most nodes agree on wins.
        """
        found = self.announcements(index)
        return found[0] if found else None
