"""IMesh rules that every implementation keeps (MeshSocket over ZeroMQ, MemoryMesh)."""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.mesh.codec import MAX_CHANNEL
from p2pnet.mesh.interfaces import IMesh
from p2pnet.mesh.memory import MemoryMeshNetwork
from p2pnet.mesh.socket import MeshSocket


class HandleRulesMixin:
    """``handle``: one handler per channel; bytes only; at most MAX_CHANNEL bytes."""

    def make(self) -> IMesh:
        raise NotImplementedError

    def test_one_handler_per_channel(self: Any) -> None:
        mesh = self.make()
        mesh.handle(b"c", lambda m: None)
        self.assertRaises(ValueError, mesh.handle, b"c", lambda m: None)
        mesh.handle(b"d", lambda m: None)  # another channel is free

    def test_channel_must_be_bytes(self: Any) -> None:
        mesh = self.make()
        self.assertRaises(TypeError, mesh.handle, "c", lambda m: None)
        self.assertRaises(TypeError, mesh.handle, None, lambda m: None)

    def test_channel_length_bound(self: Any) -> None:
        mesh = self.make()
        mesh.handle(b"x" * MAX_CHANNEL, lambda m: None)
        self.assertRaises(ValueError, mesh.handle, b"y" * (MAX_CHANNEL + 1), lambda m: None)


class MeshSocketHandleTests(HandleRulesMixin, SynchronousTestCase):
    def make(self) -> IMesh:
        return MeshSocket()  # not started: handle needs no transport


class MemoryMeshHandleTests(HandleRulesMixin, SynchronousTestCase):
    def make(self) -> IMesh:
        return MemoryMeshNetwork(task.Clock()).node(b"a")
