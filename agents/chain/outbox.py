"""The persistent outbox: chain writes leave the request path, get batched, and survive restarts.

Roles enqueue what they want on chain; `run` sends it. Pending starts go out as one `startBatch`
per executor and model, which spreads the fixed cost of a transaction over up to `batch_size`
inferences (and the Ledger's one slot per batch, docs/gas.md); every other item is one call, a
`finishBatch` or `expireBatch` already holding a whole batch. When a start batch reverts, its items
are tried one by one so that a bad item fails alone, with its revert reason recorded, and the others
still go out together. A mined revert that its block caused (`client.STATE_CHANGED`) is deferred
and retried, up to `max_deferrals` times. Every state change is in SQLite
before the next step, and the hash of a sent transaction is recorded before its receipt is awaited,
so a restarted outbox resends what was pending and checks, rather than resends, what was already
sent.

Item states: pending -> sent -> done | failed (and sent -> pending when a transaction vanished).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.chain.client import STATE_CHANGED, ChainClient, ChainError, ChainUnavailable

log = logging.getLogger(__name__)

# Kinds in the order a flush sends them: a start before a finish before what follows a finish,
# and a dispute's resolution before the claims it holds up.
# kind -> (Ledger function, the item's parameters); a start item is one of a `startBatch`'s items
# with its executor and model, which group it
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "start": ("startBatch", ("executor", "model_id", "item")),
    "finish": ("finishBatch", ("batch", "terms", "items", "answers")),
    "validate": ("submitValidation", ("record", "proof", "passed", "score")),
    "vote": ("vote", ("inference_id", "valid")),
    "resolve": ("resolve", ("record", "proof")),
    "report_lazy": ("reportLazy", ("record", "proof")),
    "expire": ("expireBatch", ("batch", "terms", "items")),
    "claim": ("claim", ("participant", "epoch")),
    "rollover": ("rollover", ("epoch",)),
}
GROUPED = "start"
DUE_START_BATCHES = 8  # start batches one flush may send, of different executors
STATES = ("pending", "sent", "done", "failed")
MAX_BATCH = 32  # the Ledger's DynArray bound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    args TEXT NOT NULL,                  -- JSON; bytes as 0x hex
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, -- deferrals so far
    not_before REAL NOT NULL DEFAULT 0,  -- unix time before which a deferred item waits
    tx_hash TEXT,
    error TEXT,                          -- last revert reason
    updated REAL NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, kind, not_before);
"""


@dataclass(frozen=True)
class ItemStatus:
    kind: str
    key: str
    state: str
    attempts: int
    tx_hash: str | None
    error: str | None


@dataclass(frozen=True)
class _Item:
    rowid: int
    kind: str
    key: str
    args: Any
    attempts: int


def json_bytes(value: Any) -> Any:
    """`json.dumps`' default for the chain's bytes: 0x hex, as web3 takes them back."""
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    raise TypeError(type(value).__name__)


