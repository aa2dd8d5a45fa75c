# -*- test-case-name: tests.test_store_peerstore -*-
"""A peer known to the :class:`~p2pnet.store.peerstore.PeerStore` (p2p0mq's ``Peer``)."""

from __future__ import annotations

import enum
from typing import Any

import attrs


class PeerState(enum.IntEnum):
    """Connection states of a peer, with p2p0mq's numbers."""

    #: Created, no connection attempt made yet.
    INITIAL = 1
    #: Socket connected, hello sent.
    CONNECTING = 2
    #: Hello acknowledged; heart beats come back in time.
    CONNECTED = 3
    #: Not reachable directly, but through another peer.
    ROUTED = 4
    #: Heart beat did not come back in time (was connected once).
    UNREACHABLE = -1
    #: A connection attempt failed.
    NO_CONNECTION = -2


INITIAL = PeerState.INITIAL
CONNECTING = PeerState.CONNECTING
CONNECTED = PeerState.CONNECTED
ROUTED = PeerState.ROUTED
UNREACHABLE = PeerState.UNREACHABLE
NO_CONNECTION = PeerState.NO_CONNECTION


def state_name(value: int) -> str:
    """The name of a state (all six have one); ``ValueError`` for any other number."""
    return PeerState(value).name


def peer_uuid(value: str | bytes) -> bytes:
    """A peer uuid as bytes: ``str`` is UTF-8 encoded, ``bytes`` kept."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"peer uuid must be bytes or str, not {type(value).__name__}")


#: The longest host (or endpoint such as ``ipc:///path``) a peer may have.
MAX_HOST_LENGTH = 1024


def check_host(_inst: Any, _attr: Any, host: Any) -> None:
    """A peer's host: None or a non-empty ``str`` of printable characters."""
    if host is None:
        return
    if not isinstance(host, str):
        raise TypeError(f"peer host must be a str or None, not {type(host).__name__}")
    if not 1 <= len(host) <= MAX_HOST_LENGTH or not host.isprintable() or " " in host:
        raise ValueError(f"not a usable peer host: {host[:80]!r}")


def check_port(_inst: Any, _attr: Any, port: Any) -> None:
    """A peer's port: None or an ``int`` in 0..65535."""
    if port is None:
        return
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"peer port must be an int or None, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"peer port {port} is not in 0..65535")


@attrs.define(eq=False)
class Peer:
    """A peer: identity, address, database row id and connection state.

    Mutable (``conn_state`` and ``db_id`` change); compared and hashed by identity, since
    the store keeps exactly one object per uuid.  ``host`` and ``port`` are checked when
    the peer is made and whenever they are set (``TypeError`` / ``ValueError``), so a bad
    address never reaches the database.
    """

    uuid: bytes = attrs.field(converter=peer_uuid)
    host: str | None = attrs.field(default=None, validator=check_host)
    port: int | None = attrs.field(default=None, validator=check_port)
    db_id: int | None = None
    conn_state: PeerState = attrs.field(default=PeerState.INITIAL, converter=PeerState)

    @property
    def address(self) -> str | None:
        """``tcp://host:port``, or just ``host`` when there is no port."""
        if self.port is None:
            return self.host
        return f"tcp://{self.host}:{self.port}"

    @property
    def state(self) -> str:
        """The name of the connection state."""
        return state_name(self.conn_state)

    @property
    def state_initial(self) -> bool:
        return self.conn_state == PeerState.INITIAL

    @property
    def state_connecting(self) -> bool:
        return self.conn_state == PeerState.CONNECTING

    @property
    def state_connected(self) -> bool:
        return self.conn_state == PeerState.CONNECTED

    @property
    def state_routed(self) -> bool:
        return self.conn_state == PeerState.ROUTED

    @property
    def state_unreachable(self) -> bool:
        return self.conn_state == PeerState.UNREACHABLE

    @property
    def state_no_connection(self) -> bool:
        return self.conn_state == PeerState.NO_CONNECTION
