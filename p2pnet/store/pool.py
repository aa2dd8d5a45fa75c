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

**Call groups.**  :meth:`StoreExecutor.bind` can tag the calls of a function with a
*group*: a callable that the store thread hands every run of consecutive calls of that
group in a hop, instead of running them one by one (LevelDB turns a run of puts and
deletes into one write batch).  ``group(calls)`` gets the run's entries (index 2 is a
call's ``args``, index 3 its ``kwargs``, index 1 the function it stands for) and
returns one outcome per call, in order: the call's result, or a :class:`Failure` for a
call that failed.  If the group itself raises, every call of the run fails with that
error.  Calls of a group must behave as if they had run one by one in order; in the
inline executor they do run one by one (the group is not used).

Per call, the reactor side costs a Deferred, a tuple and a list append; results are
handed back with ``Deferred.callback`` (a :class:`Failure` result fires the errbacks, as
``errback`` would).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from itertools import groupby
from operator import itemgetter
from typing import Any, ParamSpec, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorThreads
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from p2pnet.observer import OneShotObserver

T = TypeVar("T")
P = ParamSpec("P")

#: One queued call: (its Deferred, fn, args, kwargs, its group or None).
_Call = tuple[
    defer.Deferred[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any], Any
]
#: Runs a run of consecutive calls of one group; one result or Failure per call.
CallGroup = Callable[[Sequence[_Call]], Sequence[Any]]

_Deferred = defer.Deferred
_fire = defer.Deferred.callback  # callback(Failure) runs the errbacks, like errback()
_group_of = itemgetter(4)


class ExecutorStopped(Exception):
    """A call was submitted to a store executor that is not running."""


