# -*- test-case-name: tests.test_control -*-
"""The node's control API: HTTP + JSON on 127.0.0.1, for the ``p2pnet`` command.

The API listens on a free port of 127.0.0.1 only.  When it starts it writes
``<data dir>/control.json`` (mode 0600, so only the node's owner can read it)::

    {"url": "http://127.0.0.1:PORT/", "token": "...", "pid": 1234, "node_id": "..."}

and removes it when it stops.  Every request must carry the token
(``Authorization: Bearer TOKEN``), else it is refused with 401.  Request bodies are
limited to :data:`MAX_BODY` bytes (413 beyond).  Every error is a JSON object
``{"error": "one line"}`` with a 4xx status (5xx when the node itself failed).

Endpoints (keys are percent-encoded UTF-8 path segments):

=========================  ==================================================
``GET /status``            node id, addresses, peers, routing-table size,
                           values held, uptime, dropped and refused counters
``GET /peers``             DHT contacts and mesh peers
``PUT /dht/KEY``           put the body as the key's value (``{"replicas": n}``)
``GET /dht/KEY``           the value's bytes (404 when absent)
``GET /sync``              the sync dict's keys
``PUT|GET|DELETE /sync/KEY``  set / get (bytes) / delete a sync key
``GET /chord``             the chord socket's keys
``PUT|GET|DELETE /chord/KEY`` set / get (bytes) / delete a chord key
=========================  ==================================================
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import attrs
from twisted.application import service
from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from p2pnet.dht.errors import (
    LookupTimeoutError,
    RPCTimeoutError,
    ValueNotFoundError,
    ValueUnreachableError,
)
from p2pnet.mesh.errors import HandshakeTimeoutError
from p2pnet.models import MAX_VALUE_SIZE

if TYPE_CHECKING:  # annotations only: the p2pnet command imports this module, kept light
    from p2pnet.chord.socket import ChordSocket
    from p2pnet.node import P2PNode
    from p2pnet.sync.socket import SyncSocket

log = Logger(namespace="p2pnet.control")

#: Where a node keeps its state, and where the ``p2pnet`` command looks for it.
DEFAULT_DATA_DIR = os.path.join("~", ".p2pnet")
CONTROL_FILE = "control.json"
#: The largest request body: one DHT value (1 MiB) and some room.
MAX_BODY = MAX_VALUE_SIZE + 4096
#: The longest key the API takes, in bytes.
MAX_KEY = 1024
#: Errors answered with 504: the node or a peer ran out of time.
TIMEOUT_ERRORS = (TimeoutError, defer.TimeoutError, error.TimeoutError, RPCTimeoutError,
                  LookupTimeoutError, ValueUnreachableError, HandshakeTimeoutError)


class ApiError(Exception):
    """An error answered to the client with ``status`` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def control_file(data_dir: str) -> str:
    return os.path.join(data_dir, CONTROL_FILE)


