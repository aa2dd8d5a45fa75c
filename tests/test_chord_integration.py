"""The chord socket on 21 real loopback nodes: UDP DHT services and ZeroMQ mesh sockets
on the global reactor, the blocking dict API used from threads, and a hypothesis state
machine that drives that API against a plain ``dict``.

Robust on a loaded 2-core machine: every wait is a bounded poll with a generous limit
(:data:`WAIT`), the DHT's requests get 2 s and a retry, the sockets 60 s an operation,
and nothing asserts a time.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import TestCase

from p2pnet.chord.errors import ReactorThreadError
from p2pnet.chord.socket import ChordSocket
from p2pnet.dht.service import DHTService
from p2pnet.mesh.limits import MeshLimits
from p2pnet.mesh.socket import MeshSocket

clock: Any = reactor
N = 21
#: The bound of every wait for news to spread (generous: the machine may be loaded).
WAIT = 60.0


async def wait_until(cond: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    deadline = clock.seconds() + timeout
    while not cond():
        if clock.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await task.deferLater(clock, 0.01, lambda: None)


m_keys = st.sampled_from(["a", b"a", b"b", "\u00fc", b"\x00", b""])
m_values = st.binary(max_size=6)
m_nodes = st.integers(0, N - 1)


def norm(key: Any) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else key


def wait_in_thread(cond: Callable[[], bool], what: str) -> None:
    """From a thread other than the reactor's: poll ``cond`` on the reactor thread until
    it holds, at most :data:`WAIT` seconds."""
    deadline = time.monotonic() + WAIT
    while not threads.blockingCallFromThread(clock, cond):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class LoopbackVersusDict(RuleBasedStateMachine):
    """The blocking dict API of the loopback sockets (from a thread) against a ``dict``.

    Each example starts from an empty dict (it clears the socket first, whatever an
    earlier example left).  Each rule runs on a random node; after each, every node's key
    set must come to hold the model's keys and every node's add/delete counts (since the
    example began) the model's changes: once each, the writer's included."""

    socks: list[ChordSocket] = []
    events: list[Counter[tuple[str, bytes]]] = []

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[bytes, bytes] = {}
        self.want: Counter[tuple[str, bytes]] = Counter()
        self.socks[0].clear()
        wait_in_thread(lambda: all(len(s) == 0 for s in self.socks), "an empty dict")
        self.base = threads.blockingCallFromThread(
            clock, lambda: [Counter(e) for e in self.events])

    def _put(self, key: Any, value: bytes) -> None:
        if norm(key) not in self.model:
            self.want[("add", norm(key))] += 1
        self.model[norm(key)] = value

    def _drop(self, key: Any) -> bytes:
        self.want[("delete", norm(key))] += 1
        return self.model.pop(norm(key))

    def teardown(self) -> None:
        self.socks[0].clear()

    @rule(n=m_nodes, key=m_keys, value=m_values)
    def set(self, n: int, key: Any, value: bytes) -> None:
        self.socks[n][key] = value
        self._put(key, value)

    @rule(n=m_nodes, key=m_keys)
    def get(self, n: int, key: Any) -> None:
        k = norm(key)
        if k in self.model:
            assert self.socks[n][key] == self.model[k]
        else:
            try:
                self.socks[n][key]
            except KeyError:
                pass
            else:
                raise AssertionError(f"{key!r} is not in the model")
        assert self.socks[n].get(key) == self.model.get(k)

    @rule(n=m_nodes, key=m_keys)
    def delete(self, n: int, key: Any) -> None:
        try:
            del self.socks[n][key]
        except KeyError:
            assert norm(key) not in self.model
        else:
            self._drop(key)

    @rule(n=m_nodes, key=m_keys, default=m_values)
    def pop(self, n: int, key: Any, default: bytes) -> None:
        want = self._drop(key) if norm(key) in self.model else default
        assert self.socks[n].pop(key, default) == want

    @rule(n=m_nodes)
    def popitem(self, n: int) -> None:
        try:
            k, v = self.socks[n].popitem()
        except KeyError:
            assert not self.model
        else:
            assert self._drop(k) == v

    @rule(n=m_nodes, key=m_keys, value=m_values)
    def setdefault(self, n: int, key: Any, value: bytes) -> None:
        want = self.model.get(norm(key), value)
        assert self.socks[n].setdefault(key, value) == want
        self._put(key, want)

    @rule(n=m_nodes, pairs=st.lists(st.tuples(m_keys, m_values), max_size=3))
    def update(self, n: int, pairs: list[tuple[Any, bytes]]) -> None:
        self.socks[n].update(pairs)  # "a" and b"a" are one key: the last value wins
        for k, v in pairs:
            self._put(k, v)

    @rule(n=m_nodes)
    def read_all(self, n: int) -> None:
        sock = self.socks[n]
        keys, values, items = sock.keys(), sock.values(), sock.items()
        for view in (keys, values, items):  # Python 3 style: iterators, not lists
            assert iter(view) is view and not isinstance(view, list), view
        assert sorted(keys) == sorted(self.model)
        assert sorted(values) == sorted(self.model.values())
        assert dict(items) == self.model == sock.copy()
        assert len(sock) == len(self.model) and sorted(sock) == sorted(self.model)

    @invariant()
    def every_node_has_the_keys_and_events(self) -> None:
        keys, want = sorted(self.model), +self.want
        wait_in_thread(lambda: all(sorted(s.keyset.keys()) == keys for s in self.socks)
                       and all(e - b == want for e, b in zip(self.events, self.base,
                                                              strict=True)),
                       f"the keys {keys} and the events {dict(want)} everywhere")
        for k in (b"a", b"b", "\u00fc"):
            assert (k in self.socks[0]) == (norm(k) in self.model)


class LoopbackChordTests(TestCase):
    timeout = 300

    async def build(self) -> None:
        self.dhts: list[DHTService] = []
        self.meshes: list[MeshSocket] = []
        self.socks: list[ChordSocket] = []
        self.events: list[Counter[tuple[str, bytes]]] = []
        for _ in range(N):
            boot = [self.dhts[0].network.address] if self.dhts else []
            dht = DHTService(0, "127.0.0.1", bootstrap=boot, timeout=2.0, retries=1)
            dht.startService()
            self.addCleanup(self.stop, dht)
            mesh = MeshSocket("127.0.0.1", 0, limits=MeshLimits(handshake_timeout=WAIT))
            mesh.startService()
            self.addCleanup(self.stop, mesh)
            await mesh.when_ready()
            self.assertTrue(await dht.when_joined())
            sock = ChordSocket(mesh, dht.network, timeout=60.0)
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
        def set_in_thread() -> None:
            b[b"t"] = "thread"

        await threads.deferToThread(set_in_thread)
        # every node has heard of t before a deletes it: a node that heard of the delete
        # first would see t neither come nor go (no add, no delete event there)
        await self.everywhere(lambda s, e: sorted(s.keys()) == [b"k", b"t"],
                              "t everywhere")

        def in_thread() -> tuple[bytes, bool, list[bytes], Any]:
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
        for call in (lambda: a.get(b"k"), lambda: a.__setitem__(b"k", b"w"),
                     lambda: a.__delitem__(b"k"), lambda: a.pop(b"k"), a.popitem,
                     lambda: a.setdefault(b"k", b"w"), lambda: a.update({b"k": b"w"}),
                     a.values, a.items, a.copy, a.clear):
            with self.assertRaises(ReactorThreadError) as cm:
                call()
            self.assertIn("d_", str(cm.exception))
        self.assertEqual(await b.d_get(b"k"), b"v")  # none of them did anything

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
        late_mesh = MeshSocket("127.0.0.1", 0, limits=MeshLimits(handshake_timeout=WAIT))
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

    async def test_blocking_dict_api_against_a_dict(self) -> None:
        """The hypothesis state machine on the 21 loopback nodes, through the blocking API
        from a thread (the dict-style calls are for code outside the reactor thread)."""
        await self.build()
        machine = type("Machine", (LoopbackVersusDict,), {
            "socks": self.socks, "events": self.events})

        def run() -> None:  # no shrinking: each step is real network round trips
            run_state_machine_as_test(machine, settings=settings(
                max_examples=4, stateful_step_count=12,
                phases=(Phase.explicit, Phase.reuse, Phase.generate)))

        await threads.deferToThread(run)
        await self.everywhere(lambda s, e: len(s) == 0, "the last clear everywhere")
        self.assertGreater(sum(self.events[0].values()), 0)  # the examples changed things
        for i, counts in enumerate(self.events):  # each add undone by one delete
            self.assertEqual(counts, self.events[0], f"node {i}")
            for (event, key), n in counts.items():
                self.assertEqual(counts[("delete" if event == "add" else "add", key)], n)
