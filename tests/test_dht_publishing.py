"""Tests for :mod:`p2pnet.dht.publishing`: republish, replicate, expire, refresh, the service.

Small networks on an in-memory transport; days of ``task.Clock`` time pass in a few
hundred steps.
"""

from __future__ import annotations

import math

from twisted.application import service
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from p2pnet import ids
from p2pnet.dht.network import (
    TIME_EXPIRE,
    TIME_REFRESH,
    TIME_REPLICATE,
    TIME_REPUBLISH,
    DHTNetwork,
)
from p2pnet.dht.publishing import (
    REFRESH_CHECK_INTERVAL,
    REPUBLISH_CHECK_INTERVAL,
    Expirer,
    Maintenance,
    MaintenanceIntervals,
    Publisher,
    Refresher,
    Replicator,
)
from p2pnet.dht.table import KVPRecord
from tests.dhthelpers import Sim, count_stores, key_near, looping_calls


class NetworkMixin:
    nodes_count = 8

    def setUp(self) -> None:
        self.sim = Sim(seed=3)
        self.nodes = self.sim.add_many(self.nodes_count)
        self.assertEqual(self.sim.join_all(), [True] * (self.nodes_count - 1))
        self.clock = self.sim.clock
        self.sim.settle(10)  # the protocols' timers run out: a quiet clock
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def assertStopped(self) -> None:
        """No timer loop left on the clock, and nothing at all once requests ran out."""
        self.assertEqual(looping_calls(self.clock), [])
        self.sim.settle(10)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def hold(self, node: DHTNetwork, name: bytes, value: bytes, **kw: object) -> KVPRecord:
        """Put a record straight into ``node``'s table."""
        record = KVPRecord(ids.key_for(name), ids.key_for(value), len(value),
                           kw.pop("timestamp", 1.0), **kw)  # type: ignore[arg-type]
        self.successResultOf(node.kvp_table.put(record, value))
        return record

    def holders(self, record: KVPRecord) -> set[bytes]:
        return {n.key for n in self.sim.holders(record.key, record.index)}


