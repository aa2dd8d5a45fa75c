# -*- test-case-name: tests.test_dht_limits -*-
"""Every bound a remote peer runs into, in one place, and the counters of refusals.

A DHT node answers strangers, so whatever a remote peer can make it hold or do is bounded
here: routing-table admission, lookups, pulls, stored records and bytes, request rates,
answer sizes.  Each field has a documented default; ``twistd p2pnode`` options set them.

Per-address limits key on the source IP, except on loopback, where every node of a local
test network shares 127.0.0.1: there they key on ``(ip, port)`` (see :func:`source_key`).
Per-prefix limits key on the IPv4 /24 or the IPv6 /64 (see :func:`prefix_key`).
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter

import attrs

Address = tuple[str, int]


@functools.lru_cache(maxsize=65_536)  # parsing an address is slow; every datagram asks
def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def source_key(address: Address) -> tuple[str, int]:
    """The key per-address limits use: the IP, or ``(ip, port)`` on loopback."""
    host, port = address
    return (host, port) if is_loopback(host) else (host, 0)


@functools.lru_cache(maxsize=8192)
def host_prefix(host: str) -> str | None:
    """The IPv4 /24 or IPv6 /64 of a host; None on loopback, where the key is the
    address itself (see :func:`prefix_key`)."""
    if is_loopback(host):
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    bits = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{host}/{bits}", strict=False))


@functools.lru_cache(maxsize=8192)
def is_local_network(host: str) -> bool:
    """Loopback or a private (RFC 1918, unique-local, link-local) address: a network the
    operator runs, where many nodes in one /24 are normal."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private


def prefix_key(address: Address) -> str:
    """The IPv4 /24 or IPv6 /64 of an address (the address itself on loopback, so a
    local test network is not one prefix)."""
    host, port = address
    prefix = host_prefix(host)
    return f"{host}:{port}" if prefix is None else prefix


