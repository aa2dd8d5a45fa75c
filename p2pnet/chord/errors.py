"""Typed errors of the chord socket.

A missing key is the builtin ``KeyError`` (as for a ``dict``); everything else has its
own type, so a caller can tell "no such key" from "the network did not answer in time".
"""

from __future__ import annotations


class ChordError(Exception):
    """Base class of the chord socket's errors (``KeyError`` excepted)."""


class ChordTimeoutError(ChordError, TimeoutError):
    """An operation ran out of time (its lookups did not finish before the socket's
    ``timeout``, or the nodes holding the key did not answer).  Not a ``KeyError``: the
    key may well exist.  ``holders_silent`` is True when the DHT reached the key's nodes'
    neighbourhood and those nodes did not answer."""

    def __init__(self, message: str, holders_silent: bool = False) -> None:
        super().__init__(message)
        self.holders_silent = holders_silent


class RecordError(ChordError, ValueError):
    """Bytes that are not a valid chord record or notice (the one error the decoders raise)."""


class CorruptRecordError(ChordError):
    """The newest record the DHT holds under a key is not a valid record for that key."""


class KeySetFullError(ChordError):
    """The local key set is at its bound (``Limits.chord_max_keys``): a new key is refused."""


class ReactorThreadError(ChordError, RuntimeError):
    """A blocking call was made where it would deadlock: on the reactor thread, or with
    no running reactor.  Use the Deferred API (``d_get``, ``d_set``, ...) there."""


class SocketClosedError(ChordError):
    """The socket was stopped while the operation was outstanding."""
