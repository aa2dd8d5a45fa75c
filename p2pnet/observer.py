# -*- test-case-name: tests.test_observer -*-
"""Small shared helpers for "tell me when" and ``on('event')`` callbacks.

- :class:`OneShotObserver`: fire every waiter once when something is ready (a join, a
  database open); each caller gets its own Deferred from :meth:`~OneShotObserver.when_fired`.
- :class:`EventEmitter`: py2p-style events, ``sock.on('message', f)`` or as a decorator
  ``@sock.on('message')``; a callback that raises is logged and does not stop the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

T = TypeVar("T")
log = Logger()

_UNSET: Any = object()


class OneShotObserver(Generic[T]):
    """A result that arrives once; every waiter gets it in its own Deferred."""

    def __init__(self) -> None:
        self._result: Any = _UNSET
        self._waiters: list[defer.Deferred[T]] = []

    @property
    def fired(self) -> bool:
        return self._result is not _UNSET

    @property
    def result(self) -> T:
        """The result (raises ``LookupError`` before it arrived)."""
        if self._result is _UNSET:
            raise LookupError("not fired yet")
        if isinstance(self._result, Failure):
            self._result.raiseException()
        return self._result

    def when_fired(self) -> defer.Deferred[T]:
        """A new Deferred firing with the result (at once when it is already there)."""
        if self._result is _UNSET:
            d: defer.Deferred[T] = defer.Deferred()
            self._waiters.append(d)
            return d
        if isinstance(self._result, Failure):
            return defer.fail(self._result)
        return defer.succeed(self._result)

    def fire(self, result: T | Failure) -> None:
        """Record the result (a value or a Failure) and fire every waiter; once only."""
        if self._result is not _UNSET:
            raise RuntimeError("already fired")
        self._result = result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    def fire_if_unfired(self, result: T | Failure) -> None:
        if self._result is _UNSET:
            self.fire(result)

    def reset(self) -> None:
        """Forget the result so the next :meth:`when_fired` waits again (a restart)."""
        self._result = _UNSET


Callback = Callable[..., Any]


class EventEmitter:
    """``on(event, f)`` / ``@on(event)`` registration, ``emit(event, *args)`` delivery.

    ``events`` names the events allowed (a typo raises ``ValueError``); None allows any.
    """

    def __init__(self, events: tuple[str, ...] | None = None) -> None:
        self._events = events
        self._handlers: dict[str, list[Callback]] = {}

    def _check(self, event: str) -> None:
        if self._events is not None and event not in self._events:
            raise ValueError(f"unknown event {event!r}; known: {', '.join(self._events)}")

    def on(self, event: str, callback: Callback | None = None) -> Any:
        """Register ``callback`` for ``event``; without one, return a decorator."""
        self._check(event)
        if callback is None:
            def decorator(f: Callback) -> Callback:
                self._handlers.setdefault(event, []).append(f)
                return f
            return decorator
        self._handlers.setdefault(event, []).append(callback)
        return callback

    def off(self, event: str, callback: Callback) -> None:
        """Unregister a callback (``ValueError`` when it was not registered)."""
        self._check(event)
        self._handlers.get(event, []).remove(callback)

    def handlers(self, event: str) -> list[Callback]:
        return list(self._handlers.get(event, ()))

    def emit(self, event: str, *args: Any) -> int:
        """Call every handler of ``event``; returns how many were called."""
        self._check(event)
        handlers = self._handlers.get(event)
        if not handlers:
            return 0
        for f in list(handlers):
            try:
                f(*args)
            except Exception:
                log.failure("{event} handler {handler!r} failed", event=event, handler=f)
        return len(handlers)
