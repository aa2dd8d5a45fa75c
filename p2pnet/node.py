# -*- test-case-name: tests.test_node -*-
"""One p2pnet node: identity, stores, DHT, mesh, sync and chord, as one ``IService``.

:class:`P2PNode` is what ``twistd p2pnode`` runs (:mod:`p2pnet.tap` only turns options
into one) and what an application embeds::

    node = P2PNode("/var/lib/p2pnet", port=4455, bootstrap=[("10.0.0.1", 4455)])
    node.setServiceParent(application)      # or node.startService()
    await node.when_ready()
    await node.dht.network.put("greeting", b"hello")

**The data directory** holds everything the node keeps:

- ``node_id``: the node's DHT id (hex), made once;
- ``leveldb/``: one LevelDB database shared by the stores through key spaces
  (:mod:`p2pnet.store.keyspace`): the DHT's values under ``kvp/``, the sync socket's
  dict under ``sync/``;
- ``peers.sqlite`` and ``contacts.sqlite``: two :class:`~p2pnet.store.peerstore.PeerStore`
  files, the mesh's peers (its peer book dials every peer of its store, so the DHT's UDP
  contacts live apart) and the DHT's contacts (uuid: the contact's node id), so a
  restarted node rejoins the peers it knew without ``--bootstrap``;
- ``p2pnode.lock``: held (``flock``) by the running node and naming its pid; a second
  node on the same directory fails at once with :class:`DataDirBusyError`;
- ``control.json`` (mode 0600): the control API's address and access token
  (:mod:`p2pnet.control`);
- ``twistd.pid`` / ``p2pnode.log`` when run by twistd.

**Lifecycle**: ``startService`` first checks that the node's ports are free (so a taken
port fails at once, with :class:`PortInUseError`, before any thread starts), then opens
the stores off the reactor thread, loads the value table, starts the DHT, the mesh, the
sync and chord sockets and the control API, in that order; :meth:`when_ready` fires
when all are up (or fails with the first error).  ``stopService`` stops them in reverse
order, one after another: the DHT's contacts are saved, the stores flushed and closed,
and the lock released.  With ``memory=True`` nothing is written but ``node_id`` and the
lock (values and peers live in memory).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Iterable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2pnet import ids
from p2pnet.chord.socket import ChordSocket
from p2pnet.control import DEFAULT_DATA_DIR, ControlService, one_line
from p2pnet.dht.kvptable import LevelDBKVPTable
from p2pnet.dht.limits import Limits
from p2pnet.dht.network import NETWORK_ID
from p2pnet.dht.service import DHTService
from p2pnet.mesh.socket import MeshSocket
from p2pnet.observer import OneShotObserver
from p2pnet.store.keyspace import key_space
from p2pnet.store.leveldb import DBManager
from p2pnet.store.peer import Peer
from p2pnet.store.peerstore import PeerStore
from p2pnet.sync.socket import SyncSocket
from p2pnet.timers import Periodic

log = Logger(namespace="p2pnet.node")

DEFAULT_PORT = 4455
DEFAULT_INTERFACE = "0.0.0.0"
LOCK_FILE = "p2pnode.lock"
NODE_ID_FILE = "node_id"
LEVELDB_DIR = "leveldb"
PEERS_FILE = "peers.sqlite"
CONTACTS_FILE = "contacts.sqlite"
#: DHT contacts kept in the PeerStore at most, and tried when the node restarts
MAX_SAVED_CONTACTS = 256
REJOIN_CONTACTS = 8
#: seconds between saves of the DHT's contacts to the PeerStore
SAVE_CONTACTS_INTERVAL = 30.0


class NodeStartError(Exception):
    """The node cannot start; the message is one line meant for the user."""


class PortInUseError(NodeStartError):
    """A port the node needs is taken."""

    def __init__(self, kind: str, interface: str, port: int, reason: str) -> None:
        super().__init__(f"{kind} port {port} on {interface} is in use ({reason})")
        self.kind = kind
        self.port = port


class DataDirBusyError(NodeStartError):
    """Another process runs a node on this data directory."""

    def __init__(self, directory: str, pid: int | None) -> None:
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"data directory {directory} is in use by {who}")
        self.directory = directory
        self.pid = pid


class DataDirLock:
    """An exclusive ``flock`` on ``<data dir>/p2pnode.lock``, which names the holder's pid.

    ``flock`` locks belong to the open file, so the lock survives twistd's fork into the
    background; :meth:`write_pid` writes the pid of the process that runs the node.
    """

    def __init__(self, directory: str, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: str) -> DataDirLock:
        """Take the lock (the directory is created if needed), or raise
        :class:`DataDirBusyError` naming the holder's pid."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise DataDirBusyError(directory, cls.holder(directory)) from None
            raise
        lock = cls(directory, fd)
        lock.write_pid()
        return lock

    @staticmethod
    def holder(directory: str) -> int | None:
        """The pid written in the lock file, if any."""
        try:
            with open(os.path.join(directory, LOCK_FILE), encoding="ascii") as f:
                text = f.read().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() else None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def write_pid(self) -> None:
        if self._fd is None:
            return
        data = f"{os.getpid()}\n".encode("ascii")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing the file drops the flock


