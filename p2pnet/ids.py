# -*- test-case-name: tests.test_ids -*-
"""160-bit keys and node ids, the XOR metric and k-bucket arithmetic.

A key is plain ``bytes`` of length :data:`KEY_BYTES`; these functions validate and
operate on them.  Bucket numbers follow bytestag: the number of leading zero bits of
``own XOR other`` (0 is the farthest half of the id space, 159 the closest neighbours).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Callable

KEY_BITS = 160
KEY_BYTES = KEY_BITS // 8
MAX_KEY_INT = (1 << KEY_BITS) - 1


def check_key(key: object, what: str = "key") -> bytes:
    """Return ``key`` if it is a valid 160-bit key, else raise ``TypeError``/``ValueError``."""
    if not isinstance(key, bytes):
        raise TypeError(f"{what} must be bytes, not {type(key).__name__}")
    if len(key) != KEY_BYTES:
        raise ValueError(f"{what} must be {KEY_BYTES} bytes, got {len(key)}")
    return key


def key_to_int(key: bytes) -> int:
    return int.from_bytes(key, "big")


def int_to_key(value: int) -> bytes:
    if not 0 <= value <= MAX_KEY_INT:
        raise ValueError("value out of the 160-bit range")
    return value.to_bytes(KEY_BYTES, "big")


def distance(a: bytes, b: bytes) -> int:
    """The XOR distance between two keys, as an integer."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def bucket_number(own: bytes, other: bytes) -> int:
    """Leading zero bits of ``own XOR other`` (0..159); ``ValueError`` for ``own == other``."""
    d = distance(own, other)
    if d == 0:
        raise ValueError("a node has no bucket for its own id")
    return KEY_BITS - d.bit_length()


def random_key(randbytes: Callable[[int], bytes] = os.urandom) -> bytes:
    return randbytes(KEY_BYTES)


def random_key_in_bucket(
    own: bytes, number: int, randbytes: Callable[[int], bytes] = os.urandom
) -> bytes:
    """A random key whose bucket number relative to ``own`` is ``number``."""
    if not 0 <= number < KEY_BITS:
        raise ValueError(f"bucket number must be in 0..{KEY_BITS - 1}")
    top = 1 << (KEY_BITS - 1 - number)  # the first set bit of the distance
    noise = int.from_bytes(randbytes(KEY_BYTES), "big") & (top - 1)
    return int_to_key(key_to_int(own) ^ (top | noise))


def key_for(data: bytes) -> bytes:
    """The content address of ``data`` (SHA-1), as used for value indexes."""
    return hashlib.sha1(data).digest()


def key_to_hex(key: bytes) -> str:
    return check_key(key).hex()


def key_from_hex(text: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError("hex key must be str")
    try:
        raw = bytes.fromhex(text)
    except ValueError as e:
        raise ValueError(f"not a hex key: {text!r}") from e
    return check_key(raw)


def key_to_base64(key: bytes) -> str:
    return base64.b64encode(check_key(key)).decode("ascii")


def key_from_base64(text: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError("base64 key must be str")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise ValueError(f"not a base64 key: {text!r}") from e
    return check_key(raw)


def to_bytes(data: object, what: str = "key") -> bytes:
    """A user's key or value as bytes: ``str`` as UTF-8, bytes-likes copied to ``bytes``;
    ``TypeError`` for anything else (the sync and chord sockets' rule)."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"{what} must be bytes or str, not {type(data).__name__}")
