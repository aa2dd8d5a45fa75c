"""Tests for :mod:`p2pnet.timers`: Periodic on a task.Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.timers import Periodic, scheduled


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


class SharedScheduleTests(SynchronousTestCase):
    """Every Periodic of a clock shares one delayed call, with LoopingCall's timing."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.calls: list[tuple[str, float]] = []

    def job(self, name: str) -> Any:
        return lambda: self.calls.append((name, self.clock.seconds()))

    def test_many_timers_one_delayed_call(self) -> None:
        a = Periodic(self.clock, 2.0, self.job("a"))
        b = Periodic(self.clock, 3.0, self.job("b"))
        a.start()
        b.start()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(scheduled(self.clock), [(2.0, a), (3.0, b)])
        self.clock.pump([1.0] * 6)
        # at 6 both are due: b's round was scheduled first (at 3), so it runs first
        self.assertEqual(self.calls, [("a", 2.0), ("b", 3.0), ("a", 4.0), ("b", 6.0),
                                      ("a", 6.0)])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        a.stop()
        self.clock.advance(3)
        self.assertEqual(self.calls[-1], ("b", 9.0))
        self.assertEqual(scheduled(self.clock), [(12.0, b)])
        b.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(scheduled(self.clock), [])

    def test_a_jump_runs_one_round_then_keeps_the_beat(self) -> None:
        p = Periodic(self.clock, 10.0, self.job("p"))
        self.clock.advance(1)
        p.start()  # rounds at 11, 21, 31, ...
        self.clock.advance(35)  # past 11, 21 and 31: one round
        self.assertEqual(self.calls, [("p", 36.0)])
        self.assertEqual(scheduled(self.clock), [(41.0, p)])
        self.clock.advance(5)
        self.assertEqual(self.calls[-1], ("p", 41.0))
        p.stop()

    def test_a_round_may_stop_its_timer_or_start_another(self) -> None:
        later = Periodic(self.clock, 1.0, self.job("later"))
        stopper: list[Periodic] = []

        def once() -> None:
            self.calls.append(("once", self.clock.seconds()))
            stopper[0].stop()
            later.start()

        p = Periodic(self.clock, 5.0, once)
        stopper.append(p)
        p.start()
        self.clock.pump([5.0, 1.0, 1.0, 5.0])
        # the last step jumps past 8..11: one round, at 12
        self.assertEqual(self.calls, [("once", 5.0), ("later", 6.0), ("later", 7.0),
                                      ("later", 12.0)])
        self.assertFalse(p.started)
        later.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_restart_after_stop(self) -> None:
        p = Periodic(self.clock, 4.0, self.job("p"))
        p.start()
        p.stop()
        self.clock.advance(2)
        p.start(now=True)
        self.clock.advance(4)
        self.assertEqual(self.calls, [("p", 2.0), ("p", 6.0)])
        p.stop()

    def test_interval_must_be_positive(self) -> None:
        with self.assertRaises(ValueError):
            Periodic(self.clock, 0.0, self.job("p")).start()
