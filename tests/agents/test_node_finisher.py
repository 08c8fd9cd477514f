"""The executor's finisher against a real anvil and the deployed Ledger: a batch started for this
node is opened from its `BatchStarted` log and finished whole once every item is answered or past
its own deadline (those with 0 tokens: their clients get their locks back).

The model has one member, so every draw picks it; batches are started straight through the
client's key (anyone may start), and the executor's context is real: ChainView, NodeState, Outbox.
"""

from __future__ import annotations

import logging
import time
import uuid
from types import SimpleNamespace

import pytest
from eth_utils import keccak
from web3.logs import DISCARD

from agents.chain.outbox import Outbox
from agents.node import finisher
from agents.node.chain_view import ChainView
from agents.node.state import NodeState

PRICE = 10
ANSWER = keccak(text="answer")
DIGEST = b"\x22" * 32


@pytest.fixture(scope="module")
def model(make_model, make_participant):
    """(name, the executor's ChainClient): a model whose one member every draw picks."""
    name = f"test/finisher-{uuid.uuid4().hex[:8]}"
    return name, make_participant(make_model(name, price=PRICE))


@pytest.fixture
def ctx(model, tmp_path):
    """The executor's context as the finisher sees it: real chain reads, state and outbox."""
    _, chain = model

    async def read(fn, *args):
        return fn(*args)

    ctx = SimpleNamespace(address=chain.address, chain=ChainView(chain), read=read,
                          state=NodeState(tmp_path / "node.sqlite"), outbox=Outbox(tmp_path / "outbox.sqlite", chain))
    yield ctx
    ctx.outbox.close()
    ctx.state.close()


@pytest.fixture
def start_batch(model, make_client, sign_start):
    """start_batch(*lifetimes) -> (client, starts, batch number, its block): a fresh client's
    requests, one per lifetime (seconds), started as one batch for the executor."""

    def start(*lifetimes: int):
        name, executor = model
        client = make_client()
        starts = [sign_start(client, name, max_price=PRICE, lifetime=s) for s in lifetimes]
        assert {s.executor for s in starts} == {executor.address}
        receipt = client.transact(client.ledger.functions.startBatch(
            executor.address, starts[0].args[1], [s.item for s in starts]))
        (begun,) = client.ledger.events.BatchStarted().process_receipt(receipt, errors=DISCARD)
        return client, starts, begun["args"]["batch"], receipt["blockNumber"]

    return start


def escrow(client) -> int:
    return client.ledger.functions.escrowOf(client.address).call()


def finished_logs(ctx, number: int) -> list[tuple]:
    """(inference id, response hash, artifact digest, tokens) of a batch's `Finished` logs, in order."""
    logs = ctx.chain.ledger.events.Finished().get_logs(from_block=0, argument_filters={"batch": number})
    return [(bytes(e["args"]["inference_id"]), bytes(e["args"]["response_hash"]),
             bytes(e["args"]["artifact_digest"]), e["args"]["completion_tokens"]) for e in logs]


async def test_tick__all_answers_in__finish_queued_and_lands(ctx, start_batch):
    client, (first, second), number, block = start_batch(600, 3600)
    before = escrow(client) + 2 * 16 * PRICE  # as deposited: both locks back in escrow
    await finisher.on_batch_started(ctx, number, block)
    assert [b for b, _ in ctx.state.open_batches()] == [number]

    ctx.state.save_answer(first.inference_id, ANSWER, DIGEST, 5, first.request.deadline)
    await finisher.tick(ctx, int(time.time()))
    assert ctx.outbox.status("finish", str(number)) is None  # one answer still to come, in time
    assert len(ctx.state.open_batches()) == 1

    ctx.state.save_answer(second.inference_id, ANSWER, DIGEST, 3, second.request.deadline)
    await finisher.tick(ctx, int(time.time()))
    assert ctx.outbox.status("finish", str(number)).state == "pending"
    assert ctx.state.open_batches() == []
    assert ctx.state.answers([first.inference_id, second.inference_id]) == {}

    assert await ctx.outbox.flush() == 1
    assert ctx.outbox.status("finish", str(number)).state == "done"
    assert finished_logs(ctx, number) == [(first.inference_id, ANSWER, DIGEST, 5),
                                          (second.inference_id, ANSWER, DIGEST, 3)]
    assert ctx.chain.inference(second.inference_id).record.completion_tokens == 3
    assert escrow(client) == before - 8 * PRICE
    await finisher.tick(ctx, int(time.time()))
    assert ctx.outbox.counts("finish") == {"pending": 0, "sent": 0, "done": 1, "failed": 0}