@attrs.define
class Limits:
    """The bounds of one DHT node (defaults documented in the README's limits table).

    Sections are grouped by the module that enforces them.
    """

    # -- lookups (p2pnet.dht.lookup) --------------------------------------------------
    #: candidates one lookup holds at most
    lookup_max_candidates: int = 200
    #: rounds (answers processed) one lookup runs at most
    lookup_max_rounds: int = 60
    #: seconds one lookup runs at most
    lookup_max_seconds: float = 30.0
    #: one lookup holds at most one node per source address (IP; IP and port on
    #: loopback): a peer cannot feed it ids of its own
    lookup_one_per_address: bool = True

    # -- the routing table (p2pnet.dht.routing, p2pnet.dht.contacts) -----------------
    #: at most one contact per IP address in the whole table (per IP and port on
    #: loopback), as libtorrent's ``dht_restrict_routing_ips``: one host, one slot
    routing_one_per_address: bool = True
    #: contacts of one IPv4 /24 or IPv6 /64 per bucket (libtorrent allows 1; a few lets
    #: a small LAN or a NAT pool share a bucket while one network cannot fill it; 0: off)
    routing_max_per_prefix: int = 2
    #: newcomers a full bucket keeps aside, newest first, to replace contacts that go
    #: stale (libtorrent keeps a replacement bucket per bucket too)
    routing_replacements: int = 8
    #: seconds a kept-aside newcomer stays eligible for promotion
    routing_replacement_max_age: float = 3600.0
    #: failed requests in a row (timeouts or bad answers, never our own errors) after
    #: which a contact leaves the table (Kademlia's "stale" rule; OpenDHT uses 3 too)
    routing_stale_after: int = 3
    #: seconds after which a contact's failure count is forgotten (per-id table age)
    routing_failure_max_age: float = 900.0
    #: contacts whose failures are counted at once (only table contacts are; the table
    #: is ~20 per bucket, so this only bounds the map against bugs)
    routing_failures_max: int = 4096
    #: a contact heard from within this many seconds keeps its slot without a ping when
    #: a newcomer or a conflicting address asks for it
    routing_evict_ping_after: float = 60.0
    #: pings out at once to check an incumbent (full bucket, id seen at a new address,
    #: address claimed by another id); past it the incumbent simply keeps its slot
    routing_checks_max: int = 16
    #: ping-backs to unproven requesters in flight at once (a requester enters the table
    #: only once it answers one of our own requests); each is one datagram, no retry
    routing_verify_max: int = 32
    #: ping-backs started per second at most (token bucket, burst of the same size): a
    #: ping is ~60 bytes, so this is ~6 KB/s at most, the size of what triggered it
    routing_verify_per_second: float = 100.0
    #: of those, ping-backs per second to requesters that could not be among our k
    #: closest contacts (token bucket, burst of the same size, at least 1): far buckets
    #: fill from our own lookups' answers and slowly from requests, and the k stores of
    #: a put do not cost their writer k ping-backs (at N = 200, 24 of a put's 45
    #: requests were ping-backs, nearly all from far requesters)
    routing_verify_far_per_second: float = 2.0
    #: seconds before the same address (IP; IP and port on loopback) is pinged back again
    routing_verify_interval: float = 60.0
    #: addresses remembered as recently pinged back (the per-address table above)
    routing_verify_recent_max: int = 2048
    #: records handed to one newcomer that enters their k closest (Kademlia §2.5)
    routing_handover_max: int = 64
    #: records scanned for one newcomer
    routing_handover_scan: int = 4096
    #: handover stores in flight at once; queued ones beyond ``routing_handover_queue``
    #: are dropped (the replicator covers them within the hour)
    routing_handover_in_flight: int = 4
    #: handover stores waiting at most
    routing_handover_queue: int = 256

    # -- stored values (p2pnet.dht.table, the Store and GetValue RPCs) -----------------
    #: bytes (with the per-record charge) held at most from all sources; the value table's
    #: own ``max_bytes`` (also 256 MiB by default) caps it too: the smaller one applies
    store_max_bytes: int = 256 * 1024 * 1024
    #: bytes charged per record on top of its value's size, against every byte quota
    #: (about what a record's metadata costs in memory), so empty records are not free
    store_record_overhead: int = 512
    #: records held at most (all sources; ~50 MB of metadata in memory at the limit)
    store_max_records: int = 65_536
    #: records one source address (IP; IP and port on loopback) may have stored here
    store_source_max_records: int = 4_096
    #: bytes (with the per-record charge) one source address may have stored here: 1/8 of
    #: the default table, so eight addresses are needed to fill it
    store_source_max_bytes: int = 32 * 1024 * 1024
    #: records stored from one /24 (IPv4) or /64 (IPv6)
    store_prefix_max_records: int = 16_384
    #: bytes (with the per-record charge) stored from one /24 or /64: a quarter of the table
    store_prefix_max_bytes: int = 64 * 1024 * 1024
    #: seconds a store's timestamp may lie ahead of our clock (clock skew allowance)
    store_max_future_seconds: float = 300.0
    #: values pulled (getval after a store offer) at once
    pull_max: int = 16
    #: values pulled at once from one source address
    pull_max_per_source: int = 2
    #: seconds one pull may take before it is dropped and its slot freed (a 1 MiB value is
    #: 8 windows of 8 chunks: well under a second on a LAN, seconds across the internet)
    pull_max_seconds: float = 60.0
    #: bytes a second a pull must keep up on average: a pull of ``size`` bytes is dropped
    #: after ``pull_grace_seconds + size / pull_min_rate`` seconds (at most
    #: ``pull_max_seconds``), so a peer cannot hold a slot by answering slowly; 128 KiB/s
    #: (1 Mbit/s) gives a 1 MiB value 13 s, where a LAN takes well under one (0: off)
    pull_min_rate: float = 128 * 1024
    #: seconds every pull has on top of its size at ``pull_min_rate`` (the first round
    #: trips, a retried request)
    pull_grace_seconds: float = 5.0
    #: values pulled at once from one /24 (IPv4) or /64 (IPv6) (the address itself on
    #: loopback)
    pull_max_per_prefix: int = 4
    #: seconds a source whose pull ran past its deadline is refused new pulls
    pull_slow_penalty_seconds: float = 300.0
    #: sources remembered as slow at most (oldest forgotten first)
    pull_slow_max_sources: int = 1024
    #: getval reads on the value table's store thread at once; more wait their turn
    read_max_pending: int = 64
    #: getval reads one source address (IP; IP and port on loopback) may have running or
    #: waiting at once (a pull keeps one window, 8, in flight); more are refused "busy"
    read_max_pending_per_source: int = 16
    #: getval reads waiting for the store thread at once, served one source after the
    #: other (round robin); when full, the source with the most waiting loses its newest
    read_max_waiting: int = 1024
    #: seconds a fetch waits before it asks a holder that answered "busy" once more
    fetch_busy_retry_seconds: float = 0.5

    # -- chord socket (p2pnet.chord.keyset, p2pnet.chord.socket) -----------------------
    #: key-set entries (live keys and tombstones) notices can make a node hold: ~150 B of
    #: memory each with a short key, so ~15 MB at the limit
    chord_max_keys: int = 100_000
    #: bytes in one chord key (notices carry whole keys; 1 KiB fits any sane name)
    chord_max_key_size: int = 1024
    #: seconds a deleted key's tombstone stays in the key set (a DHT copy that is not
    #: republished expires in a day; later, a stale notice could bring the key back)
    chord_tombstone_ttl: float = 86400.0

    # -- the wire (p2pnet.dht.protocol, ratelimit, proof) -------------------------------
    # Rates are requests a second; a rate <= 0 turns that bucket off.
    #: requests a second from one source address (IP; IP and port on loopback): a pull
    #: of a 1 MiB value is 64 getvals, a lookup sends one node a few requests
    rate_per_source: float = 100.0
    #: requests one source address may send in a burst
    rate_per_source_burst: float = 200.0
    #: requests a second from one /24 (IPv4) or /64 (IPv6): a few busy neighbours
    rate_per_prefix: float = 400.0
    #: requests one prefix may send in a burst
    rate_per_prefix_burst: float = 800.0
    #: work a second from everyone together, in ping units (each request is charged its
    #: ``rate_weight_*``): 1,250 stores (weight 8), 2,500 findnodes or 10,000 pings.  One
    #: Python node decodes and stores about 3,000 stores a second with its whole core
    #: (bench_floods store0-ports); at 2,500 it still drowned (honest gets 8 of 77), at
    #: 1,250 it keeps time to read and refuse the rest of a flood and for its own
    #: lookups (41 of 77).  OpenDHT: 1,600 requests
    rate_global: float = 10_000.0
    #: work everyone together may send in a burst, in ping units (a 1,000-node flash
    #: crowd joining through one bootstrap node sends it about 12 requests each, mostly
    #: findnodes: ~45,000 units, spread over the seconds the joins take; 300 nodes
    #: joining over loopback took the bootstrap's bucket down by less than 1,000)
    rate_global_burst: float = 30_000.0
    # What each request kind costs the node, in pings (the global bucket is charged
    # this; the per-source and per-prefix buckets one a request).  Measured by handling
    # each on the in-memory network, plus ~10 us of socket work each: ping ~15 us,
    # getval ~30 us (and the largest answers), findnode/findval ~60 us (the closest
    # contacts, sorted and encoded), store ~120 us (verify, table insert, answer).
    #: global-bucket charge of a ping (the unit)
    rate_weight_ping: float = 1.0
    #: global-bucket charge of a findnode
    rate_weight_findnode: float = 4.0
    #: global-bucket charge of a findval
    rate_weight_findval: float = 4.0
    #: global-bucket charge of a getval (a chunk: the largest answer the node sends)
    rate_weight_getval: float = 4.0
    #: global-bucket charge of a store (a request whose RPC byte is unknown or missing
    #: is charged the largest weight)
    rate_weight_store: float = 8.0
    #: source addresses (and prefixes) whose buckets are tracked at once
    rate_max_sources: int = 10_000
    #: an answer to an unproven address is at most this many times its request's bytes
    #: (issue 11: 3x); 0 turns the bound off
    answer_amplification: float = 3.0
    #: seconds between rotations of the secret address tokens are made with; a token is
    #: good for one to two periods (BEP 5 rotates every 5 minutes, accepts 10)
    token_rotate_seconds: float = 300.0
    #: IPs remembered as proven (they answered us), and tokens cached, at most
    proven_max: int = 10_000
    #: seconds an IP that answered us stays proven
    proven_seconds: float = 600.0
    #: tokens we hold from other nodes (one per address, about 130 bytes each), at most
    token_cache_max: int = 4_096
    #: bytes a findnode/findval request to an address we hold no token for is padded to,
    #: so its answer (20 IPv6 contacts: 828 bytes) fits the amplification bound
    request_pad_to: int = 300
    #: bytes asked for the UDP socket's receive buffer (SO_RCVBUF), for bursts; the
    #: kernel may grant less (net.core.rmem_max)
    udp_receive_buffer: int = 4 * 1024 * 1024


class RefusalCounter(Counter[str]):
    """Refusals and drops by kind (``counter['rate_limited'] += 1``)."""

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.items()))
