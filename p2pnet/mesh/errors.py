# -*- test-case-name: tests.test_mesh_socket -*-
"""Typed errors of the mesh."""

from __future__ import annotations


class MeshError(Exception):
    """Base class of the mesh's errors."""


class DecodeError(MeshError, ValueError):
    """Frames that are not a valid p2pnet mesh message (the one error the decoder raises)."""


class HandshakeRefusedError(MeshError):
    """The other side refused our hello; ``code`` is a :class:`~p2pnet.mesh.codec.Refusal`
    number and ``reason`` its text, as the other side sent them (or as we decided)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"handshake refused ({code}): {reason}")
        self.code = code
        self.reason = reason


class HandshakeTimeoutError(MeshError):
    """No hello-ack came back in time (nobody listening, or not a p2pnet mesh)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        super().__init__(f"no handshake from {host}:{port} within {timeout:g}s")
        self.host = host
        self.port = port


class PeerNotConnectedError(MeshError, KeyError):
    """``send`` to a peer that is not connected right now."""

    def __str__(self) -> str:
        return f"peer {self.args[0]!r} is not connected"


class MeshStoppedError(MeshError):
    """The mesh socket is not running (or stopped while the call was under way)."""
