"""Issue 11, storage attacks (#2 #3 #8 #9 #10 #11 #15 and the "Also" items): each test
first mounts the attack (where a limit can be opened up, with it open, to show the harm)
and then shows the defence under the default limits or tight ones.

Everything runs on a :class:`~twisted.internet.task.Clock` and the in-memory network.
"""

from __future__ import annotations

import math
import random
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from p2pnet import ids
from p2pnet.dht import codec
from p2pnet.dht.errors import DHTError, RemoteError, VerificationError
from p2pnet.dht.kvptable import VALUE_CHUNK, LevelDBKVPTable
from p2pnet.dht.limits import Limits
from p2pnet.dht.network import DHTNetwork
from p2pnet.dht.protocol import RequestRefused
from p2pnet.dht.publishing import Maintenance, MaintenanceIntervals
from p2pnet.dht.table import KVPRecord, MemoryKVPTable
from p2pnet.models import MAX_VALUE_SIZE
from p2pnet.store.leveldb import DBManager
from p2pnet.store.pool import StoreExecutor
from tests.dhthelpers import Sim, key_near, result_of

#: Limits with every storage defence opened up: the node as it was before issue 11.
OPEN = Limits(store_record_overhead=0, store_max_records=10**9,
              store_source_max_records=10**9, store_source_max_bytes=10**12,
              store_prefix_max_records=10**9, store_prefix_max_bytes=10**12,
              store_max_future_seconds=math.inf, pull_max=16, pull_max_per_source=16,
              pull_max_seconds=math.inf, read_max_pending=10**9, pull_min_rate=0,
              pull_max_per_prefix=10**9, read_max_pending_per_source=10**9)

#: Limits of an attacking node that takes no stores: it then holds nothing that it could
#: hand over to a newcomer, so what a victim holds is what the test sent it.
NO_STORE = Limits(store_max_records=0)

NOW = 100_000.0  # the clock starts here, so honest timestamps lie in the past


def failure_of(d: defer.Deferred[Any]) -> BaseException:
    """The exception a fired Deferred failed with (the failure is handled)."""
    box: list[Any] = []
    d.addBoth(box.append)
    if not box or not isinstance(box[0], Failure):
        raise AssertionError(f"{d!r} did not fail: {box}")
    return box[0].value  # type: ignore[no-any-return]


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


class StorageSim(Sim):
    def __init__(self) -> None:
        super().__init__()
        self.clock.advance(NOW)


def serve_slowly(node: DHTNetwork, delay: float, cut: int | None = None) -> list[Any]:
    """Make ``node`` answer getval after ``delay`` seconds, with at most ``cut`` bytes
    (``cut`` None: the honest answer).  Returns the list of requests it got."""
    seen: list[Any] = []
    real = node.get_value_rpc.answer

    def answer(body: codec.GetValueRequest, sender: bytes, address: Any) -> Any:
        seen.append(body)

        def later() -> Any:
            resp = real(body, sender, address)
            if cut is not None:
                resp = attrs.evolve(resp, data=resp.data[:cut])
            return resp

        return task.deferLater(node.clock, delay, later)

    node.get_value_rpc.answer = answer  # type: ignore[method-assign]
    return seen


def stall(node: DHTNetwork) -> list[Any]:
    """Make ``node`` never answer getval."""
    seen: list[Any] = []

    def answer(body: Any, sender: bytes, address: Any) -> Any:
        seen.append(body)
        return defer.Deferred()

    node.get_value_rpc.answer = answer  # type: ignore[method-assign]
    return seen


class Mixin:
    def setUp(self) -> None:
        self.sim = StorageSim()

    def offer(self, attacker: DHTNetwork, victim: DHTNetwork, value: bytes,
              key: bytes | None = None, timestamp: float = NOW - 10) -> defer.Deferred[Any]:
        key = key if key is not None else ids.key_for(value + b"key")
        return attacker.store.call(victim.node, key, ids.key_for(value), value, timestamp)

    def raw_store(self, attacker: DHTNetwork, victim: DHTNetwork, req: codec.StoreRequest
                  ) -> codec.StoreStatus:
        d = attacker.protocol.request(victim.address, req)
        msg = result_of(self.sim.run(d))
        return msg.body.status  # type: ignore[no-any-return]


