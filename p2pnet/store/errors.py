# -*- test-case-name: tests.test_store_leveldb -*-
"""Typed errors shared by every p2pnet store (LevelDB and sqlite alike)."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of the errors a p2pnet store raises."""


class DatabaseLockedError(StoreError):
    """The database is held by someone else: another process, or another handle here.

    ``path`` is the database path the caller asked for.
    """

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class DatabaseCorruptError(StoreError):
    """The database files are damaged and the store cannot open or read them."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class DatabaseClosedError(StoreError):
    """The store was used after it was closed."""
