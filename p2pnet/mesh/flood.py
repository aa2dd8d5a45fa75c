# -*- test-case-name: tests.test_mesh_flood -*-
"""Flooding without duplicates: the seen-cache and the relay decision.

Pure logic on an injected clock (anything with ``seconds()``), no I/O.

A broadcast carries a message id and its origin's send time.  A node that gets one:

- drops it when the id is in its seen-cache (``seen``), or when its send time is more
  than ``ttl`` seconds away from now, in the past (``too_old``) or in the future
  (``from_future``: a skewed or lying clock would otherwise outlive the cache);
- otherwise remembers the id, delivers the message once, and relays it to every peer
  but the one it came from.

The seen-cache forgets ids ``ttl`` seconds after it learnt them, so a message can only
come back after it is too old to be taken.  It also holds at most ``max_entries`` ids
(the oldest go first): a node flooded with more than ``max_entries`` broadcasts within
``ttl`` seconds may deliver a message twice, but its memory stays bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

import attrs

#: Seconds a broadcast lives, and a seen id is kept (py2p's and SEMANTICS §6's 60 s).
TTL = 60.0
#: Ids the seen-cache holds at most.
MAX_ENTRIES = 100_000


class Clock(Protocol):
    def seconds(self) -> float: ...


class SeenCache:
    """Message ids seen in the last ``ttl`` seconds, at most ``max_entries`` of them."""

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
    ``relay_to``; ``dropped`` names why it was dropped (``None`` when taken)."""

    deliver: bool
    relay_to: tuple[bytes, ...] = ()
    dropped: str | None = None


class Flood:
    """The flood rule of one node, over its :class:`SeenCache`."""

    def __init__(self, clock: Clock, ttl: float = TTL, max_entries: int = MAX_ENTRIES) -> None:
        self.clock = clock
        self.ttl = ttl
        self.seen = SeenCache(clock, ttl, max_entries)

    def originate(self, msg_id: bytes) -> float:
        """Remember our own broadcast (so it never comes back to us); returns its send time."""
        self.seen.add(msg_id)
        return self.clock.seconds()

    def receive(self, msg_id: bytes, sent_at: float, via: bytes,
                peers: Iterable[bytes]) -> Decision:
        """The decision for a broadcast ``msg_id`` sent at ``sent_at``, arrived from
        ``via``, with ``peers`` the neighbours connected now."""
        age = self.clock.seconds() - sent_at
        if age > self.ttl:
            return Decision(False, dropped="too_old")
        if age < -self.ttl:
            return Decision(False, dropped="from_future")
        if not self.seen.add(msg_id):
            return Decision(False, dropped="seen")
        return Decision(True, tuple(p for p in peers if p != via))
