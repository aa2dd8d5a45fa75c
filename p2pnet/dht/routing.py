# -*- test-case-name: tests.test_dht_routing -*-
"""The Kademlia routing table: 160 k-buckets, each with a replacement cache.

A contact's bucket number is the count of leading zero bits of ``own_id XOR node_id``.
A bucket lists its nodes least recently seen first, with the time each was last seen.

Admission (:meth:`RoutingTable.node_update`, for a node that *answered* one of our
requests -- the caller's job, see :mod:`p2pnet.dht.contacts`) follows Kademlia with the
hardening of libtorrent's ``restrict_routing_ips``:

* a known id at a new address, or a new id at an address (IP; IP and port on loopback)
  that another contact holds, raises :class:`AddressConflictError` naming the incumbent:
  the owner pings it and calls :meth:`RoutingTable.replace` only if it stays silent (or
  another id answers) -- one spoofed packet cannot take a live contact's slot;
* a bucket holds at most ``max_per_prefix`` nodes of one IPv4 /24 or IPv6 /64
  (:class:`PrefixFullError`), so one network cannot fill a bucket;
* a full bucket keeps the newcomer aside in its replacement cache (bounded, newest kept)
  and, unless an eviction check is already out, locks and raises
  :class:`~p2pnet.dht.errors.BucketFullError` naming its least recently seen node; its
  owner pings that node and calls :meth:`Bucket.keep_old_node` (it answered) or
  :meth:`Bucket.keep_new_node` (it did not: evicted, the newest admissible replacement
  takes its place).  A removed contact is also replaced from the cache.

Pure: no Twisted import; time comes from the ``now`` callable.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Hashable, Iterator
from typing import overload

from p2pnet import ids
from p2pnet.dht.errors import BucketFullError, DHTError
from p2pnet.dht.limits import Address, host_prefix
from p2pnet.models import Node

MAX_BUCKET_SIZE = 20
#: Newcomers a full bucket keeps aside by default.
REPLACEMENTS = 8

__all__ = ["MAX_BUCKET_SIZE", "AddressConflictError", "Bucket", "BucketFullError",
           "PrefixFullError", "RoutingTable"]


class AddressConflictError(DHTError):
    """``node`` claims an id or an address that ``incumbent`` holds: ping the incumbent
    before giving the slot away."""

    def __init__(self, incumbent: Node, node: Node) -> None:
        super().__init__(f"{node!r} conflicts with {incumbent!r}")
        self.incumbent = incumbent
        self.node = node


class PrefixFullError(DHTError):
    """The bucket already holds its share of nodes from ``node``'s /24 or /64."""

    def __init__(self, bucket_number: int, node: Node) -> None:
        super().__init__(f"bucket {bucket_number} is full for the prefix of {node!r}")
        self.bucket_number = bucket_number
        self.node = node


def address_key(address: Address) -> Hashable:
    """The per-address key of :func:`~p2pnet.dht.limits.source_key`, stored compactly:
    the host string itself (shared with the :class:`Node`) off loopback, the port
    number alone on 127.0.0.1 (no tuple per contact for a local test network)."""
    host, port = address
    if host_prefix(host) is None:  # loopback: (ip, port), as source_key
        return port if host == "127.0.0.1" else (host, port)
    return host


