"""Typed errors of the DHT."""

from __future__ import annotations


class DHTError(Exception):
    """Base class of the DHT's errors."""


class DecodeError(DHTError, ValueError):
    """A datagram is not a valid p2pnet DHT message (the one error every decoder raises)."""


class RPCTimeoutError(DHTError):
    """A request got no valid answer in time (after its retries)."""

    def __init__(self, rpc: str, address: tuple[str, int], timeout: float, tries: int) -> None:
        super().__init__(f"{rpc} to {address[0]}:{address[1]} got no answer in "
                         f"{timeout:g}s ({tries} tries)")
        self.rpc = rpc
        self.address = address


class RemoteError(DHTError):
    """The remote node answered a request with an error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"remote error {code}: {message}")
        self.code = code
        self.message = message


class ProtocolStoppedError(DHTError):
    """The DHT protocol stopped while the request was outstanding."""


class ValueNotFoundError(DHTError, KeyError):
    """No reachable node holds the requested value."""

    def __str__(self) -> str:
        return Exception.__str__(self)


class ValueUnreachableError(DHTError):
    """The nodes that should hold the value did not answer (a holder announced it but
    none delivered, or the closest nodes to the key all failed): the value may exist.
    Not a ``KeyError``: callers must not read it as "absent"."""


class VerificationError(DHTError):
    """A fetched value does not match its index (SHA-1) or its announced size."""


class BucketFullError(DHTError):
    """A k-bucket is full: ``node`` is its least recently seen contact (to be pinged)."""

    def __init__(self, bucket_number: int, node: object, bucket: object) -> None:
        super().__init__(f"bucket {bucket_number} is full")
        self.bucket_number = bucket_number
        self.node = node
        self.bucket = bucket


class LookupTimeoutError(DHTError):
    """An iterative lookup ran past its time (``Limits.lookup_max_seconds``) and found
    nothing it could answer with."""
