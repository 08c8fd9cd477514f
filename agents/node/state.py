"""The node's own state that must survive a restart, in one SQLite file.

- `nonces`: every (client, nonce) this gateway accepted, so a replay is refused even before its
  start lands on chain, with the lock it holds until the chain shows the start.
- `executions`: inference ids this executor ran, so an order is executed once.
- `answers`: the answers this executor gave (hashes and output tokens), until the batch holding
  them is finished; `batches`: the batches started for this executor and not yet finished, with
  the arguments their `finishBatch` takes (agents.node.finisher).
- `watch`: inferences a role waits on, each until a block or a time: the validator (its assignment
  after a finish), the juror (its jury after a dispute opens), the keeper (lazy validators after
  the window as executor, expiry after the deadline as gateway, resolution after a dispute's
  deadline).
- `started`: the gateway's index of the inferences started on chain (through any gateway), with
  their clients' nonces, from the Ledger's `Started` logs, complete through the block in cursor
  `started`; an entry is kept until its deadline, after which no gateway admits its request again
  (a reused nonce with a later deadline is refused by the Ledger's bitmap at start).
- `cursors`: named counters, such as the next epoch whose claim the keeper has to look at.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from agents.node.chain_view import StartedLog

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nonces (
    client TEXT NOT NULL, nonce TEXT NOT NULL, inference_id TEXT NOT NULL,
    lock TEXT NOT NULL, deadline INTEGER NOT NULL, pending INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (client, nonce));
CREATE TABLE IF NOT EXISTS executions (inference_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS answers (
    inference_id TEXT PRIMARY KEY, response_hash TEXT NOT NULL, artifact_digest TEXT NOT NULL,
    completion_tokens INTEGER NOT NULL, deadline INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (batch INTEGER PRIMARY KEY, args TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS watch (
    role TEXT NOT NULL, inference_id TEXT NOT NULL, due INTEGER NOT NULL,
    PRIMARY KEY (role, inference_id));
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS started (
    inference_id TEXT PRIMARY KEY, block INTEGER NOT NULL, deadline INTEGER NOT NULL,
    client TEXT NOT NULL, nonce TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS started_deadline ON started (deadline);
CREATE INDEX IF NOT EXISTS started_nonce ON started (client, nonce);
"""
STARTED_CURSOR = "started"


