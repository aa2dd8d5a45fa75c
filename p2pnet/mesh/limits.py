# -*- test-case-name: tests.test_mesh_socket -*-
"""The bounds of one mesh node: everything a remote peer can make it hold or wait for."""

from __future__ import annotations

import attrs

from p2pnet.mesh import flood

#: the retry schedule of a lost peer (the defaults of :class:`MeshLimits` and of
#: :class:`p2pnet.mesh.peers.Backoff`)
RETRY_INITIAL = 0.5
RETRY_FACTOR = 2.0
RETRY_MAX = 60.0
RETRY_JITTER = 0.25
RETRY_MAX_FAILURES = 6


@attrs.define
class MeshLimits:
    """Bounds and timings of a :class:`~p2pnet.mesh.socket.MeshSocket`."""

    #: peers connected at once (hello past this is refused): a flood costs one send each
    max_peers: int = 64
    #: ZeroMQ high-water mark per peer, in messages, both directions (ZeroMQ's default)
    hwm: int = 1000
    #: messages of our own per-peer overflow queue, used while the ZeroMQ pipe is full;
    #: a peer whose overflow fills is disconnected (it stopped reading)
    queue_limit: int = 1000
    #: kernel socket buffer sizes in bytes (0: the OS default); small in tests
    sndbuf: int = 0
    rcvbuf: int = 0
    #: unhandled messages kept for ``recv()``; the oldest go first
    inbox_limit: int = 10_000
    #: seconds a seen broadcast id is kept, from its first sight on this node's clock
    #: (py2p's 60 s; the sender's clock plays no part)
    seen_ttl: float = flood.TTL
    #: ids the seen-cache holds at most (100k ids of 16 bytes: a few MB)
    seen_max: int = flood.MAX_ENTRIES
    #: hop limit of our broadcasts, and the most we relay anyone's (1..255): every node of
    #: a mesh of up to max_hops + 1 nodes is reached whatever its shape
    max_hops: int = flood.MAX_HOPS
    #: seconds a dial waits for the hello-ack
    handshake_timeout: float = 5.0
    #: a link silent this long gets a ping
    ping_interval: float = 10.0
    #: a link silent this long is dropped (three missed pings)
    peer_timeout: float = 30.0
    #: retries of a lost peer: first delay, factor, cap, +- jitter fraction
    retry_initial: float = RETRY_INITIAL
    retry_factor: float = RETRY_FACTOR
    retry_max: float = RETRY_MAX
    retry_jitter: float = RETRY_JITTER
    #: peers the peer book (and the PeerStore) remembers; unreachable ones go first
    max_known: int = 1024
    #: failed dials in a row after which a peer is marked unreachable (no more retries)
    retry_max_failures: int = RETRY_MAX_FAILURES
