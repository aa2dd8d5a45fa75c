"""Tests for :mod:`p2pnet.timers`: Periodic on a task.Clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.timers import Periodic


class PeriodicTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.calls: list[float] = []

    def job(self) -> None:
        self.calls.append(self.clock.seconds())

    def test_runs_every_interval_on_the_injected_clock(self) -> None:
        p = Periodic(self.clock, 10.0, self.job, name="test")
        self.assertFalse(p.started)
        p.start()
        self.assertTrue(p.started)
        self.assertEqual(self.calls, [])  # not at once by default
        self.clock.pump([10.0] * 3)
        self.assertEqual(self.calls, [10.0, 20.0, 30.0])
        self.assertEqual(p.runs, 3)
        self.successResultOf(p.stop())
        self.clock.advance(100)
        self.assertEqual(len(self.calls), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_now_and_start_twice(self) -> None:
        p = Periodic(self.clock, 5.0, self.job)
        p.start(now=True)
        p.start(now=True)  # no second loop
        self.assertEqual(self.calls, [0.0])
        self.clock.advance(5)
        self.assertEqual(self.calls, [0.0, 5.0])
        p.stop()

    def test_slow_round_skips_ticks_and_stop_waits_for_it(self) -> None:
        pending: list[defer.Deferred[None]] = []

        def slow() -> defer.Deferred[None]:
            d: defer.Deferred[None] = defer.Deferred()
            pending.append(d)
            return d
        p = Periodic(self.clock, 1.0, slow)
        p.start()
        self.clock.pump([1.0] * 4)
        self.assertEqual((len(pending), p.runs), (1, 1))  # one round at a time
        stopped = p.stop()
        self.assertNoResult(stopped)
        pending[0].callback(None)
        self.successResultOf(stopped)
        self.clock.advance(10)
        self.assertEqual(len(pending), 1)

    def test_failing_round_logged_and_the_loop_goes_on(self) -> None:
        def boom() -> None:
            self.calls.append(self.clock.seconds())
            raise RuntimeError("round bug")
        p = Periodic(self.clock, 2.0, boom)
        p.start()
        self.clock.pump([2.0, 2.0])
        self.assertEqual(self.calls, [2.0, 4.0])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        p.stop()

    def test_subclass_overrides_run_once(self) -> None:
        calls = self.calls

        class Every(Periodic):
            interval = 3.0

            def run_once(self) -> None:
                calls.append(1.0)
        p = Every(self.clock)
        p.start()
        self.clock.advance(3)
        self.assertEqual(calls, [1.0])
        p.stop()
        self.assertRaises(NotImplementedError, Periodic(self.clock, 1.0).run_once)


class LoopingCallTimingTests(SynchronousTestCase):
    """A Periodic runs its rounds when a ``task.LoopingCall`` started with it would."""

    @given(start=st.sampled_from([0.0, 1.0, 1_700_000_000.0]),
           interval=st.sampled_from([0.1, 0.5, 1.0, 1.1, 3.0, 7.25]),
           now=st.booleans(),
           steps=st.lists(st.sampled_from([0.0, 0.05, 0.1, 0.3, 1.0, 1.1, 2.5, 10.0]),
                          max_size=40))
    def test_same_rounds_as_loopingcall(self, start: float, interval: float, now: bool,
                                        steps: list[float]) -> None:
        clock = task.Clock()
        clock.advance(start)
        ours: list[float] = []
        theirs: list[float] = []
        p = Periodic(clock, interval, lambda: ours.append(clock.seconds()))
        loop = task.LoopingCall(lambda: theirs.append(clock.seconds()))
        loop.clock = clock
        p.start(now=now)
        loop.start(interval, now=now)
        for step in steps:
            clock.advance(step)
        self.assertEqual(ours, theirs)
        p.stop()
        loop.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_round_that_restarts_its_timer_leaves_one_call(self) -> None:
        clock = task.Clock()
        calls: list[float] = []
        box: list[Periodic] = []

        def restart() -> None:
            calls.append(clock.seconds())
            box[0].stop()
            box[0].start()

        p = Periodic(clock, 2.0, restart)
        box.append(p)
        p.start()
        clock.pump([2.0] * 3)
        self.assertEqual(calls, [2.0, 4.0, 6.0])
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        p.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
