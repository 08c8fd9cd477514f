"""A time-bounded cache of chain reads for the request path.

Registry entries (a model's price and status, a participant's URL and status) change rarely, by
transactions that take a block or more to land. Reading them once per `ttl` seconds instead of once
per request takes their round trips off the hot path, and costs nothing in safety: the Ledger
checks price, signature, draw and escrow again at `start`, so a stale entry can only make a start
revert, never make a wrong one succeed. Reads that guard money or replays (escrow, inference
status) are never cached by time: the gateway admits against the head follower's book of them, at
a block (agents.node.admission), or reads them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class TtlCache:
    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[Hashable, tuple[float, Any]] = {}
        # one load per key at a time: concurrent requests wait for it rather than repeat it
        self._loading: dict[Hashable, asyncio.Future] = {}

    def put(self, key: Hashable, value: Any) -> None:
        """Store a value read elsewhere (a batch that read several entries at once), as of now."""
        self._entries[key] = (self._clock(), value)

    async def get(self, key: Hashable, load: Callable[[], Awaitable[T]],
                  fresh: Callable[[T], bool] = lambda _: True) -> T:
        """The cached value if younger than `ttl` and `fresh(value)`, else what `load()` returns."""
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry[0] < self.ttl and fresh(entry[1]):
            return entry[1]
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await load()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # a failure with no other waiter is not "never retrieved"
            raise
        else:
            self._entries[key] = (self._clock(), value)
            future.set_result(value)
            return value
        finally:
            del self._loading[key]