class PullBombTests(Mixin, SynchronousTestCase):
    """#2: store offers of large values, answered 1 byte at a time, or never."""

    def test_dribbled_chunks_end_the_pull_at_once(self) -> None:
        attacker, victim, honest = self.sim.add_many(3, limits=OPEN)
        seen = serve_slowly(attacker, 1.5, cut=1)
        offers = [self.offer(attacker, victim, blob(200 * 1024, i)) for i in range(16)]
        self.sim.settle(0.1)
        # The attack: all 16 pull slots are the attacker's, so an honest store is refused.
        self.assertEqual(victim.store.pulls, 16)
        refused = self.offer(honest, victim, blob(5000, 99))
        self.sim.run(refused)
        self.assertEqual(result_of(refused), codec.StoreStatus.REFUSED)
        self.assertEqual(victim.refused["pull_busy"], 1)
        # The defence: the first short chunk ends each pull (today's code would ask for
        # the remaining 204,799 bytes one byte at a time, for days).
        self.sim.settle(5)
        self.assertEqual(victim.store.pulls, 0)
        self.assertEqual(len(seen), 16)  # one getval per offer, no more
        self.assertEqual(victim.refused["pull_failed"], 16)
        self.assertEqual(len(victim.kvp_table), 0)
        for d in offers:
            self.assertIsInstance(failure_of(self.sim.run(d)), RemoteError)  # not stored
        self.assertEqual(result_of(self.sim.run(self.offer(honest, victim, blob(5000, 99)))),
                         codec.StoreStatus.STORED)

    def test_one_source_holds_few_slots(self) -> None:
        attacker, victim, honest = self.sim.add_many(3)
        stall(attacker)
        statuses = [self.offer(attacker, victim, blob(5000, i)) for i in range(16)]
        self.sim.settle(0.1)
        self.assertEqual(victim.store.pulls, Limits().pull_max_per_source)
        self.assertEqual(victim.refused["pull_source_busy"], 16 - Limits().pull_max_per_source)
        self.assertEqual([result_of(d) for d in statuses[2:]],
                         [codec.StoreStatus.REFUSED] * 14)
        # Honest sources still get slots while the attacker's pulls stall.
        self.assertEqual(result_of(self.sim.run(self.offer(honest, victim, blob(5000, 99)))),
                         codec.StoreStatus.STORED)

    def test_stalled_pull_frees_its_slot(self) -> None:
        attacker, victim = self.sim.add_many(2)
        seen = stall(attacker)
        d = self.offer(attacker, victim, blob(5000))
        self.sim.settle(0.1)
        self.assertEqual(victim.store.pulls, 1)
        self.sim.settle(10)  # the getval times out after its retries
        self.assertEqual(victim.store.pulls, 0)
        self.assertEqual(len(seen), 2)  # the request and its retry
        self.assertEqual(victim.refused["pull_failed"], 1)
        self.assertIsInstance(failure_of(self.sim.run(d)), RemoteError)

    def test_slow_but_valid_pull_meets_its_deadline(self) -> None:
        attacker, victim = self.sim.add_many(2, limits=OPEN)
        serve_slowly(attacker, 1.9)  # just inside the request timeout, every chunk
        value = blob(MAX_VALUE_SIZE)
        # The attack, with no deadline: the slot is held for the whole slow transfer.
        self.offer(attacker, victim, value)
        self.sim.settle(15)
        self.assertEqual(victim.store.pulls, 1)
        self.sim.settle(60)
        self.assertEqual(victim.store.pulls, 0)
        self.assertEqual(len(victim.kvp_table), 1)
        # The defence: the pull's deadline drops it and frees the slot.
        other = self.sim.add(limits=attrs.evolve(OPEN, pull_max_seconds=10.0))
        late = self.offer(attacker, other, value)
        self.sim.settle(10.5)
        self.assertIn("deadline", str(failure_of(self.sim.run(late))))
        self.assertEqual(other.store.pulls, 0)
        self.assertEqual(other.refused["pull_timeout"], 1)
        self.assertEqual(len(other.kvp_table), 0)

    def test_value_larger_than_announced_is_not_pulled(self) -> None:
        attacker, victim = self.sim.add_many(2)
        value = blob(5000)
        index = ids.key_for(value)
        key = ids.key_for(b"k")
        attacker.offer(key, index, value + b"more")  # serves more than it announced
        d = self.sim.run(attacker.protocol.request(
            victim.address, codec.StoreRequest(key, index, 5000, NOW)))
        self.assertIn("5000 were announced", str(failure_of(d)))
        self.assertEqual(victim.refused["pull_failed"], 1)
        self.assertEqual((len(victim.kvp_table), victim.store.pulls), (0, 0))


