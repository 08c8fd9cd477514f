"""Keeper and validator bookkeeping: what each queues, and when, from the state it keeps.

The chain reads are stood in for by `StandInChain` (and the artifact store by an empty one):
reaching a closed window or a passed deadline on the session's shared anvil would mean warping
time under every other test. The state is the real SQLite store; the outbox stand-in records
what would be queued.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

from eth_account import Account

from agents.node import keeper, validator
from agents.artifacts.store import ArtifactNotFound
from agents.node.chain_view import FINISHED, NONE, STARTED, VALIDATED, ZERO_ADDRESS
from agents.node.metrics import NodeMetrics
from agents.node.state import NodeState

ME = Account.from_key("0x" + "51" * 32)
OTHER = "0x" + "52" * 20
WINDOW = 10


class StandInChain:
    def __init__(self, statuses: dict[bytes, int], validator: str = ME.address):
        self.statuses = statuses
        self.validator = validator

    def inference(self, inference_id: bytes):
        return SimpleNamespace(status=self.statuses[inference_id], finish_block=100,
                               executor=ZERO_ADDRESS, artifact_digest=b"\x09" * 32)

    def validator_of(self, inference_id: bytes) -> str:
        return self.validator


class EmptyStore:
    def get(self, cid: str) -> bytes:
        raise ArtifactNotFound(f"artifact {cid} not found")


class RecordingOutbox:
    def __init__(self):
        self.items: list[tuple] = []

    def enqueue(self, kind, key, args):
        self.items.append((kind, key, args))
        return True


def _ctx(tmp_path, statuses, validator_address: str = ME.address):
    async def read(fn, *args):
        return fn(*args)

    return SimpleNamespace(address=ME.address, state=NodeState(tmp_path / "node.sqlite"),
                           chain=StandInChain(statuses, validator_address), outbox=RecordingOutbox(),
                           read=read, store=EmptyStore(), http=None, metrics=NodeMetrics(),
                           settings=SimpleNamespace(artifact_gateways=[]))


async def test_keeper__own_finish__settled_only_after_window(tmp_path):
    iid = b"\x01" * 32
    ctx = _ctx(tmp_path, {iid: FINISHED})
    keeper.on_finished(ctx, iid, ME.address, block=100, window=WINDOW)
    await keeper.tick(ctx, head=110, window=WINDOW)
    assert ctx.outbox.items == []
    await keeper.tick(ctx, head=111, window=WINDOW)
    assert ctx.outbox.items == [("settle", "0x" + iid.hex(), "0x" + iid.hex())]
    await keeper.tick(ctx, head=112, window=WINDOW)
    assert len(ctx.outbox.items) == 1


async def test_keeper__validated_meanwhile__not_settled(tmp_path):
    iid = b"\x02" * 32
    ctx = _ctx(tmp_path, {iid: VALIDATED})
    keeper.on_finished(ctx, iid, ME.address, block=100, window=WINDOW)
    await keeper.tick(ctx, head=200, window=WINDOW)
    assert ctx.outbox.items == []
    assert ctx.state.watching(keeper.SETTLE) == 0


async def test_keeper__others_finish__not_watched(tmp_path):
    ctx = _ctx(tmp_path, {})
    keeper.on_finished(ctx, b"\x03" * 32, OTHER, block=100, window=WINDOW)
    assert ctx.state.watching(keeper.SETTLE) == 0


async def test_keeper__stale_start__expired_after_deadline_plus_window(tmp_path):
    stale, fresh, never = b"\x04" * 32, b"\x05" * 32, b"\x06" * 32
    now = int(time.time())
    ctx = _ctx(tmp_path, {stale: STARTED, fresh: STARTED, never: NONE})
    ctx.state.watch(keeper.EXPIRE, stale, now - WINDOW - 5)
    ctx.state.watch(keeper.EXPIRE, fresh, now + 60)
    ctx.state.watch(keeper.EXPIRE, never, now - WINDOW - 5)
    await keeper.tick(ctx, head=1, window=WINDOW)
    assert ctx.outbox.items == [("expire", "0x" + stale.hex(), "0x" + stale.hex())]
    assert ctx.state.watching(keeper.EXPIRE) == 1  # only the fresh one is still watched


async def test_validator__watches_others_finish_from_two_blocks_later(tmp_path):
    iid = b"\x07" * 32
    ctx = _ctx(tmp_path, {})
    validator.on_finished(ctx, iid, OTHER, block=100)
    validator.on_finished(ctx, b"\x08" * 32, ME.address, block=100)  # never its own
    assert ctx.state.due(validator.ROLE, 101) == []
    assert ctx.state.due(validator.ROLE, 102) == [iid]


async def test_validator__not_assigned__stops_watching_without_verdict(tmp_path):
    iid = b"\x0a" * 32
    ctx = _ctx(tmp_path, {iid: FINISHED}, validator_address=OTHER)
    validator.on_finished(ctx, iid, OTHER, block=100)
    await validator.tick(ctx, head=102, window=WINDOW)
    assert (ctx.outbox.items, ctx.state.watching(validator.ROLE)) == ([], 0)


async def test_validator__artifact_missing__retried_then_failed_as_window_closes(tmp_path):
    iid = b"\x0b" * 32
    ctx = _ctx(tmp_path, {iid: FINISHED})
    validator.on_finished(ctx, iid, OTHER, block=100)
    await validator.tick(ctx, head=107, window=WINDOW)
    assert (ctx.outbox.items, ctx.state.watching(validator.ROLE)) == ([], 1)
    await validator.tick(ctx, head=108, window=WINDOW)
    assert ctx.outbox.items == [("validate", "0x" + iid.hex(), ["0x" + iid.hex(), False, 0])]
    assert ctx.state.watching(validator.ROLE) == 0