class Outbox:
    def __init__(
        self,
        path: str | Path,
        client: ChainClient,
        batch_size: int = 16,
        flush_interval: float = 0.5,
        *,
        max_deferrals: int = 10,
        defer_delay: float = 2.0,
        max_backoff: float = 30.0,
    ):
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be in [1, {MAX_BATCH}], got {batch_size}")
        self.client = client
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_deferrals = max_deferrals
        self.defer_delay = defer_delay
        self.max_backoff = max_backoff
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # --- the roles' side ----------------------------------------------------------------------

    def enqueue(self, kind: str, key: str, args: Any) -> bool:
        """Queue a chain write; False if (kind, key) was queued before (nothing changes then).

        `args` is the tuple of the kind's parameters (KINDS): (executor, model_id, StartItem) for
        "start", the call's arguments for the others, or the epoch alone for "rollover". Bytes may
        be given as bytes or 0x hex.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown outbox kind {kind!r}: expected one of {', '.join(KINDS)}")
        if not isinstance(key, str) or not key:
            raise ValueError("outbox key must be a non-empty string")
        params = KINDS[kind][1]
        if len(params) > 1 and (not isinstance(args, (list, tuple)) or len(args) != len(params)):
            raise ValueError(f"{kind} args must be ({', '.join(params)})")
        try:
            encoded = json.dumps(args, default=json_bytes)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{kind} args are not JSON-serializable: {exc}") from None
        with self._lock, self._db:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO outbox (kind, key, args, updated) VALUES (?, ?, ?, ?)",
                (kind, key, encoded, time.time()),
            )
        return cursor.rowcount == 1

    def status(self, kind: str, key: str) -> ItemStatus | None:
        with self._lock:
            row = self._db.execute(
                "SELECT state, attempts, tx_hash, error FROM outbox WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
        return ItemStatus(kind, key, *row) if row else None

    def counts(self, kind: str | None = None) -> dict[str, int]:
        """Items (of `kind`, or all) per state, every state present, for /metrics."""
        with self._lock:
            rows = self._db.execute(
                "SELECT state, COUNT(*) FROM outbox WHERE ? IS NULL OR kind = ? GROUP BY state",
                (kind, kind)).fetchall()
        return {state: 0 for state in STATES} | dict(rows)

    # --- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Flush until `stop` is set; back off exponentially while the chain is unreachable."""
        failures = 0
        while not stop.is_set():
            try:
                handled = await self.flush()
            except ChainUnavailable as exc:
                failures += 1
                delay = min(self.max_backoff, self.flush_interval * 2**failures)
                log.warning("chain unavailable (%s); retrying in %.1f s", exc, delay)
                await _sleep_unless(stop, delay)
                continue
            failures = 0
            if not handled:
                await _sleep_unless(stop, self.flush_interval)

    async def flush(self) -> int:
        """Send what is due, one batch transaction per kind, and settle the outcomes.

        Returns the number of items whose outcome was settled (done, failed or deferred). Raises
        ChainUnavailable after recording what it could; the items concerned stay pending or sent.
        """
        handled = await self._recover_sent()
        sent: list[tuple[str, list[_Item], str]] = []
        for kind in KINDS:
            items = self._due(kind)
            if not items:
                continue
            for group in _groups(kind, items, self.batch_size):
                try:
                    tx_hash = await asyncio.to_thread(self.client.send, self._call(kind, group))
                except ChainError as exc:  # the estimate reverted: nothing was sent
                    handled += await self._resolve(kind, group, exc.reason)
                    continue
                self._set(group, "sent", tx_hash=tx_hash)
                sent.append((kind, group, tx_hash))
        results = await asyncio.gather(
            *(asyncio.to_thread(self.client.wait, tx_hash) for _, _, tx_hash in sent), return_exceptions=True
        )
        unavailable = None
        for (kind, group, _), result in zip(sent, results):
            if isinstance(result, ChainError):
                handled += await self._resolve(kind, group, result.reason)
            elif isinstance(result, BaseException):
                unavailable = unavailable or result
            else:
                self._set(group, "done")
                handled += len(group)
        if unavailable:
            raise unavailable
        return handled

    async def _recover_sent(self) -> int:
        """Settle items left 'sent' by a crash or an unreachable node: check, never blindly resend."""
        with self._lock:
            rows = self._db.execute(
                "SELECT rowid, kind, key, args, attempts, tx_hash FROM outbox WHERE state = 'sent' ORDER BY rowid"
            ).fetchall()
        by_tx: dict[str, list[_Item]] = {}
        for rowid, kind, key, args, attempts, tx_hash in rows:
            by_tx.setdefault(tx_hash, []).append(_Item(rowid, kind, key, json.loads(args), attempts))
        handled = 0
        for tx_hash, group in by_tx.items():
            if await asyncio.to_thread(self.client.receipt, tx_hash) is not None:
                try:
                    await asyncio.to_thread(self.client.wait, tx_hash)
                except ChainError as exc:
                    handled += await self._resolve(group[0].kind, group, exc.reason)
                    continue
                self._set(group, "done")
                handled += len(group)
            elif not await asyncio.to_thread(self.client.is_known, tx_hash):
                log.warning("transaction %s vanished; %d item(s) will be resent", tx_hash, len(group))
                self._set(group, "pending", tx_hash=None)
        return handled

    async def _resolve(self, kind: str, group: list[_Item], reason: str) -> int:
        """A transaction for `group` reverted with `reason`: isolate the bad item(s) of a start batch.

        Each item is first tried alone with an estimate, which costs nothing; those that revert are
        recorded, the rest go out together again. Items that pass alone but fail together (two
        starts that each fit the client's escrow, but not both) are then sent one by one.
        """
        if len(group) == 1:
            self._revert(group[0], reason)
            return 1
        log.info("%s batch of %d reverted (%s); isolating", kind, len(group), reason)
        self._set(group, "pending", tx_hash=None)
        good = []
        for item in group:
            try:
                await asyncio.to_thread(self.client.estimate, self._call(kind, [item]))
            except ChainError as exc:
                self._revert(item, exc.reason)
                continue
            good.append(item)
        if len(good) > 1:
            try:
                await self._send_and_wait(kind, good)
                return len(group)
            except ChainError:
                pass
        for item in good:
            try:
                await self._send_and_wait(kind, [item])
            except ChainError as exc:
                self._revert(item, exc.reason)
        return len(group)

    async def _send_and_wait(self, kind: str, group: list[_Item]) -> None:
        tx_hash = await asyncio.to_thread(self.client.send, self._call(kind, group))
        self._set(group, "sent", tx_hash=tx_hash)
        await asyncio.to_thread(self.client.wait, tx_hash)
        self._set(group, "done")

    def _revert(self, item: _Item, reason: str) -> None:
        if reason == STATE_CHANGED and item.attempts < self.max_deferrals:
            # The block the transaction landed in changed its outcome (docs at STATE_CHANGED): try
            # again later.
            with self._lock, self._db:
                self._db.execute(
                    "UPDATE outbox SET state = 'pending', attempts = attempts + 1, not_before = ?, "
                    "tx_hash = NULL, error = ?, updated = ? WHERE rowid = ?",
                    (time.time() + self.defer_delay, reason, time.time(), item.rowid),
                )
            return
        log.warning("outbox %s %s failed: %s", item.kind, item.key, reason)
        self._set([item], "failed", error=reason)

    # --- helpers ------------------------------------------------------------------------------

    def _due(self, kind: str) -> list[_Item]:
        # starts are grouped by executor after this read, so it reads enough for several batches
        limit = self.batch_size * (DUE_START_BATCHES if kind == GROUPED else 1)
        with self._lock:
            rows = self._db.execute(
                "SELECT rowid, key, args, attempts FROM outbox WHERE kind = ? AND state = 'pending' "
                "AND not_before <= ? ORDER BY rowid LIMIT ?",
                (kind, time.time(), limit),
            ).fetchall()
        return [_Item(rowid, kind, key, json.loads(args), attempts) for rowid, key, args, attempts in rows]

    def _call(self, kind: str, group: list[_Item]):
        name, params = KINDS[kind]
        function = getattr(self.client.ledger.functions, name)
        if kind == GROUPED:
            executor, model_id, _ = group[0].args
            return function(executor, model_id, [item.args[2] for item in group])
        (item,) = group
        return function(*item.args) if len(params) > 1 else function(item.args)

    def _set(self, group: list[_Item], state: str, **fields: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in ("state", "updated", *fields))
        values = (state, time.time(), *fields.values())
        with self._lock, self._db:
            self._db.executemany(
                f"UPDATE outbox SET {assignments} WHERE rowid = ?", [(*values, item.rowid) for item in group]
            )


def _groups(kind: str, items: list[_Item], size: int) -> list[list[_Item]]:
    """One call's items: up to `size` starts of one executor and model together, anything else
    alone."""
    if kind != GROUPED:
        return [[item] for item in items]
    groups: dict[tuple[str, str], list[_Item]] = {}
    for item in items:
        executor, model_id, _ = item.args
        groups.setdefault((executor.lower(), model_id.lower()), []).append(item)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