class SlowPullTests(Mixin, SynchronousTestCase):
    """#2 again: whole chunks, each answered just inside the request timeout, from several
    addresses: every pull ends inside ``pull_max_seconds``, yet all the slots are held."""

    def slow_offers(self, attackers: list[DHTNetwork], victim: DHTNetwork, round_: int
                    ) -> list[defer.Deferred[Any]]:
        """Two offers of 1 MiB from each attacker (new values each round)."""
        return [self.offer(a, victim, blob(MAX_VALUE_SIZE, 1000 * round_ + 10 * i + j))
                for i, a in enumerate(attackers) for j in range(2)]

    def test_slow_pulls_from_many_addresses_do_not_hold_the_slots(self) -> None:
        attackers = self.sim.add_many(8, limits=NO_STORE)
        for a in attackers:
            serve_slowly(a, 1.8)
        open_victim = self.sim.add(limits=attrs.evolve(Limits(), pull_min_rate=0))
        victim = self.sim.add()
        honest = self.sim.add()
        offers = [d for v in (open_victim, victim) for d in self.slow_offers(attackers, v, 0)]
        self.sim.settle(1)
        for v in (open_victim, victim):
            self.assertEqual(v.store.pulls, 16)
            self.assertEqual(result_of(self.sim.run(self.offer(honest, v, blob(5000, 99)))),
                             codec.StoreStatus.REFUSED)
            self.assertEqual(v.refused["pull_busy"], 1)
        deadline, by_rate = victim.store.pull_deadline(MAX_VALUE_SIZE)
        self.assertTrue(by_rate)
        self.sim.settle(deadline)
        # The attack: without a minimum rate every pull is still under way (each takes
        # 9 round trips of 1.8 s, inside pull_max_seconds), and once they land the
        # attacker offers again: honest stores are refused all along.
        self.assertEqual(open_victim.store.pulls, 16)
        self.assertEqual(result_of(self.sim.run(self.offer(honest, open_victim,
                                                           blob(5000, 98)))),
                         codec.StoreStatus.REFUSED)
        # The defence: each pull is dropped at its deadline, counted, and its source is
        # refused new pulls for a while, so re-offering does not take the slots back.
        self.assertEqual(victim.store.pulls, 0)
        self.assertEqual(victim.refused["pull_too_slow"], 16)
        self.assertEqual(victim.store.slow_sources, 8)
        again = self.slow_offers(attackers, victim, 1)
        self.sim.settle(0.1)
        self.assertEqual([result_of(d) for d in again], [codec.StoreStatus.REFUSED] * 16)
        self.assertEqual(victim.refused["pull_source_slow"], 16)
        self.assertEqual(victim.store.pulls, 0)
        for i in range(15):  # honest stores, large (pulled) and small, are all taken
            size = 5000 if i % 2 else 200 * 1024
            d = self.sim.run(self.offer(honest, victim, blob(size, 200 + i)))
            self.assertEqual(result_of(d), codec.StoreStatus.STORED)
        self.assertEqual(len(victim.kvp_table), 15)
        self.sim.settle(30)  # (let the open victim's slow pulls finish)
        for d in offers:
            d.addErrback(lambda f: None)

    def test_honest_pull_of_the_largest_value_is_in_time(self) -> None:
        honest, victim = self.sim.add_many(2)
        serve_slowly(honest, 0.2)  # a slow link: 9 round trips of 0.2 s
        d = self.sim.run(self.offer(honest, victim, blob(MAX_VALUE_SIZE)))
        self.assertEqual(result_of(d), codec.StoreStatus.STORED)
        self.assertEqual(victim.refused.as_dict(), {})

    def test_slow_source_table_is_bounded_and_ages(self) -> None:
        limits = attrs.evolve(Limits(), pull_slow_max_sources=2, pull_grace_seconds=1.0,
                              pull_slow_penalty_seconds=50.0)
        attackers = self.sim.add_many(3, limits=NO_STORE)
        victim = self.sim.add(limits=limits)
        for a in attackers:
            serve_slowly(a, 1.8)
        offers = [self.offer(a, victim, blob(5000, i)) for i, a in enumerate(attackers)]
        self.sim.settle(2)  # deadline: 1 s + 5000 B at 128 KiB/s
        for d in offers:
            self.assertIn("deadline", str(failure_of(d)))
        self.assertEqual(victim.refused["pull_too_slow"], 3)
        self.assertEqual(victim.store.slow_sources, 2)  # the oldest was forgotten
        self.sim.settle(60)  # the penalty is served
        for a in attackers:
            del a.get_value_rpc.answer  # answers at once now
        d = self.sim.run(self.offer(attackers[1], victim, blob(5000, 7)))
        self.assertEqual(result_of(d), codec.StoreStatus.STORED)

    def test_one_prefix_holds_few_slots(self) -> None:
        attackers = [self.sim.add(host=f"10.200.1.{i}") for i in range(1, 4)]
        victim, honest = self.sim.add(), self.sim.add()
        for a in attackers:
            stall(a)
        offers = [self.offer(a, victim, blob(5000, 10 * i + j))
                  for i, a in enumerate(attackers) for j in range(2)]
        self.sim.settle(0.1)
        limit = Limits().pull_max_per_prefix
        self.assertEqual(victim.store.pulls, limit)
        self.assertEqual(victim.refused["pull_prefix_busy"], 6 - limit)
        self.assertEqual(result_of(self.sim.run(self.offer(honest, victim, blob(5000, 99)))),
                         codec.StoreStatus.STORED)
        self.sim.settle(10)
        for d in offers:
            d.addErrback(lambda f: None)


class LatePullTests(Mixin, SynchronousTestCase):
    """#3: a pull that lands late is checked again against what the table holds then."""

    def setUp(self) -> None:
        super().setUp()
        self.slow, self.victim, self.fast = self.sim.add_many(3)
        serve_slowly(self.slow, 1.0)
        self.value = blob(5000)
        self.index = ids.key_for(self.value)
        self.key = ids.key_for(b"late")

    def test_older_timestamp_does_not_overwrite_a_newer_one(self) -> None:
        old = self.offer(self.slow, self.victim, self.value, self.key, timestamp=NOW - 100)
        self.sim.settle(0.1)  # pull under way
        newer = self.offer(self.fast, self.victim, self.value, self.key, timestamp=NOW - 50)
        # (fast is honest: its pull is quick) -- it lands first
        self.assertEqual(result_of(self.sim.run(newer)), codec.StoreStatus.STORED)
        self.assertEqual(result_of(self.sim.run(old)), codec.StoreStatus.REFUSED)
        record = self.victim.kvp_table.get_record(self.key, self.index)
        self.assertEqual(record.timestamp, NOW - 50)
        self.assertEqual(self.victim.refused["store_not_newer"], 1)

    def test_quota_is_checked_when_the_pull_lands(self) -> None:
        overhead = self.victim.limits.store_record_overhead
        self.victim.kvp_table.max_bytes = 5000 + overhead  # room for one value
        other = blob(5000, 1)
        a = self.offer(self.slow, self.victim, self.value)
        b = self.offer(self.fast, self.victim, other)
        # Both offers were acceptable when made (the table was empty) ...
        self.assertEqual(result_of(self.sim.run(b)), codec.StoreStatus.STORED)
        # ... but only one fits once both have landed.
        self.assertEqual(result_of(self.sim.run(a)), codec.StoreStatus.REFUSED)
        self.assertLessEqual(self.victim.kvp_table.total_bytes + overhead,
                             self.victim.kvp_table.max_bytes)
        self.assertEqual(self.victim.refused["store_quota_bytes"], 1)

    def test_value_published_here_meanwhile_stays_original(self) -> None:
        d = self.offer(self.slow, self.victim, self.value, self.key, timestamp=NOW - 100)
        self.sim.settle(0.1)
        self.sim.run(self.victim.put(self.key, self.value, timestamp=NOW - 200))
        self.assertEqual(result_of(self.sim.run(d)), codec.StoreStatus.HELD)
        record = self.victim.kvp_table.get_record(self.key, self.index)
        self.assertTrue(record.is_original)
        self.assertIsNone(record.expires_at)
        self.assertIsNone(record.source)
        # A later offer of the same value is answered at once: no pull.
        again = self.offer(self.fast, self.victim, self.value, self.key, timestamp=NOW - 1)
        self.sim.settle(0.01)
        self.assertEqual(self.victim.store.pulls, 0)
        self.assertEqual(result_of(self.sim.run(again)), codec.StoreStatus.HELD)


