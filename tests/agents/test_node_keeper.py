"""Keeper bookkeeping: what it queues, and when, from the state it keeps.

The chain reads are stood in for by `StandInChain`: reaching a closed window, a passed deadline or
a settled epoch on the session's shared anvil would mean mining or warping time under every other
test. Its batches are real `agents.chain.batches` values, and it checks every record and proof
it is given against its batch's root, as the Ledger does. The state is the real SQLite store; the
outbox stand-in records what would be queued.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

from eth_account import Account as EthAccount
from eth_utils import keccak

from agents.chain.batches import Batch, Item, Record, Terms
from agents.node import keeper
from agents.node.chain_view import (CLAIMED, DISPUTED, EXPIRED, FINISHED, FORFEITED, INELIGIBLE, NONE,
                                    STARTED, VALIDATED, Account, DisputeInfo, Epoch, InferenceState,
                                    Members)
from agents.node.metrics import NodeMetrics
from agents.node.state import NodeState

ME = EthAccount.from_key("0x" + "51" * 32).address
OTHER = "0x" + "52" * 20
THIRD = "0x" + "53" * 20
WINDOW = 8
EPOCH_LENGTH, SETTLEMENT = 30, 20
MODEL = b"\x01" * 32
SIBLING = b"\xff" * 32  # the other inference of every finished batch here


def finished_batch(inference_id: bytes) -> Batch:
    """`inference_id` finished by this node in a batch of two, numbered after its first byte."""
    items = tuple(Item(i, OTHER, 16, 2_000_000_000) for i in (SIBLING, inference_id))
    return Batch(inference_id[0], Terms(ME, MODEL, 10), items, finish_block=100, p_bps=10_000,
                 completion_tokens=(7, 5))


def started_batch(number: int, deadlines: dict[bytes, int]) -> Batch:
    """A batch started for another executor with these inferences and deadlines, in order."""
    return Batch(number, Terms(OTHER, MODEL, 10),
                 tuple(Item(i, THIRD, 16, deadline) for i, deadline in deadlines.items()))


def proven(inference_id: bytes) -> list:
    """What the keeper queues for a finished inference: its record and proof."""
    record, proof = finished_batch(inference_id).proven(inference_id)
    return [record.as_tuple(), proof]


def _root(record: Record, proof) -> bytes:
    node = record.leaf()
    for sibling in proof:
        node = keccak(min(node, sibling) + max(node, sibling))
    return node


@dataclass
class StandInChain:
    statuses: dict[bytes, int] = field(default_factory=dict)
    batches: dict[bytes, Batch] = field(default_factory=dict)  # default: finished_batch(id)
    validators: list[str] = field(default_factory=lambda: [OTHER])
    voted_mask: int = 0
    disputes: dict[bytes, bool] = field(default_factory=dict)  # id -> open
    accounts: dict[int, Account] = field(default_factory=dict)
    epochs: dict[int, Epoch] = field(default_factory=dict)

    def batch_of(self, inference_id: bytes) -> Batch:
        return self.batches.get(inference_id) or finished_batch(inference_id)

    def inference(self, inference_id: bytes):
        batch = self.batch_of(inference_id)
        record, proof = batch.proven(inference_id) if batch.finished else (None, [])
        return SimpleNamespace(status=self.statuses[inference_id], finish_block=batch.finish_block or 0,
                               executor=batch.terms.executor, batch=batch, record=record,
                               proof=tuple(proof))

    def validators_of(self, record: Record, proof) -> list[str]:
        # the record and its proof, not an id, go to the Ledger
        assert _root(record, proof) == self.batch_of(record.inference_id).root()
        return self.validators

    def state(self, batch: int, inference_id: bytes) -> InferenceState:
        assert batch == self.batch_of(inference_id).number
        return InferenceState(self.statuses[inference_id], self.voted_mask, 0)

    def dispute(self, inference_id: bytes) -> DisputeInfo:
        return DisputeInfo(ME, OTHER, 100, 3, 0, self.disputes[inference_id])

    def epoch_of(self, block: int) -> int:
        return block // EPOCH_LENGTH

    def claim_block(self, epoch: int) -> int:
        return (epoch + 1) * EPOCH_LENGTH + SETTLEMENT

    def epoch(self, epoch: int) -> Epoch:
        return self.epochs.get(epoch, Epoch(0, 0, 0))

    def account(self, participant: str, epoch: int) -> Account:
        assert participant == ME
        return self.accounts.get(epoch, Account(0, 0, 0, 0))


class RecordingOutbox:
    """What would be queued; like the outbox, a (kind, key) queued before is ignored."""

    def __init__(self):
        self.items: list[tuple] = []

    def enqueue(self, kind, key, args):
        if any((kind, key) == (k, q) for k, q, _ in self.items):
            return False
        self.items.append((kind, key, args))
        return True


def _ctx(tmp_path, chain: StandInChain):
    async def read(fn, *args):
        return fn(*args)

    async def members():  # this node second in draw order: its rollover turn is 2 blocks late
        return Members((OTHER, ME), (1, 1))

    return SimpleNamespace(address=ME, state=NodeState(tmp_path / "node.sqlite"), chain=chain,
                           outbox=RecordingOutbox(), read=read, members=members,
                           metrics=NodeMetrics())


# ------------------------------------------------------------------------------ lazy validators

async def test_keeper__own_finish_with_silent_validator__reported_after_window(tmp_path):
    iid = b"\x01" * 32
    ctx = _ctx(tmp_path, StandInChain({iid: FINISHED}))
    keeper.on_finished(ctx, iid, ME, block=100, window=WINDOW)
    await keeper.report_lazy(ctx, head=108)
    assert ctx.outbox.items == []
    await keeper.report_lazy(ctx, head=109)
    assert ctx.outbox.items == [("report_lazy", "0x" + iid.hex(), proven(iid))]
    assert ctx.outbox.items[0][2][1] != []  # a batch of two: the record's sibling proves it
    assert ctx.state.watching(keeper.LAZY) == 0


async def test_keeper__every_validator_submitted__nothing_reported(tmp_path):
    iid = b"\x02" * 32
    ctx = _ctx(tmp_path, StandInChain({iid: VALIDATED}, validators=[OTHER, THIRD], voted_mask=0b11))
    keeper.on_finished(ctx, iid, ME, block=100, window=WINDOW)
    await keeper.report_lazy(ctx, head=109)
    assert (ctx.outbox.items, ctx.state.watching(keeper.LAZY)) == ([], 0)


async def test_keeper__second_of_quorum_silent__reported(tmp_path):
    iid = b"\x03" * 32
    ctx = _ctx(tmp_path, StandInChain({iid: DISPUTED}, validators=[OTHER, THIRD], voted_mask=0b01))
    keeper.on_finished(ctx, iid, ME, block=100, window=WINDOW)
    await keeper.report_lazy(ctx, head=109)
    assert [kind for kind, _, _ in ctx.outbox.items] == ["report_lazy"]


async def test_keeper__not_validated__nothing_reported(tmp_path):
    iid = b"\x04" * 32
    ctx = _ctx(tmp_path, StandInChain({iid: FINISHED}, validators=[]))
    keeper.on_finished(ctx, iid, ME, block=100, window=WINDOW)
    await keeper.report_lazy(ctx, head=109)
    assert ctx.outbox.items == []


async def test_keeper__epoch_settled__too_late_to_report(tmp_path):
    iid = b"\x05" * 32
    ctx = _ctx(tmp_path, StandInChain({iid: FINISHED}))  # finish block 100: epoch 3, claims at 140
    ctx.state.watch(keeper.LAZY, iid, 109)
    await keeper.report_lazy(ctx, head=140)
    assert (ctx.outbox.items, ctx.state.watching(keeper.LAZY)) == ([], 0)


async def test_keeper__others_finish__not_watched(tmp_path):
    ctx = _ctx(tmp_path, StandInChain())
    keeper.on_finished(ctx, b"\x06" * 32, OTHER, block=100, window=WINDOW)
    assert ctx.state.watching(keeper.LAZY) == 0


# ------------------------------------------------------------------------------ expiry

async def test_keeper__stale_start__its_batch_expired_whole(tmp_path):
    stale, fresh, never, finished = b"\x07" * 32, b"\x08" * 32, b"\x09" * 32, b"\x0a" * 32
    now = int(time.time())
    past = now - WINDOW - 5
    batch = started_batch(7, {stale: past})
    ctx = _ctx(tmp_path, StandInChain({stale: STARTED, fresh: STARTED, never: NONE, finished: FINISHED},
                                      batches={stale: batch, fresh: started_batch(8, {fresh: now + 60})}))
    for iid in (stale, never, finished):
        ctx.state.watch(keeper.EXPIRE, iid, past)
    ctx.state.watch(keeper.EXPIRE, fresh, now + 60)
    await keeper.tick(ctx, head=1, window=WINDOW)
    assert ctx.outbox.items == [("expire", "7", list(batch.args()))]
    assert ctx.state.watching(keeper.EXPIRE) == 1  # only the fresh one is still watched


async def test_keeper__batch_with_a_later_deadline__expired_after_the_latest(tmp_path):
    """The Ledger expires a batch whole, once every deadline's window is over: an inference due
    before its batch is watched again until the batch's latest deadline."""
    early, late = b"\x0d" * 32, b"\x0e" * 32
    now = int(time.time())
    past, later = now - WINDOW - 5, now + 60
    batch = started_batch(9, {early: past, late: later})
    ctx = _ctx(tmp_path, StandInChain({early: STARTED, late: STARTED}, batches={early: batch, late: batch}))
    ctx.state.watch(keeper.EXPIRE, early, past)
    ctx.state.watch(keeper.EXPIRE, late, later)
    await keeper.expire(ctx, before=now - WINDOW - 1)
    assert ctx.outbox.items == []
    assert set(ctx.state.due(keeper.EXPIRE, later)) == {early, late}  # both wait for the latest deadline
    await keeper.expire(ctx, before=later - 1)
    assert (ctx.outbox.items, ctx.state.watching(keeper.EXPIRE)) == ([], 2)
    await keeper.expire(ctx, before=later)
    assert ctx.outbox.items == [("expire", "9", list(batch.args()))]  # once for the batch
    assert ctx.state.watching(keeper.EXPIRE) == 0


