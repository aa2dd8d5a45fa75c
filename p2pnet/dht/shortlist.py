# -*- test-case-name: tests.test_dht_shortlist -*-
"""The shortlist of an iterative Kademlia lookup (pure bookkeeping, no I/O).

Nodes are *candidates* until handed out by :meth:`Shortlist.get_nodes_for_contacting`,
then *in flight* until :meth:`Shortlist.mark_node` says they answered (*active*) or failed
(*dropped*: a failed node never comes back in this lookup).  The lookup is finished when
the ``k`` closest nodes not dropped have all answered, or when nothing is left to ask.
"""

from __future__ import annotations

from collections.abc import Iterable

from p2pnet.dht.codec import ValueInfo
from p2pnet.models import Node

K = 20
NETWORK_PARALLELISM = 3


class Shortlist:
    """Close nodes to ``key``, and what the ones that hold it said about its values."""

    def __init__(self, key: bytes, own_key: bytes, k: int = K,
                 index: bytes | None = None) -> None:
        self.key = key
        self.index = index
        self.k = k
        self._key_int = int.from_bytes(key, "big")
        self._own = own_key
        self._known: dict[bytes, Node] = {}  # node id -> node, every node ever added
        self._candidates: set[bytes] = set()
        self._in_flight: set[bytes] = set()
        self._active: set[bytes] = set()
        self._dropped: set[bytes] = set()
        self._useful: dict[bytes, list[ValueInfo]] = {}
        self.contacted = 0

    def _dist(self, node_id: bytes) -> int:
        return self._known[node_id].key_int ^ self._key_int

    def add_nodes(self, nodes: Iterable[Node]) -> int:
        """Add possible nodes to contact; returns how many were new."""
        added = 0
        for n in nodes:
            if n.key == self._own or n.key in self._known:
                continue
            self._known[n.key] = n
            self._candidates.add(n.key)
            added += 1
        return added

    def _closest_alive(self) -> list[bytes]:
        alive = [i for i in self._known if i not in self._dropped]
        alive.sort(key=self._dist)
        return alive[: self.k]

    def get_nodes_for_contacting(self, count: int = NETWORK_PARALLELISM) -> list[Node]:
        """Up to ``count`` uncontacted nodes among the k closest alive, closest first."""
        if count <= 0:
            return []
        picked = [i for i in self._closest_alive() if i in self._candidates][:count]
        for i in picked:
            self._candidates.discard(i)
            self._in_flight.add(i)
        self.contacted += len(picked)
        return [self._known[i] for i in picked]

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
        return [self._known[i] for i in sorted(self._active, key=self._dist)]

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

    def get_common_kvp_exchange_info(self, index: bytes | None = None) -> ValueInfo | None:
        """The value to fetch: the newest announced one (for ``index``, when given).

        Among announcements of the same timestamp the one most nodes agree on wins.
        """
        tally: dict[ValueInfo, int] = {}
        for vals in self._useful.values():
            for v in set(vals):  # one vote per node
                if index is None or v.index == index:
                    tally[v] = tally.get(v, 0) + 1
        if not tally:
            return None
        return max(tally, key=lambda v: (v.timestamp, tally[v], v.index))