class Bucket:
    """Up to ``size`` nodes, least recently seen first, and a replacement cache."""

    MAX_BUCKET_SIZE = MAX_BUCKET_SIZE
    __slots__ = ("_number", "_table", "_nodes", "_seen", "_spares", "_spares_seen",
                 "_stale", "_last_update", "last_lookup")

    def __init__(self, number: int, table: RoutingTable) -> None:
        self._number = number
        self._table = table
        self._nodes: list[Node] = []
        self._seen = array("d")  # parallel to _nodes: when each was last seen (8 bytes each)
        self._spares: list[Node] | None = None  # replacement cache, oldest first
        self._spares_seen: array[float] | None = None
        self._stale = b""  # while locked: the id of the node the BucketFullError named
        self._last_update = 0.0
        self.last_lookup = 0.0

    @property
    def number(self) -> int:
        return self._number

    @property
    def nodes(self) -> list[Node]:
        return list(self._nodes)

    @property
    def replacements(self) -> list[Node]:
        """The replacement cache, oldest first."""
        return list(self._spares or ())

    @property
    def last_update(self) -> float:
        """When a node was last added to or refreshed in this bucket."""
        return self._last_update

    @property
    def locked(self) -> bool:
        """An eviction check of the least recently seen node is out."""
        return self._stale != b""

    @property
    def pending(self) -> Node | None:
        """The newest node kept aside (the next to be promoted)."""
        return self._spares[-1] if self._spares else None

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self._nodes))

    def __contains__(self, node: object) -> bool:
        return node in self._nodes

    def index_of(self, key: bytes) -> int:
        for i, n in enumerate(self._nodes):
            if n.key == key:
                return i
        return -1

    def last_seen(self, key: bytes) -> float | None:
        i = self.index_of(key)
        return self._seen[i] if i >= 0 else None

    # -- changes (the table keeps its per-address index in step) ----------------------

    def _touch(self, i: int) -> None:
        now = self._table._now()
        if i != len(self._nodes) - 1:
            self._nodes.append(self._nodes.pop(i))
            self._seen.pop(i)
            self._seen.append(now)
        else:
            self._seen[i] = now
        self._last_update = now
        self._table._set_recent(self)

    def _add(self, node: Node) -> None:
        now = self._table._now()
        self._nodes.append(node)
        self._seen.append(now)
        self._last_update = now
        self._table._indexed(node, True)
        self._table._set_recent(self)

    def _drop(self, i: int) -> Node:
        node = self._nodes.pop(i)
        self._seen.pop(i)
        table = self._table
        table._indexed(node, False)
        if table._recent is node:
            table._recent = table._recent_bucket = None
        return node

    def _keep_aside(self, node: Node) -> None:
        limit = self._table._replacements
        if limit <= 0:
            return
        if self._spares is None or self._spares_seen is None:
            self._spares, self._spares_seen = [], array("d")
        for i, n in enumerate(self._spares):
            if n.key == node.key:
                del self._spares[i], self._spares_seen[i]
                break
        self._spares.append(node)
        self._spares_seen.append(self._table._now())
        while len(self._spares) > limit:
            del self._spares[0], self._spares_seen[0]

    def _promote(self) -> Node | None:
        """Move the newest admissible replacement into the bucket (if it has room)."""
        spares, seen = self._spares, self._spares_seen
        table = self._table
        oldest = table._now() - table._replacement_max_age
        while spares and seen and len(self._nodes) < table._size:
            node, at = spares.pop(), seen.pop()
            if at >= oldest and table._admissible(self, node):
                self._add(node)
                break
        else:
            node = None
        if spares is not None and not spares:
            self._spares = self._spares_seen = None
        return node

    def node_update(self, node: Node) -> None:
        """See :meth:`RoutingTable.node_update` (the node must fall in this bucket)."""
        self._table.node_update(node)

    def keep_new_node(self) -> None:
        """The least recently seen node did not answer: evict it; the newest admissible
        replacement takes its place."""
        if not self._stale:
            return
        # the node that was pinged, not whichever is first now (it may have been seen since)
        i = self.index_of(self._stale)
        self._stale = b""
        if i >= 0:
            self._drop(i)
        self._promote()

    def keep_old_node(self) -> None:
        """The least recently seen node answered: it becomes most recent; the newcomers
        stay aside."""
        if not self._stale:
            return
        i = self.index_of(self._stale)
        self._stale = b""
        if i >= 0:
            self._touch(i)

    def unlock(self) -> None:
        """The check was not made (the node was heard from lately, or too many checks
        are out): unlock; nothing moves, the newcomers stay aside."""
        self._stale = b""

    def remove(self, node: Node) -> bool:
        """Drop ``node`` (by id); the newest admissible replacement takes the place."""
        i = self.index_of(node.key)
        if i < 0:
            return False
        self._drop(i)
        self._promote()
        return True


class BucketArray:
    """The 160 buckets by number, each made on first use: most of a node's buckets stay
    empty for its whole life (an empty table is 3 KiB instead of 28).

    ``buckets[n]`` is bucket ``n`` (made if need be); iterating gives the buckets made so
    far in ascending order -- an unmade bucket is empty and was never looked up.
    """

    __slots__ = ("_made", "_table")

    def __init__(self, table: RoutingTable) -> None:
        self._made: dict[int, Bucket] = {}
        self._table = table

    @overload
    def __getitem__(self, number: int) -> Bucket: ...

    @overload
    def __getitem__(self, number: slice) -> list[Bucket]: ...

    def __getitem__(self, number: int | slice) -> Bucket | list[Bucket]:
        if isinstance(number, slice):
            return [self[n] for n in range(*number.indices(ids.KEY_BITS))]
        bucket = self._made.get(number)
        if bucket is None:
            if not isinstance(number, int) or not 0 <= number < ids.KEY_BITS:
                raise IndexError(f"bucket numbers are 0..{ids.KEY_BITS - 1}")
            bucket = self._made[number] = Bucket(number, self._table)
        return bucket

    def __iter__(self) -> Iterator[Bucket]:
        return iter([self._made[n] for n in sorted(self._made)])

    def __reversed__(self) -> Iterator[Bucket]:
        return iter([self._made[n] for n in sorted(self._made, reverse=True)])