async def test_keeper__batch_finished_or_expired_meanwhile__not_expired(tmp_path):
    done, gone = b"\x0f" * 32, b"\x10" * 32
    past = int(time.time()) - WINDOW - 5
    ctx = _ctx(tmp_path, StandInChain({done: FINISHED, gone: EXPIRED},
                                      batches={gone: started_batch(16, {gone: past})}))
    for iid in (done, gone):
        ctx.state.watch(keeper.EXPIRE, iid, past)
    await keeper.tick(ctx, head=1, window=WINDOW)
    assert (ctx.outbox.items, ctx.state.watching(keeper.EXPIRE)) == ([], 0)


# ------------------------------------------------------------------------------ disputes

async def test_keeper__dispute__executor_then_accuser_then_others_resolve(tmp_path):
    iid = b"\x0b" * 32
    for me_as, due in (({"executor": ME, "accuser": OTHER}, 111), ({"executor": OTHER, "accuser": ME}, 112),
                       ({"executor": OTHER, "accuser": THIRD}, 113)):
        ctx = _ctx(tmp_path / str(due), StandInChain({iid: DISPUTED}, disputes={iid: True}))
        keeper.on_dispute_opened(ctx, iid, deadline=110, **me_as)
        await keeper.resolve(ctx, head=due - 1)
        assert ctx.outbox.items == []
        await keeper.resolve(ctx, head=due)
        assert ctx.outbox.items == [("resolve", "0x" + iid.hex(), proven(iid))]


