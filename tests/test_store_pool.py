"""Tests for :mod:`p2pnet.store.pool`: the one thread-pool adapter every store uses."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.python.failure import Failure
from twisted.trial import unittest

from p2pnet.store.pool import ExecutorStopped, StoreExecutor


class Boom(Exception):
    pass


def _fail(message: str) -> None:
    raise Boom(message)


def _pool_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if name in t.name and t.is_alive()]


class ThreadedExecutorTests(unittest.TestCase):
    """The executor on the real reactor and a real thread."""

    def make(self, **kwargs: Any) -> StoreExecutor:
        name = f"test-pool-{id(self)}"
        ex = StoreExecutor(reactor, name=name, **kwargs)
        ex.start()

        def stop() -> defer.Deferred[None]:
            d = ex.stop()
            d.addCallback(lambda _: self.assertEqual(_pool_threads(name), []))
            return d

        self.addCleanup(stop)
        return ex

    @defer.inlineCallbacks
    def test_one_turn_is_one_hop(self) -> Any:
        """Fifty calls submitted in one reactor turn travel in a single thread hop."""
        ex = self.make()
        main = threading.get_ident()
        ds = [ex.submit(lambda i=i: (i, threading.get_ident())) for i in range(50)]
        results = yield defer.gatherResults(ds)
        self.assertEqual([r[0] for r in results], list(range(50)))
        workers = {r[1] for r in results}
        self.assertEqual(len(workers), 1)
        self.assertNotIn(main, workers)
        self.assertEqual((ex.hops, ex.calls), (1, 50))

    @defer.inlineCallbacks
    def test_errors_reach_their_own_deferred(self) -> Any:
        """A failing call fails only its own Deferred, with its own exception."""
        ex = self.make()
        ds = []
        for i in range(10):
            if i % 3 == 0:
                ds.append(ex.submit(_fail, f"call {i}"))
            else:
                ds.append(ex.submit(lambda i=i: i * 10))
        for i, d in enumerate(ds):
            if i % 3 == 0:
                e = yield self.assertFailure(d, Boom)
                self.assertEqual(str(e), f"call {i}")
            else:
                value = yield d
                self.assertEqual(value, i * 10)
        self.assertEqual(ex.hops, 1)

    @defer.inlineCallbacks
    def test_order_across_hops(self) -> Any:
        """Calls run in submission order; calls made while a hop runs share the next hop."""
        ex = self.make()
        ran: list[int] = []
        started, gate = threading.Event(), threading.Event()

        def first_call() -> None:
            started.set()
            gate.wait(10)
            ran.append(0)

        first = ex.submit(first_call)
        while not started.is_set():
            yield task.deferLater(reactor, 0.001, lambda: None)
        later = [ex.submit(ran.append, i) for i in range(1, 21)]
        gate.set()
        yield first
        yield defer.gatherResults(later)
        self.assertEqual(ran, list(range(21)))
        self.assertEqual(ex.hops, 2)

    @defer.inlineCallbacks
    def test_max_calls_per_hop(self) -> Any:
        ex = self.make(max_calls_per_hop=10)
        results = yield defer.gatherResults([ex.submit(lambda i=i: i) for i in range(25)])
        self.assertEqual(results, list(range(25)))
        self.assertEqual(ex.hops, 3)

    @defer.inlineCallbacks
    def test_batch_context_wraps_each_hop(self) -> Any:
        events: list[str] = []

        @contextmanager
        def txn() -> Iterator[None]:
            events.append("begin")
            yield
            events.append("commit")

        ex = self.make(batch_context=txn)
        yield defer.gatherResults([ex.submit(events.append, f"c{i}") for i in range(3)])
        self.assertEqual(events, ["begin", "c0", "c1", "c2", "commit"])

    @defer.inlineCallbacks
    def test_failing_batch_context_fails_every_call(self) -> Any:
        @contextmanager
        def txn() -> Iterator[None]:
            yield
            raise Boom("commit failed")

        ex = self.make(batch_context=txn)
        ds = [ex.submit(lambda: 1), ex.submit(lambda: 2)]
        for d in ds:
            yield self.assertFailure(d, Boom)

    @defer.inlineCallbacks
    def test_stop_drains_queued_calls(self) -> Any:
        """stop() runs what is queued, fires after the last result, then refuses calls."""
        ex = StoreExecutor(reactor, name="test-pool-drain")
        ex.start()
        fired: list[int] = []
        ds = [ex.submit(lambda i=i: i) for i in range(30)]
        for d in ds:
            d.addCallback(fired.append)
        yield ex.stop()
        self.assertEqual(fired, list(range(30)))
        self.assertEqual(_pool_threads("test-pool-drain"), [])
        yield self.assertFailure(ex.submit(lambda: 1), ExecutorStopped)

    @defer.inlineCallbacks
    def test_stop_while_busy_waits(self) -> Any:
        ex = StoreExecutor(reactor, name="test-pool-busy")
        ex.start()
        gate = threading.Event()
        d = ex.submit(gate.wait, 10)
        stopped = ex.stop()
        self.assertFalse(stopped.called)
        gate.set()
        yield stopped
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(_pool_threads("test-pool-busy"), [])

    def test_stop_unstarted(self) -> None:
        ex = StoreExecutor(reactor)
        self.assertTrue(ex.stop().called)
        self.failureResultOf(ex.submit(lambda: 1), ExecutorStopped)

    @defer.inlineCallbacks
    def test_restart(self) -> Any:
        ex = StoreExecutor(reactor, name="test-pool-restart")
        ex.start()
        ex.start()  # idempotent
        self.assertEqual((yield ex.submit(lambda: 1)), 1)
        yield ex.stop()
        ex.start()
        self.assertEqual((yield ex.submit(lambda: 2)), 2)
        yield ex.stop()
        # every pool it started has ended (a leaked worker keeps the process alive)
        self.assertEqual(_pool_threads("test-pool-restart"), [])

    @defer.inlineCallbacks
    def test_stop_twice(self) -> Any:
        """Each stop() caller gets a Deferred that fires only when the thread has ended."""
        ex = StoreExecutor(reactor, name="test-pool-twice")
        ex.start()
        gate = threading.Event()
        ex.submit(gate.wait, 10)
        first, second = ex.stop(), ex.stop()
        self.assertIsNot(first, second)
        self.assertFalse(second.called)
        gate.set()
        yield second
        self.assertTrue(first.called)
        self.assertEqual(_pool_threads("test-pool-twice"), [])

    @defer.inlineCallbacks
    def test_bind(self) -> Any:
        """A bound submitter is submit() with the function fixed: results, errors, order."""
        ex = self.make()
        ran: list[object] = []

        def record(x: object, *, tag: str = "") -> object:
            if x == "bad":
                raise Boom(tag)
            ran.append(x)
            return (x, tag)

        call = ex.bind(record)
        ds = [call(1), ex.submit(ran.append, "plain"), call(2, tag="t"), call("bad", tag="own")]
        self.assertEqual(ex.calls, 4)
        self.assertEqual((yield ds[0]), (1, ""))
        self.assertEqual((yield ds[2]), (2, "t"))
        e = yield self.assertFailure(ds[3], Boom)
        self.assertEqual(str(e), "own")
        self.assertEqual(ran, [1, "plain", 2])
        self.assertEqual((ex.hops, ex.calls), (1, 4))

    @defer.inlineCallbacks
    def test_group_gets_each_run(self) -> Any:
        """Consecutive calls of a group reach it together; other calls split the runs."""
        ex = self.make()
        runs: list[list[tuple[Any, ...]]] = []

        def group(calls: Any) -> list[Any]:
            runs.append([c[2] for c in calls])
            return [Failure(Boom(f"no {c[2][0]}")) if c[2][0] < 0 else c[2][0] * 2 for c in calls]

        double = ex.bind(lambda x: x * 2, group)
        ds = [double(1), double(-2), double(3), ex.submit(lambda: "x"), double(4)]
        results = yield defer.DeferredList(ds, consumeErrors=True)
        self.assertEqual([r[0] for r in results], [True, False, True, True, True])
        self.assertEqual([r[1] for r in results if r[0]], [2, 6, "x", 8])
        results[1][1].trap(Boom)
        self.assertEqual(str(results[1][1].value), "no -2")
        self.assertEqual(runs, [[(1,), (-2,), (3,)], [(4,)]])
        self.assertEqual(ex.hops, 1)

    @defer.inlineCallbacks
    def test_failing_group_fails_its_run_only(self) -> Any:
        ex = self.make()

        def broken(calls: Any) -> list[Any]:
            raise Boom("group")

        def short(calls: Any) -> list[Any]:
            return []

        a, b = ex.bind(lambda: 1, broken), ex.bind(lambda: 2, short)
        ds = [a(), a(), ex.submit(lambda: 3), b(), b()]
        for d in ds[:2]:
            e = yield self.assertFailure(d, Boom)
            self.assertEqual(str(e), "group")
        self.assertEqual((yield ds[2]), 3)
        for d in ds[3:]:
            yield self.assertFailure(d, RuntimeError)

    def test_bind_stopped(self) -> None:
        ex = StoreExecutor(reactor)
        self.failureResultOf(ex.bind(lambda: 1)(), ExecutorStopped)
        self.assertEqual(ex.calls, 0)

    def test_call_blocking(self) -> None:
        entered: list[int] = []

        @contextmanager
        def txn() -> Iterator[None]:
            entered.append(threading.get_ident())
            yield

        ex = StoreExecutor(reactor, batch_context=txn)
        self.assertEqual(ex.call_blocking(lambda x: x + 1, 1), 2)
        self.assertEqual(entered, [threading.get_ident()])


class InlineExecutorTests(unittest.SynchronousTestCase):
    """The inline executor: each call runs at once in the caller's thread."""

    def test_result(self) -> None:
        ex = StoreExecutor.inline()
        d = ex.submit(lambda: threading.get_ident())
        self.assertEqual(self.successResultOf(d), threading.get_ident())

    def test_error(self) -> None:
        ex = StoreExecutor.inline()
        f = self.failureResultOf(ex.submit(_fail, "inline"), Boom)
        self.assertEqual(str(f.value), "inline")

    def test_batch_context_per_call(self) -> None:
        events: list[str] = []

        @contextmanager
        def txn() -> Iterator[None]:
            events.append("begin")
            yield
            events.append("end")

        ex = StoreExecutor.inline(batch_context=txn)
        ex.submit(events.append, "a")
        ex.submit(events.append, "b")
        self.assertEqual(events, ["begin", "a", "end", "begin", "b", "end"])
        self.assertEqual((ex.hops, ex.calls), (2, 2))

    def test_stop_and_running(self) -> None:
        ex = StoreExecutor.inline()
        self.assertTrue(ex.running)
        self.successResultOf(ex.stop())

    def test_bind_runs_each_call(self) -> None:
        """Inline, a bound submitter runs the function itself, call by call (no group)."""
        ex = StoreExecutor.inline()

        def group(calls: Any) -> list[Any]:
            raise AssertionError("not used inline")

        call = ex.bind(lambda x: x + 1, group)
        self.assertEqual(self.successResultOf(call(1)), 2)
        self.failureResultOf(call("a"), TypeError)
        self.assertEqual((ex.hops, ex.calls), (2, 2))
