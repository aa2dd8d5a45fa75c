# -*- test-case-name: tests.test_timers -*-
"""A periodic job on an injected clock: one round at a time, stoppable, failures logged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
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
        self._loop: task.LoopingCall | None = None
        self._running: defer.Deferred[Any] | None = None
        self.runs = 0

    @property
    def started(self) -> bool:
        return self._loop is not None

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
        if self._loop is not None:
            return
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=now)

    def stop(self) -> defer.Deferred[None]:
        """Stop ticking; fires when a round under way has finished."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        running = self._running
        if running is None:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()

        def release(result: Any) -> Any:
            waiter.callback(None)
            return result

        running.addBoth(release)
        return waiter