async def test_tick__answer_missing__finished_with_zero_tokens_past_its_deadline(ctx, start_batch, caplog):
    """An unanswered item waits for its own deadline only, and a short deadline of one client does
    not cut off the answer still coming for another."""
    client, (unanswered, answered), number, block = start_batch(60, 3600)
    before = escrow(client) + 2 * 16 * PRICE
    await finisher.on_batch_started(ctx, number, block)

    for now in (unanswered.request.deadline, unanswered.request.deadline + 1):
        await finisher.tick(ctx, now)  # at its deadline it may still come; then the other may
        assert ctx.outbox.status("finish", str(number)) is None
    ctx.state.save_answer(answered.inference_id, ANSWER, DIGEST, 5, answered.request.deadline)
    with caplog.at_level(logging.WARNING, logger="nullius.node"):
        await finisher.tick(ctx, unanswered.request.deadline + 1)
    assert ctx.outbox.status("finish", str(number)).state == "pending"
    assert (f"executor: batch {number} finished without 1 answer(s) past their deadline: "
            f"{unanswered.key}") in caplog.text
    assert ctx.state.open_batches() == []

    assert await ctx.outbox.flush() == 1
    assert finished_logs(ctx, number) == [(unanswered.inference_id, b"\0" * 32, b"\0" * 32, 0),
                                          (answered.inference_id, ANSWER, DIGEST, 5)]
    # the unanswered request's whole lock is back; the answered one cost 5 tokens
    assert escrow(client) == before - 5 * PRICE
    assert tuple(client.ledger.functions.clientStats(client.address).call()) == (5 * PRICE, 0)


async def test_close_batch__drops_its_answers_and_stale_ones_only(ctx, start_batch):
    _, (start,), number, block = start_batch(3600)
    now = int(time.time())
    stale, fresh = b"\x01" * 32, b"\x02" * 32  # answers to requests whose start never landed
    ctx.state.save_answer(stale, ANSWER, DIGEST, 4, now - finisher.STALE_S - 1)
    ctx.state.save_answer(fresh, ANSWER, DIGEST, 4, now - finisher.STALE_S + 60)
    ctx.state.save_answer(start.inference_id, ANSWER, DIGEST, 2, start.request.deadline)
    await finisher.on_batch_started(ctx, number, block)
    await finisher.tick(ctx, now)
    assert ctx.outbox.status("finish", str(number)).state == "pending"
    assert ctx.state.answers([stale, fresh, start.inference_id]) == {fresh: (ANSWER, DIGEST, 4)}


async def test_on_batch_started__event_replayed__one_finish(ctx, start_batch):
    """Event delivery is at least once: a replayed `BatchStarted` opens the batch again, and its
    second finish is the outbox's same key, ignored."""
    _, (start,), number, block = start_batch(3600)
    ctx.state.save_answer(start.inference_id, ANSWER, DIGEST, 2, start.request.deadline)
    await finisher.on_batch_started(ctx, number, block)
    await finisher.on_batch_started(ctx, number, block)
    assert len(ctx.state.open_batches()) == 1
    await finisher.tick(ctx, int(time.time()))
    assert await ctx.outbox.flush() == 1

    await finisher.on_batch_started(ctx, number, block)  # replayed after the finish
    await finisher.tick(ctx, start.request.deadline + 1)  # its answer is gone: 0 tokens, too late
    assert ctx.state.open_batches() == []
    assert ctx.outbox.counts("finish") == {"pending": 0, "sent": 0, "done": 1, "failed": 0}
    assert finished_logs(ctx, number) == [(start.inference_id, ANSWER, DIGEST, 2)]
