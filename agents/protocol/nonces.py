"""Client nonces, counted up from a random base.

The Ledger's replay guard is a bitmap per client: nonce >> 8 picks a 256-bit storage word and
nonce & 255 a bit of it. A nonce in a word the client never used writes a fresh slot (20,000 gas
more), so a client counts its nonces up from a random word-aligned base: one fresh word per 256
inferences. The base's 120 random bits keep two processes signing with one key apart without
shared state, as a random nonce per request did.
"""

from __future__ import annotations

import itertools
import secrets

BASE_BITS = 120
WORD_BITS = 8


class NonceCounter:
    """Each call returns the next nonce; thread-safe (itertools.count steps atomically)."""

    def __init__(self, base: int | None = None):
        self._next = itertools.count(secrets.randbits(BASE_BITS) << WORD_BITS if base is None else base)

    def __call__(self) -> int:
        return next(self._next)
