# -*- test-case-name: tests.test_store_pool -*-
"""One adapter that runs every store's blocking calls off the reactor thread.

:class:`StoreExecutor` owns a thread pool (one thread by default, so a sqlite connection
or a LevelDB handle is only ever touched by one thread, in submission order).  Calls
submitted during one reactor turn are *coalesced*: they travel to the pool together in a
single thread hop, run one after another, and each caller still gets its own Deferred
with its own result or failure.  While a hop is running, new calls queue up and go in
the next hop, so the number of hops falls as the load rises.

An optional ``batch_context`` wraps every hop (one sqlite transaction, say).  A call that
raises does not abort the hop: the context still exits normally, so a store whose calls
write partially must protect each call itself (PeerStore runs each in a savepoint).  The inline
executor (:meth:`StoreExecutor.inline`) runs each call at once in the caller's thread,
for unit tests and for code that has no reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")

_Call = tuple[defer.Deferred[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class ExecutorStopped(Exception):
    """A call was submitted to a store executor that is not running."""


def _chained(d: defer.Deferred[None]) -> defer.Deferred[None]:
    """A Deferred of its own for each caller, firing when ``d`` does."""
    out: defer.Deferred[None] = defer.Deferred()

    def relay(result: object) -> object:
        out.callback(None)
        return result

    d.addBoth(relay)
    return out


class StoreExecutor:
    """Run blocking callables on a private thread pool; Deferreds at the edge."""

    def __init__(
        self,
        reactor: Any = None,
        name: str = "p2pnet-store",
        batch_context: Callable[[], AbstractContextManager[Any]] | None = None,
        max_calls_per_hop: int = 1000,
        _inline: bool = False,
    ) -> None:
        if reactor is None and not _inline:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self._name = name
        self._batch_context = batch_context or nullcontext
        self._max = max_calls_per_hop
        self._inline = _inline
        self._pool: ThreadPool | None = None
        self._pending: list[_Call] = []
        self._scheduled = False
        self._busy = False
        self._idle: list[defer.Deferred[None]] = []
        self.running = _inline
        self._stopping: defer.Deferred[None] | None = None
        self.hops = 0
        self.calls = 0

    @classmethod
    def inline(
        cls, batch_context: Callable[[], AbstractContextManager[Any]] | None = None
    ) -> StoreExecutor:
        """An executor that runs each call synchronously (tests, scripts)."""
        return cls(reactor=None, batch_context=batch_context, _inline=True)

    def start(self) -> None:
        if self.running:
            return
        assert IReactorThreads.providedBy(self._reactor)
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=self._name)
        self._pool.start()
        self.running = True

    def stop(self) -> defer.Deferred[None]:
        """Run what is queued, then stop the pool; fires when every thread has ended."""
        if self._stopping is not None:
            return _chained(self._stopping)
        if self._inline or not self.running:
            return defer.succeed(None)
        self.running = False
        pool = self._pool
        d = self._when_idle()

        def _stop_pool(_: object) -> None:
            self._stopping = None
            if self._pool is pool:
                self._pool = None
            if pool is not None:
                pool.stop()

        self._stopping = d
        d.addCallback(_stop_pool)  # may run at once: it clears _stopping again
        return _chained(d)

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        """Run ``fn(*args, **kwargs)`` in the store's thread; the Deferred gets its result."""
        if self._inline:
            self.calls += 1
            self.hops += 1
            with self._batch_context():
                return defer.maybeDeferred(fn, *args, **kwargs)
        if not self.running and self._pool is None:
            return defer.fail(ExecutorStopped(f"{self._name} is not running"))
        d: defer.Deferred[T] = defer.Deferred()
        self._pending.append((d, fn, args, kwargs))
        self.calls += 1
        self._schedule()
        return d

    def call_blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` now in the calling thread (for code outside the reactor)."""
        with self._batch_context():
            return fn(*args, **kwargs)

    # -- internals ---------------------------------------------------------------

    def _schedule(self) -> None:
        if self._scheduled or self._busy or not self._pending:
            return
        self._scheduled = True
        clock: IReactorTime = self._reactor
        clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._busy or not self._pending:
            return
        batch, self._pending = self._pending[: self._max], self._pending[self._max :]
        self._busy = True
        self.hops += 1
        assert self._pool is not None
        d = threads.deferToThreadPool(self._reactor, self._pool, self._run_batch, batch)
        d.addBoth(self._deliver, batch)

    def _run_batch(self, batch: list[_Call]) -> list[tuple[bool, Any]]:
        results: list[tuple[bool, Any]] = []
        with self._batch_context():
            for _, fn, args, kwargs in batch:
                try:
                    results.append((True, fn(*args, **kwargs)))
                except BaseException:
                    results.append((False, Failure()))
        return results

    def _deliver(self, outcome: Any, batch: list[_Call]) -> None:
        self._busy = False
        if isinstance(outcome, Failure):
            # The batch context itself failed (e.g. a commit): every call in it failed.
            outcome = [(False, outcome)] * len(batch)
        for (d, _, _, _), (ok, value) in zip(batch, outcome):
            if ok:
                d.callback(value)
            else:
                d.errback(value)
        if self._pending:
            self._schedule()
        else:
            idle, self._idle = self._idle, []
            for waiter in idle:
                waiter.callback(None)

    def _when_idle(self) -> defer.Deferred[None]:
        if not self._busy and not self._pending:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        if not self._busy:
            self._schedule()
        return d
