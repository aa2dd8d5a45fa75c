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

A findval answer may carry its first value's bytes inline; the shortlist keeps them
(:meth:`Shortlist.inline_value`) only when they match the announced size and index
(SHA-1), at most one copy per announcement and :data:`INLINE_KEPT_MAX` bytes in all.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from p2pnet import ids
from p2pnet.dht.codec import ValueInfo
from p2pnet.dht.limits import RefusalCounter, source_key
from p2pnet.models import Node

#: source_key parses the address; a lookup asks it for every node it is handed
_source_key = functools.lru_cache(maxsize=8192)(source_key)

K = 20
NETWORK_PARALLELISM = 3
#: bytes of inline values one lookup keeps (one verified copy per announcement)
INLINE_KEPT_MAX = 64 * 1024


#: a node's status in :attr:`Shortlist._state` (the low two bits; the depth is above them)
_CANDIDATE, _IN_FLIGHT, _ACTIVE, _DROPPED = 0, 1, 2, 3


class Shortlist:
    """Close nodes to ``key``, and what the ones that hold it said about its values.

    Each node held costs two dict entries (its Node, and its status and depth in one int)
    rather than an entry in each of five maps: a crowd joining at once holds a lookup a
    node, and those maps were the largest part of its memory's high-water mark.
    """

    __slots__ = ("key", "index", "k", "max_candidates", "one_per_source", "_key_int",
                 "_own", "_known", "_state", "_sources", "_useful", "_inline", "_order", "_dirty",
                 "_in_flight", "contacted", "refused")

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
        self._state: dict[bytes, int] = {}  # node id -> depth << 2 | status
        # source keys of the nodes held (a dict of None: half the bytes of a set)
        self._sources: dict[tuple[str, int] | str, None] = {}
        self._useful: dict[bytes, list[ValueInfo]] = {}
        self._inline: dict[ValueInfo, bytes] | None = None  # verified inline values
        self._order: list[bytes] = []  # ids of _known, closest first (when not dirty)
        self._dirty = False
        self._in_flight = 0
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
        known, state, sources = self._known, self._state, self._sources
        for n in nodes:
            if n.key == self._own or n.key in known:
                continue
            source = _source_key(n.address) if self.one_per_source else None
            if source is not None and source in sources:
                self.refused["lookup_same_address"] += 1
                continue
            if (self.max_candidates is not None
                    and len(known) >= self.max_candidates
                    and not self._make_room(n)):
                self.refused["lookup_candidates"] += 1
                continue
            known[n.key] = n
            state[n.key] = depth << 2  # a candidate
            if source is not None:
                sources[source] = None
            self._order.append(n.key)
            self._dirty = True
            added += 1
        return added

    def _make_room(self, newcomer: Node) -> bool:
        """Push out the farthest node never asked, if ``newcomer`` is closer than it."""
        order = self._sorted()
        far = self._key_int ^ newcomer.key_int
        state = self._state
        for i in range(len(order) - 1, -1, -1):
            victim = order[i]
            if self._dist(victim) < far:
                return False
            if state[victim] & 3 == _CANDIDATE:
                del order[i]
                del state[victim]
                node = self._known.pop(victim)
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
        return self._state.get(node.key, 0) >> 2

    @property
    def hops(self) -> int:
        """The depth of the deepest node that answered."""
        return max((st >> 2 for st in self._state.values() if st & 3 == _ACTIVE), default=0)

    def _closest_alive(self, count: int | None = None) -> list[bytes]:
        count = self.k if count is None else count
        out: list[bytes] = []
        state = self._state
        for i in self._sorted():
            if state[i] & 3 != _DROPPED:
                out.append(i)
                if len(out) == count:
                    break
        return out

    def _hand_out(self, ids: list[bytes]) -> None:
        state = self._state
        for i in ids:
            state[i] = (state[i] & ~3) | _IN_FLIGHT
        self._in_flight += len(ids)
        self.contacted += len(ids)

    def get_nodes_for_contacting(self, count: int = NETWORK_PARALLELISM,
                                 among: int | None = None) -> list[Node]:
        """Up to ``count`` uncontacted nodes among the k (or ``among``) closest alive,
        closest first."""
        if count <= 0:
            return []
        state = self._state
        picked = [i for i in self._closest_alive(among) if state[i] & 3 == _CANDIDATE][:count]
        self._hand_out(picked)
        return [self._known[i] for i in picked]

    def take(self, nodes: Iterable[Node], depth: int = 1) -> list[Node]:
        """Hand out ``nodes`` for contacting even though they are not among the k closest
        (added first when new); those already asked are left out."""
        nodes = list(nodes)
        self.add_nodes(nodes, depth)
        state = self._state
        picked: list[bytes] = []
        for n in nodes:
            st = state.get(n.key)
            if st is not None and st & 3 == _CANDIDATE and n.key not in picked:
                picked.append(n.key)
        self._hand_out(picked)
        return [self._known[i] for i in picked]

    def mark_node(self, node: Node, active: bool, useful: bool = False,
                  values: Iterable[ValueInfo] | None = None,
                  inline: bytes | None = None) -> None:
        """Record the outcome of contacting ``node``.

        A failed node is dropped for good: a later answer does not bring it back.  A node
        this shortlist does not know is ignored.  ``inline`` is the bytes of the first of
        ``values``, as the node sent them: kept if they match it.
        """
        st = self._state.get(node.key)
        if st is None or st & 3 == _DROPPED:
            return
        if st & 3 == _IN_FLIGHT:
            self._in_flight -= 1
        if not active:
            self._state[node.key] = (st & ~3) | _DROPPED
            self._useful.pop(node.key, None)
            return
        self._state[node.key] = (st & ~3) | _ACTIVE
        if useful:
            announced = self._useful[node.key] = list(values or ())
            if inline is not None and announced:
                self._keep_inline(announced[0], inline)

    def _keep_inline(self, info: ValueInfo, data: bytes) -> None:
        kept = self._inline
        if kept is None:
            kept = self._inline = {}
        elif info in kept or sum(map(len, kept.values())) + len(data) > INLINE_KEPT_MAX:
            return
        if len(data) == info.size and ids.key_for(data) == info.index:
            kept[info] = data
        else:
            self.refused["lookup_inline_mismatch"] += 1

    def inline_value(self, info: ValueInfo) -> bytes | None:
        """The verified bytes of the announced value ``info``, when a node sent them inline."""
        return None if self._inline is None else self._inline.get(info)

    def is_finished(self) -> bool:
        """True when the k closest alive nodes have answered (or nothing is left)."""
        closest = self._closest_alive()
        state = self._state
        if all(state[i] & 3 == _ACTIVE for i in closest):
            return True
        return not self._in_flight and not any(state[i] & 3 == _CANDIDATE for i in closest)

    def closest_answered(self, count: int) -> bool:
        """True when the ``count`` closest nodes not dropped have all answered."""
        closest = self._closest_alive(count)
        state = self._state
        return bool(closest) and all(state[i] & 3 == _ACTIVE for i in closest)

    def closest_failed(self, count: int) -> bool:
        """True when the ``count`` closest nodes known, alive or not, were all asked and
        all failed: what the key's likely holders would have said is unknown."""
        closest = self._sorted()[:count]
        state = self._state
        return bool(closest) and all(state[i] & 3 == _DROPPED for i in closest)

    def holders_settled(self, quorum: int) -> bool:
        """True when the ``quorum`` closest nodes not dropped have all answered and at
        least one of them holds a value for the key: a value lookup may stop there (the
        k closest nodes are where a put stores, the closest of them hold the newest)."""
        closest = self._closest_alive(quorum)
        state = self._state
        return (bool(closest) and all(state[i] & 3 == _ACTIVE for i in closest)
                and any(i in self._useful for i in closest))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def nodes(self) -> set[Node]:
        """Every node that answered."""
        return {self._known[i] for i, st in self._state.items() if st & 3 == _ACTIVE}

    @property
    def sorted_nodes(self) -> list[Node]:
        """The nodes that answered, closest first."""
        state = self._state
        return [self._known[i] for i in self._sorted() if state[i] & 3 == _ACTIVE]

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