class PublisherTests(NetworkMixin, SynchronousTestCase):
    def test_never_published_is_due_at_once(self) -> None:
        a = self.nodes[0]
        record = self.hold(a, b"pub", b"original", is_original=True)
        self.hold(a, b"copy", b"not mine")  # held for others: not the publisher's job
        publisher = Publisher(a)
        self.assertEqual(publisher.due(), [record.kvpid])
        stores = count_stores(*self.nodes[1:])
        publisher.start(now=True)
        self.sim.settle(1)
        self.assertEqual(len(stores), self.nodes_count - 1)
        self.assertEqual({body.key for _, body in stores}, {record.key})
        self.assertEqual(self.holders(record), {n.key for n in self.nodes})
        self.assertGreater(a.kvp_table.get_record(*record.kvpid).last_update, 0)
        self.assertEqual(publisher.due(), [])
        publisher.stop()

    def test_republished_every_time_republish(self) -> None:
        a = self.nodes[0]
        record = self.hold(a, b"pub", b"original", is_original=True)
        stores = count_stores(*self.nodes[1:])
        publisher = Publisher(a)
        publisher.start(now=True)
        self.sim.settle(1)
        first = a.kvp_table.get_record(*record.kvpid).last_update
        self.assertEqual(len(stores), self.nodes_count - 1)
        self.sim.settle(first + TIME_REPUBLISH - REPUBLISH_CHECK_INTERVAL
                        - self.clock.seconds())
        self.assertEqual(len(stores), self.nodes_count - 1)  # not yet
        self.sim.settle(REPUBLISH_CHECK_INTERVAL + 1)
        self.assertEqual(len(stores), 2 * (self.nodes_count - 1))
        second = a.kvp_table.get_record(*record.kvpid).last_update
        self.assertLessEqual(second - first, TIME_REPUBLISH + 1)
        self.assertGreater(second - first, TIME_REPUBLISH - REPUBLISH_CHECK_INTERVAL)
        publisher.stop()

    def test_closest_copy_never_expires_while_the_publisher_runs(self) -> None:
        # The closest node keeps a copy TIME_EXPIRE = TIME_REPUBLISH + 90 s: the
        # republish must come before that, whenever in the hour the value was put.
        # (Farther copies expire sooner by design; the Replicator refreshes those.)
        for offset in (0.0, 1801.0, 3599.0):
            sim = Sim(seed=4)
            nodes = sim.add_many(5)
            sim.join_all()
            a = nodes[0]
            publisher = Publisher(a)
            publisher.start(now=True)
            sim.settle(offset)
            self.successResultOf(sim.run(a.put("kept alive", b"value")))
            key = ids.key_for(b"kept alive")
            closest = min(nodes[1:], key=lambda n: ids.distance(n.key, key))
            self.assertEqual(closest.routing_table.count_close(key), 0)
            end = sim.clock.seconds() + 3 * TIME_REPUBLISH
            while sim.clock.seconds() < end:
                sim.settle(600)
                now = sim.clock.seconds()
                (rec,) = closest.kvp_table.records_for_key(key)
                self.assertFalse(rec.is_expired(now),
                                 f"copy expired at {now} (put at {offset})")
            publisher.stop()

    def test_fresh_node_receives_republished_value(self) -> None:
        a = self.nodes[0]
        record = self.hold(a, b"pub", b"original", is_original=True)
        publisher = Publisher(a)
        publisher.start(now=True)
        self.sim.settle(10)
        fresh = self.sim.add(node_id=key_near(record.key, 1))
        self.assertTrue(self.successResultOf(self.sim.run(fresh.join_network(a.address))))
        self.sim.settle(10)
        # (a holder may hand the value to a newcomer closer to its key: drop that copy,
        # this test is about the publisher's own rounds)
        self.successResultOf(fresh.kvp_table.delete(*record.kvpid))
        self.sim.settle(TIME_REPUBLISH - 2 * REPUBLISH_CHECK_INTERVAL)
        self.assertIsNone(fresh.kvp_table.get_record(*record.kvpid))
        self.sim.settle(2 * REPUBLISH_CHECK_INTERVAL)
        self.assertIsNotNone(fresh.kvp_table.get_record(*record.kvpid))
        publisher.stop()

    def test_check_publishes_new_originals(self) -> None:
        a = self.nodes[0]
        publisher = Publisher(a)
        publisher.start(now=True)
        self.sim.settle(10)
        record = self.hold(a, b"late", b"added later", is_original=True)
        stores = count_stores(*self.nodes[1:])
        publisher.check()
        self.sim.settle(1)
        self.assertEqual(len(stores), self.nodes_count - 1)
        self.assertEqual(self.holders(record), {n.key for n in self.nodes})
        publisher.stop()

    def test_one_round_at_a_time(self) -> None:
        a = self.nodes[0]
        self.hold(a, b"pub", b"original", is_original=True)
        publisher = Publisher(a)
        publisher.check()
        publisher.check()  # the first round is still looking up: skipped
        self.assertEqual(publisher.runs, 1)
        self.sim.settle(1)
        publisher.check()
        self.assertEqual(publisher.runs, 2)

    def test_stop_waits_for_round(self) -> None:
        a = self.nodes[0]
        self.hold(a, b"pub", b"original", is_original=True)
        publisher = Publisher(a)
        publisher.start(now=True)
        stopped = publisher.stop()
        self.assertNoResult(stopped)
        self.sim.settle(1)
        self.successResultOf(stopped)
        self.assertStopped()

    def test_deleted_meanwhile(self) -> None:
        a = self.nodes[0]
        record = self.hold(a, b"pub", b"original", is_original=True)
        publisher = Publisher(a)
        publisher.check()
        a.kvp_table.delete(*record.kvpid)
        self.sim.settle(1)
        self.assertEqual(self.flushLoggedErrors(), [])


