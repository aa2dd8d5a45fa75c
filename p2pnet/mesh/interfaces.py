"""The seam between the mesh and what runs on it (the sync and chord sockets).

Both :class:`p2pnet.mesh.socket.MeshSocket` (real ZeroMQ) and
:class:`p2pnet.mesh.memory.MemoryMesh` (in-memory, on ``task.Clock``) provide
:class:`IMesh`, so the sockets above are tested on either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from zope.interface import Attribute, Interface


@attrs.frozen
class MeshMessage:
    """A message as delivered to this node.

    ``origin`` is the node that sent it, ``via`` the neighbour it arrived from (the same
    for a direct ``send``), ``channel`` the handler it is for (``b""`` for plain
    messages), ``parts`` the payload frames, ``msg_id`` its flood id (``None`` for a
    direct message) and ``sent_at`` the origin's clock when it was sent.
    """

    origin: bytes
    via: bytes
    channel: bytes
    parts: tuple[bytes, ...]
    msg_id: bytes | None = None
    sent_at: float = 0.0

    @property
    def broadcast(self) -> bool:
        return self.msg_id is not None


class IMesh(Interface):
    """A node of a mesh of peers."""

    peer_id = Attribute("This node's id (bytes); stable across restarts.")

    def on(event: str, callback: Callable[..., Any] | None = None) -> Any:
        """Register for ``'connect'`` ``(mesh, peer_id)``, ``'disconnect'``
        ``(mesh, peer_id)`` or ``'message'`` ``(mesh, MeshMessage)``; as a call or
        (without ``callback``) as a decorator.  ``'message'`` fires only for messages on
        a channel that no :meth:`handle` registration took."""

    def handle(channel: bytes, callback: Callable[[MeshMessage], None]) -> None:
        """Deliver every message on ``channel`` (direct or flooded) to ``callback``.

        One handler per channel: a second for the same channel raises ``ValueError``.  A
        channel that is not ``bytes`` raises ``TypeError``; one longer than
        :data:`p2pnet.mesh.codec.MAX_CHANNEL` bytes, ``ValueError``."""

    def send(peer_id: bytes, *parts: bytes, channel: bytes = b"") -> None:
        """Send to one connected peer (``KeyError`` when not connected)."""

    def broadcast(*parts: bytes, channel: bytes = b"") -> bytes:
        """Flood to every node of the mesh, each receiving it once; returns the msg id.
        The sender does not deliver its own broadcast to itself."""

    def peers() -> list[bytes]:
        """The ids of the peers connected (handshake done) right now."""