class RoutingTable:
    """160 buckets around ``key``; never holds the local node.

    ``one_per_address`` keeps at most one contact per address key (the IP; IP and port on
    loopback); ``max_per_prefix`` bounds the contacts of one /24 or /64 in a bucket
    (None: no bound); ``replacements`` is the size of each bucket's replacement cache and
    ``replacement_max_age`` how long a kept-aside node stays eligible.
    """

    __slots__ = ("_key", "_key_int", "_now", "_size", "buckets", "_by_address",
                 "_max_per_prefix", "_replacements", "_replacement_max_age", "_recent",
                 "_recent_bucket")

    def __init__(self, key: bytes, now: Callable[[], float] = lambda: 0.0,
                 bucket_size: int = MAX_BUCKET_SIZE, *, one_per_address: bool = False,
                 max_per_prefix: int | None = None, replacements: int = REPLACEMENTS,
                 replacement_max_age: float = math.inf) -> None:
        self._key = ids.check_key(key)
        self._key_int = int.from_bytes(key, "big")
        self._now = now
        self._size = bucket_size
        self._by_address: dict[Hashable, Node] | None = {} if one_per_address else None
        self._max_per_prefix = max_per_prefix
        self._replacements = replacements
        self._replacement_max_age = replacement_max_age
        self.buckets = BucketArray(self)
        # the contact seen last, always the most recent of its bucket: the one a busy
        # exchange with one peer finds again and refreshes, without a search
        self._recent: Node | None = None
        self._recent_bucket: Bucket | None = None

    @property
    def key(self) -> bytes:
        return self._key

    @property
    def bucket_size(self) -> int:
        return self._size

    def get_bucket_number(self, node: Node | bytes) -> int:
        key = node if isinstance(node, bytes) else node.key
        return ids.bucket_number(self._key, key)

    def get_bucket(self, node: Node | bytes) -> Bucket:
        return self.buckets[self.get_bucket_number(node)]

    # -- admission -------------------------------------------------------------------

    def _set_recent(self, bucket: Bucket) -> None:
        self._recent = bucket._nodes[-1]
        self._recent_bucket = bucket

    def _indexed(self, node: Node, present: bool) -> None:
        index = self._by_address
        if index is None:
            return
        k = address_key(node.address)
        if present:
            index[k] = node
        elif index.get(k) is node:
            del index[k]

    def holder_of(self, address: Address) -> Node | None:
        """The contact holding ``address``'s per-address slot (None when free or when
        the table keeps no per-address index)."""
        if self._by_address is None:
            return None
        return self._by_address.get(address_key(address))

    def _prefix_full(self, bucket: Bucket, node: Node) -> bool:
        limit = self._max_per_prefix
        nodes = bucket._nodes
        if limit is None or len(nodes) < limit:
            return False
        # prefixes come from the process-wide cache, so equal prefixes are one object
        p = host_prefix(node.host)
        count = 0
        if p is None:  # loopback: the prefix is the address itself
            host, port = node.host, node.port
            for n in nodes:
                if n.port == port and n.host == host:
                    count += 1
        else:
            for n in nodes:
                q = host_prefix(n.host)
                if q is p or q == p:
                    count += 1
        return count >= limit

    def _admissible(self, bucket: Bucket, node: Node) -> bool:
        """Could ``node`` be added to ``bucket`` without any conflict?"""
        if bucket.index_of(node.key) >= 0:
            return False
        if self._by_address is not None and address_key(node.address) in self._by_address:
            return False
        return not self._prefix_full(bucket, node)

    def node_update(self, node: Node) -> None:
        """Record that ``node`` answered us: add it or move it to the most recent end.

        Raises :class:`AddressConflictError` (its id or address is held by another
        contact: nothing changes), :class:`PrefixFullError` (refused), or
        :class:`BucketFullError` (full: the node is kept aside and the bucket locks; while
        locked, further newcomers are kept aside without an exception).
        """
        if node is self._recent:  # the last contact seen: the most recent of its bucket
            bucket = self._recent_bucket
            assert bucket is not None
            bucket._seen[-1] = bucket._last_update = self._now()
            return
        distance = node.key_int ^ self._key_int
        if distance == 0:
            return
        bucket = self.buckets[ids.KEY_BITS - distance.bit_length()]
        nodes = bucket._nodes
        if nodes and nodes[-1] is node:  # already the most recently seen
            bucket._seen[-1] = bucket._last_update = self._now()
            self._set_recent(bucket)
            return
        i = bucket.index_of(node.key)
        if i >= 0:
            old = nodes[i]
            if old.port == node.port and old.host == node.host:
                bucket._touch(i)
                return
            raise AddressConflictError(old, node)
        if self._by_address is not None:
            holder = self._by_address.get(address_key(node.address))
            if holder is not None:
                raise AddressConflictError(holder, node)
        if self._prefix_full(bucket, node):
            raise PrefixFullError(bucket._number, node)
        if len(nodes) < self._size:
            bucket._add(node)
            return
        bucket._keep_aside(node)
        if bucket._stale:
            return
        bucket._stale = nodes[0].key
        raise BucketFullError(bucket._number, nodes[0], bucket)

    def has_room(self, key: bytes, fresh_since: float) -> bool:
        """Could a node with id ``key`` enter the table now?  False when its bucket is
        full and either an eviction check is out or its least recently seen contact was
        seen after ``fresh_since`` (it would keep its place: the newcomer could only
        wait in the replacement cache)."""
        if key == self._key:
            return False
        bucket = self._made_bucket(key)
        if bucket is None or len(bucket._nodes) < self._size:
            return True
        return not bucket._stale and bucket._seen[0] <= fresh_since

    def seen(self, node: Node) -> bool:
        """Refresh ``node`` if it is a contact at this very address (a request from it);
        never adds.  True when it was refreshed."""
        if node.key_int == self._key_int:
            return False
        bucket = self.get_bucket(node)
        i = bucket.index_of(node.key)
        if i < 0:
            return False
        old = bucket._nodes[i]
        if old.port != node.port or old.host != node.host:
            return False
        bucket._touch(i)
        return True

    def replace(self, incumbent: Node, node: Node) -> None:
        """The incumbent of an :class:`AddressConflictError` did not answer as itself:
        drop it and offer ``node`` in its place (may raise like :meth:`node_update`)."""
        bucket = self.get_bucket(incumbent)
        i = bucket.index_of(incumbent.key)
        if i < 0 or bucket._nodes[i] != incumbent:
            self.node_update(node)
            return
        bucket._drop(i)
        try:
            self.node_update(node)
        finally:
            bucket._promote()  # when the newcomer went elsewhere

    def remove(self, node: Node) -> bool:
        if node.key_int == self._key_int:
            return False
        return self.get_bucket(node).remove(node)

    # -- queries ---------------------------------------------------------------------

    def __contains__(self, node: object) -> bool:
        if not isinstance(node, Node) or node.key_int == self._key_int:
            return False
        return node in self.get_bucket(node)

    def find_at(self, key: bytes, host: str, port: int) -> Node | None:
        """The contact with id ``key`` if it is known at ``(host, port)``."""
        node = self._recent
        if node is None or node.key != key:
            node = self.find(key)
            if node is None:
                return None
        return node if node.port == port and node.host == host else None

    def refresh(self, key: bytes, host: str, port: int) -> Node | None:
        """The contact with id ``key`` if it is known at ``(host, port)``, moved to the
        most recent end of its bucket (:meth:`node_update`); None, changing nothing,
        when it is not known there.  One call for the commonest message: a contact's."""
        node = self.find_at(key, host, port)
        if node is not None:
            self.node_update(node)  # (the last contact seen: its time only)
        return node

    def find(self, key: bytes) -> Node | None:
        """The contact with id ``key``, if known."""
        recent = self._recent
        if recent is not None and recent.key == key:
            return recent
        bucket = self._made_bucket(key)
        if bucket is not None:
            for n in bucket._nodes:
                if n.key == key:
                    return n
        return None

    def _made_bucket(self, key: bytes) -> Bucket | None:
        """The bucket ``key`` falls in, if it was ever made (None for our own id)."""
        distance = int.from_bytes(key, "big") ^ self._key_int
        if distance == 0:
            return None
        return self.buckets._made.get(ids.KEY_BITS - distance.bit_length())

    def last_seen(self, key: bytes) -> float | None:
        """When the contact with id ``key`` was last seen (None if not a contact)."""
        if key == self._key:
            return None
        return self.buckets[ids.bucket_number(self._key, key)].last_seen(key)

    def nodes(self) -> Iterator[Node]:
        for bucket in self.buckets:
            yield from bucket

    @property
    def num_contacts(self) -> int:
        return sum(len(b) for b in self.buckets)

    def get_close_nodes(self, key: bytes, count: int = MAX_BUCKET_SIZE) -> list[Node]:
        """The ``count`` known nodes closest to ``key`` by XOR distance, closest first.

        Only the buckets that hold them are read and sorted.  The nodes of bucket ``j``
        differ from us first at bit ``p = 159 - j``, so their distances to the key share
        its distance to us above bit ``p``, have the other value at bit ``p``, and
        anything below: each bucket's distances fill an interval of their own.  The
        buckets are taken in the order of those intervals, each sorted, until ``count``
        nodes are had.
        """
        if count <= 0:
            return []
        k = int.from_bytes(key, "big")
        x = self._key_int ^ k  # our distance to the key
        made = self.buckets._made
        top = ids.KEY_BITS - 1

        def lowest(j: int) -> int:  # the least distance to the key in bucket j
            p = top - j
            return (x >> (p + 1) << (p + 1)) | ((~x >> p & 1) << p)

        out: list[Node] = []
        for j in sorted(made, key=lowest):
            nodes = made[j]._nodes
            if len(nodes) > 1:
                out += sorted(nodes, key=lambda n: n.key_int ^ k)
            else:
                out += nodes
            if len(out) >= count:
                break
        return out[:count]

    def count_close(self, key: bytes, stop_at: int | None = None,
                    excluding: Node | None = None) -> int:
        """How many known nodes (other than ``excluding``) are closer to ``key`` than the
        local node is; counting may stop once ``stop_at`` are found.

        Counted by bucket, without comparing nodes.  With ``b`` the key's bucket number,
        every node of bucket ``b`` is closer than we are (the bit where our id and the
        key first differ is theirs too), and no node of a bucket below ``b`` is (it
        differs from us at a higher bit, so from the key).  A node of a bucket ``j``
        above ``b`` differs from us first at bit ``159 - j``; it is closer to the key
        than we are exactly when our distance to the key has that bit set -- so either
        every node of bucket ``j`` is, or none is.
        """
        k = int.from_bytes(key, "big")
        own = self._key_int ^ k
        if own == 0:
            return 0
        made = self.buckets._made
        top = ids.KEY_BITS - 1
        b = top - (own.bit_length() - 1)
        count = 0
        skip = None  # the bucket of ``excluding``, when it is a contact
        if excluding is not None and self.find(excluding.key) is not None:
            skip = top - ((excluding.key_int ^ self._key_int).bit_length() - 1)
        for j, bucket in made.items():
            if j == b or (j > b and own >> (top - j) & 1):
                count += len(bucket._nodes) - (j == skip)
                if stop_at is not None and count >= stop_at:
                    return count
        return count

    def could_be_closest(self, key: bytes, count: int) -> bool:
        """Could a node with id ``key`` be among the ``count`` nodes closest to us, as
        far as we know?  False when the buckets closer to us than its own already hold
        ``count`` contacts (every node of a bucket above ``key``'s is closer to us than
        ``key``).  A young table knows few, so it says True for most keys."""
        distance = int.from_bytes(key, "big") ^ self._key_int
        if distance == 0:
            return False
        b = ids.KEY_BITS - distance.bit_length()
        closer = 0
        for j, bucket in self.buckets._made.items():
            if j > b:
                closer += len(bucket._nodes)
                if closer >= count:
                    return False
        return True

    def closest_bucket_number(self) -> int | None:
        """The number of the closest non-empty bucket (None when the table is empty)."""
        for bucket in reversed(self.buckets):
            if len(bucket):
                return bucket.number
        return None

    def touch(self, key: bytes) -> None:
        """Note that a lookup for ``key`` ran (resets its bucket's refresh timer)."""
        if key != self._key:
            self.buckets[ids.bucket_number(self._key, key)].last_lookup = self._now()
