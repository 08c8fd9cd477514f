"""Keeper role: the chain writes that wait for time to pass.

- As executor: after the validation window of each of its finishes, `reportLazy` when an assigned
  validator submitted nothing (the lazy validator loses the epoch's reward; the executor's verdict
  is what it skipped).
- As gateway: `expireBatch` the batches of its own starts left unfinished past every deadline +
  window (the clients are refunded, the executor loses the epoch's reward).
- As a party to a dispute (executor, accuser or juror): `resolve` it after its deadline, since the
  claims of its epoch wait for it. The executor goes first and the others a block later each, so
  that one transaction usually does it.
- For itself: `claim` every settled epoch in which it has fees or a reward share; a clean claimed
  epoch is also what raises its reputation.
- For everyone: `rollover` the pool of a settled epoch that nobody was eligible for (an idle
  devnet's first epochs, say) to the next open epoch, so that no reward waits forever. The model's
  members take turns two blocks apart, in draw order, and each looks again at its turn, so that
  one transaction usually does it.
Each item is keyed on the chain object it concerns, so replays and restarts queue nothing twice.
"""

from __future__ import annotations

import time

from agents.node.chain_view import CLAIMED, INELIGIBLE, STARTED, Account, Epoch
from agents.node.context import NodeContext, log

LAZY, EXPIRE, RESOLVE, CLAIM, ROLLOVER = "report_lazy", "expire", "resolve", "claim", "rollover"
NEXT_CLAIM = "next_claim_epoch"  # state cursor: the first epoch not yet looked at for a claim
NEXT_ROLLOVER = "next_rollover_epoch"  # and for a rollover
ROLLOVER_TURN = 2  # blocks between the members' turns to roll an epoch over
MAX_EPOCHS_PER_TICK = 16  # a node back after a long pause catches up over a few ticks


def _hex(inference_id: bytes) -> str:
    return "0x" + inference_id.hex()


def _is(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def on_finished(ctx: NodeContext, inference_id: bytes, executor: str, block: int,
                window: int) -> None:
    if _is(executor, ctx.address):
        ctx.state.watch(LAZY, inference_id, block + window + 1)


def on_dispute_opened(ctx: NodeContext, inference_id: bytes, executor: str, accuser: str,
                      deadline: int) -> None:
    """Every node hears of every dispute; all may resolve it, in turns a block apart."""
    turn = 0 if _is(executor, ctx.address) else 1 if _is(accuser, ctx.address) else 2
    ctx.state.watch(RESOLVE, inference_id, deadline + 1 + turn)


def reward(account: Account, epoch: Epoch) -> int:
    """The Ledger's reward share of an account: pool × weight / eligible weight, if eligible."""
    if account.flags & INELIGIBLE or account.weight == 0 or epoch.eligible_weight == 0:
        return 0
    return epoch.pool * account.weight // epoch.eligible_weight


async def tick(ctx: NodeContext, head: int, window: int) -> None:
    await report_lazy(ctx, head)
    await expire(ctx, int(time.time()) - window - 1)  # the Ledger counts expiry in seconds
    await resolve(ctx, head)
    await claim(ctx, head)
    await rollover(ctx, head)


async def report_lazy(ctx: NodeContext, head: int) -> None:
    for inference_id in ctx.state.due(LAZY, head):
        info = await ctx.read(ctx.chain.inference, inference_id)
        ctx.state.unwatch(LAZY, inference_id)
        validators = await ctx.read(ctx.chain.validators_of, info.record, info.proof)
        voted = (await ctx.read(ctx.chain.state, info.batch.number, inference_id)).voted_mask
        lazy = [v for k, v in enumerate(validators) if not voted >> k & 1]
        settles = await ctx.read(ctx.chain.claim_block, await ctx.read(ctx.chain.epoch_of, info.finish_block))
        if lazy and head < settles:
            ctx.outbox.enqueue(LAZY, _hex(inference_id), [info.record.as_tuple(), list(info.proof)])
            log.info("keeper: reporting lazy validator(s) %s of %s", ", ".join(lazy), _hex(inference_id))


async def expire(ctx: NodeContext, before: int) -> None:
    """`before`: the latest deadline whose window is over (the Ledger counts expiry in seconds)."""
    for inference_id in ctx.state.due(EXPIRE, before):
        # past its deadline a request that never started never will, so one look decides
        info = await ctx.read(ctx.chain.inference, inference_id)
        ctx.state.unwatch(EXPIRE, inference_id)
        if info.status != STARTED:
            continue
        last = max(item.deadline for item in info.batch.items)
        if last > before:  # the batch expires whole, after its latest deadline
            ctx.state.watch(EXPIRE, inference_id, last)
            continue
        if ctx.outbox.enqueue(EXPIRE, str(info.batch.number), list(info.batch.args())):
            log.info("keeper: expiring batch %d of %s", info.batch.number, info.executor)


async def resolve(ctx: NodeContext, head: int) -> None:
    for inference_id in ctx.state.due(RESOLVE, head):
        if (await ctx.read(ctx.chain.dispute, inference_id)).open:
            info = await ctx.read(ctx.chain.inference, inference_id)
            ctx.outbox.enqueue(RESOLVE, _hex(inference_id), [info.record.as_tuple(), list(info.proof)])
            log.info("keeper: resolving the dispute on %s", _hex(inference_id))
        ctx.state.unwatch(RESOLVE, inference_id)


async def claim(ctx: NodeContext, head: int) -> None:
    """Claim settled epochs in order; an epoch whose disputes are still open holds the cursor."""
    epoch = ctx.state.cursor(NEXT_CLAIM)
    for _ in range(MAX_EPOCHS_PER_TICK):
        if head < await ctx.read(ctx.chain.claim_block, epoch):
            return
        totals = await ctx.read(ctx.chain.epoch, epoch)
        if totals.open_disputes:
            return
        account = await ctx.read(ctx.chain.account, ctx.address, epoch)
        if not account.flags & CLAIMED and account.fees + reward(account, totals) > 0:
            ctx.outbox.enqueue(CLAIM, f"{ctx.address.lower()}:{epoch}", [ctx.address, epoch])
            log.info("keeper: claiming epoch %d: fees %d, reward %d", epoch, account.fees,
                     reward(account, totals))
        epoch += 1
        ctx.state.set_cursor(NEXT_CLAIM, epoch)


async def rollover(ctx: NodeContext, head: int) -> None:
    """Roll over settled epochs in order whose pool nobody was eligible for, at this node's turn."""
    addresses = [a.lower() for a in (await ctx.members()).addresses]
    me = ctx.address.lower()
    turn = ROLLOVER_TURN * (addresses.index(me) if me in addresses else len(addresses))
    epoch = ctx.state.cursor(NEXT_ROLLOVER)
    for _ in range(MAX_EPOCHS_PER_TICK):
        if head < await ctx.read(ctx.chain.claim_block, epoch) + turn:
            return
        totals = await ctx.read(ctx.chain.epoch, epoch)
        if totals.open_disputes:  # a dispute may still make someone eligible, or not
            return
        if totals.pool and not totals.eligible_weight:
            ctx.outbox.enqueue(ROLLOVER, str(epoch), epoch)
            log.info("keeper: rolling over epoch %d's pool of %d", epoch, totals.pool)
        epoch += 1
        ctx.state.set_cursor(NEXT_ROLLOVER, epoch)