class RecordFloodTests(Mixin, SynchronousTestCase):
    """#8: many empty records; quotas count records, with a minimum charge each."""

    def flood(self, attacker: DHTNetwork, victim: DHTNetwork, count: int) -> list[Any]:
        return [self.raw_store(attacker, victim, codec.StoreRequest(
            ids.key_for(b"%d" % i + attacker.key + victim.key), ids.key_for(b""), 0, NOW, b""))
            for i in range(count)]

    def test_empty_records_are_counted(self) -> None:
        # (150 stores per victim: under the per-source request rate's burst)
        # The attack, quotas open: every empty record is taken, the byte count stays 0.
        attacker, victim = self.sim.add(limits=NO_STORE), self.sim.add(limits=OPEN)
        statuses = self.flood(attacker, victim, 150)
        self.assertEqual(statuses.count(codec.StoreStatus.STORED), 150)
        self.assertEqual(victim.kvp_table.total_bytes, 0)
        # The defence: a record quota per source, and a charge per record against bytes.
        tight = Limits(store_source_max_records=100)
        victim2 = self.sim.add(limits=tight)
        statuses = self.flood(attacker, victim2, 150)
        self.assertEqual(statuses.count(codec.StoreStatus.STORED), 100)
        self.assertEqual(victim2.refused["store_source_quota_records"], 50)
        by_bytes = self.sim.add(limits=Limits(store_source_max_bytes=50 * 512))
        statuses = self.flood(attacker, by_bytes, 150)
        self.assertEqual(statuses.count(codec.StoreStatus.STORED), 50)
        self.assertEqual(by_bytes.refused["store_source_quota_bytes"], 100)

    def test_total_record_quota(self) -> None:
        victim = self.sim.add(limits=Limits(store_max_records=120))
        attackers = self.sim.add_many(3, limits=NO_STORE)
        stored = sum(self.flood(a, victim, 60).count(codec.StoreStatus.STORED)
                     for a in attackers)
        self.assertEqual((stored, len(victim.kvp_table)), (120, 120))
        self.assertEqual(victim.refused["store_quota_records"], 60)

    def test_prefix_quota_and_other_prefixes(self) -> None:
        victim = self.sim.add(limits=Limits(store_prefix_max_records=100))
        # Ten addresses of one /24 share its quota ...
        crowd = [self.sim.add(host=f"10.66.6.{i + 1}", limits=NO_STORE) for i in range(10)]
        stored = sum(self.flood(a, victim, 20).count(codec.StoreStatus.STORED) for a in crowd)
        self.assertEqual(stored, 100)
        self.assertEqual(victim.refused["store_prefix_quota_records"], 100)
        # ... and a node elsewhere is unaffected.
        honest = self.sim.add(host="10.77.7.7", limits=NO_STORE)
        self.assertEqual(self.flood(honest, victim, 5), [codec.StoreStatus.STORED] * 5)
        self.assertEqual(victim.kvp_table.by_prefix["10.66.6.0/24"].records, 100)

    def test_loopback_keys_on_address_and_port(self) -> None:
        """A local network shares 127.0.0.1: its per-address quotas key on the port too."""
        limits = Limits(store_source_max_records=10, store_prefix_max_records=10)
        victim = self.sim.add(host="127.0.0.1", port=5000, limits=limits)
        locals_ = [self.sim.add(host="127.0.0.1", port=5001 + i, limits=NO_STORE)
                   for i in range(3)]
        for a in locals_:
            self.assertEqual(self.flood(a, victim, 12).count(codec.StoreStatus.STORED), 10)
        shared = [self.sim.add(host="10.8.8.8", port=6000 + i, limits=NO_STORE)
                  for i in range(3)]
        counts = [self.flood(a, victim, 12).count(codec.StoreStatus.STORED) for a in shared]
        self.assertEqual(counts, [10, 0, 0])  # one IP elsewhere: one quota for all ports

    def test_quota_freed_when_records_go(self) -> None:
        attacker = self.sim.add(limits=NO_STORE)
        victim = self.sim.add(limits=Limits(store_source_max_records=5))
        self.assertEqual(self.flood(attacker, victim, 6).count(codec.StoreStatus.STORED), 5)
        for r in list(victim.kvp_table.records()):
            victim.kvp_table.delete(r.key, r.index)
        self.assertEqual(victim.kvp_table.by_source, {})
        self.assertEqual(victim.kvp_table.by_prefix, {})
        self.assertEqual(self.flood(attacker, victim, 1), [codec.StoreStatus.STORED])


