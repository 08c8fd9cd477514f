"""Event streams with a persisted checkpoint: a restarted node resumes where it left off.

A poller reads one event of one contract in block ranges (`eth_getLogs`, posted raw and decoded
with eth-abi: web3's event filters cost a node a few milliseconds of CPU per poll, every second),
hands each event to a handler, and only then records the range's last block in SQLite. Delivery is
at least once: a crash between a handler and the checkpoint replays that range, so handlers must be
idempotent (they key their effects on the inference id, and the outbox ignores a key it already
holds).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable

from eth_abi import encode

from agents.chain import rpc
from agents.chain.client import ChainClient
from agents.chain.rpc import EventDecoder

log = logging.getLogger(__name__)

# an event as handlers get it: {"args": {name: value}, "blockNumber", "logIndex", "transactionHash"}
Event = dict[str, Any]
Handler = Callable[[Event], Awaitable[None]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    name TEXT PRIMARY KEY,  -- one per consumer of an event stream
    block INTEGER NOT NULL  -- the last block whose events were all handled
)
"""


class EventPoller:
    def __init__(
        self,
        client: ChainClient,
        contract,
        event_name: str,
        checkpoint_db: str | Path,
        from_block: int,
        *,
        name: str | None = None,
        argument_filters: dict[str, Any] | None = None,
        max_range: int = 2000,
        confirmations: int = 0,
    ):
        """Stream `event_name` of `contract` from `from_block` (the deployment block, usually).

        `name` identifies the checkpoint; give two consumers of one event different names.
        `argument_filters` narrows on indexed arguments, e.g. {"executor": my_address}.
        `confirmations` keeps that many blocks behind the head, for chains that reorganize.
        """
        events = {item["name"]: item for item in contract.abi if item["type"] == "event"}
        if event_name not in events:
            raise ValueError(f"contract {contract.address} has no event {event_name!r}; it has {', '.join(events)}")
        self.client = client
        self.address = contract.address
        self.decode = EventDecoder(events[event_name])
        self.topics = [self.decode.topic, *_topic_filters(events[event_name], argument_filters or {})]
        self.name = name or f"{contract.address}:{event_name}"
        self.from_block = from_block
        self.max_range = max_range
        self.confirmations = confirmations
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(checkpoint_db), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._db:
            self._db.execute(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @property
    def last_block(self) -> int:
        """The last block fully handled: the checkpoint, or the block before `from_block`."""
        with self._lock:
            row = self._db.execute("SELECT block FROM checkpoints WHERE name = ?", (self.name,)).fetchone()
        return row[0] if row else self.from_block - 1

    def fetch(self) -> tuple[list[Event], int | None]:
        """Events of the next range after the checkpoint and the range's last block; (.., None)
        when no new block is there. Does not move the checkpoint."""
        start = self.last_block + 1
        head = int(rpc.request(self.client.w3, "eth_blockNumber", []), 16) - self.confirmations
        if start > head:
            return [], None
        end = min(head, start + self.max_range - 1)
        logs = rpc.request(self.client.w3, "eth_getLogs", [{
            "address": self.address, "topics": self.topics, "fromBlock": hex(start), "toBlock": hex(end)}])
        return [{"args": self.decode(log), "blockNumber": int(log["blockNumber"], 16),
                 "logIndex": int(log["logIndex"], 16), "transactionHash": log["transactionHash"]}
                for log in logs], end

    def commit(self, block: int) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO checkpoints (name, block) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET block = excluded.block",
                (self.name, block),
            )

    async def step(self, handler: Handler) -> bool:
        """Handle one range; False when there was nothing new to read."""
        events, end = await asyncio.to_thread(self.fetch)
        if end is None:
            return False
        for event in events:
            await handler(event)
        self.commit(end)
        return True

    async def run(self, handler: Handler, stop: asyncio.Event, interval: float = 0.5) -> None:
        """Handle events until `stop` is set: ranges back to back while behind, then every `interval`."""
        while not stop.is_set():
            try:
                progressed = await self.step(handler)
            # A failing handler or an unreachable node must not end the stream: the range is
            # retried from the checkpoint after a pause.
            except Exception:  # noqa: BLE001
                log.exception("%s: handling events failed; retrying", self.name)
                progressed = False
            if not progressed:
                try:
                    await asyncio.wait_for(stop.wait(), interval)
                except TimeoutError:
                    pass


def _topic_filters(event_abi: dict, filters: dict[str, Any]) -> list[str | None]:
    """eth_getLogs topics 1.. for `filters` on indexed arguments (None: any value)."""
    indexed = [i for i in event_abi["inputs"] if i["indexed"]]
    unknown = set(filters) - {i["name"] for i in indexed}
    if unknown:
        raise ValueError(f"not indexed arguments of {event_abi['name']}: {', '.join(sorted(unknown))}")
    topics = ["0x" + encode([i["type"]], [filters[i["name"]]]).hex() if i["name"] in filters else None
              for i in indexed]
    while topics and topics[-1] is None:
        topics.pop()
    return topics
