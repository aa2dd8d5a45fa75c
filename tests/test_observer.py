"""Tests for :mod:`p2pnet.observer`: OneShotObserver and EventEmitter."""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from p2pnet.observer import EventEmitter, OneShotObserver


class OneShotObserverTests(SynchronousTestCase):
    def test_every_waiter_fires_once_with_the_result(self) -> None:
        obs: OneShotObserver[int] = OneShotObserver()
        waiters = [obs.when_fired() for _ in range(3)]
        for d in waiters:
            self.assertNoResult(d)
        self.assertFalse(obs.fired)
        self.assertRaises(LookupError, lambda: obs.result)
        obs.fire(7)
        self.assertEqual([self.successResultOf(d) for d in waiters], [7, 7, 7])
        self.assertTrue(obs.fired)
        self.assertEqual(obs.result, 7)
        # a late caller gets its own Deferred, already fired
        late = obs.when_fired()
        self.assertEqual(self.successResultOf(late), 7)
        self.assertIsNot(late, waiters[0])

    def test_each_caller_owns_its_deferred(self) -> None:
        obs: OneShotObserver[int] = OneShotObserver()
        first, second = obs.when_fired(), obs.when_fired()
        first.addCallback(lambda n: n + 1)  # one caller's callbacks do not leak
        obs.fire(1)
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (2, 1))

    def test_fires_once_only(self) -> None:
        obs: OneShotObserver[int] = OneShotObserver()
        obs.fire(1)
        self.assertRaises(RuntimeError, obs.fire, 2)
        obs.fire_if_unfired(3)
        self.assertEqual(obs.result, 1)

    def test_failure_reaches_every_waiter(self) -> None:
        obs: OneShotObserver[int] = OneShotObserver()
        waiters = [obs.when_fired() for _ in range(2)]
        obs.fire(Failure(ValueError("boom")))
        for d in waiters + [obs.when_fired()]:
            self.failureResultOf(d, ValueError)
        self.assertRaises(ValueError, lambda: obs.result)

    def test_reset_waits_again(self) -> None:
        obs: OneShotObserver[str] = OneShotObserver()
        obs.fire("first run")
        obs.reset()
        d = obs.when_fired()
        self.assertNoResult(d)
        obs.fire("second run")
        self.assertEqual(self.successResultOf(d), "second run")


class EventEmitterTests(SynchronousTestCase):
    def test_call_and_decorator(self) -> None:
        ev = EventEmitter(("message",))
        got: list[tuple[str, Any]] = []
        f = ev.on("message", lambda x: got.append(("call", x)))

        @ev.on("message")
        def g(x: Any) -> None:
            got.append(("decorator", x))

        self.assertTrue(callable(f) and callable(g))
        self.assertEqual(ev.emit("message", 1), 2)
        self.assertEqual(got, [("call", 1), ("decorator", 1)])  # in registration order

    def test_unknown_event_is_a_value_error(self) -> None:
        ev = EventEmitter(("connect",))
        self.assertRaises(ValueError, ev.on, "conect", lambda: None)
        self.assertRaises(ValueError, ev.emit, "conect")
        EventEmitter().on("anything", lambda: None)  # no list: any name

    def test_failing_handler_logged_others_still_called(self) -> None:
        ev = EventEmitter(("e",))
        got: list[int] = []

        def boom(n: int) -> None:
            raise RuntimeError("handler bug")
        ev.on("e", boom)
        ev.on("e", got.append)
        self.assertEqual(ev.emit("e", 5), 2)
        self.assertEqual(got, [5])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_off_and_handlers(self) -> None:
        ev = EventEmitter(("e",))
        got: list[int] = []
        ev.on("e", got.append)
        self.assertEqual(ev.handlers("e"), [got.append])
        ev.off("e", got.append)
        self.assertEqual(ev.emit("e", 1), 0)
        self.assertEqual(got, [])
        self.assertRaises(ValueError, ev.off, "e", got.append)

    def test_handler_registered_during_emit_waits_for_the_next(self) -> None:
        ev = EventEmitter(("e",))
        got: list[str] = []

        def first(_: Any) -> None:
            got.append("first")
            ev.on("e", lambda _: got.append("added"))
        ev.on("e", first)
        ev.emit("e", None)
        self.assertEqual(got, ["first"])
        ev.emit("e", None)
        self.assertEqual(got, ["first", "first", "added"])