class NodeState:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL survives a crash of the process and skips an fsync per request on the
        # gateway's path; only a power loss can drop the last commits, and then the Ledger's own
        # nonce bitmap still stops a replay of a request whose start has landed.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    # gateway -------------------------------------------------------------------------------

    def nonce_used(self, client: str, nonce: int) -> bool:
        row = self._db.execute("SELECT 1 FROM nonces WHERE client=? AND nonce=?",
                               (client.lower(), str(nonce))).fetchone()
        return row is not None

    def claim_nonce(self, client: str, nonce: int, inference_id: bytes, lock: int,
                    deadline: int) -> bool:
        """Record an accepted request; False if the nonce was taken meanwhile."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO nonces (client, nonce, inference_id, lock, deadline) "
                "VALUES (?, ?, ?, ?, ?)",
                (client.lower(), str(nonce), inference_id.hex(), str(lock), deadline))
            return cur.rowcount == 1

    def pending_locks(self, client: str) -> list[tuple[bytes, int, int]]:
        """(inference id, lock, deadline) of this client's accepted requests not yet seen started."""
        rows = self._db.execute(
            "SELECT inference_id, lock, deadline FROM nonces WHERE client=? AND pending=1",
            (client.lower(),)).fetchall()
        return [(bytes.fromhex(i), int(lock), deadline) for i, lock, deadline in rows]

    def release_lock(self, inference_id: bytes) -> None:
        """The chain now holds the lock (or never will): stop counting it here."""
        self._db.execute("UPDATE nonces SET pending=0 WHERE inference_id=?", (inference_id.hex(),))

    # executor ------------------------------------------------------------------------------

    def claim_execution(self, inference_id: bytes) -> bool:
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO executions VALUES (?)",
                                   (inference_id.hex(),))
            return cur.rowcount == 1

    def save_answer(self, inference_id: bytes, response_hash: bytes, artifact_digest: bytes,
                    completion_tokens: int, deadline: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                         (inference_id.hex(), response_hash.hex(), artifact_digest.hex(),
                          completion_tokens, deadline))

    def answers(self, inference_ids: list[bytes]) -> dict[bytes, tuple[bytes, bytes, int]]:
        """(response hash, artifact digest, output tokens) of those of `inference_ids` answered."""
        marks = ",".join("?" * len(inference_ids))
        rows = self._db.execute(
            f"SELECT inference_id, response_hash, artifact_digest, completion_tokens FROM answers "
            f"WHERE inference_id IN ({marks})", [i.hex() for i in inference_ids]).fetchall()
        return {bytes.fromhex(i): (bytes.fromhex(r), bytes.fromhex(d), t) for i, r, d, t in rows}

    def open_batch(self, batch: int, args: str) -> None:
        """Keep a batch started for this executor: `args` (JSON) are its finishBatch's first three
        arguments."""
        self._db.execute("INSERT OR IGNORE INTO batches VALUES (?, ?)", (batch, args))

    def open_batches(self) -> list[tuple[int, str]]:
        return self._db.execute("SELECT batch, args FROM batches ORDER BY batch").fetchall()

    def close_batch(self, batch: int, inference_ids: list[bytes], stale_before: int) -> None:
        """The batch's finish is queued: forget it, its answers, and the answers whose deadline is
        before `stale_before` (requests whose start never landed, and never will)."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM batches WHERE batch=?", (batch,))
            self._db.executemany("DELETE FROM answers WHERE inference_id=?",
                                 [(i.hex(),) for i in inference_ids])
            self._db.execute("DELETE FROM answers WHERE deadline<?", (stale_before,))
            self._db.execute("COMMIT")

    # gateway: the index of started inferences ------------------------------------------------

    def index_started(self, logs: Iterable[StartedLog], through: int, now: int) -> None:
        """Add the starts of the blocks up to `through` and move the index's cursor there, in one
        transaction (a restart resumes after the last block indexed); drop the starts whose
        deadline has passed."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR IGNORE INTO started VALUES (?, ?, ?, ?, ?)",
                                     [(log.inference_id.hex(), log.block, log.deadline, log.client.lower(),
                                       str(log.nonce)) for log in logs])
                self._db.execute("DELETE FROM started WHERE deadline < ?", (now,))
                self._db.execute("INSERT OR REPLACE INTO cursors VALUES (?, ?)",
                                 (STARTED_CURSOR, through))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def indexed_through(self, default: int) -> int:
        """The last block whose starts are all in the index."""
        return self.cursor(STARTED_CURSOR, default)

    def started_block(self, inference_id: bytes) -> int | None:
        """The block whose `Started` log the index holds for this inference, if any."""
        row = self._db.execute("SELECT block FROM started WHERE inference_id=?",
                               (inference_id.hex(),)).fetchone()
        return None if row is None else row[0]

    def nonce_started(self, client: str, nonce: int) -> bool:
        """Whether the index holds a start with this client's nonce (any request)."""
        row = self._db.execute("SELECT 1 FROM started WHERE client=? AND nonce=?",
                               (client.lower(), str(nonce))).fetchone()
        return row is not None

    # role watch lists ----------------------------------------------------------------------

    def watch(self, role: str, inference_id: bytes, due: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO watch VALUES (?, ?, ?)",
                         (role, inference_id.hex(), due))

    def due(self, role: str, now: int) -> list[bytes]:
        rows = self._db.execute("SELECT inference_id FROM watch WHERE role=? AND due<=? ORDER BY due",
                                (role, now)).fetchall()
        return [bytes.fromhex(r[0]) for r in rows]

    def unwatch(self, role: str, inference_id: bytes) -> None:
        self._db.execute("DELETE FROM watch WHERE role=? AND inference_id=?",
                         (role, inference_id.hex()))

    def watching(self, role: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM watch WHERE role=?", (role,)).fetchone()[0]

    # cursors -------------------------------------------------------------------------------

    def cursor(self, name: str, default: int = 0) -> int:
        row = self._db.execute("SELECT value FROM cursors WHERE name=?", (name,)).fetchone()
        return default if row is None else row[0]

    def set_cursor(self, name: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO cursors VALUES (?, ?)", (name, value))
