"""The gateway's admission reads, kept current by the head follower instead of read per request.

Before it accepts a request a gateway must know that the inference was not started already
(through any gateway) and what the client holds in escrow. Reading both per request cost one
JSON-RPC round trip on every answer's path, the largest step of the gateway's own work. Instead,
each time the head moves, the follower (`NodeContext.follow_head`) brings the node's index of
started inferences (`NodeState.index_started`, from the Ledger's `Started` logs) up to the new
head and reads, at that same block, the escrow of every client this gateway served lately. A
request is then admitted against that block, at most one block and `chain_cache_ttl` behind,
with no read; for a client not seen lately, or with a book that fell behind, they are read.

This is as safe as the read it replaces. Between any admission and its `start` landing the client
can withdraw or another gateway can start the same request; the read narrowed neither (a start
lands seconds after the answer began), and the Ledger refuses both at `start`. The lag behind the
head adds at most a block to that window. Locks this gateway accepted count against the escrow
until the index shows their start at or before the book's block (`gateway.in_flight_locks`).

The cost moves from one read per request to one `eth_getLogs` and one batch of `escrowOf` calls per
block (and, between blocks, calls for clients new to the book only). A gateway following many
more clients than MAX_CLIENTS would want one multicall per block instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# a client's escrow is followed this long after its last request
CLIENT_TTL_S = 600.0
# and for at most this many clients, the most recent ones (one eth_call each, every block)
MAX_CLIENTS = 1000


class AdmissionBook:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.block = -1  # the block of the escrows below; the index of starts reaches it too
        self._read_at = -float("inf")
        self._escrow: dict[str, int] = {}
        self._seen: dict[str, float] = {}

    def saw(self, client: str) -> None:
        """A request from `client`: follow its escrow from the next block on."""
        self._seen[client.lower()] = self._clock()

    def clients(self) -> list[str]:
        """The clients to read at the next block: seen within CLIENT_TTL_S, newest first."""
        cutoff = self._clock() - CLIENT_TTL_S
        self._seen = {c: t for c, t in self._seen.items() if t >= cutoff}
        return sorted(self._seen, key=self._seen.__getitem__, reverse=True)[:MAX_CLIENTS]

    def update(self, block: int, escrows: dict[str, int]) -> None:
        self.block, self._escrow, self._read_at = block, escrows, self._clock()

    @property
    def escrows(self) -> dict[str, int]:
        """The escrows at `self.block`, by lower-case address."""
        return dict(self._escrow)

    @property
    def age(self) -> float:
        """Seconds since the escrows were read."""
        return self._clock() - self._read_at

    def escrow(self, client: str, head: int, max_age: float) -> int | None:
        """The client's escrow at `self.block`, if the book is within a block of `head` and was
        read within `max_age` seconds; else None (read it instead)."""
        if self.block < head - 1 or self.age > max_age:
            return None
        return self._escrow.get(client.lower())
