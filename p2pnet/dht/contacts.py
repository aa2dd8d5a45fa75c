# -*- test-case-name: tests.test_dht_contacts -*-
"""Who enters the routing table, who leaves it, and what a newcomer is handed.

(Refreshing the buckets while the table is young is the joiner's job:
:class:`p2pnet.dht.service.JoinPolicy` ``young_refreshes``.)

:class:`ContactBook` sits between the protocol and the pure
:class:`~p2pnet.dht.routing.RoutingTable`:

* **Only proven contacts enter.**  A node enters the table only after it answered one of
  our own requests (:meth:`ContactBook.contact_answered`): the answer came from the
  address the request went to, so the address is not forged.  A node that only sent us
  a request (:meth:`ContactBook.contact_seen`) is a candidate: it refreshes its entry if
  it is already a contact at that very address, and otherwise is pinged back -- bounded
  in flight, rate-limited, at most once per address per interval, and only when it could
  enter (not when its bucket is full of contacts heard from lately) -- and enters when it
  answers.  A newcomer that pings us is thus verified and enters (joining works), while
  4,000 pings with crafted ids from one address make at most one ping back.  Requesters
  that could not be among our k closest contacts
  (:meth:`~p2pnet.dht.routing.RoutingTable.could_be_closest`) share a small budget of
  ping-backs (``routing_verify_far_per_second``): far buckets fill from our own
  lookups' answers, and a put's k stores do not cost its writer k ping-backs.
* **Incumbents are asked first.**  A full bucket pings its least recently seen contact
  before the newcomer (kept aside in the bucket's replacement cache) may replace it; a
  known id seen at a new address, or an address claimed by another id, pings the
  incumbent, which keeps its slot if it answers as itself (issue 11 #5).
* **Only the remote node's faults count.**  A contact leaves after
  ``routing_stale_after`` timeouts or bad answers in a row; our own errors (a bad key, a
  stopped protocol, an answer that does not encode) never count (issue 11 #7).
* **A newcomer gets what it should hold** (Kademlia §2.5, bmuller/kademlia's
  ``welcomeIfNewNode``): when a new contact enters the k closest we know of a key we
  hold, and we are closer to the key than any other contact, the value is stored to it
  -- bounded per newcomer and in flight, never blocking the caller.

Every per-address and per-id map here is bounded in size and age (see
:class:`~p2pnet.dht.limits.Limits`); refusals are counted in ``refused`` by kind.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pnet.dht import codec
from p2pnet.dht.errors import BucketFullError, RPCTimeoutError, VerificationError
from p2pnet.dht.limits import Address, Limits, RefusalCounter
from p2pnet.dht.routing import (
    AddressConflictError,
    PrefixFullError,
    RoutingTable,
    address_key,
)
from p2pnet.dht.table import IKVPTable
from p2pnet.models import Node

log = Logger()

_PING = codec.PingRequest()

#: Failures of these kinds are the remote node's fault; anything else is ours.
REMOTE_FAULTS = (RPCTimeoutError, VerificationError)


class ContactsHost(Protocol):
    """What the contact book needs of its node (:class:`~p2pnet.dht.network.DHTNetwork`)."""

    k: int
    kvp_table: IKVPTable
    ping: Any  # the Ping RPC: ``ping.call(address)`` fires with ``(rtt, Node)``
    protocol: Any  # the DHTProtocol: ``request(address, body, retries=...)``

    @property
    def key(self) -> bytes: ...

    def store_to_node(self, node: Node, key: bytes, index: bytes, bytes_: bytes,
                      timestamp: float) -> defer.Deferred[bool]: ...


def is_remote_fault(failure: Failure) -> bool:
    """Does ``failure`` count against the node the request went to?"""
    return failure.check(*REMOTE_FAULTS) is not None


class ContactBook:
    """Admission, eviction, failure bookkeeping and welcome of one node's contacts."""

    def __init__(self, host: ContactsHost, table: RoutingTable, clock: IReactorTime,
                 limits: Limits, refused: RefusalCounter) -> None:
        self.host = host
        self.table = table
        self.clock = clock
        self.limits = limits
        self.refused = refused
        self._failures: dict[bytes, tuple[int, float]] = {}  # id -> (count, first failure)
        self._checking: set[bytes] = set()  # ids of incumbents being pinged
        self._verified: dict[Hashable, float] = {}  # address key -> when pinged back
        self._verifying = 0
        self._tokens = float(limits.routing_verify_per_second)
        self._far_tokens = max(1.0, limits.routing_verify_far_per_second)
        self._tokens_at = clock.seconds()
        self._handover: deque[tuple[Node, bytes, bytes]] = deque()
        self._handing = 0
        self.handed_over = 0

    # -- from the protocol --------------------------------------------------------

    def contact_seen(self, node_id: bytes, address: Address) -> None:
        """A request arrived: refresh a contact at this address, or ping the sender back."""
        table = self.table
        known = table.find(node_id)
        if known is None:
            if not table.has_room(
                    node_id, self.clock.seconds() - self.limits.routing_evict_ping_after):
                # its bucket is full of contacts heard from lately: proven, it could only
                # wait aside, so it is not pinged back (it may enter when it answers one
                # of our requests, or when a slot frees).  At 1,000 nodes most requesters
                # fall in such a bucket: a put's 20 stores made ~19 ping-backs of the writer.
                self.refused["routing_verify_no_room"] += 1
                return
            # a stranger that could not be among our k closest: the far budget
            self._verify(address, far=not table.could_be_closest(node_id, self.host.k))
        elif known.port == address[1] and known.host == address[0]:
            table.node_update(known)  # the same instance: only moves it up
        else:
            self._verify(address)  # a known id at another address

    def contact_answered(self, node_id: bytes, address: Address) -> None:
        """A node answered our request from the address it went to: it may enter."""
        if self._failures:
            self._failures.pop(node_id, None)
        if self.table.refresh(node_id, address[0], address[1]) is not None:
            return  # a contact at its address: moved up
        try:
            # one instance per contact for the process (its host string interned): a
            # contact costs a table no copy of its id, host or number
            node = Node.shared(node_id, address[0], address[1])
        except (TypeError, ValueError):
            return
        self._offer(node)
        if self.table.find(node_id) is not node:
            # kept out (a full bucket, an incumbent checked): this answer proved its
            # address, so its requests need no ping-back for a while either
            self._remember(address_key(address), self.clock.seconds())

    def node_for(self, node_id: bytes, address: Address) -> Node:
        """The contact's own instance when it is known at ``address``, else a new one."""
        known = self.table.find_at(node_id, address[0], address[1])
        return Node(node_id, address[0], address[1]) if known is None else known

    # -- admission ----------------------------------------------------------------

    def _offer(self, node: Node, replacing: Node | None = None) -> None:
        try:
            if replacing is None:
                self.table.node_update(node)
            else:
                self.table.replace(replacing, node)
        except BucketFullError as e:
            self._check_lrs(e)
        except AddressConflictError as e:
            self._check_incumbent(e.incumbent, e.node)
        except PrefixFullError:
            self.refused["routing_prefix_full"] += 1
        else:
            if self.table.find(node.key) is node:
                # a contact now: its requests refresh it, the ping-back entry is done with
                self._verified.pop(address_key(node.address), None)
                self._hand_over(node)

    def _recently_seen(self, node: Node) -> bool:
        seen = self.table.last_seen(node.key)
        return (seen is not None
                and self.clock.seconds() - seen < self.limits.routing_evict_ping_after)

    def _check_lrs(self, e: BucketFullError) -> None:
        """A full bucket: its least recently seen contact keeps its place if it answers
        (or was heard from lately); otherwise the newest replacement takes it."""
        bucket: Any = e.bucket
        old: Node = e.node  # type: ignore[assignment]
        if self._recently_seen(old) or not self._may_check(old):
            bucket.unlock()
            return

        def answered(result: Any) -> None:
            self._checking.discard(old.key)
            if result[1].key == old.key:
                bucket.keep_old_node()
            else:
                bucket.keep_new_node()

        def silent(failure: Failure) -> None:
            self._checking.discard(old.key)
            if is_remote_fault(failure):
                bucket.keep_new_node()
            else:
                bucket.unlock()  # our fault: the incumbent keeps its place

        self.host.ping.call(old.address).addCallbacks(answered, silent)

    def _check_incumbent(self, incumbent: Node, newcomer: Node) -> None:
        """``newcomer`` claims the id or the address of ``incumbent``: it gets the slot
        only if the incumbent does not answer as itself (issue 11 #5)."""
        if self._recently_seen(incumbent):
            self.refused["routing_address_taken"] += 1
            return
        if incumbent.key in self._checking:
            return
        if not self._may_check(incumbent):
            return

        def answered(result: Any) -> None:
            self._checking.discard(incumbent.key)
            if result[1].key == incumbent.key:
                self.refused["routing_address_taken"] += 1
            else:
                self._offer(newcomer, replacing=incumbent)

        def silent(failure: Failure) -> None:
            self._checking.discard(incumbent.key)
            if is_remote_fault(failure):
                self._offer(newcomer, replacing=incumbent)

        self.host.ping.call(incumbent.address).addCallbacks(answered, silent)

    def _may_check(self, incumbent: Node) -> bool:
        if len(self._checking) >= self.limits.routing_checks_max:
            self.refused["routing_checks_busy"] += 1
            return False
        self._checking.add(incumbent.key)
        return True

    # -- pinging back unproven requesters ----------------------------------------------

    def _verify(self, address: Address, far: bool = False) -> None:
        limits = self.limits
        now = self.clock.seconds()
        key = address_key(address)
        recent = self._verified
        at = recent.get(key)
        if at is not None and now - at < limits.routing_verify_interval:
            return  # pinged back lately: its answer (or silence) is already known
        if self._verifying >= limits.routing_verify_max:
            self.refused["routing_verify_busy"] += 1
            return
        elapsed = max(0.0, now - self._tokens_at)  # (a clock set back adds nothing)
        self._tokens_at = now
        rate = limits.routing_verify_per_second
        self._tokens = min(rate, self._tokens + elapsed * rate)
        far_rate = limits.routing_verify_far_per_second
        self._far_tokens = min(max(1.0, far_rate), self._far_tokens + elapsed * far_rate)
        if self._tokens < 1.0:
            self.refused["routing_verify_rate"] += 1
            return
        if far and self._far_tokens < 1.0:
            self.refused["routing_verify_far_rate"] += 1
            return
        awaiting = getattr(self.host.protocol, "awaiting", None)
        if awaiting is not None and awaiting(address):
            # we asked it something: its answer, from that very address, proves it (and
            # is offered to the table) -- a ping-back would be a second proof.  A node
            # answers before it pings its requester back, but an answer that waits (a
            # store on disk) comes after the ping: without this the requester would
            # ping back in turn
            return
        self._tokens -= 1.0
        if far:
            self._far_tokens -= 1.0
        self._remember(key, now)
        self._verifying += 1

        def done(_: object) -> None:
            self._verifying -= 1

        # One datagram, no retry.  The answer goes through contact_answered like any
        # other; silence costs nothing.
        self.host.protocol.request(address, _PING, retries=0).addBoth(done)

    def _remember(self, key: Hashable, now: float) -> None:
        """``key``'s address was pinged back (or answered us) at ``now``."""
        limits = self.limits
        recent = self._verified
        recent.pop(key, None)
        recent[key] = now  # insertion order is age order
        while recent and (len(recent) > limits.routing_verify_recent_max
                          or now - next(iter(recent.values())) >= limits.routing_verify_interval):
            del recent[next(iter(recent))]

    # -- failures ----------------------------------------------------------------------

    def failed(self, node: Node, failure: Failure) -> Failure:
        """A request to ``node`` failed: a timeout or a bad answer counts against it
        (a contact leaves after ``routing_stale_after`` in a row); our errors do not."""
        if not is_remote_fault(failure) or self.table.find(node.key) != node:
            return failure
        limits = self.limits
        now = self.clock.seconds()
        count, first = self._failures.pop(node.key, (0, now))
        if now - first > limits.routing_failure_max_age:
            count, first = 0, now
        count += 1
        if count >= limits.routing_stale_after:
            self.table.remove(node)  # its newest replacement takes the place
            return failure
        self._failures[node.key] = (count, first)  # re-inserted: dict order is age order
        failures = self._failures
        while failures and (len(failures) > limits.routing_failures_max
                            or now - next(iter(failures.values()))[1]
                            > limits.routing_failure_max_age):
            del failures[next(iter(failures))]
        return failure

    def failures(self, node_id: bytes) -> int:
        """Failed requests in a row counted against ``node_id`` (0 when none or old)."""
        count, first = self._failures.get(node_id, (0, 0.0))
        if self.clock.seconds() - first > self.limits.routing_failure_max_age:
            return 0
        return count

    # -- a newcomer: value handover ----------------------------------------------------

    def _hand_over(self, node: Node) -> None:
        """Queue the records whose k closest (as we know them) the newcomer enters, when
        we are the closest of our contacts to them (bmuller's ``welcomeIfNewNode``)."""
        limits = self.limits
        k = self.host.k
        now = self.clock.seconds()
        queued = 0
        for scanned, record in enumerate(self.host.kvp_table.records()):
            if scanned >= limits.routing_handover_scan or queued >= limits.routing_handover_max:
                break
            if record.is_expired(now):
                continue
            if self.table.count_close(record.key, stop_at=1, excluding=node):
                continue  # a closer contact of ours will hand it over
            key = int.from_bytes(record.key, "big")
            neighbours = [n for n in self.table.get_close_nodes(record.key, k + 1)
                          if n is not node][:k]
            if len(neighbours) >= k and node.key_int ^ key > neighbours[-1].key_int ^ key:
                continue  # the newcomer is not among the k closest
            if len(self._handover) >= limits.routing_handover_queue:
                self.refused["routing_handover_queue_full"] += 1
                break
            self._handover.append((node, record.key, record.index))
            queued += 1
        self._pump_handover()

    def _pump_handover(self) -> None:
        while self._handover and self._handing < self.limits.routing_handover_in_flight:
            node, key, index = self._handover.popleft()
            record = self.host.kvp_table.get_record(key, index)
            if record is None:
                continue
            self._handing += 1
            d: defer.Deferred[Any] = defer.maybeDeferred(self.host.kvp_table.read, key, index)
            d.addCallback(self._store_to, node, record.timestamp, key, index)
            d.addCallbacks(self._handed, self._hand_failed)

    def _store_to(self, value: bytes, node: Node, timestamp: float, key: bytes,
                  index: bytes) -> defer.Deferred[bool]:
        return self.host.store_to_node(node, key, index, value, timestamp)

    def _handed(self, ok: bool) -> None:
        self._handing -= 1
        if ok:
            self.handed_over += 1
        self._pump_handover()

    def _hand_failed(self, failure: Failure) -> None:
        self._handing -= 1
        log.debug("handover failed: {f}", f=failure.getErrorMessage())
        self._pump_handover()

    # -- sizes, for tests and benchmarks ----------------------------------------------

    def sizes(self) -> dict[str, int]:
        """How many entries each bounded map holds now."""
        return {"failures": len(self._failures), "checking": len(self._checking),
                "verified": len(self._verified), "verifying": self._verifying,
                "handover": len(self._handover)}
