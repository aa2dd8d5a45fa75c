# -*- test-case-name: tests.test_timers -*-
"""A periodic job on an injected clock: one round at a time, stoppable, failures logged.

A :class:`Periodic` keeps one ``DelayedCall`` and no ``task.LoopingCall`` (a DHT node
has four of these timers; at 1,000 nodes a process the loops' objects cost ~1.5 MiB),
with LoopingCall's timing: rounds at ``start + n * interval``, a clock that jumped past
several runs one round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class Periodic:
    """Run ``run_once`` every ``interval`` seconds of ``clock``; a tick that comes while
    the previous round is still going is skipped.  Subclass and override
    :meth:`run_once`, or pass ``job``."""

    interval = 3600.0

    def __init__(self, clock: IReactorTime, interval: float | None = None,
                 job: Callable[[], Any] | None = None, name: str | None = None) -> None:
        self.clock = clock
        if interval is not None:
            self.interval = interval
        self._job = job
        self.name = name or type(self).__name__
        self._periodic_start: float | None = None
        self._periodic_call: IDelayedCall | None = None
        self._running: defer.Deferred[Any] | None = None
        self.runs = 0

    @property
    def started(self) -> bool:
        return self._periodic_start is not None

    def run_once(self) -> Any:
        if self._job is None:
            raise NotImplementedError
        return self._job()

    def tick(self) -> None:
        """Run a round now unless one is under way."""
        if self._running is not None:
            return
        self.runs += 1
        d = defer.maybeDeferred(self.run_once)
        self._running = d

        def finished(result: Any) -> None:
            self._running = None
            if isinstance(result, Failure):
                log.failure("{name} round failed", failure=result, name=self.name)

        d.addBoth(finished)

    def start(self, now: bool = False) -> None:
        """Run a round every ``interval`` from now (and one at once when ``now``)."""
        if self._periodic_start is not None:
            return
        if self.interval < 0:
            raise ValueError("interval must be >= 0")
        self._periodic_start = self.clock.seconds()
        if now:
            self._periodic_round()
        else:
            self._periodic_schedule(self._periodic_start)

    def _periodic_round(self) -> None:
        self._periodic_call = None
        self.tick()
        # the round may have stopped the timer, or stopped and started it again
        if self._periodic_start is not None and self._periodic_call is None:
            self._periodic_schedule(self.clock.seconds())

    def _periodic_schedule(self, when: float) -> None:
        """The next round, as ``task.LoopingCall`` times it: at the end of the interval
        ``when`` falls in (a whole interval when the float cannot tell them apart)."""
        interval = self.interval
        assert self._periodic_start is not None
        if interval == 0:
            delay = 0.0
        else:
            delay = interval - ((when - self._periodic_start) % interval)
            if when == when + delay:
                delay = interval
        self._periodic_call = self.clock.callLater(delay, self._periodic_round)

    def stop(self) -> defer.Deferred[None]:
        """Stop ticking; fires when a round under way has finished."""
        self._periodic_start = None
        if self._periodic_call is not None and self._periodic_call.active():
            self._periodic_call.cancel()
        self._periodic_call = None
        running = self._running
        if running is None:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()

        def release(result: Any) -> Any:
            waiter.callback(None)
            return result

        running.addBoth(release)
        return waiter
