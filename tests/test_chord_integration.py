"""The chord socket on 21 real loopback nodes: UDP DHT services and ZeroMQ mesh sockets
on the global reactor, the blocking dict API used from threads."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import TestCase

from p2pnet.chord.errors import ReactorThreadError
from p2pnet.chord.socket import ChordSocket
from p2pnet.dht.service import DHTService
from p2pnet.mesh.limits import MeshLimits
from p2pnet.mesh.socket import MeshSocket

clock: Any = reactor
N = 21


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = clock.seconds() + timeout
    while not cond():
        if clock.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await task.deferLater(clock, 0.01, lambda: None)


class LoopbackChordTests(TestCase):
    timeout = 60

    async def build(self) -> None:
        self.dhts: list[DHTService] = []
        self.meshes: list[MeshSocket] = []
        self.socks: list[ChordSocket] = []
        self.events: list[Counter[tuple[str, bytes]]] = []
        for _ in range(N):
            boot = [self.dhts[0].network.address] if self.dhts else []
            dht = DHTService(0, "127.0.0.1", bootstrap=boot, timeout=0.5, retries=0)
            dht.startService()
            self.addCleanup(self.stop, dht)
            mesh = MeshSocket("127.0.0.1", 0, limits=MeshLimits(handshake_timeout=3.0))
            mesh.startService()
            self.addCleanup(self.stop, mesh)
            await mesh.when_ready()
            self.assertTrue(await dht.when_joined())
            sock = ChordSocket(mesh, dht.network)
            sock.startService()
            self.addCleanup(self.stop, sock)
            counts: Counter[tuple[str, bytes]] = Counter()
            sock.on("add", lambda s, k, c=counts: c.update([("add", k)]))
            sock.on("delete", lambda s, k, c=counts: c.update([("delete", k)]))
            self.dhts.append(dht)
            self.meshes.append(mesh)
            self.socks.append(sock)
            self.events.append(counts)
        for i in range(1, N):  # a tree: every notice is relayed on the way
            parent = self.meshes[(i - 1) // 2]
            assert parent.address is not None
            await self.meshes[i].connect(*parent.address)

    @staticmethod
    def stop(svc: Any) -> Any:
        return svc.stopService() if svc.running else None

    async def everywhere(self, cond: Callable[[ChordSocket, Counter[tuple[str, bytes]]], bool],
                         what: str) -> None:
        await wait_until(lambda: all(cond(s, e) for s, e in zip(self.socks, self.events,
                                                                strict=True)), what=what)

    async def test_dict_events_blocking_and_a_third_killed(self) -> None:
        await self.build()
        a, b = self.socks[3], self.socks[17]

        # the Deferred API across the real network
        await a.d_set(b"k", b"v")
        self.assertEqual(await b.d_get("k"), b"v")
        self.assertGreaterEqual(b.last_hops, 1)
        await self.everywhere(lambda s, e: list(s.keys()) == [b"k"], "the key everywhere")

        # the blocking dict API from a thread; on the reactor thread it refuses
        def in_thread() -> tuple[bytes, bool, list[bytes], Any]:
            b[b"t"] = "thread"
            got = a["t"]
            del a[b"t"]
            try:
                b[b"t"]
                missing: Any = None
            except KeyError as e:
                missing = e
            return got, b"t" in a, sorted(a.keys()), missing

        got, present, keys, missing = await threads.deferToThread(in_thread)
        self.assertEqual(got, b"thread")
        self.assertFalse(present)
        self.assertEqual(keys, [b"k"])
        self.assertIsInstance(missing, KeyError)
        with self.assertRaises(ReactorThreadError):
            a[b"k"]

        # events once on every node, the writers' included
        await self.everywhere(
            lambda s, e: e == Counter({("add", b"k"): 1, ("add", b"t"): 1,
                                       ("delete", b"t"): 1}), "events everywhere")

        # more values, then a third of the nodes drop without a word
        values = {b"v%d" % i: b"value %d" % i for i in range(12)}
        await defer.gatherResults([self.socks[i].d_set(k, v)
                                   for i, (k, v) in enumerate(values.items())])
        await self.everywhere(lambda s, e: len(s) == 13, "13 keys everywhere")
        # a node that connects late receives the whole key set from its peer
        late_mesh = MeshSocket("127.0.0.1", 0)
        late_mesh.startService()
        self.addCleanup(self.stop, late_mesh)
        await late_mesh.when_ready()
        late = ChordSocket(late_mesh, self.dhts[1].network)  # the set only needs the mesh
        added: list[bytes] = []
        late.on("add", lambda s, k: added.append(k))
        assert self.meshes[5].address is not None
        await late_mesh.connect(*self.meshes[5].address)
        await wait_until(lambda: len(late) == 13, what="the whole set at the late node")
        self.assertEqual(sorted(added), sorted([b"k", *values]))
        self.assertFalse(late.keyset.get(b"t").present)  # the tombstone came too

        dead = set(range(0, N, 3))
        for i in dead:
            self.dhts[i]._listening.stopListening()  # the UDP port closes; nobody is told
        alive = [s for i, s in enumerate(self.socks) if i not in dead]
        got = await defer.gatherResults([alive[j % len(alive)].d_get(k)
                                         for j, k in enumerate(values)])
        self.assertEqual(dict(zip(values, got, strict=True)), values)
        self.assertEqual(await alive[-1].d_get(b"k"), b"v")
        self.assertEqual(sorted(alive[0].keys()), sorted([b"k", *values]))