class StoreExecutor:
    """Run blocking callables on a private thread pool; Deferreds at the edge."""

    def __init__(
        self,
        reactor: Any = None,
        name: str = "p2pnet-store",
        batch_context: Callable[[], AbstractContextManager[Any]] | None = None,
        max_calls_per_hop: int = 1000,
        _inline: bool = False,
        translate: Callable[[BaseException], BaseException | None] | None = None,
    ) -> None:
        if reactor is None and not _inline:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self._name = name
        self._batch_context = batch_context or nullcontext
        self._max = max_calls_per_hop
        self._inline = _inline
        # Calls are accepted (and queued) exactly while there is a pool: from start()
        # until stop() has drained the queue.  The list object never changes (bound
        # submitters keep its append).
        self._pool: ThreadPool | None = None
        self._pending: list[_Call] = []
        # True while a flush is scheduled or a hop is running: submit need not schedule.
        self._armed = False
        self._busy = False
        self._hop: list[_Call] = []  # the calls of the hop in flight
        # fired (and replaced) when the queue runs dry; set while the pool stops
        self._idle: OneShotObserver[None] = OneShotObserver()
        self.running = _inline
        self._stopping: OneShotObserver[None] | None = None
        self.hops = 0
        self._calls_sent = 0
        #: Maps a call's exception to the one its caller gets (None: keep it); a store
        #: turns its driver's errors into typed ``StoreError`` s here.
        self.translate = translate

    @property
    def calls(self) -> int:
        """How many calls were submitted (and accepted) so far."""
        return self._calls_sent + len(self._pending)

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
            return self._stopping.when_fired()
        if self._inline or not self.running:
            return defer.succeed(None)
        self.running = False
        pool = self._pool
        stopping = self._stopping = OneShotObserver()

        def _stop_pool(_: object) -> None:
            self._stopping = None
            if self._pool is pool:
                self._pool = None
            try:
                if pool is not None:
                    pool.stop()
            finally:
                stopping.fire(None)

        self._when_idle().addCallback(_stop_pool)  # may run at once
        return stopping.when_fired()

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> defer.Deferred[T]:
        """Run ``fn(*args, **kwargs)`` in the store's thread; the Deferred gets its result."""
        if self._pool is not None:
            d: defer.Deferred[T] = _Deferred()
            self._pending.append((d, fn, args, kwargs, None))
            if not self._armed:
                self._schedule()
            return d
        return self._submit_slow(fn, args, kwargs)

    def bind(
        self, fn: Callable[P, T], group: CallGroup | None = None
    ) -> Callable[P, defer.Deferred[T]]:
        """``submit`` with ``fn`` bound: ``bind(fn)(*a, **kw)`` is ``submit(fn, *a, **kw)``.

        Cheaper per call than :meth:`submit`.  With ``group``, runs of consecutive calls
        of that group in one hop go to ``group`` together (see the module docstring).
        """
        append = self._pending.append

        def submit_bound(*args: P.args, **kwargs: P.kwargs) -> defer.Deferred[T]:
            if self._pool is not None:
                d: defer.Deferred[T] = _Deferred()
                append((d, fn, args, kwargs, group))
                if not self._armed:
                    self._schedule()
                return d
            return self._submit_slow(fn, args, kwargs)

        return submit_bound

    def call_blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` now in the calling thread (for code outside the reactor)."""
        with self._batch_context():
            return fn(*args, **kwargs)

    # -- internals ---------------------------------------------------------------

    def _submit_slow(
        self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> defer.Deferred[T]:
        if self._inline:
            self._calls_sent += 1
            self.hops += 1
            with self._batch_context():
                d = defer.maybeDeferred(fn, *args, **kwargs)
            translate = self.translate
            if translate is not None:
                d.addErrback(self._translated, translate)
            return d
        return defer.fail(ExecutorStopped(f"{self._name} is not running"))

    def _schedule(self) -> None:
        if self._armed or not self._pending:
            return
        self._armed = True
        self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        pending = self._pending
        pool = self._pool
        if not pending or pool is None:
            self._armed = False
            return
        if len(pending) <= self._max:
            batch = pending.copy()
            pending.clear()
        else:
            batch = pending[: self._max]
            del pending[: self._max]
        self._busy = True
        self._hop = batch
        self.hops += 1
        self._calls_sent += len(batch)
        pool.callInThreadWithCallback(self._hop_done, self._run_batch, batch)

    def _hop_done(self, ok: bool, outcome: Any) -> None:
        """In the store thread: hand the hop's outcome to the reactor."""
        self._reactor.callFromThread(self._deliver, ok, outcome)

    def _run_batch(self, batch: list[_Call]) -> list[Any]:
        results: list[Any] = []
        append = results.append
        with self._batch_context():
            for group, calls in groupby(batch, _group_of):
                if group is None:
                    for _, fn, args, kwargs, _ in calls:
                        try:
                            append(fn(*args, **kwargs))
                        except BaseException:
                            append(Failure())
                    continue
                run = list(calls)
                try:
                    outcomes = group(run)
                    if len(outcomes) != len(run):
                        raise RuntimeError(
                            f"call group {group!r} gave {len(outcomes)} outcomes "
                            f"for {len(run)} calls"
                        )
                except BaseException:
                    outcomes = [Failure()] * len(run)
                results.extend(outcomes)
        return results

    def _deliver(self, ok: bool, outcome: Any) -> None:
        batch, self._hop = self._hop, []
        self._busy = False
        self._armed = False
        if not ok:
            # The batch context itself failed (e.g. a commit): every call in it failed.
            outcome = [outcome] * len(batch)
        translate = self.translate
        for entry, value in zip(batch, outcome):
            if translate is not None and value.__class__ is Failure:
                value = self._translated(value, translate)
            _fire(entry[0], value)
        if self._pending:
            self._schedule()
        else:
            idle, self._idle = self._idle, OneShotObserver()
            idle.fire(None)

    @staticmethod
    def _translated(
        failure: Failure, translate: Callable[[BaseException], BaseException | None]
    ) -> Failure:
        try:
            mapped = translate(failure.value)
        except Exception:
            return failure
        if mapped is None or mapped is failure.value:
            return failure
        mapped.__cause__ = failure.value
        return Failure(mapped)

    def _when_idle(self) -> defer.Deferred[None]:
        if not self._busy and not self._pending:
            return defer.succeed(None)
        d = self._idle.when_fired()
        if not self._busy:
            self._schedule()
        return d
