# -*- test-case-name: tests.test_dht_ratelimit,tests.test_dht_attacks_wire -*-
"""Proof that a requester's address is its own, against reflection and amplification.

A UDP source address can be forged, so an answer much larger than its request would let
a stranger aim our bandwidth at a third party.  Until an address is *proven*, the
protocol answers it with at most ``Limits.answer_amplification`` times the request's
bytes.  An address is proven when

* it answered a request of ours from that IP (:meth:`AddressProof.answered`), or
* its request carries a valid token: a keyed hash of its IP that we handed out in an
  earlier answer (BEP 5's ``token``), under the current or the previous secret; the
  secret rotates every ``Limits.token_rotate_seconds``.

Pure: time comes from an injected ``clock``; the secrets from ``randbytes``.  The table of
proven IPs is bounded (``Limits.proven_max``) and its entries age out after
``Limits.proven_seconds``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from p2pnet.dht.codec import TOKEN_BYTES
from p2pnet.dht.limits import Limits

#: tokens cached per node: a hash costs a microsecond, an entry 80 bytes a node (a node
#: answers a few addresses at a time; 256 cost 8 KiB a node at 200 nodes a process)
_TOKENS_CACHED = 16


class AddressProof:
    """Hands out tokens bound to IPs, checks them, and remembers IPs that answered us."""

    def __init__(self, limits: Limits, clock: Callable[[], float],
                 randbytes: Callable[[int], bytes] | None = None) -> None:
        self.limits = limits
        self.clock = clock
        self._randbytes = randbytes or os.urandom
        self._secret = self._randbytes(16)
        self._previous = self._randbytes(16)
        self._rotate_at = clock() + limits.token_rotate_seconds
        self._tokens: dict[str, bytes] = {}  # ip -> token under the current secret
        self._proven: dict[str, float] = {}  # ip -> when it last answered us

    def _maybe_rotate(self, now: float) -> None:
        if now >= self._rotate_at:
            period = self.limits.token_rotate_seconds
            if now >= self._rotate_at + period:  # idle for two periods: both secrets new
                self._previous = self._randbytes(16)
            else:
                self._previous = self._secret
            self._secret = self._randbytes(16)
            self._rotate_at = now + period
            self._tokens.clear()

    @staticmethod
    def _mac(secret: bytes, ip: str) -> bytes:
        return hashlib.blake2b(ip.encode("utf-8", "surrogateescape"), key=secret,
                               digest_size=TOKEN_BYTES).digest()

    def token_for(self, ip: str) -> bytes:
        """The token to hand to ``ip`` now."""
        now = self.clock()
        if now >= self._rotate_at:
            self._maybe_rotate(now)
        token = self._tokens.get(ip)
        if token is None:
            if len(self._tokens) >= _TOKENS_CACHED:  # a cache: a hash costs a microsecond
                self._tokens.clear()
            token = self._tokens[ip] = self._mac(self._secret, ip)
        return token

    def valid(self, ip: str, token: bytes | None) -> bool:
        """Whether ``token`` is one we handed to ``ip`` (this secret or the last one)."""
        if token is None:
            return False
        if token == self.token_for(ip):
            return True
        return token == self._mac(self._previous, ip)

    def answered(self, ip: str) -> None:
        """``ip`` answered one of our requests: it receives at that address."""
        proven = self._proven
        now = self.clock()
        if ip not in proven and len(proven) >= self.limits.proven_max:
            self._forget(now)
        proven[ip] = now

    def _forget(self, now: float) -> None:
        cutoff = now - self.limits.proven_seconds
        proven = self._proven
        for ip in [ip for ip, t in proven.items() if t < cutoff]:
            del proven[ip]
        if len(proven) > self.limits.proven_max * 3 // 4:
            for ip in list(proven)[: len(proven) // 2]:
                del proven[ip]

    def is_proven(self, ip: str, token: bytes | None) -> bool:
        """Whether a request from ``ip`` carrying ``token`` may get a large answer."""
        seen = self._proven.get(ip)
        if seen is not None and self.clock() - seen <= self.limits.proven_seconds:
            return True
        return self.valid(ip, token)

    def __len__(self) -> int:
        return len(self._proven)


__all__ = ["AddressProof"]