class ReplicatorTests(NetworkMixin, SynchronousTestCase):
    def test_replicates_copies_and_deletes_expired(self) -> None:
        b = self.nodes[1]
        now = self.clock.seconds()
        copy = self.hold(b, b"copy", b"held for others", last_update=now,
                         expires_at=now + TIME_EXPIRE)
        expiring = self.hold(b, b"expiring", b"soon gone", last_update=now,
                             expires_at=now + 100)
        original = self.hold(b, b"mine", b"original", is_original=True)
        stores = count_stores(*self.nodes)
        replicator = Replicator(b)
        replicator.start()
        self.sim.settle(TIME_REPLICATE - 1)
        self.assertEqual(stores, [])
        self.sim.settle(2)
        everyone = {n.key for n in self.nodes}
        self.assertEqual(self.holders(copy), everyone)
        self.assertEqual(self.holders(expiring), set())
        self.assertEqual(self.holders(original), {b.key})  # the publisher's job, not ours
        self.assertEqual({body.key for _, body in stores}, {copy.key})
        replicator.stop()

    def test_replicates_each_time_replicate(self) -> None:
        b = self.nodes[1]
        now = self.clock.seconds()
        copy = self.hold(b, b"copy", b"held for others", last_update=now,
                         expires_at=now + 10 * TIME_EXPIRE)
        stores = count_stores(*self.nodes)
        replicator = Replicator(b)
        replicator.start()
        self.sim.settle(1)  # sample a second after each round starts
        counts = []
        for _ in range(4):
            self.sim.settle(TIME_REPLICATE)
            counts.append(len(stores))
        self.assertEqual(counts, [(i + 1) * (self.nodes_count - 1) for i in range(4)])
        self.assertEqual({body.key for _, body in stores}, {copy.key})
        replicator.stop()

    def test_run_once_counts(self) -> None:
        b = self.nodes[1]
        self.hold(b, b"copy", b"held for others", expires_at=TIME_EXPIRE)
        self.sim.settle(TIME_REPLICATE)
        d = self.sim.run(Replicator(b).run_once())
        self.assertEqual(self.successResultOf(d), self.nodes_count - 1)


class ExpiryTests(NetworkMixin, SynchronousTestCase):
    nodes_count = 4

    def test_expiry_follows_closer_node_count(self) -> None:
        a, b = self.nodes[:2]
        for name in (b"one", b"two", b"three", b"four", b"five"):
            key = ids.key_for(name)
            value = b"value of " + name
            self.assertTrue(self.successResultOf(self.sim.run(
                a.store_to_node(b.node, key, ids.key_for(value), value, 1.0))))
            record = b.kvp_table.get_record(key, ids.key_for(value))
            c = b.routing_table.count_close(key)
            self.assertEqual(record.expires_at,
                             record.last_update + TIME_EXPIRE / math.exp(c / b.k))

    def test_closest_node_keeps_for_time_expire(self) -> None:
        a, b = self.nodes[:2]
        key = key_near(b.key, 1)  # nobody b knows is closer: c = 0
        value = b"close copy"
        self.assertTrue(self.successResultOf(self.sim.run(
            a.store_to_node(b.node, key, ids.key_for(value), value, 1.0))))
        record = b.kvp_table.get_record(key, ids.key_for(value))
        self.assertEqual(record.expires_at, record.last_update + TIME_EXPIRE)

    def test_expirer(self) -> None:
        b = self.nodes[1]
        now = self.clock.seconds()
        gone = self.hold(b, b"gone", b"v1", expires_at=now + 10)
        kept = self.hold(b, b"kept", b"v2", expires_at=now + 1000)
        original = self.hold(b, b"orig", b"v3", is_original=True)
        expirer = Expirer(b)
        self.assertEqual(self.successResultOf(expirer.run_once()), 0)
        self.sim.settle(10)
        self.assertEqual(self.successResultOf(expirer.run_once()), 1)
        self.assertEqual([r.kvpid for r in b.kvp_table.records()],
                         [kept.kvpid, original.kvpid])
        self.assertIsNone(b.kvp_table.get_record(*gone.kvpid))
        self.sim.settle(10 * TIME_EXPIRE)
        self.assertEqual(self.successResultOf(expirer.run_once()), 1)
        self.assertEqual([r.kvpid for r in b.kvp_table.records()], [original.kvpid])


