# -*- test-case-name: tests.test_mesh_socket -*-
"""The ZeroMQ adapter of the mesh: the only module that imports txzmq.

txzmq imports the global reactor when it is imported, and schedules its reads on it, so
:mod:`p2pnet.mesh.socket` imports this module only when a socket starts.

One node has one ROUTER socket bound on ``tcp://host:port``, through which every peer
that dialled us talks, and one DEALER socket per peer we dialled.  A link is therefore one
TCP connection whichever side opened it, and a DEALER can be closed on its own, which a
peer behind the shared ROUTER cannot (we can only forget its routing id).

Sends never block: each socket has a high-water mark (``SNDHWM``/``RCVHWM``) and the
ROUTER is ``ROUTER_MANDATORY``, so a full pipe to one peer raises :class:`SendBlocked`
for that peer only (and an unknown routing id :class:`Unroutable`) instead of dropping
silently; the socket above keeps its own bounded overflow and disconnects a peer whose
overflow fills.  ``MAXMSGSIZE`` makes ZeroMQ drop a peer that sends an over-long frame.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq
from twisted.logger import Logger
from txzmq import ZmqEndpoint, ZmqEndpointType, ZmqFactory
from txzmq.router_dealer import ZmqDealerConnection, ZmqRouterConnection

log = Logger()


#: Messages one socket reads before it lets the reactor run something else.
READ_BATCH = 256


class SendBlocked(Exception):
    """The pipe to this peer is full (the high-water mark is reached)."""


class Unroutable(Exception):
    """No connection with this routing id (the peer went away)."""


def _configure(conn: Any, hwm: int, sndbuf: int, rcvbuf: int, max_frame: int) -> None:
    sock = conn.socket
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame)
    if sndbuf:
        sock.setsockopt(zmq.SNDBUF, sndbuf)
    if rcvbuf:
        sock.setsockopt(zmq.RCVBUF, rcvbuf)


class _Pausable:
    """A leaner, fairer ``doRead``: reads at most :data:`READ_BATCH` messages per call
    (then yields to the reactor and comes back), never lets a handler's exception reach
    the reactor, and can be paused (tests of a peer that stops reading)."""

    paused = False
    deliver: Callable[..., None]
    read_scheduled: Any
    socket: Any
    factory: Any

    def messageReceived(self, message: list[bytes]) -> None:
        raise NotImplementedError

    def doRead(self) -> None:
        scheduled = self.read_scheduled
        if scheduled is not None:
            if scheduled.active():
                scheduled.cancel()
            self.read_scheduled = None
        for _ in range(READ_BATCH):
            sock = self.socket
            if self.paused or sock is None or self.factory is None:
                return
            if not sock.get(zmq.EVENTS) & zmq.POLLIN:
                return
            try:
                message = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.messageReceived(message)
        if self.socket is not None and self.factory is not None:
            self.read_scheduled = self.factory.reactor.callLater(0, self.doRead)


class _Router(_Pausable, ZmqRouterConnection):
    def messageReceived(self, message: list[bytes]) -> None:
        if not message:
            return
        routing_id = message[0]
        try:
            self.deliver(routing_id, message[1:])
        except Exception:
            # Never let an exception reach txzmq: the reactor would drop the reader.
            log.failure("mesh router handler failed")


class Dialer(_Pausable, ZmqDealerConnection):
    """One outgoing link (a DEALER connected to a peer's ROUTER)."""

    host: str
    port: int

    def messageReceived(self, message: list[bytes]) -> None:
        try:
            self.deliver(self, message)
        except Exception:
            log.failure("mesh dealer handler failed")

    def send_frames(self, frames: list[bytes]) -> None:
        """Send without blocking; :class:`SendBlocked` when the pipe is full."""
        if self.socket is None:
            raise Unroutable("closed")
        try:
            self.send(frames)
        except zmq.Again as e:
            raise SendBlocked() from e

    def close(self, flush: bool = True) -> None:
        """Close; with ``flush`` the queued messages (a bye) get the linger period to
        leave, without it they are dropped (a peer that stopped reading)."""
        if self.socket is not None:
            if not flush:
                self.socket.setsockopt(zmq.LINGER, 0)
            self.shutdown()


class ZmqTransport:
    """The ROUTER of one node and its DEALERs.

    ``on_incoming(routing_id, frames)`` gets what peers that dialled us send;
    ``on_outgoing(dialer, frames)`` what the peers we dialled send.
    """

    def __init__(
        self,
        on_incoming: Callable[[bytes, list[bytes]], None],
        on_outgoing: Callable[[Dialer, list[bytes]], None],
        *,
        hwm: int = 1000,
        sndbuf: int = 0,
        rcvbuf: int = 0,
        max_frame: int = 1 << 20,
        factory: ZmqFactory | None = None,
        linger_ms: int = 100,
    ) -> None:
        self._on_incoming = on_incoming
        self._on_outgoing = on_outgoing
        self.hwm = hwm
        self.sndbuf = sndbuf
        self.rcvbuf = rcvbuf
        self.max_frame = max_frame + 64  # room for the header frame
        self._own_factory = factory is None
        if factory is None:
            factory = ZmqFactory()
            factory.lingerPeriod = linger_ms
        self.factory = factory
        self.router: _Router | None = None
        self.dialers: set[Dialer] = set()

    def bind(self, host: str, port: int) -> int:
        """Bind the ROUTER; returns the port (a free one for ``port=0``)."""
        router = _Router(self.factory)
        router.deliver = self._on_incoming
        _configure(router, self.hwm, self.sndbuf, self.rcvbuf, self.max_frame)
        router.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        address = f"tcp://{host}:{port if port else '*'}"
        try:
            router.addEndpoints([ZmqEndpoint(ZmqEndpointType.bind, address)])
        except zmq.ZMQError:
            router.shutdown()
            raise
        self.router = router
        endpoint = router.socket.getsockopt(zmq.LAST_ENDPOINT).decode("ascii")
        return int(endpoint.rsplit(":", 1)[1])

    def send_routed(self, routing_id: bytes, frames: list[bytes]) -> None:
        """Send to a peer that dialled us; :class:`SendBlocked` or :class:`Unroutable`."""
        router = self.router
        if router is None or router.socket is None:
            raise Unroutable("not bound")
        try:
            router.send([routing_id, *frames])
        except zmq.Again as e:
            raise SendBlocked() from e
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                raise Unroutable() from e
            raise

    def dial(self, host: str, port: int) -> Dialer:
        """A new DEALER connecting to ``tcp://host:port`` (the TCP connect happens in
        the background; sends queue until it is up)."""
        dialer = Dialer(self.factory)
        dialer.deliver = self._on_outgoing
        dialer.host, dialer.port = host, port
        _configure(dialer, self.hwm, self.sndbuf, self.rcvbuf, self.max_frame)
        dialer.addEndpoints([ZmqEndpoint(ZmqEndpointType.connect, f"tcp://{host}:{port}")])
        self.dialers.add(dialer)
        return dialer

    def close_dialer(self, dialer: Dialer, flush: bool = True) -> None:
        self.dialers.discard(dialer)
        dialer.close(flush)

    def pause_reading(self) -> None:
        """Stop reading every socket of this node (messages pile up in ZeroMQ)."""
        for conn in self._connections():
            conn.paused = True

    def resume_reading(self) -> None:
        for conn in self._connections():
            conn.paused = False
            if conn.socket is not None:
                self.factory.reactor.callLater(0, conn.doRead)

    def _connections(self) -> list[Any]:
        conns: list[Any] = list(self.dialers)
        if self.router is not None:
            conns.append(self.router)
        return conns

    def shutdown(self) -> None:
        """Close every socket, and the ZeroMQ context when it is ours."""
        for dialer in list(self.dialers):
            self.close_dialer(dialer)
        if self.router is not None and self.router.socket is not None:
            self.router.shutdown()
        self.router = None
        if self._own_factory and self.factory.context is not None:
            self.factory.shutdown()
