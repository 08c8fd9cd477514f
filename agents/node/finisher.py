"""Executor role on chain: finish each batch the gateways started for this node, whole.

The Ledger finishes a batch in one call that carries every item's answer (docs/gas.md). The
executor records each answer as it serves it (`NodeState.save_answer`); a `BatchStarted` log naming
this node opens the batch here with its terms and items (`on_batch_started`); `tick` queues the
`finishBatch` of each open batch whose every item is answered or past its own deadline (an answer
can no longer reach that client). The unanswered items are finished with 0 tokens: their clients
get their whole locks back, nobody validates them and this node earns nothing for them, where the
whole batch would expire `validation_window` seconds after its latest deadline and cost it the
epoch's reward. An item waits for its own deadline only, so a client with a short deadline cannot
cut off the answers still being generated for the others, nor hold their locks past it.
"""

from __future__ import annotations

import json

from agents.chain.outbox import json_bytes
from agents.node.context import NodeContext, log

FINISH = "finish"
NO_ANSWER = (b"\0" * 32, b"\0" * 32, 0)
# answers to requests whose start never landed are dropped this long after their deadline
STALE_S = 3600


async def on_batch_started(ctx: NodeContext, number: int, block: int) -> None:
    """A batch naming this node as executor started in `block`: keep what its finish takes. Its
    terms and items never change, so they are read at the head (a node may not serve state at
    the old blocks a replay brings back)."""
    head = await ctx.read(ctx.chain.block_number)
    batch, _ = await ctx.read(ctx.chain.batch, number, block, head)
    ctx.state.open_batch(number, json.dumps(batch.args(), default=json_bytes))
    log.info("executor: batch %d started with %d inference(s)", number, len(batch.items))


async def tick(ctx: NodeContext, now: int) -> None:
    """Queue the finish of every open batch whose items are all answered or past their deadline."""
    for number, args in ctx.state.open_batches():
        batch, terms, items = json.loads(args)
        ids = [bytes.fromhex(item[0][2:]) for item in items]
        answers = ctx.state.answers(ids)
        missing = [i for i in ids if i not in answers]
        # Item = (inference_id, client, max_tokens, deadline, quorum)
        if any(i not in answers and now <= item[3] for i, item in zip(ids, items)):
            continue
        if missing:
            log.warning("executor: batch %d finished without %d answer(s) past their deadline: %s",
                        number, len(missing), ", ".join("0x" + i.hex() for i in missing))
        ctx.outbox.enqueue(FINISH, str(number),
                           [batch, terms, items, [answers.get(i, NO_ANSWER) for i in ids]])
        ctx.state.close_batch(number, ids, now - STALE_S)