async def test_keeper__dispute_resolved_by_another__not_resolved_again(tmp_path):
    iid = b"\x0c" * 32
    ctx = _ctx(tmp_path, StandInChain({iid: VALIDATED}, disputes={iid: False}))
    keeper.on_dispute_opened(ctx, iid, OTHER, THIRD, deadline=110)
    await keeper.resolve(ctx, head=120)
    assert (ctx.outbox.items, ctx.state.watching(keeper.RESOLVE)) == ([], 0)


# ------------------------------------------------------------------------------ claims

def test_reward__share_of_pool_by_weight_only_when_eligible():
    pool = Epoch(pool=10_000, eligible_weight=300, open_disputes=0)
    assert keeper.reward(Account(fees=5, weight=100, validations=0, flags=0), pool) == 3_333
    assert keeper.reward(Account(fees=5, weight=100, validations=0, flags=INELIGIBLE), pool) == 0
    assert keeper.reward(Account(fees=5, weight=0, validations=2, flags=0), pool) == 0
    assert keeper.reward(Account(fees=5, weight=100, validations=0, flags=0), Epoch(10_000, 0, 0)) == 0


async def test_keeper__claims_settled_epochs_with_something_to_claim(tmp_path):
    chain = StandInChain(
        accounts={0: Account(fees=7, weight=7, validations=0, flags=0),        # fees and reward
                  1: Account(fees=0, weight=0, validations=0, flags=0),        # idle: nothing
                  2: Account(fees=3, weight=3, validations=0, flags=INELIGIBLE | FORFEITED),  # moves to the pool
                  3: Account(fees=0, weight=0, validations=1, flags=CLAIMED)},
        epochs={0: Epoch(pool=100, eligible_weight=7, open_disputes=0)})
    ctx = _ctx(tmp_path, chain)
    await keeper.claim(ctx, head=49)  # epoch 0 settles at block 50
    assert ctx.outbox.items == []
    await keeper.claim(ctx, head=140)  # epochs 0-3 settled
    assert ctx.outbox.items == [("claim", f"{ME.lower()}:0", [ME, 0]), ("claim", f"{ME.lower()}:2", [ME, 2])]
    assert ctx.state.cursor(keeper.NEXT_CLAIM) == 4
    await keeper.claim(ctx, head=140)
    assert len(ctx.outbox.items) == 2  # the cursor remembers


