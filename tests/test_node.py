"""P2PNode: the data-directory lock, ports, start/ready/stop, persistence, rejoining."""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from p2pnet import ids
from p2pnet.dht.kvptable import LevelDBKVPTable
from p2pnet.node import (
    DataDirBusyError,
    DataDirLock,
    P2PNode,
    PortInUseError,
    check_port_free,
    load_node_id,
)
from p2pnet.store.errors import StoreError
from p2pnet.testing import start_node


class DataDirLockTests(unittest.SynchronousTestCase):
    def test_second_acquire_names_the_holder(self) -> None:
        data_dir = os.path.abspath(self.mktemp())
        lock = DataDirLock.acquire(data_dir)
        self.addCleanup(lock.release)
        self.assertEqual(DataDirLock.holder(data_dir), os.getpid())
        e = self.assertRaises(DataDirBusyError, DataDirLock.acquire, data_dir)
        self.assertEqual((e.directory, e.pid), (data_dir, os.getpid()))
        self.assertEqual(str(e), f"data directory {data_dir} is in use by process {os.getpid()}")

    def test_release_frees_the_directory(self) -> None:
        data_dir = self.mktemp()
        lock = DataDirLock.acquire(data_dir)
        lock.release()
        lock.release()  # idempotent
        self.assertFalse(lock.held)
        self.assertIsNone(DataDirLock.holder(data_dir))
        DataDirLock.acquire(data_dir).release()

    def test_node_refuses_a_busy_directory(self) -> None:
        data_dir = self.mktemp()
        lock = DataDirLock.acquire(data_dir)
        self.addCleanup(lock.release)
        self.assertRaises(DataDirBusyError, P2PNode, data_dir, memory=True, port=0)

    def test_bad_node_id_releases_the_lock(self) -> None:
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        with open(os.path.join(data_dir, "node_id"), "w") as f:
            f.write("zz\n")
        self.assertRaises(ValueError, P2PNode, data_dir, memory=True, port=0)
        DataDirLock.acquire(data_dir).release()


class PortTests(unittest.SynchronousTestCase):
    def taken(self, kind: int) -> int:
        s = socket.socket(socket.AF_INET, kind)
        self.addCleanup(s.close)
        s.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            s.listen()
        port: int = s.getsockname()[1]
        return port

    def test_check_port_free(self) -> None:
        udp = self.taken(socket.SOCK_DGRAM)
        e = self.assertRaises(PortInUseError, check_port_free, "UDP", "127.0.0.1", udp)
        self.assertEqual(e.port, udp)
        self.assertIn(f"UDP port {udp} on 127.0.0.1 is in use", str(e))
        check_port_free("UDP", "127.0.0.1", 0)
        tcp = self.taken(socket.SOCK_STREAM)
        self.assertRaises(PortInUseError, check_port_free, "TCP", "127.0.0.1", tcp)

    def test_start_fails_at_once_on_a_taken_dht_port(self) -> None:
        udp = self.taken(socket.SOCK_DGRAM)
        node = P2PNode(self.mktemp(), port=udp, mesh_port=0, interface="127.0.0.1",
                       memory=True)
        self.addCleanup(node.lock.release)
        e = self.assertRaises(PortInUseError, node.startService)
        self.assertIn(f"port {udp}", str(e))
        self.assertFalse(node.running)
        self.assertFalse(node.peers.running)  # nothing was started

    def test_start_fails_at_once_on_a_taken_mesh_port(self) -> None:
        tcp = self.taken(socket.SOCK_STREAM)
        node = P2PNode(self.mktemp(), port=0, mesh_port=tcp, interface="127.0.0.1",
                       memory=True)
        self.addCleanup(node.lock.release)
        e = self.assertRaises(PortInUseError, node.startService)
        self.assertIn(f"TCP port {tcp}", str(e))

    def test_mesh_port_follows(self) -> None:
        for port, mesh_port, want in ((4455, None, 4456), (0, None, 0), (4455, 9, 9)):
            node = P2PNode(self.mktemp(), port=port, mesh_port=mesh_port, memory=True)
            node.lock.release()
            self.assertEqual(node.mesh_port, want)


class AdvertiseTests(unittest.SynchronousTestCase):
    def test_advertised_host(self) -> None:
        from p2pnet.node import advertised_host

        self.assertEqual(advertised_host("127.0.0.1"), "127.0.0.1")
        self.assertEqual(advertised_host("10.1.2.3"), "10.1.2.3")
        wild = advertised_host("0.0.0.0")
        self.assertNotEqual(wild, "0.0.0.0")
        socket.inet_aton(wild)  # an IPv4 address of this machine (or loopback)

    def test_node_passes_it_to_the_mesh(self) -> None:
        node = P2PNode(self.mktemp(), port=0, memory=True, advertise_host="192.0.2.7")
        node.lock.release()
        self.assertEqual(node.advertise_host, "192.0.2.7")
        self.assertEqual(node.mesh.advertise_host, "192.0.2.7")


class LifecycleTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_persistent_node(self) -> Any:
        data_dir = os.path.abspath(self.mktemp())
        node = yield start_node(self, data_dir=data_dir, memory=False)
        self.assertIsInstance(node.dht.network.kvp_table, LevelDBKVPTable)
        self.assertEqual(node.dht.network.key, load_node_id(data_dir))
        self.assertTrue(all(s.running for s in node))
        yield node.dht.network.put("kept", b"across restarts")
        node.sync[b"colour"] = b"blue"
        yield node.stopService()
        self.assertFalse(node.lock.held)
        self.assertTrue(node.db.closed)
        self.assertEqual(sorted(os.listdir(data_dir)),
                         ["contacts.sqlite", "leveldb", "node_id", "p2pnode.lock",
                          "peers.sqlite"])

        again = yield start_node(self, data_dir=data_dir, memory=False)
        self.assertEqual(again.node_id, node.node_id)
        self.assertEqual((yield again.dht.network.get("kept")), b"across restarts")
        self.assertEqual(again.sync[b"colour"], b"blue")

    @defer.inlineCallbacks
    def test_stop_while_starting(self) -> Any:
        node = P2PNode(self.mktemp(), port=0, mesh_port=0, interface="127.0.0.1",
                       memory=False)
        node.startService()
        yield node.stopService()
        self.assertFalse(node.lock.held)
        self.assertFalse(node.dht.running)
        self.assertTrue(node.db.closed)

    @defer.inlineCallbacks
    def test_store_failure_fails_ready_and_stop_is_clean(self) -> Any:
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        with open(os.path.join(data_dir, "leveldb"), "w") as f:
            f.write("a file where the database should be")
        node = P2PNode(data_dir, port=0, mesh_port=0, interface="127.0.0.1")
        node.startService()
        yield self.assertFailure(node.when_ready(), StoreError)
        self.flushLoggedErrors(StoreError)
        self.assertFalse(node.dht.running)
        yield node.stopService()
        self.assertFalse(node.lock.held)

    @defer.inlineCallbacks
    def test_old_value_table_moved_into_the_shared_database(self) -> Any:
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        old = os.path.join(data_dir, "values")
        table = LevelDBKVPTable.open_blocking(old)
        table.close()
        node = yield start_node(self, data_dir=data_dir, memory=False)
        self.assertFalse(os.path.exists(old))
        self.assertEqual(node.db.db_path, os.path.join(data_dir, "leveldb"))

    @defer.inlineCallbacks
    def test_restart_rejoins_without_bootstrap(self) -> Any:
        a = yield start_node(self)
        b_dir = os.path.abspath(self.mktemp())
        b = yield start_node(self, data_dir=b_dir, memory=False,
                             bootstrap=[a.dht_address])
        yield b.dht.when_joined()
        self.assertEqual(b.dht.network.routing_table.num_contacts, 1)
        yield b.stopService()

        b2 = yield start_node(self, data_dir=b_dir, memory=False)  # no bootstrap
        self.assertIn(a.dht_address, b2.dht.joiner.bootstrap)
        joined = yield b2.dht.when_joined()
        self.assertTrue(joined)
        self.assertEqual([n.key for n in b2.dht.network.routing_table.nodes()],
                         [a.node_id])

    @defer.inlineCallbacks
    def test_mesh_follows_bootstrap(self) -> Any:
        a = yield start_node(self)
        # b's mesh finds a's at a's DHT port + 1 only when a uses that port: give a's
        # mesh address explicitly by a bootstrap host whose DHT port is mesh port - 1.
        b = yield start_node(self, bootstrap=[("127.0.0.1", a.mesh_address[1] - 1)])
        d: defer.Deferred[None] = defer.Deferred()
        b.mesh.on("connect", lambda mesh, peer: d.called or d.callback(None))
        if not b.mesh.peers():
            yield d.addTimeout(10, reactor)
        self.assertEqual(len(b.mesh.peers()), 1)


class ContactsTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_save_contacts(self) -> Any:
        node = yield start_node(self)
        net = node.dht.network
        keys = [ids.random_key() for _ in range(3)]
        for i, key in enumerate(keys):
            net.routing_table.node_update(net.node_for(key, ("127.0.0.1", 5000 + i)))
        self.assertEqual(node.save_contacts(), 3)
        self.assertEqual(sorted(node.contacts.peers), sorted(keys))
        peer = node.contacts.peers[keys[1]]
        self.assertEqual((peer.host, peer.port), ("127.0.0.1", 5001))
        self.assertEqual(node.save_contacts(), 3)  # again: nothing new
        self.assertEqual(len(node.contacts.peers), 3)
        # a contact that moved is updated in place
        net.routing_table.remove(net.node_for(keys[1], ("127.0.0.1", 5001)))
        net.routing_table.node_update(net.node_for(keys[1], ("127.0.0.1", 6001)))
        node.save_contacts()
        self.assertEqual(node.contacts.peers[keys[1]].port, 6001)


class MemoryDHTTests(unittest.SynchronousTestCase):
    def test_nodes_join_and_share_values(self) -> None:
        from p2pnet.testing import memory_dht

        clock, nets = memory_dht(4)
        self.assertEqual(len({n.address for n in nets}), 4)
        for net in nets:
            self.assertGreater(net.routing_table.num_contacts, 0)
        d = nets[3].put("k", b"v")
        for _ in range(100):
            clock.advance(0.1)
        self.assertGreater(self.successResultOf(d), 0)
        got = nets[1].get("k")
        for _ in range(100):
            clock.advance(0.1)
        self.assertEqual(self.successResultOf(got), b"v")
