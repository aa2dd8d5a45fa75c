# -*- test-case-name: tests.test_node -*-
"""Test helpers for applications built on p2pnet (public, like ``treq.testing``).

- :func:`start_node`: a real :class:`~p2pnet.node.P2PNode` on loopback, in a trial test,
  stopped by the test's cleanup;
- :func:`control_request`: one request to a node's control API, answered as
  ``(status, content type, body)``;
- :func:`memory_dht`: DHT nodes on the in-memory datagram network and a
  ``task.Clock`` (no sockets, no threads), joined to each other;
- :class:`MemoryMeshNetwork` (re-exported from :mod:`p2pnet.mesh.memory`): mesh nodes
  on a clock, for the sync and chord sockets.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer, task

from p2pnet.control import control_file
from p2pnet.dht.network import DHTNetwork
from p2pnet.mesh.memory import MemoryMeshNetwork
from p2pnet.node import P2PNode
from p2pnet.sim.memory import MemoryNetwork

__all__ = ["MemoryMeshNetwork", "control_request", "memory_dht", "start_node"]


async def _start(node: P2PNode) -> P2PNode:
    node.startService()
    await node.when_ready()
    return node


def start_node(testcase: Any, *, data_dir: str | None = None, **kwargs: Any
               ) -> defer.Deferred[P2PNode]:
    """Start a node on 127.0.0.1 (ports 0, values in memory unless ``memory=False``)
    for a trial test on the real reactor; the test's cleanup stops it."""
    kwargs.setdefault("port", 0)
    kwargs.setdefault("interface", "127.0.0.1")
    kwargs.setdefault("memory", True)
    if kwargs["port"] == 0:
        kwargs.setdefault("mesh_port", 0)
    node = P2PNode(data_dir or os.path.abspath(testcase.mktemp()), **kwargs)

    def stop() -> Any:
        if node.running:
            return node.stopService()
        node.lock.release()
        return None

    testcase.addCleanup(stop)
    return defer.Deferred.fromCoroutine(_start(node))


async def _request(url: str, method: bytes, token: str | None, body: bytes | None,
                   headers: dict[bytes, list[bytes]] | None) -> tuple[int, str, bytes]:
    from twisted.internet import reactor
    from twisted.web.client import Agent, readBody
    from twisted.web.http_headers import Headers

    h = Headers(dict(headers or {}))
    if token is not None:
        h.setRawHeaders(b"authorization", [f"Bearer {token}".encode()])
    producer = None
    if body is not None:
        import io

        from twisted.web.client import FileBodyProducer

        producer = FileBodyProducer(io.BytesIO(body))
    agent = Agent(reactor)
    response = await agent.request(method, url.encode("ascii"), h, producer)
    data = await readBody(response)
    ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0].decode()
    return response.code, ctype, data


def control_request(node: P2PNode, method: str, path: str, body: bytes | None = None, *,
                    token: str | None | bool = True,
                    headers: dict[bytes, list[bytes]] | None = None
                    ) -> defer.Deferred[tuple[int, str, bytes]]:
    """A request to ``node``'s control API: ``(status, content type, body)``.

    ``token=True`` sends the node's token (read from its control file, as a client
    would), ``None``/``False`` none, a string that string.
    """
    with open(control_file(node.data_dir), encoding="utf-8") as f:
        info = json.load(f)
    tok: str | None
    if token is True:
        tok = info["token"]
    elif token is False or token is None:
        tok = None
    else:
        tok = str(token)
    url = info["url"].rstrip("/") + path
    return defer.Deferred.fromCoroutine(
        _request(url, method.encode("ascii"), tok, body, headers))


def memory_dht(n: int, clock: task.Clock | None = None, **kwargs: Any
               ) -> tuple[task.Clock, list[DHTNetwork]]:
    """``n`` DHT networks on one in-memory datagram network, each joined through the
    first; returns ``(clock, networks)``.  Advance the clock to let them work."""
    clock = clock or task.Clock()
    net = MemoryNetwork(clock)
    nodes = []
    for i in range(n):
        dht = DHTNetwork(clock, **kwargs)
        net.attach(dht.protocol, f"10.0.{i // 250}.{i % 250 + 1}", 4455)
        nodes.append(dht)
    for dht in nodes[1:]:
        dht.join_network(nodes[0].address)
        for _ in range(50):
            clock.advance(0.1)
    return clock, nodes