async def test_keeper__open_dispute__holds_the_claim_cursor(tmp_path):
    chain = StandInChain(accounts={0: Account(fees=7, weight=7, validations=0, flags=0)},
                         epochs={0: Epoch(pool=100, eligible_weight=7, open_disputes=1)})
    ctx = _ctx(tmp_path, chain)
    await keeper.claim(ctx, head=200)
    assert (ctx.outbox.items, ctx.state.cursor(keeper.NEXT_CLAIM)) == ([], 0)
    chain.epochs[0] = Epoch(pool=100, eligible_weight=7, open_disputes=0)
    await keeper.claim(ctx, head=200)
    assert ctx.outbox.items == [("claim", f"{ME.lower()}:0", [ME, 0])]



# ------------------------------------------------------------------------------ rollovers

async def test_keeper__pool_nobody_was_eligible_for__rolled_over_at_its_turn(tmp_path):
    chain = StandInChain(epochs={0: Epoch(pool=100, eligible_weight=0, open_disputes=0),   # rolled
                                 1: Epoch(pool=100, eligible_weight=7, open_disputes=0),   # claimed
                                 2: Epoch(pool=0, eligible_weight=0, open_disputes=0)})    # empty
    ctx = _ctx(tmp_path, chain)
    await keeper.rollover(ctx, head=51)  # epoch 0 settles at block 50; this node's turn is 52
    assert ctx.outbox.items == []
    await keeper.rollover(ctx, head=112)  # epochs 0-2 settled, turn included
    assert ctx.outbox.items == [("rollover", "0", 0)]
    assert ctx.state.cursor(keeper.NEXT_ROLLOVER) == 3
    await keeper.rollover(ctx, head=112)
    assert len(ctx.outbox.items) == 1  # the cursor remembers


async def test_keeper__open_dispute__holds_the_rollover_cursor(tmp_path):
    chain = StandInChain(epochs={0: Epoch(pool=100, eligible_weight=0, open_disputes=1)})
    ctx = _ctx(tmp_path, chain)
    await keeper.rollover(ctx, head=200)
    assert (ctx.outbox.items, ctx.state.cursor(keeper.NEXT_ROLLOVER)) == ([], 0)
    chain.epochs[0] = Epoch(pool=100, eligible_weight=0, open_disputes=0)
    await keeper.rollover(ctx, head=200)
    assert ctx.outbox.items == [("rollover", "0", 0)]
