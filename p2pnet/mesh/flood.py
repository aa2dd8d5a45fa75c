# -*- test-case-name: tests.test_mesh_flood -*-
"""Flooding without duplicates: the seen-cache and the relay decision.

Pure logic on an injected clock (anything with ``seconds()``), no I/O.

A broadcast carries a message id and a hop limit (``hops``: the links it may still
cross).  Its origin sends it with ``max_hops``.  A node that gets one:

- drops it when its hop limit is spent (``hops`` 0: ``hop_limit``) or its id is in the
  seen-cache (``seen``);
- otherwise remembers the id, delivers the message once, and relays it with ``hops - 1``
  to every peer but the one it came from, unless ``hops - 1`` is 0 (``Decision.expired``).

No decision reads a sender's clock.  The seen-cache stamps an id with *this* node's clock
when it first sees it and forgets it ``ttl`` seconds later, so two nodes whose clocks
disagree by minutes or years flood to each other as well as any (the origin's send time,
``sent_at`` on the wire, is information for the application only).

Why each message reaches each node once:

- Until an id is forgotten, a node relays it at most once, so every copy travels a
  simple path: a flood is finite and every node delivers once.  With ``max_hops >= n - 1``
  every node of a connected mesh of ``n`` nodes is reached whatever its shape (a node
  first reached over a path of ``k <= n - 2`` links relays with ``max_hops - k >= 1``);
  in a mesh of more nodes, every node within ``max_hops`` links along the way the flood
  goes.  The default, 255 (the wire's limit), covers any mesh of up to 256 nodes.
- The hop limit bounds what the cache cannot: an id forgotten early (the cache was full,
  ``max_entries`` ids within ``ttl`` seconds) or a copy stuck in a queue for more than
  ``ttl`` seconds may be delivered twice, but no copy crosses more than ``max_hops``
  links, so no relay loop runs for ever.
- A peer announcing more than our ``max_hops`` is held to ours (a peer cannot make a
  message outlive our limit; nodes configured with different limits still interoperate).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

import attrs

#: Seconds a seen id is kept, on the receiver's clock (py2p's and SEMANTICS §6's 60 s).
TTL = 60.0
#: Ids the seen-cache holds at most.
MAX_ENTRIES = 100_000
#: Hop limit of a new broadcast: links it may cross (the wire carries one byte).
MAX_HOPS = 255


class Clock(Protocol):
    def seconds(self) -> float: ...


class SeenCache:
    """Message ids first seen here in the last ``ttl`` seconds (of this node's clock),
    at most ``max_entries`` of them."""

    def __init__(self, clock: Clock, ttl: float = TTL, max_entries: int = MAX_ENTRIES) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("ttl and max_entries must be positive")
        self.clock = clock
        self.ttl = ttl
        self.max_entries = max_entries
        # msg id -> when learnt; insertion order is time order.
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        #: ids forgotten early because the cache was full
        self.evicted = 0

    def __len__(self) -> int:
        self.prune()
        return len(self._seen)

    def __contains__(self, msg_id: object) -> bool:
        self.prune()
        return msg_id in self._seen

    def prune(self) -> None:
        """Forget the ids learnt more than ``ttl`` seconds ago."""
        horizon = self.clock.seconds() - self.ttl
        seen = self._seen
        while seen:
            oldest, at = next(iter(seen.items()))
            if at > horizon:
                # (after our own clock stepped back, ids are kept until it catches up:
                # longer than ttl, never past max_entries)
                break
            del seen[oldest]

    def add(self, msg_id: bytes) -> bool:
        """Remember ``msg_id``; False when it was already there (nothing changes then)."""
        self.prune()
        seen = self._seen
        if msg_id in seen:
            return False
        seen[msg_id] = self.clock.seconds()
        while len(seen) > self.max_entries:
            seen.popitem(last=False)
            self.evicted += 1
        return True


@attrs.frozen
class Decision:
    """What to do with an incoming broadcast: ``deliver`` it here, relay it to
    ``relay_to`` with hop limit ``hops``; ``dropped`` names why it was dropped (``None``
    when taken); ``expired`` when it was taken but its hop limit stops it here."""

    deliver: bool
    relay_to: tuple[bytes, ...] = ()
    dropped: str | None = None
    hops: int = 0
    expired: bool = False


class Flood:
    """The flood rule of one node, over its :class:`SeenCache`."""

    def __init__(self, clock: Clock, ttl: float = TTL, max_entries: int = MAX_ENTRIES,
                 max_hops: int = MAX_HOPS) -> None:
        if not 1 <= max_hops <= MAX_HOPS:
            raise ValueError(f"max_hops must be 1..{MAX_HOPS}")
        self.max_hops = max_hops
        self.seen = SeenCache(clock, ttl, max_entries)

    def originate(self, msg_id: bytes) -> int:
        """Remember our own broadcast (so it never comes back to us); returns the hop
        limit to send it with."""
        self.seen.add(msg_id)
        return self.max_hops

    def receive(self, msg_id: bytes, hops: int, via: bytes,
                peers: Iterable[bytes]) -> Decision:
        """The decision for a broadcast ``msg_id`` that arrived from ``via`` with hop
        limit ``hops``, with ``peers`` the neighbours connected now."""
        if hops < 1:
            return Decision(False, dropped="hop_limit")
        if not self.seen.add(msg_id):
            return Decision(False, dropped="seen")
        left = min(hops, self.max_hops) - 1
        if left < 1:
            return Decision(True, expired=any(p != via for p in peers))
        return Decision(True, tuple(p for p in peers if p != via), hops=left)
