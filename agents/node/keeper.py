"""Keeper role: the chain writes that wait for time to pass.

- As executor: `settle` its own finished inferences once the validation window closed.
- As gateway: queue `expire` for its own starts left unfinished past deadline + window.
Each node keeps its own inferences, so no two nodes race to send the same transaction.
"""

from __future__ import annotations

import time

from agents.node.chain_view import FINISHED, STARTED
from agents.node.context import NodeContext, log

SETTLE, EXPIRE = "settle", "expire"


def on_finished(ctx: NodeContext, inference_id: bytes, executor: str, block: int,
                window: int) -> None:
    if executor.lower() == ctx.address.lower():
        ctx.state.watch(SETTLE, inference_id, block + window + 1)


async def tick(ctx: NodeContext, head: int, window: int) -> None:
    for inference_id in ctx.state.due(SETTLE, head):
        if (await ctx.read(ctx.chain.inference, inference_id)).status == FINISHED:
            ctx.outbox.enqueue(SETTLE, "0x" + inference_id.hex(), "0x" + inference_id.hex())
            log.info("keeper: settling 0x%s", inference_id.hex())
        ctx.state.unwatch(SETTLE, inference_id)
    # the Ledger counts the window in seconds after the deadline for expiry
    for inference_id in ctx.state.due(EXPIRE, int(time.time()) - window - 1):
        # past its deadline a request that never started never will, so one look decides
        if (await ctx.read(ctx.chain.inference, inference_id)).status == STARTED:
            ctx.outbox.enqueue(EXPIRE, "0x" + inference_id.hex(), "0x" + inference_id.hex())
            log.info("keeper: expiring 0x%s", inference_id.hex())
        ctx.state.unwatch(EXPIRE, inference_id)