class RefresherTests(NetworkMixin, SynchronousTestCase):
    def test_refreshes_buckets_not_looked_up(self) -> None:
        a = self.nodes[0]
        refresher = Refresher(a)
        self.assertEqual(self.successResultOf(self.sim.run(refresher.run_once())), 0)
        self.sim.settle(TIME_REFRESH)
        closest = a.routing_table.closest_bucket_number()
        before = a.lookups
        done = self.successResultOf(self.sim.run(refresher.run_once()))
        self.assertEqual(done, closest + 1)
        self.assertEqual(a.lookups - before, closest + 1)
        now = self.clock.seconds()
        for bucket in a.routing_table.buckets[:closest + 1]:
            self.assertGreater(bucket.last_lookup, now - 1)
        # Just refreshed: nothing to do.
        self.assertEqual(self.successResultOf(self.sim.run(refresher.run_once())), 0)

    def test_looked_up_bucket_is_skipped(self) -> None:
        a = self.nodes[0]
        closest = a.routing_table.closest_bucket_number()
        self.assertGreater(closest, 0)
        self.sim.settle(TIME_REFRESH - 10)
        self.successResultOf(self.sim.run(a.find_node_shortlist(
            ids.random_key_in_bucket(a.key, 0))))
        self.sim.settle(20)
        done = self.successResultOf(self.sim.run(Refresher(a).run_once()))
        self.assertEqual(done, closest)  # every bucket but 0

    def test_started_refresher_checks_every_interval(self) -> None:
        a = self.nodes[0]
        refresher = Refresher(a)
        refresher.start()
        self.sim.settle(REFRESH_CHECK_INTERVAL * 4 + 1)
        self.assertEqual(refresher.runs, 4)
        self.assertLessEqual(self.clock.seconds() - a.routing_table.buckets[0].last_lookup,
                             REFRESH_CHECK_INTERVAL + 1)
        refresher.stop()


class MaintenanceTests(NetworkMixin, SynchronousTestCase):
    nodes_count = 4

    def test_is_a_service(self) -> None:
        verifyObject(service.IService, Maintenance(self.nodes[0]))

    def test_start_and_stop(self) -> None:
        maintenance = Maintenance(self.nodes[0])
        maintenance.startService()
        maintenance.joined()
        self.assertTrue(maintenance.running)
        self.assertEqual(maintenance.publisher.runs, 1)  # at once
        now = self.clock.seconds()
        self.assertEqual(sorted(c.getTime() - now for c in looping_calls(self.clock)),
                         sorted([REPUBLISH_CHECK_INTERVAL, TIME_REPLICATE, 600.0,
                                 REFRESH_CHECK_INTERVAL]))
        self.sim.settle(3 * 3600 + 1)  # (+1: let the last rounds finish)
        self.assertEqual((maintenance.publisher.runs, maintenance.replicator.runs,
                          maintenance.expirer.runs, maintenance.refresher.runs),
                         (4, 3, 18, 12))
        self.successResultOf(maintenance.stopService())
        self.assertFalse(maintenance.running)
        self.assertStopped()

    def test_custom_intervals(self) -> None:
        maintenance = Maintenance(self.nodes[0], MaintenanceIntervals(10, 20, 30, 40),
                                  wait_for_join=False)
        maintenance.startService()
        self.sim.settle(120)
        self.assertEqual((maintenance.publisher.runs, maintenance.replicator.runs,
                          maintenance.expirer.runs, maintenance.refresher.runs),
                         (13, 6, 4, 3))
        self.successResultOf(maintenance.stopService())
        self.assertStopped()

    def test_stop_waits_for_running_round(self) -> None:
        a = self.nodes[0]
        self.hold(a, b"pub", b"original", is_original=True)
        maintenance = Maintenance(a)
        maintenance.joined()  # before the start: remembered
        maintenance.startService()
        stopped = maintenance.stopService()
        self.assertNoResult(stopped)  # the first publish is still under way
        self.sim.settle(1)
        self.successResultOf(stopped)
        self.assertStopped()

    def test_restart(self) -> None:
        maintenance = Maintenance(self.nodes[0])
        maintenance.startService()
        maintenance.joined()
        self.successResultOf(maintenance.stopService())
        maintenance.startService()
        self.assertEqual(len(looping_calls(self.clock)), 4)
        self.successResultOf(maintenance.stopService())
        self.assertStopped()

    def test_failed_round_is_logged_and_loop_continues(self) -> None:
        a = self.nodes[0]
        maintenance = Maintenance(a, MaintenanceIntervals(expire=10))
        calls = []

        def broken() -> defer.Deferred[int]:
            calls.append(1)
            return defer.fail(RuntimeError("disk on fire"))

        maintenance.expirer.run_once = broken  # type: ignore[method-assign]
        maintenance.startService()
        self.sim.settle(30)
        self.assertEqual(len(calls), 3)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)
        self.successResultOf(maintenance.stopService())


