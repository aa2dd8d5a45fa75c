# -*- test-case-name: tests.test_dht_routing -*-
"""The Kademlia routing table: 160 k-buckets with least-recently-seen eviction.

A contact's bucket number is the count of leading zero bits of ``own_id XOR node_id``.
A bucket lists its nodes least recently seen first.  When a full bucket is offered a new
node, the bucket locks, keeps the newcomer aside and raises :class:`BucketFullError`
naming the least recently seen node; its owner pings that node and calls
:meth:`Bucket.keep_old_node` (it answered) or :meth:`Bucket.keep_new_node` (it did not).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import overload

from p2pnet import ids
from p2pnet.dht.errors import BucketFullError
from p2pnet.models import Node

MAX_BUCKET_SIZE = 20

__all__ = ["MAX_BUCKET_SIZE", "Bucket", "BucketFullError", "RoutingTable"]


class Bucket:
    """Up to :data:`MAX_BUCKET_SIZE` nodes, least recently seen first."""

    MAX_BUCKET_SIZE = MAX_BUCKET_SIZE
    __slots__ = ("_number", "_now", "_size", "_nodes", "_pending", "_stale", "_last_update",
                 "last_lookup")

    def __init__(self, number: int, now: Callable[[], float] = lambda: 0.0,
                 size: int = MAX_BUCKET_SIZE) -> None:
        self._number = number
        self._now = now
        self._size = size
        self._nodes: list[Node] = []
        self._pending: Node | None = None
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
    def last_update(self) -> float:
        """When a node was last added to or refreshed in this bucket."""
        return self._last_update

    @property
    def locked(self) -> bool:
        return self._pending is not None

    @property
    def pending(self) -> Node | None:
        return self._pending

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self._nodes))

    def __contains__(self, node: object) -> bool:
        return node in self._nodes

    def _index_of_key(self, key: bytes) -> int:
        for i, n in enumerate(self._nodes):
            if n.key == key:
                return i
        return -1

    def node_update(self, node: Node) -> None:
        """Add ``node`` or move it to the most-recently-seen end.

        A node with a known id and a new address replaces the old entry.  Raises
        :class:`BucketFullError` when full (and locks); ignored while locked.
        """
        i = self._index_of_key(node.key)
        if i >= 0:
            del self._nodes[i]
            self._nodes.append(node)
            self._last_update = self._now()
            return
        if self._pending is not None:
            return
        if len(self._nodes) < self._size:
            self._nodes.append(node)
            self._last_update = self._now()
            return
        self._pending = node
        self._stale = self._nodes[0].key
        raise BucketFullError(self._number, self._nodes[0], self)

    def keep_new_node(self) -> None:
        """The least recently seen node did not answer: evict it, add the newcomer."""
        if self._pending is None:
            return
        # the node that was pinged, not whichever is first now (it may have been seen since)
        i = self._index_of_key(self._stale)
        if i >= 0:
            del self._nodes[i]
        self._nodes.append(self._pending)
        self._pending = None
        self._last_update = self._now()

    def keep_old_node(self) -> None:
        """The least recently seen node answered: it becomes most recent; drop the newcomer."""
        if self._pending is None:
            return
        self._pending = None
        i = self._index_of_key(self._stale)
        if i >= 0:
            self._nodes.append(self._nodes.pop(i))
        self._last_update = self._now()

    def remove(self, node: Node) -> bool:
        """Drop ``node`` (by id); a waiting newcomer takes the free place."""
        i = self._index_of_key(node.key)
        if i < 0:
            return False
        del self._nodes[i]
        if self._pending is not None:
            self._nodes.append(self._pending)
            self._pending = None
        return True


class BucketArray:
    """The 160 buckets by number, each made on first use: most of a node's buckets stay
    empty for its whole life (an empty table is 3 KiB instead of 28).

    ``buckets[n]`` is bucket ``n`` (made if need be); iterating gives the buckets made so
    far in ascending order -- an unmade bucket is empty and was never looked up.
    """

    __slots__ = ("_made", "_now", "_size")

    def __init__(self, now: Callable[[], float], size: int) -> None:
        self._made: dict[int, Bucket] = {}
        self._now = now
        self._size = size

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
            bucket = self._made[number] = Bucket(number, self._now, self._size)
        return bucket

    def __iter__(self) -> Iterator[Bucket]:
        return iter([self._made[n] for n in sorted(self._made)])

    def __reversed__(self) -> Iterator[Bucket]:
        return iter([self._made[n] for n in sorted(self._made, reverse=True)])


class RoutingTable:
    """160 buckets around ``key``; never holds the local node."""

    def __init__(self, key: bytes, now: Callable[[], float] = lambda: 0.0,
                 bucket_size: int = MAX_BUCKET_SIZE) -> None:
        self._key = ids.check_key(key)
        self._key_int = int.from_bytes(key, "big")
        self._now = now
        self.buckets = BucketArray(now, bucket_size)

    @property
    def key(self) -> bytes:
        return self._key

    def get_bucket_number(self, node: Node | bytes) -> int:
        key = node if isinstance(node, bytes) else node.key
        return ids.bucket_number(self._key, key)

    def get_bucket(self, node: Node | bytes) -> Bucket:
        return self.buckets[self.get_bucket_number(node)]

    def node_update(self, node: Node) -> None:
        """Record that ``node`` was seen; may raise :class:`BucketFullError`."""
        distance = node.key_int ^ self._key_int
        if distance == 0:
            return
        bucket = self.buckets[ids.KEY_BITS - distance.bit_length()]
        nodes = bucket._nodes
        if nodes and nodes[-1] is node:
            bucket._last_update = self._now()  # already the most recently seen
            return
        bucket.node_update(node)

    def remove(self, node: Node) -> bool:
        if node.key_int == self._key_int:
            return False
        return self.get_bucket(node).remove(node)

    def __contains__(self, node: object) -> bool:
        if not isinstance(node, Node) or node.key_int == self._key_int:
            return False
        return node in self.get_bucket(node)

    def find(self, key: bytes) -> Node | None:
        """The contact with id ``key``, if known."""
        if key == self._key:
            return None
        for n in self.buckets[ids.bucket_number(self._key, key)]:
            if n.key == key:
                return n
        return None

    def nodes(self) -> Iterator[Node]:
        for bucket in self.buckets:
            yield from bucket

    @property
    def num_contacts(self) -> int:
        return sum(len(b) for b in self.buckets)

    def get_close_nodes(self, key: bytes, count: int = MAX_BUCKET_SIZE) -> list[Node]:
        """The ``count`` known nodes closest to ``key`` by XOR distance, closest first."""
        k = int.from_bytes(key, "big")
        return heapq.nsmallest(count, self.nodes(), key=lambda n: n.key_int ^ k)

    def count_close(self, key: bytes) -> int:
        """How many known nodes are closer to ``key`` than the local node is."""
        k = int.from_bytes(key, "big")
        own = self._key_int ^ k
        return sum(1 for n in self.nodes() if n.key_int ^ k < own)

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