class OneAddressFillsTests(Mixin, SynchronousTestCase):
    """#9: one address stores until the table is full, then honest stores are refused."""

    def fill(self, attacker: DHTNetwork, victim: DHTNetwork, count: int) -> int:
        stored = 0
        for i in range(count):
            value = blob(1000, i)
            req = codec.StoreRequest(ids.key_for(b"f%d" % i), ids.key_for(value), 1000, NOW,
                                     value)
            stored += self.raw_store(attacker, victim, req) == codec.StoreStatus.STORED
        return stored

    def test_per_source_byte_quota(self) -> None:
        table_bytes = 200 * 1000
        attacker, honest = self.sim.add_many(2, limits=NO_STORE)
        victim = self.sim.add(kvp_table=MemoryKVPTable(table_bytes), limits=OPEN)
        self.assertEqual(self.fill(attacker, victim, 300), 200)  # the attack: full
        self.assertEqual(result_of(self.sim.run(self.offer(honest, victim, blob(500, 7)))),
                         codec.StoreStatus.REFUSED)
        limits = Limits(store_source_max_bytes=table_bytes // 4)
        guarded = self.sim.add(kvp_table=MemoryKVPTable(table_bytes), limits=limits)
        stored = self.fill(attacker, guarded, 300)
        self.assertEqual(stored, table_bytes // 4 // (1000 + limits.store_record_overhead))
        self.assertEqual(result_of(self.sim.run(self.offer(honest, guarded, blob(500, 7)))),
                         codec.StoreStatus.STORED)
        self.assertEqual(guarded.refused["store_source_quota_bytes"], 300 - stored)


class ImmortalValueTests(Mixin, SynchronousTestCase):
    """#10: holders replicating to each other must not keep a value alive for ever."""

    def network(self, n: int = 8) -> list[DHTNetwork]:
        nodes = self.sim.add_many(n)
        for node in nodes:  # a day is 1,000 s here (the constants are overridable)
            node.TIME_EXPIRE = 1000.0  # type: ignore[misc]
            node.TIME_REPLICATE = 100.0  # type: ignore[misc]
            node.TIME_REPUBLISH = 900.0  # type: ignore[misc]
        self.assertEqual(self.sim.join_all(), [True] * (n - 1))
        return nodes

    def maintain(self, nodes: list[DHTNetwork]) -> list[Maintenance]:
        out = []
        for node in nodes:
            m = Maintenance(node, MaintenanceIntervals(republish=100, expire=50),
                            wait_for_join=False)
            m.startService()
            self.addCleanup(m.stopService)
            out.append(m)
        return out

    def test_outsider_value_expires_after_its_publish(self) -> None:
        nodes = self.network()
        outsider = self.sim.add()
        self.sim.run(outsider.join_network(nodes[0].address))
        self.sim.run(outsider.put("gone", b"left behind"))
        key = ids.key_for(b"gone")
        published = self.sim.clock.seconds()
        self.sim.net.detach(outsider.address)  # the publisher leaves
        self.maintain(nodes)
        stores = []
        for n in nodes:
            real = n.store.answer
            n.store.answer = (lambda b, s, a, _r=real: stores.append(b) or _r(b, s, a))  # type: ignore[method-assign,misc]
        self.sim.settle(900)
        held = [n for n in nodes if n.kvp_table.records_for_key(key)]
        self.assertGreaterEqual(len(held), 4)
        self.assertTrue(any(b.key == key and b.age > 0 for b in stores))  # replicated
        self.sim.settle(150)
        self.assertLess(self.sim.clock.seconds() - published, 1000 + 150)
        self.assertEqual([n for n in nodes if n.kvp_table.records_for_key(key)], [])

    def test_publisher_that_stays_keeps_it_alive(self) -> None:
        nodes = self.network()
        publisher = nodes[0]
        self.sim.run(publisher.put("kept", b"still here"))
        self.maintain(nodes)
        self.sim.settle(3000)
        key = ids.key_for(b"kept")
        self.assertGreaterEqual(len([n for n in nodes[1:] if n.kvp_table.records_for_key(key)]),
                                4)

    def test_replication_does_not_renew_a_held_copy(self) -> None:
        a, b = self.sim.add_many(2)
        key = key_near(b.key, 1)
        value = b"copy"
        req = codec.StoreRequest(key, ids.key_for(value), len(value), NOW - 10, value, 600)
        self.assertEqual(self.raw_store(a, b, req), codec.StoreStatus.STORED)
        record = b.kvp_table.get_record(key, ids.key_for(value))
        self.assertLess(abs(record.expires_at - (NOW - 600 + b.TIME_EXPIRE)), 2)
        self.sim.settle(1000)
        self.assertEqual(self.raw_store(a, b, attrs.evolve(req, age=1600)),
                         codec.StoreStatus.HELD)
        self.assertEqual(b.kvp_table.get_record(key, ids.key_for(value)).expires_at,
                         record.expires_at)
        self.assertEqual(self.raw_store(a, b, attrs.evolve(req, age=0)),  # a republish
                         codec.StoreStatus.HELD)
        self.assertGreater(b.kvp_table.get_record(key, ids.key_for(value)).expires_at,
                           record.expires_at + 900)
        too_old = attrs.evolve(req, key=key_near(b.key, 2), age=int(b.TIME_EXPIRE) + 1)
        self.assertEqual(self.raw_store(a, b, too_old), codec.StoreStatus.REFUSED)
        self.assertEqual(b.refused["store_expired"], 1)


class FutureTimestampTests(Mixin, SynchronousTestCase):
    """#11: a store dated far in the future pins a value against its owner's updates."""

    def pin_then_update(self, limits: Limits) -> bytes:
        """An outsider stores a value dated 1e12 at every node and leaves; then the
        owner puts a newer value.  What does a reader get?"""
        sim = self.sim = StorageSim()
        nodes = sim.add_many(6, limits=limits)
        self.assertEqual(sim.join_all(), [True] * 5)
        owner, reader = nodes[0], nodes[1]
        key = ids.key_for(b"pinned")
        self.assertGreater(result_of(sim.run(owner.put(key, b"v1"))), 0)
        attacker = sim.add()
        pin = b"attacker's"
        for node in nodes:
            d = sim.run(attacker.store_to_node(node.node, key, ids.key_for(pin), pin, 1e12))
            result_of(d)
        sim.net.detach(attacker.address)
        sim.settle(10)
        sim.run(owner.put(key, b"v2"))
        return result_of(sim.run(reader.get(key)))  # type: ignore[no-any-return]

    def test_far_future_refused_and_counted(self) -> None:
        self.assertEqual(self.pin_then_update(OPEN), b"attacker's")  # the attack
        self.assertEqual(self.pin_then_update(Limits()), b"v2")  # the defence
        refused = sum(n.refused["store_future_timestamp"] for n in self.sim.nodes)
        self.assertGreater(refused, 0)

    def test_small_skew_allowed(self) -> None:
        a, b = self.sim.add_many(2)
        now = self.sim.clock.seconds()
        ok = codec.StoreRequest(ids.key_for(b"k"), ids.key_for(b"v"), 1, now + 299, b"v")
        self.assertEqual(self.raw_store(a, b, ok), codec.StoreStatus.STORED)
        late = attrs.evolve(ok, key=ids.key_for(b"k2"), timestamp=now + 301)
        self.assertEqual(self.raw_store(a, b, late), codec.StoreStatus.REFUSED)
        self.assertEqual(b.refused["store_future_timestamp"], 1)


class _SlowReads(MemoryKVPTable):
    """A value table whose reads wait until :meth:`release` (a busy store thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[tuple[defer.Deferred[bytes], bytes]] = []

    def read(self, key: bytes, index: bytes, offset: int = 0, length: int | None = None
             ) -> defer.Deferred[bytes]:
        data = result_of(super().read(key, index, offset, length))
        d: defer.Deferred[bytes] = defer.Deferred()
        self.waiting.append((d, data))
        return d

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d, data in waiting:
            d.callback(data)


class ReadFloodTests(Mixin, SynchronousTestCase):
    """#15: getval floods for a held 1 MiB value."""

    def flood(self, victim: DHTNetwork, attacker: DHTNetwork, count: int) -> list[Any]:
        # a proven attacker (it answers at its address): an unproven one's 16 KiB getvals
        # are refused before any read (tests.test_dht_protocol)
        self.sim.run(victim.ping_address(attacker.address))
        record = next(victim.kvp_table.records())
        return [attacker.get_value_rpc.call(victim.address, record.key, record.index,
                                            (i * 16384) % MAX_VALUE_SIZE, 16384)
                for i in range(count)]

    def hold_big(self, victim: DHTNetwork) -> None:
        value = blob(MAX_VALUE_SIZE)
        self.sim.run(victim.kvp_table.put(
            KVPRecord(ids.key_for(b"big"), ids.key_for(value), len(value), 1.0), value))

    def test_queued_reads_are_bounded(self) -> None:
        attacker, attacker2 = self.sim.add_many(2, limits=NO_STORE)
        open_victim = self.sim.add(kvp_table=_SlowReads(), limits=OPEN)
        self.hold_big(open_victim)
        # (150 requests: under the per-source request rate's burst, which is another bound)
        flood = self.flood(open_victim, attacker, 150)
        self.sim.settle(1)
        self.assertEqual(open_victim.get_value_rpc.reading, 150)  # the attack
        victim = self.sim.add(kvp_table=_SlowReads())
        self.hold_big(victim)
        answers = self.flood(victim, attacker2, 150)
        self.sim.settle(1)
        # the defence: one source holds at most read_max_pending_per_source reads
        limit = victim.limits.read_max_pending_per_source
        self.assertLessEqual(limit, victim.limits.read_max_pending)
        self.assertEqual(victim.get_value_rpc.reading, limit)
        self.assertEqual(victim.refused["read_source_busy"], 150 - limit)
        busy = [failure_of(d) for d in answers if d.called and not isinstance(
            result_of(d), codec.GetValueResponse)]
        self.assertEqual({e.code for e in busy}, {codec.ErrorCode.BUSY})  # type: ignore
        for _ in range(3):  # (an answer to an unproven address may take a second try)
            victim.kvp_table.release()
            open_victim.kvp_table.release()
            self.sim.settle(1)
        outcomes = [result_of(d) for d in answers]
        self.assertEqual(len([r for r in outcomes if isinstance(r, codec.GetValueResponse)]),
                         limit)
        self.assertEqual(victim.get_value_rpc.reading, 0)
        for d in answers + flood:
            d.addErrback(lambda f: None)

    def test_leveldb_chunk_read_loads_one_chunk(self) -> None:
        db = DBManager(self.mktemp(), executor=StoreExecutor.inline())
        table = LevelDBKVPTable(db, owns_db=True)
        self.addCleanup(lambda: result_of(table.stop()))
        attacker, victim = self.sim.add(), self.sim.add(kvp_table=table)
        self.hold_big(victim)
        real = db.raw
        loaded: list[int] = []

        class Counting:
            def get(self, k: bytes) -> bytes | None:
                v: bytes | None = real.get(k)
                loaded.append(len(v or b""))
                return v

        self.patch(DBManager, "raw", property(lambda _self: Counting()))
        answers = self.flood(victim, attacker, 64)
        self.sim.settle(1)
        self.assertEqual(len([d for d in answers if result_of(d).data]), 64)
        # 64 reads of 16 KiB: 64 chunks read, not 64 MiB.
        self.assertLessEqual(sum(loaded), 64 * 2 * VALUE_CHUNK)


class _StoreThread(MemoryKVPTable):
    """A value table whose reads run one after the other, ``cost`` seconds each."""

    def __init__(self, clock: task.Clock, cost: float) -> None:
        super().__init__()
        self.clock, self.cost, self.free_at = clock, cost, 0.0

    def read(self, key: bytes, index: bytes, offset: int = 0, length: int | None = None
             ) -> defer.Deferred[bytes]:
        data = result_of(super().read(key, index, offset, length))
        now = self.clock.seconds()
        self.free_at = max(self.free_at, now) + self.cost
        return task.deferLater(self.clock, self.free_at - now, lambda: data)


class ReadStarvationTests(Mixin, SynchronousTestCase):
    """#15 again: many addresses keep the read queue full, so honest reads are refused."""

    def flood_from(self, attackers: list[DHTNetwork], victim: DHTNetwork, key: bytes,
                   index: bytes, until: float, each: int = 2) -> list[int]:
        """Each attacker keeps ``each`` getvals outstanding until ``until``; returns a
        one-item list counting the requests sent."""
        sent = [0]
        clock = self.sim.clock

        def send(a: DHTNetwork, i: int) -> None:
            if clock.seconds() >= until:
                return
            sent[0] += 1
            d = a.get_value_rpc.call(victim.address, key, index, (i % 4) * 16384, 16384)
            d.addBoth(lambda _: clock.callLater(0.1, send, a, i + 1))

        for a in attackers:
            for i in range(each):
                send(a, i)
        return sent

    def test_many_sources_flooding_reads_cannot_refuse_a_fetch(self) -> None:
        attackers = self.sim.add_many(60, limits=NO_STORE)
        clock = self.sim.clock
        value = blob(40_000)  # three chunks: a first one, then a window of two
        key, index = ids.key_for(b"held"), ids.key_for(value)
        old = attrs.evolve(Limits(), read_max_pending_per_source=10**9, read_max_waiting=0)
        open_victim = self.sim.add(kvp_table=_StoreThread(clock, 0.005), limits=old)
        victim = self.sim.add(kvp_table=_StoreThread(clock, 0.005))
        honest = self.sim.add()
        for v in (open_victim, victim):
            self.sim.run(v.kvp_table.put(KVPRecord(key, index, len(value), 1.0), value))
        end = clock.seconds() + 8
        sent = [self.flood_from(attackers, v, key, index, end) for v in (open_victim, victim)]
        self.sim.settle(2)  # the flood is under way, the queues full
        # The attack: the queue of 64 is always full, so the honest fetch is refused.
        d = honest.get_value_from_node(open_victim.node, key, index, size=len(value))
        self.sim.settle(2)
        err = failure_of(d)
        self.assertIsInstance(err, RemoteError)
        self.assertEqual(err.code, codec.ErrorCode.BUSY)  # type: ignore[attr-defined]
        self.assertGreater(open_victim.refused["read_busy"], 0)
        # The defence: reads wait their turn, one source after the other, so the honest
        # fetch is served within a round of the flooding sources (its first chunk twice:
        # the victim's bucket for it is full, so it is not pinged back, and a first
        # answer to an unproven address costs a token round trip).
        rpc = victim.get_value_rpc
        for _ in range(2):
            self.assertEqual(rpc.reading, victim.limits.read_max_pending)  # still flooded
            self.assertGreater(rpc.waiting, 0)
            d = honest.get_value_from_node(victim.node, key, index, size=len(value))
            self.sim.settle(1.9)
            self.assertEqual(result_of(d), value)
        self.assertLessEqual(rpc.waiting, victim.limits.read_max_waiting)
        self.sim.settle(8)
        self.assertEqual((rpc.reading, rpc.waiting), (0, 0))
        self.assertGreater(min(sent[0][0], sent[1][0]), 1000)

    def test_full_waiting_line_drops_from_the_longest(self) -> None:
        limits = attrs.evolve(Limits(), read_max_pending=1, read_max_waiting=4)
        attacker, honest = self.sim.add_many(2, limits=NO_STORE)
        victim = self.sim.add(kvp_table=_SlowReads(), limits=limits)
        ReadFloodTests.hold_big(self, victim)  # type: ignore[arg-type]
        flood = ReadFloodTests.flood(self, victim, attacker, 5)  # type: ignore[arg-type]
        self.sim.settle(0.1)
        rpc = victim.get_value_rpc
        self.assertEqual((rpc.reading, rpc.waiting), (1, 4))
        mine = ReadFloodTests.flood(self, victim, honest, 1)  # type: ignore[arg-type]
        self.sim.settle(0.1)
        self.assertEqual((rpc.reading, rpc.waiting), (1, 4))
        self.assertEqual(victim.refused["read_busy"], 1)
        self.assertEqual(failure_of(flood[-1]).code, codec.ErrorCode.BUSY)  # type: ignore
        for _ in range(20):
            victim.kvp_table.release()
            self.sim.settle(0.01)
        self.assertIsInstance(result_of(mine[0]), codec.GetValueResponse)
        self.assertEqual([type(result_of(d)) for d in flood[:4]],
                         [codec.GetValueResponse] * 4)

    def test_fetch_asks_a_busy_holder_once_more(self) -> None:
        holder = self.sim.add()
        reader = self.sim.add(limits=NO_STORE)  # holds no copy: it must fetch
        self.assertEqual(self.sim.join_all(), [True])
        key = ids.key_for(b"busy")
        value = blob(5000)
        result_of(self.sim.run(holder.put(key, value)))  # (the reader refuses a copy)
        self.assertEqual((len(holder.kvp_table), len(reader.kvp_table)), (1, 0))
        real = holder.get_value_rpc.answer
        refusals: list[int] = []

        def answer(body: Any, sender: bytes, address: Any) -> Any:
            if len(refusals) < self.busy_answers:
                refusals.append(1)
                raise RequestRefused(codec.ErrorCode.BUSY, "busy")
            return real(body, sender, address)

        holder.get_value_rpc.answer = answer  # type: ignore[method-assign]
        self.busy_answers = 1
        self.assertEqual(result_of(self.sim.run(reader.get(key))), value)
        self.assertEqual(len(refusals), 1)
        # always busy: each fetch asks the holder twice, then gives up on it
        refusals.clear()
        self.busy_answers = 10**9
        d = self.sim.run(reader.get(key))
        self.assertIsInstance(failure_of(d), DHTError)
        self.assertGreater(len(refusals), 0)
        self.assertEqual(len(refusals) % 2, 0)


class AlsoTests(Mixin, SynchronousTestCase):
    """Issue 11's "Also": get_value_from_node checks the bytes it returns."""

    def test_get_value_from_node_checks_the_index(self) -> None:
        a, liar = self.sim.add_many(2)
        real, fake = b"the real value", b"something else"
        key = ids.key_for(b"k")
        self.sim.run(liar.kvp_table.put(
            KVPRecord(key, ids.key_for(real), len(fake), 1.0), fake))
        d = self.sim.run(a.get_value_from_node(liar.node, key, ids.key_for(real)))
        self.assertIsInstance(failure_of(d), VerificationError)
        self.sim.run(liar.kvp_table.put(KVPRecord(key, ids.key_for(real), len(real), 1.0),
                                        real))
        self.assertEqual(result_of(self.sim.run(
            a.get_value_from_node(liar.node, key, ids.key_for(real)))), real)


class StoreFuzzTests(SynchronousTestCase):
    """Random well-formed store requests from random addresses: the node answers each
    with a status or a refusal, never crashes, and its quotas hold."""

    LIMITS = Limits(store_max_records=40, store_source_max_records=8,
                    store_source_max_bytes=8 * 1024, store_prefix_max_records=16,
                    store_prefix_max_bytes=16 * 1024, store_record_overhead=256,
                    pull_max=3, pull_max_per_source=1, pull_max_seconds=5.0)

    @settings(max_examples=25, deadline=None)
    @given(st.lists(st.tuples(
        st.sampled_from(["10.1.1.1", "10.1.1.2", "10.1.2.1", "10.9.9.9", "127.0.0.1"]),
        st.integers(1, 3),  # port
        st.integers(0, 5),  # key
        st.binary(max_size=3000),  # value
        st.floats(0, 2 * NOW, allow_nan=False),  # timestamp
        st.integers(0, 200_000),  # age
        st.booleans(),  # inline
    ), max_size=60))
    def test_store_handler(self, requests: list[Any]) -> None:
        sim = StorageSim()
        victim = sim.add(kvp_table=MemoryKVPTable(30 * 1024), limits=self.LIMITS)
        for host, port, k, value, ts, age, inline in requests:
            body = codec.StoreRequest(ids.key_for(b"%d" % k), ids.key_for(value), len(value),
                                      ts, value if inline else None, age)
            try:
                out = victim.store.answer(body, b"s" * 20, (host, port))
            except RequestRefused:
                continue
            if isinstance(out, defer.Deferred):
                out.addErrback(lambda f: f.trap(RequestRefused))
            sim.settle(0.01)
        sim.settle(30)  # every pull (to addresses nobody answers at) has ended
        table, lim = victim.kvp_table, self.LIMITS
        self.assertEqual(victim.store.pulls, 0)
        self.assertLessEqual(len(table), lim.store_max_records)
        self.assertLessEqual(table.total_bytes + len(table) * lim.store_record_overhead,
                             table.max_bytes)
        for usage in table.by_source.values():
            self.assertLessEqual(usage.records, lim.store_source_max_records)
            self.assertLessEqual(usage.charged(lim.store_record_overhead),
                                 lim.store_source_max_bytes)
        for usage in table.by_prefix.values():
            self.assertLessEqual(usage.records, lim.store_prefix_max_records)
        for r in table.records():
            self.assertLessEqual(r.timestamp, sim.clock.seconds() + lim.store_max_future_seconds)
            self.assertEqual(ids.key_for(result_of(table.read(r.key, r.index))), r.index)
        self.assertEqual(sum(u.records for u in table.by_source.values()), len(table))