class JoinGateTests(NetworkMixin, SynchronousTestCase):
    """Issue 10: republishing starts only once the node has joined."""

    nodes_count = 4

    def test_publishing_waits_for_join(self) -> None:
        a = self.nodes[0]
        record = self.hold(a, b"pub", b"original", is_original=True)
        stores = count_stores(*self.nodes[1:])
        maintenance = Maintenance(a)
        maintenance.startService()
        self.sim.settle(2 * 3600)
        self.assertEqual((maintenance.publisher.runs, maintenance.replicator.runs), (0, 0))
        self.assertEqual(stores, [])
        self.assertEqual(len(looping_calls(self.clock)), 2)  # expirer and refresher
        maintenance.joined()
        self.assertEqual(maintenance.publisher.runs, 1)
        self.sim.settle(1)
        self.assertEqual(len(stores), self.nodes_count - 1)
        self.assertEqual(self.holders(record), {n.key for n in self.nodes})
        maintenance.joined()  # a second call changes nothing
        self.assertEqual(len(looping_calls(self.clock)), 4)
        self.successResultOf(maintenance.stopService())
        self.assertStopped()

    def test_original_counts_as_published_only_when_a_node_took_it(self) -> None:
        sim = Sim(seed=5)
        alone = sim.add()
        self.assertEqual(sim.run(alone.put("k", b"v")).result, 0)  # nobody to take it
        (record,) = alone.kvp_table.records()
        self.assertEqual(record.last_update, 0.0)  # so a restart would not mark it done
        self.assertEqual(Publisher(alone).due(), [record.kvpid])
        other = sim.add()
        self.assertEqual(sim.join_all(alone), [True])
        self.assertEqual(sim.run(alone.store_value(*record.kvpid)).result, 1)
        self.assertEqual(alone.kvp_table.get_record(*record.kvpid).last_update,
                         sim.clock.seconds())
        self.assertIsNotNone(other.kvp_table.get_record(*record.kvpid))
        self.assertEqual(Publisher(alone).due(), [])


class ClassConstantsTests(NetworkMixin, SynchronousTestCase):
    """Issue 11 "Also": DHTNetwork's TIME_* constants are read, so overriding works."""

    nodes_count = 3

    def test_time_expire_override(self) -> None:
        a, b = self.nodes[0], self.nodes[1]
        b.TIME_EXPIRE = 500.0  # type: ignore[misc]
        key = key_near(b.key, 1)
        self.assertTrue(self.sim.run(a.store_to_node(b.node, key, ids.key_for(b"v"), b"v",
                                                     1.0)).result)
        record = b.kvp_table.get_record(key, ids.key_for(b"v"))
        self.assertLessEqual(record.expires_at - self.clock.seconds(), 500.0)
        self.assertGreater(record.expires_at - self.clock.seconds(), 400.0)

    def test_republish_replicate_refresh_overrides(self) -> None:
        a = self.nodes[0]
        a.TIME_REPUBLISH = 7200.0  # type: ignore[misc]
        a.TIME_REPLICATE = 1200.0  # type: ignore[misc]
        a.TIME_REFRESH = 60.0  # type: ignore[misc]
        record = self.hold(a, b"pub", b"original", is_original=True)
        publisher = Publisher(a)
        self.sim.run(publisher.run_once())
        self.sim.settle(7200 - REPUBLISH_CHECK_INTERVAL - 5)
        self.assertEqual(publisher.due(), [])
        self.sim.settle(10)
        self.assertEqual(publisher.due(), [record.kvpid])  # 2 h, not 24 h
        self.assertEqual(Replicator(a).interval, 1200.0)
        refresher = Refresher(a)
        self.clock.advance(61)
        self.assertGreater(self.sim.run(refresher.run_once()).result, 0)