def write_private(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by the owner only (0600).

    No fsync: this runs on the reactor thread, and the file only matters while the
    node runs (a crash leaves it stale anyway); the rename alone keeps readers from
    seeing half a file.
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class LimitedRequest(server.Request):
    """A request whose body is cut off (and the request refused) past ``MAX_BODY``."""

    max_body = MAX_BODY

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.body_size = 0
        self.too_large = False

    def gotLength(self, length: int | None) -> None:  # noqa: N802 - twisted.web
        super().gotLength(length)
        if length is not None and length > self.max_body:
            self.too_large = True

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802 - twisted.web
        self.body_size += len(data)
        if self.body_size > self.max_body:
            self.too_large = True
        if not self.too_large:
            super().handleContentChunk(data)


@attrs.define
class _Reply:
    status: int
    body: bytes
    content_type: bytes = b"application/json"


def _json(obj: Any, status: int = 200) -> _Reply:
    return _Reply(status, json.dumps(obj, sort_keys=True).encode("utf-8") + b"\n")


def _bytes(data: bytes) -> _Reply:
    return _Reply(200, data, b"application/octet-stream")


def text_key(key: bytes) -> str:
    """A key for JSON output (UTF-8; other bytes as escapes)."""
    return key.decode("utf-8", "backslashreplace")


class ControlResource(resource.Resource):
    """The API's one resource: authenticates, routes, answers JSON."""

    isLeaf = True

    def __init__(self, node: P2PNode, token: str) -> None:
        super().__init__()
        self.node = node
        self._token = token.encode("ascii")

    # -- plumbing --------------------------------------------------------------------

    def render(self, request: LimitedRequest) -> Any:
        if request.too_large:
            return self._finish(request, _json(
                {"error": f"request body over {MAX_BODY} bytes"}, http.REQUEST_ENTITY_TOO_LARGE))
        auth: bytes = request.getHeader(b"authorization") or b""
        given = auth[7:].strip() if auth.startswith(b"Bearer ") else b""
        if not hmac.compare_digest(given, self._token):
            request.setHeader(b"www-authenticate", b'Bearer realm="p2pnet"')
            return self._finish(request, _json({"error": "missing or wrong token"},
                                               http.UNAUTHORIZED))
        try:
            handler, args = self._route(request)
        except ApiError as e:
            return self._finish(request, _json({"error": str(e)}, e.status))
        d = defer.Deferred.fromCoroutine(handler(request, *args))
        finished = []
        request.notifyFinish().addErrback(lambda _: finished.append(True))

        def reply(result: Any) -> None:
            if finished:
                return
            if isinstance(result, Failure):
                result = self._error_reply(result)
            self._finish(request, result)

        d.addBoth(reply)
        return server.NOT_DONE_YET

    def _error_reply(self, failure: Failure) -> _Reply:
        e = failure.value
        if isinstance(e, ApiError):
            return _json({"error": str(e)}, e.status)
        if isinstance(e, ValueNotFoundError | KeyError):
            return _json({"error": "not found"}, http.NOT_FOUND)
        if isinstance(e, TIMEOUT_ERRORS):
            return _json({"error": f"timed out: {one_line(e)}"}, http.GATEWAY_TIMEOUT)
        if isinstance(e, TypeError | ValueError):
            return _json({"error": one_line(e)}, http.BAD_REQUEST)
        log.failure("control request failed", failure)
        return _json({"error": f"{type(e).__name__}: {one_line(e)}"}, http.INTERNAL_SERVER_ERROR)

    def _finish(self, request: server.Request, reply: _Reply) -> bytes | int:
        request.setResponseCode(reply.status)
        request.setHeader(b"content-type", reply.content_type)
        request.setHeader(b"cache-control", b"no-store")
        if request.method == b"HEAD":
            return b""
        request.write(reply.body)
        request.finish()
        return server.NOT_DONE_YET

    def _route(self, request: server.Request) -> tuple[Callable[..., Coroutine[Any, Any, _Reply]],
                                                       tuple[Any, ...]]:
        path = request.path.split(b"?", 1)[0]
        parts = [p for p in path.split(b"/") if p]
        method = request.method
        if len(parts) == 1 and parts[0] in (b"status", b"peers"):
            self._allow(method, b"GET")
            return (self.status if parts[0] == b"status" else self.peers), ()
        if parts and parts[0] in (b"dht", b"sync", b"chord"):
            area = parts[0].decode()
            if len(parts) == 1:
                if area == "dht":
                    raise ApiError(http.NOT_FOUND, "the DHT cannot list its keys; use /dht/KEY")
                self._allow(method, b"GET")
                return getattr(self, f"{area}_list"), ()
            if len(parts) != 2:
                raise ApiError(http.NOT_FOUND, f"no such endpoint: {_show(path)}")
            key = unquote_to_bytes(parts[1])
            if not 1 <= len(key) <= MAX_KEY:
                raise ApiError(http.BAD_REQUEST, f"keys are 1..{MAX_KEY} bytes")
            allowed = {b"GET": "get", b"PUT": "set", b"POST": "set", b"DELETE": "delete"}
            if area == "dht":
                allowed.pop(b"DELETE")
            if method not in allowed:
                raise ApiError(http.NOT_ALLOWED, f"{method.decode('ascii', 'replace')} "
                               f"is not allowed on /{area}/KEY")
            return getattr(self, f"{area}_{allowed[method]}"), (key,)
        raise ApiError(http.NOT_FOUND, f"no such endpoint: {_show(path)}")

    @staticmethod
    def _allow(method: bytes, allowed: bytes) -> None:
        if method not in (allowed, b"HEAD"):
            raise ApiError(http.NOT_ALLOWED,
                           f"{method.decode('ascii', 'replace')} is not allowed here")

    @staticmethod
    def _body(request: server.Request) -> bytes:
        content = request.content
        if content is None:
            return b""
        content.seek(0)
        data: bytes = content.read()
        return data

    def _check_running(self) -> None:
        if not self.node.running:
            raise ApiError(http.SERVICE_UNAVAILABLE, "the node is stopping")

    def _sync(self) -> SyncSocket:
        self._check_running()
        return self.node.sync

    def _chord(self) -> ChordSocket:
        self._check_running()
        return self.node.chord

    # -- status and peers ------------------------------------------------------------

    async def status(self, request: server.Request) -> _Reply:
        return _json(node_status(self.node))

    async def peers(self, request: server.Request) -> _Reply:
        return _json(node_peers(self.node))

    # -- DHT ---------------------------------------------------------------------------

    @staticmethod
    def _dht_key(key: bytes) -> str:
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(http.BAD_REQUEST, "DHT keys are UTF-8 text") from None

    async def dht_set(self, request: server.Request, key: bytes) -> _Reply:
        value = self._body(request)
        if len(value) > MAX_VALUE_SIZE:
            raise ApiError(http.REQUEST_ENTITY_TOO_LARGE,
                           f"values are at most {MAX_VALUE_SIZE} bytes")
        name = self._dht_key(key)
        replicas = await self.node.dht.network.put(name, value)
        return _json({"key": name, "bytes": len(value), "replicas": replicas})

    async def dht_get(self, request: server.Request, key: bytes) -> _Reply:
        value = await self.node.dht.network.get(self._dht_key(key))
        return _bytes(value)

    # -- sync --------------------------------------------------------------------------

    async def sync_list(self, request: server.Request) -> _Reply:
        sync = self._sync()
        return _json({"keys": sorted(text_key(k) for k in sync.keys())})

    async def sync_get(self, request: server.Request, key: bytes) -> _Reply:
        value = self._sync()[key]
        if isinstance(value, bytes | bytearray):
            return _bytes(bytes(value))
        return _Reply(200, json.dumps(_jsonable(value)).encode() + b"\n")

    async def sync_set(self, request: server.Request, key: bytes) -> _Reply:
        sync = self._sync()
        value = self._body(request)
        try:
            sync[key] = value
        except KeyError as e:  # the lease: someone else owns the key for now
            raise ApiError(http.CONFLICT, one_line(e)) from e
        return _json({"key": text_key(key), "bytes": len(value)})

    async def sync_delete(self, request: server.Request, key: bytes) -> _Reply:
        sync = self._sync()
        if key not in sync:
            raise ApiError(http.NOT_FOUND, "not found")
        try:
            del sync[key]
        except KeyError as e:
            raise ApiError(http.CONFLICT, one_line(e)) from e
        return _json({"key": text_key(key), "deleted": True})

    # -- chord -------------------------------------------------------------------------

    async def chord_list(self, request: server.Request) -> _Reply:
        keys = await self._chord().d_keys()
        return _json({"keys": sorted(text_key(k) for k in keys)})

    async def chord_get(self, request: server.Request, key: bytes) -> _Reply:
        value = await self._chord().d_get(key)
        return _bytes(value)

    async def chord_set(self, request: server.Request, key: bytes) -> _Reply:
        value = self._body(request)
        await self._chord().d_set(key, value)
        return _json({"key": text_key(key), "bytes": len(value)})

    async def chord_delete(self, request: server.Request, key: bytes) -> _Reply:
        await self._chord().d_delete(key)
        return _json({"key": text_key(key), "deleted": True})


def one_line(error: BaseException) -> str:
    """An error as one line: its message (a ``KeyError``'s key, unquoted), or its type's
    name when it has none."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(text.split()) or type(error).__name__


def _show(path: bytes) -> str:
    return path[:200].decode("utf-8", "backslashreplace")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _peer_id_text(peer_id: bytes) -> str:
    """A mesh peer id as text: itself when printable ASCII (the usual hex uuid), else hex."""
    if peer_id.isascii() and peer_id.decode("ascii").isprintable():
        return peer_id.decode("ascii")
    return peer_id.hex()


def _addr(address: tuple[str, int] | None) -> str | None:
    return None if address is None else f"{address[0]}:{address[1]}"


def node_status(node: P2PNode) -> dict[str, Any]:
    """What ``GET /status`` answers (also usable without the HTTP server)."""
    net = node.dht.network
    protocol = attrs.asdict(net.protocol.stats)
    drop_kinds = ("malformed", "wrong_network", "from_self", "unmatched", "wrong_address",
                  "wrong_rpc")
    dropped = {k: protocol[k] for k in drop_kinds}
    refused = net.refused
    table = net.kvp_table
    records = sum(1 for _ in table.records())
    mesh = node.mesh
    control = node.control
    return {
        "node_id": node.node_id.hex(),
        "network_id": node.network_id.decode("utf-8", "backslashreplace"),
        "data_dir": node.data_dir,
        "pid": os.getpid(),
        "running": bool(node.running),
        "ready": bool(node.ready),
        "joined": bool(node.dht.joined),
        "memory": bool(node.memory),
        "uptime": round(node.uptime, 3),
        "addresses": {
            "dht": _addr(node.dht_address),
            "mesh": _addr(node.mesh_address),
            "control": None if control is None else control.url,
        },
        "peers": {
            "dht": net.routing_table.num_contacts,
            "mesh": len(mesh.peers()) if mesh.running else 0,
        },
        "routing_table": net.routing_table.num_contacts,
        "values": {"records": records, "bytes": table.total_bytes,
                   "max_bytes": table.max_bytes},
        "counters": {
            "dropped": dropped,
            "dropped_total": sum(dropped.values()),
            "refused": refused.as_dict(),
            "refused_total": sum(refused.values()),
            "protocol": protocol,
            "mesh": dict(sorted(mesh.stats.items())),
        },
    }


def node_peers(node: P2PNode) -> dict[str, Any]:
    """What ``GET /peers`` answers."""
    net = node.dht.network
    contacts = [{"id": n.key.hex(), "address": f"{n.host}:{n.port}"}
                for n in net.routing_table.get_close_nodes(node.node_id, 10_000)]
    mesh: list[dict[str, Any]] = []
    if node.mesh.running:
        for peer_id in node.mesh.peers():
            entry: dict[str, Any] = {"id": _peer_id_text(peer_id)}
            with node.peers.peers_lock:
                peer = node.peers.peers.get(peer_id)
            if peer is not None and peer.host:
                entry["address"] = f"{peer.host}:{peer.port}"
            mesh.append(entry)
    return {"dht": contacts, "mesh": mesh}


class ControlService(service.Service):
    """Serves :class:`ControlResource` on 127.0.0.1 and writes the control file."""

    def __init__(self, node: P2PNode, *, reactor: Any = None, port: int = 0) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self.node = node
        self.port = port
        self.token = secrets.token_urlsafe(32)
        self.path = control_file(node.data_dir)
        self.url: str | None = None
        self._listening: Any = None

    def site(self) -> server.Site:
        site = server.Site(ControlResource(self.node, self.token))
        site.requestFactory = LimitedRequest
        site.displayTracebacks = False
        site.noisy = False
        return site

    def startService(self) -> None:  # noqa: N802 - IService
        self._listening = self._reactor.listenTCP(self.port, self.site(),
                                                  interface="127.0.0.1")
        host = self._listening.getHost()
        self.url = f"http://127.0.0.1:{host.port}/"
        data = {"url": self.url, "token": self.token, "pid": os.getpid(),
                "node_id": self.node.node_id.hex()}
        write_private(self.path, json.dumps(data).encode("utf-8") + b"\n")
        super().startService()
        log.info("control API on {url} (token in {path})", url=self.url, path=self.path)

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802 - IService
        super().stopService()
        try:
            with open(self.path, encoding="utf-8") as f:
                mine = json.load(f).get("token") == self.token
        except (OSError, ValueError, AttributeError):
            mine = False
        if mine:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        listening, self._listening = self._listening, None
        if listening is None:
            return defer.succeed(None)
        return defer.maybeDeferred(listening.stopListening)


__all__ = ["CONTROL_FILE", "DEFAULT_DATA_DIR", "MAX_BODY", "ApiError", "ControlResource",
           "ControlService", "control_file", "node_peers", "node_status", "one_line",
           "write_private"]
