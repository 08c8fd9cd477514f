"""Validator and juror bookkeeping: when a node checks, what it queues, and when it stays silent.

The chain is stood in for (`StandInChain`), as in test_node_keeper.py. The artifact store is an
empty one, so the check meets a missing artifact, which is retried until the window's last call and
then judged the executor's fault. One test replaces the check itself to follow a passing verdict
through; the check's own logic is tested in test_verification_validator.py and, with real model
nodes, in tests/e2e/test_devnet.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from eth_account import Account as EthAccount
from eth_utils import keccak

from agents.artifacts.store import ArtifactNotFound
from agents.chain.batches import Batch, Item, Record, Terms
from agents.node import validator
from agents.node.chain_view import (DISPUTED, FINISHED, INVALIDATED, ZERO_ADDRESS, DisputeInfo,
                                    InferenceState)
from agents.node.metrics import NodeMetrics
from agents.node.state import NodeState

ME = EthAccount.from_key("0x" + "61" * 32).address
EXECUTOR = "0x" + "62" * 20
ACCUSER = "0x" + "63" * 20
WINDOW = JURY_WINDOW = 8
SIBLING = b"\xff" * 32  # the other inference of every batch here


def batch(inference_id: bytes) -> Batch:
    """`inference_id` finished in block 100 in a batch of two, numbered after its first byte."""
    items = tuple(Item(i, ACCUSER, 16, 2_000_000_000) for i in (inference_id, SIBLING))
    return Batch(inference_id[0], Terms(EXECUTOR, b"\x01" * 32, 10), items, finish_block=100,
                 p_bps=10_000, completion_tokens=(5, 9))


def _root(record: Record, proof) -> bytes:
    node = record.leaf()
    for sibling in proof:
        node = keccak(min(node, sibling) + max(node, sibling))
    return node


@dataclass
class StandInChain:
    status: int = FINISHED
    validators: list[str] = field(default_factory=lambda: [ME])
    voted_mask: int = 0
    jury: list[str] = field(default_factory=lambda: [ME])
    dispute_open: bool = True
    jury_voted_mask: int = 0

    def inference(self, inference_id: bytes):
        record, proof = batch(inference_id).proven(inference_id)
        return SimpleNamespace(status=self.status, finish_block=100, executor=ZERO_ADDRESS,
                               artifact_digest=b"\x09" * 32, batch=batch(inference_id), record=record,
                               proof=tuple(proof))

    def validators_of(self, record: Record, proof) -> list[str]:
        # the record and its proof, not an id, go to the Ledger, which checks them as here
        assert _root(record, proof) == batch(record.inference_id).root()
        return self.validators

    def state(self, number: int, inference_id: bytes) -> InferenceState:
        assert number == inference_id[0]
        return InferenceState(self.status, self.voted_mask, 0)

    def dispute(self, inference_id: bytes) -> DisputeInfo:
        return DisputeInfo(EXECUTOR, ACCUSER, 110, 3, self.jury_voted_mask, self.dispute_open)

    def jury_of(self, inference_id: bytes) -> list[str]:
        return self.jury


class EmptyStore:
    def get(self, cid: str) -> bytes:
        raise ArtifactNotFound(f"artifact {cid} not found")


class RecordingOutbox:
    def __init__(self):
        self.items: list[tuple] = []

    def enqueue(self, kind, key, args):
        self.items.append((kind, key, args))
        return True


def _ctx(tmp_path, chain: StandInChain):
    async def read(fn, *args):
        return fn(*args)

    return SimpleNamespace(address=ME, state=NodeState(tmp_path / "node.sqlite"), chain=chain,
                           outbox=RecordingOutbox(), read=read, store=EmptyStore(), http=None,
                           metrics=NodeMetrics(), settings=SimpleNamespace(artifact_gateways=[]))


def _verdict(iid: bytes, passed: bool, score: int = 0) -> tuple:
    record, proof = batch(iid).proven(iid)
    return ("validate", "0x" + iid.hex(), [record.as_tuple(), proof, passed, score])


# ------------------------------------------------------------------------------ validation

async def test_validator__watches_others_finish_from_two_blocks_later(tmp_path):
    iid = b"\x07" * 32
    ctx = _ctx(tmp_path, StandInChain())
    validator.on_finished(ctx, iid, EXECUTOR, block=100)
    validator.on_finished(ctx, b"\x08" * 32, ME, block=100)  # never its own
    assert ctx.state.due(validator.ROLE, 101) == []
    assert ctx.state.due(validator.ROLE, 102) == [iid]


async def test_validator__not_assigned__stops_watching_without_verdict(tmp_path):
    iid = b"\x0a" * 32
    ctx = _ctx(tmp_path, StandInChain(validators=[ACCUSER]))
    validator.on_finished(ctx, iid, EXECUTOR, block=100)
    await validator.tick(ctx, head=102, window=WINDOW)
    assert (ctx.outbox.items, ctx.state.watching(validator.ROLE)) == ([], 0)


async def test_validator__artifact_missing__retried_then_failed_as_window_closes(tmp_path):
    iid = b"\x0b" * 32
    ctx = _ctx(tmp_path, StandInChain())
    validator.on_finished(ctx, iid, EXECUTOR, block=100)
    await validator.tick(ctx, head=105, window=WINDOW)
    assert (ctx.outbox.items, ctx.state.watching(validator.ROLE)) == ([], 1)
    await validator.tick(ctx, head=106, window=WINDOW)
    assert ctx.outbox.items == [_verdict(iid, False)]
    assert ctx.state.watching(validator.ROLE) == 0


async def test_validator__second_of_a_quorum__submits_its_verdict(tmp_path):
    iid = b"\x0c" * 32
    ctx = _ctx(tmp_path, StandInChain(status=DISPUTED, validators=[ACCUSER, ME], voted_mask=0b01))
    validator.on_finished(ctx, iid, EXECUTOR, block=100)
    await validator.tick(ctx, head=106, window=WINDOW)
    assert ctx.outbox.items == [_verdict(iid, False)]


async def test_validator__own_verdict_in_already__no_second_one(tmp_path):
    iid = b"\x0d" * 32
    ctx = _ctx(tmp_path, StandInChain(validators=[ACCUSER, ME], voted_mask=0b10))
    validator.on_finished(ctx, iid, EXECUTOR, block=100)
    await validator.tick(ctx, head=106, window=WINDOW)
    assert (ctx.outbox.items, ctx.state.watching(validator.ROLE)) == ([], 0)


async def test_validator__window_closed_or_decided__no_verdict(tmp_path):
    late, decided = b"\x0e" * 32, b"\x0f" * 32
    ctx = _ctx(tmp_path, StandInChain())
    validator.on_finished(ctx, late, EXECUTOR, block=100)
    await validator.tick(ctx, head=109, window=WINDOW)
    ctx.chain.status = INVALIDATED
    validator.on_finished(ctx, decided, EXECUTOR, block=100)
    await validator.tick(ctx, head=103, window=WINDOW)
    assert (ctx.outbox.items, ctx.state.watching(validator.ROLE)) == ([], 0)


async def test_validator__check_passes__passed_verdict_with_score(tmp_path, monkeypatch):
    iid = b"\x10" * 32

    async def passes(ctx, inference_id, info):
        assert (info.record, list(info.proof)) == batch(inference_id).proven(inference_id)
        return validator.Outcome(True, 9_950, ())

    monkeypatch.setattr(validator, "check", passes)
    ctx = _ctx(tmp_path, StandInChain())
    validator.on_finished(ctx, iid, EXECUTOR, block=100)
    await validator.tick(ctx, head=102, window=WINDOW)
    assert ctx.outbox.items == [_verdict(iid, True, 9_950)]


# ------------------------------------------------------------------------------ jury duty

def _vote(iid: bytes, valid: bool) -> tuple:
    return ("vote", "0x" + iid.hex(), ["0x" + iid.hex(), valid])


async def test_juror__parties_to_the_dispute__never_watch(tmp_path):
    ctx = _ctx(tmp_path, StandInChain())
    validator.on_dispute_opened(ctx, b"\x20" * 32, ME, ACCUSER, block=110)
    validator.on_dispute_opened(ctx, b"\x21" * 32, EXECUTOR, ME, block=110)
    assert ctx.state.watching(validator.JURY) == 0


async def test_juror__drawn__votes_what_the_check_finds(tmp_path, monkeypatch):
    valid, invalid = b"\x22" * 32, b"\x23" * 32

    async def check(ctx, inference_id, info):
        return validator.Outcome(inference_id == valid, 0, ())

    monkeypatch.setattr(validator, "check", check)
    ctx = _ctx(tmp_path, StandInChain())
    for iid in (valid, invalid):
        validator.on_dispute_opened(ctx, iid, EXECUTOR, ACCUSER, block=110)
    await validator.jury_tick(ctx, head=111, jury_window=JURY_WINDOW)
    assert ctx.outbox.items == []  # the jury's block hash does not exist yet
    await validator.jury_tick(ctx, head=112, jury_window=JURY_WINDOW)
    assert ctx.outbox.items == [_vote(valid, True), _vote(invalid, False)]
    assert ctx.state.watching(validator.JURY) == 0


async def test_juror__artifact_missing__votes_invalid_at_the_last_call(tmp_path):
    iid = b"\x24" * 32
    ctx = _ctx(tmp_path, StandInChain())  # deadline 110 + 1 + 8 = 119
    validator.on_dispute_opened(ctx, iid, EXECUTOR, ACCUSER, block=110)
    await validator.jury_tick(ctx, head=116, jury_window=JURY_WINDOW)
    assert (ctx.outbox.items, ctx.state.watching(validator.JURY)) == ([], 1)
    await validator.jury_tick(ctx, head=117, jury_window=JURY_WINDOW)
    assert ctx.outbox.items == [_vote(iid, False)]


async def test_juror__not_drawn_or_voted_or_closed__stays_silent(tmp_path):
    cases = [StandInChain(jury=[ACCUSER]),                        # another juror
             StandInChain(jury=[EXECUTOR, ME], jury_voted_mask=0b10),  # its vote is in
             StandInChain(dispute_open=False)]                    # resolved already
    for i, chain in enumerate(cases):
        ctx = _ctx(tmp_path / str(i), chain)
        validator.on_dispute_opened(ctx, b"\x25" * 32, EXECUTOR, ACCUSER, block=110)
        await validator.jury_tick(ctx, head=112, jury_window=JURY_WINDOW)
        assert (ctx.outbox.items, ctx.state.watching(validator.JURY)) == ([], 0)


async def test_juror__voting_closed__no_vote(tmp_path):
    ctx = _ctx(tmp_path, StandInChain())
    validator.on_dispute_opened(ctx, b"\x26" * 32, EXECUTOR, ACCUSER, block=110)
    await validator.jury_tick(ctx, head=120, jury_window=JURY_WINDOW)
    assert (ctx.outbox.items, ctx.state.watching(validator.JURY)) == ([], 0)