def load_node_id(data_dir: str) -> bytes:
    """The node id kept in ``data_dir/node_id``; a new random one is written if none.

    ``ValueError`` when the file holds something else.
    """
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, NODE_ID_FILE)
    try:
        with open(path, encoding="ascii") as f:
            return ids.key_from_hex(f.read().strip())
    except FileNotFoundError:
        pass
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} does not hold a node id: {e}") from e
    node_id = ids.random_key()
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(node_id.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return node_id


def check_port_free(kind: str, interface: str, port: int) -> None:
    """Raise :class:`PortInUseError` when ``port`` cannot be bound now (0 always can)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock_type = socket.SOCK_DGRAM if kind == "UDP" else socket.SOCK_STREAM
    s = socket.socket(family, sock_type)
    try:
        if sock_type == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((interface, port))
    except OSError as e:
        raise PortInUseError(kind, interface, port, e.strerror or str(e)) from None
    finally:
        s.close()


def advertised_host(interface: str) -> str:
    """The host the mesh tells its peers to reach it at: the interface it binds, or for a
    wildcard (0.0.0.0, ::) this machine's address on its default route (found with an
    unconnected UDP socket: nothing is sent), else loopback."""
    if interface not in ("0.0.0.0", "::", ""):
        return interface
    family = socket.AF_INET6 if interface == "::" else socket.AF_INET
    probe = ("2001:db8::1", 9) if family == socket.AF_INET6 else ("192.0.2.1", 9)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(probe)
            host: str = s.getsockname()[0]
    except OSError:
        return "::1" if family == socket.AF_INET6 else "127.0.0.1"
    return host


class P2PNode(service.MultiService):
    """A p2pnet node (see the module docstring).

    :param data_dir: the node's directory (created when missing).
    :param port: the DHT's UDP port (0: any free port).
    :param interface: the address the DHT and the mesh bind to.
    :param mesh_port: the mesh's TCP port; by default ``port + 1`` (0 when ``port`` is 0).
    :param bootstrap: ``(host, port)`` DHT addresses to join through; the mesh connects
        to the same hosts on ``port + 1``.
    :param limits: the DHT's bounds (:class:`p2pnet.dht.limits.Limits`).
    :param control: serve the control API (:mod:`p2pnet.control`).
    :param advertise_host: the host the mesh tells peers to reach it at (default: see
        :func:`advertised_host`).
    :param lock: a :class:`DataDirLock` already held (``twistd`` takes it while parsing
        options); by default the node takes it here, raising :class:`DataDirBusyError`.
    """

    def __init__(
        self,
        data_dir: str,
        *,
        port: int = DEFAULT_PORT,
        interface: str = DEFAULT_INTERFACE,
        mesh_port: int | None = None,
        bootstrap: Iterable[tuple[str, int]] = (),
        network_id: bytes = NETWORK_ID,
        memory: bool = False,
        limits: Limits | None = None,
        reactor: Any = None,
        control: bool = True,
        lock: DataDirLock | None = None,
        advertise_host: str | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self.data_dir = os.path.abspath(os.path.expanduser(data_dir))
        self.port = port
        self.interface = interface
        self.mesh_port = mesh_port if mesh_port is not None else (port + 1 if port else 0)
        self.bootstrap = list(bootstrap)
        self.network_id = network_id
        self.advertise_host = advertise_host or advertised_host(interface)
        self.memory = memory
        self.limits = limits if limits is not None else Limits()
        self.lock = lock if lock is not None else DataDirLock.acquire(self.data_dir)
        try:
            self.node_id = load_node_id(self.data_dir)
        except BaseException:
            if lock is None:
                self.lock.release()
            raise
        self.started_at: float | None = None
        self._ready: OneShotObserver[None] = OneShotObserver()
        self._starting: defer.Deferred[None] | None = None
        self._up: list[service.IService] = []

        self.peers = PeerStore(
            None if memory else os.path.join(self.data_dir, PEERS_FILE),
            app_uuid=self.node_id.hex(),
            reactor=reactor,
        )
        self.peers.setName("peers")
        self.contacts = PeerStore(
            None if memory else os.path.join(self.data_dir, CONTACTS_FILE),
            app_uuid=self.node_id.hex(),
            reactor=reactor,
        )
        self.contacts.setName("contacts")
        self.db: DBManager | None = None
        if not memory:
            self.db = DBManager(self._leveldb_path(), reactor=reactor, lazy=True, repair=True)
            self.db.setName("leveldb")
        self.dht = DHTService(
            port=port,
            interface=interface,
            node_id=self.node_id,
            network_id=network_id,
            bootstrap=self.bootstrap,
            reactor=reactor,
            limits=self.limits,
        )
        self.dht.setName("dht")
        self.mesh = MeshSocket(
            interface,
            self.mesh_port,
            network_id=network_id,
            peer_store=self.peers,
            reactor=reactor,
            advertise_host=self.advertise_host,
        )
        self.mesh.setName("mesh")
        self.sync = SyncSocket(self.mesh, clock=reactor, store=key_space(self.db, b"sync/"))
        self.sync.setName("sync")
        self.chord = ChordSocket(self.mesh, self.dht.network, reactor=reactor)
        self.chord.setName("chord")
        self.control: ControlService | None = None
        if control:
            self.control = ControlService(self, reactor=reactor)
            self.control.setName("control")
        self._saver = Periodic(reactor, SAVE_CONTACTS_INTERVAL, self.save_contacts,
                               name="save DHT contacts")
        for child in (self.peers, self.contacts, self.db, self.dht, self.mesh, self.sync,
                      self.chord, self.control):
            if child is not None:
                self.addService(child)

    def _leveldb_path(self) -> str:
        path = os.path.join(self.data_dir, LEVELDB_DIR)
        old = os.path.join(self.data_dir, "values")  # the value table before key spaces
        if not os.path.exists(path) and os.path.isdir(old):
            os.rename(old, path)
            log.info("moved the value table {old} to {path}", old=old, path=path)
        return path

    # -- addresses and state -------------------------------------------------------------

    @property
    def dht_address(self) -> tuple[str, int] | None:
        if not self.dht.running:
            return None
        return self.dht.network.address

    @property
    def mesh_address(self) -> tuple[str, int] | None:
        if not self.mesh.running:
            return None
        return self.mesh.address

    @property
    def uptime(self) -> float:
        if self.started_at is None:
            return 0.0
        return max(0.0, self._reactor.seconds() - self.started_at)

    def when_ready(self) -> defer.Deferred[None]:
        """Fires once every part of the node is up (fails with the first error)."""
        return self._ready.when_fired()

    @property
    def ready(self) -> bool:
        """Whether every part of the node is up (False while starting or after a failure)."""
        if not self._ready.fired:
            return False
        try:
            _ = self._ready.result
        except Exception:
            return False
        return True

    # -- start -----------------------------------------------------------------------

    def check_ports(self) -> None:
        """Raise :class:`PortInUseError` if the DHT's or the mesh's port is taken."""
        check_port_free("UDP", self.interface, self.port)
        check_port_free("TCP", self.interface, self.mesh_port)

    def startService(self) -> None:  # noqa: N802 - IService
        """Check the ports (raising :class:`PortInUseError` at once), then start the
        parts in order off the reactor's back (see :meth:`when_ready`)."""
        self.check_ports()
        service.Service.startService(self)
        if self._ready.fired:
            self._ready.reset()
        self.lock.write_pid()
        self.started_at = self._reactor.seconds()
        d = defer.Deferred.fromCoroutine(self._start())
        self._starting = d

        def done(result: object) -> None:
            self._starting = None
            if isinstance(result, Failure):
                log.error("node failed to start: {error}", error=one_line(result.value))
                self._ready.fire_if_unfired(result)
            else:
                self._ready.fire_if_unfired(None)

        d.addBoth(done)

    def _start_child(self, child: service.IService | None) -> None:
        if child is None:
            return
        child.startService()
        self._up.append(child)

    async def _start(self) -> None:
        self._start_child(self.peers)
        self._start_child(self.contacts)
        self._start_child(self.db)
        await self.peers.when_ready()
        await self.contacts.when_ready()
        if self.db is not None:
            await self.db.when_ready()
            table = await self.db.submit(LevelDBKVPTable, self.db, namespace=b"kvp/")
            self.dht.network.kvp_table = table
        if not self.running:
            return
        self._add_known_contacts()
        try:
            self._start_child(self.dht)
        except CannotListenError as e:
            raise PortInUseError("UDP", self.interface, self.port, str(e.socketError)) from e
        try:
            self._start_child(self.mesh)
        except Exception as e:
            raise NodeStartError(f"mesh cannot start on TCP {self.interface}:"
                                 f"{self.mesh_port}: {one_line(e)}") from e
        await self.mesh.when_ready()
        self._start_child(self.sync)
        await self.sync.when_ready()
        self._start_child(self.chord)
        self._connect_mesh()
        if self.control is not None:
            self._start_child(self.control)
        self._saver.start()
        log.info("node {id} ready: DHT {dht}, mesh {mesh}, data in {dir}",
                 id=self.node_id.hex(), dht=_fmt(self.dht_address),
                 mesh=_fmt(self.mesh_address), dir=self.data_dir)

    def _add_known_contacts(self) -> None:
        """The DHT contacts the PeerStore kept become join candidates (a restart rejoins)."""
        with self.contacts.peers_lock:
            known = [p for p in self.contacts.peers.values() if p.host and p.port]
        known.sort(key=lambda p: -(p.db_id or 0))
        targets = [self.dht.bootstrap, self.dht.joiner.bootstrap]
        added = 0
        for peer in known[:REJOIN_CONTACTS]:
            address = (str(peer.host), int(peer.port))  # type: ignore[arg-type]
            for target in targets:
                if address not in target:
                    target.append(address)
            added += 1
        if added:
            log.info("rejoining through {n} DHT contacts kept from the last run", n=added)

    def _connect_mesh(self) -> None:
        """Connect the mesh to the bootstrap hosts (mesh port = DHT port + 1); the mesh's
        peer book dials the peers its PeerStore kept."""
        targets: list[tuple[str, int]] = [(h, p + 1) for h, p in self.bootstrap]
        own = self.mesh_address
        seen: set[tuple[str, int]] = set()
        for host, port in targets:
            if (host, port) in seen or (own is not None and own[1] == port
                                        and host in ("127.0.0.1", own[0])):
                continue
            seen.add((host, port))
            d = defer.maybeDeferred(self.mesh.connect, host, port)
            d.addErrback(_not_reached, host, port)

    # -- contacts --------------------------------------------------------------------

    def save_contacts(self) -> int:
        """Copy the DHT's contacts into their PeerStore (written at its next sync); the
        number of contacts saved."""
        rt = self.dht.network.routing_table
        nodes = rt.get_close_nodes(self.node_id, MAX_SAVED_CONTACTS)
        current = {n.key: n for n in nodes}
        saved = 0
        with self.contacts.peers_lock:
            stored = dict(self.contacts.peers)
        for uuid, node in current.items():
            peer = stored.get(uuid)
            try:
                if peer is None:
                    self.contacts.add_peer(Peer(uuid, node.host, node.port))
                elif (peer.host, peer.port) != (node.host, node.port):
                    peer.host, peer.port = node.host, node.port
            except (TypeError, ValueError) as e:
                log.warn("not saving contact {host}:{port}: {e}", host=node.host,
                         port=node.port, e=e)
                continue
            saved += 1
        extra = len(stored) + saved - len(set(stored) & set(current)) - MAX_SAVED_CONTACTS
        if extra > 0:
            for uuid in [u for u in stored if u not in current][:extra]:
                try:
                    self.contacts.take_peer(uuid)
                except KeyError:
                    pass
        return saved

    # -- stop ------------------------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802 - IService
        """Stop every part in reverse order, save the contacts, close the stores."""
        service.Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        starting = self._starting
        if starting is not None:
            await starting  # startService's done() took its result (or failure): None
        await self._saver.stop()
        while self._up:
            child = self._up.pop()
            if child is self.contacts:
                try:
                    self.save_contacts()
                except Exception:
                    log.failure("saving the DHT contacts failed")
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {name} failed", name=getattr(child, "name", child))
        self.lock.release()
        self.started_at = None
        log.info("node {id} stopped", id=self.node_id.hex())


def _not_reached(failure: Failure, host: str, port: int) -> None:
    log.info("mesh peer {host}:{port} not reached: {e}", host=host, port=port,
             e=one_line(failure.value))


def _fmt(address: tuple[str, int] | None) -> str:
    return "-" if address is None else f"{address[0]}:{address[1]}"


__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_INTERFACE",
    "DEFAULT_PORT",
    "DataDirBusyError",
    "DataDirLock",
    "NodeStartError",
    "P2PNode",
    "PortInUseError",
    "check_port_free",
    "load_node_id",
    "one_line",
]
