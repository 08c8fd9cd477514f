"""The outbox against a real anvil and the deployed Ledger: grouping, isolation, deferral, restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass

import httpx
import pytest
from eth_utils import keccak
from fastapi import FastAPI, Request, Response

from agents.chain import client as client_module
from agents.chain.batches import Batch, Record
from agents.chain.client import (GAS_HEADROOM, GAS_MARGIN, STATE_CHANGED, ChainClient, ChainError,
                                 ChainUnavailable)
from agents.chain.outbox import ItemStatus, Outbox

STARTED, FINISHED, EXPIRED = 1, 2, 6
PRICE = 10


@dataclass
class Market:
    """One model served by one executor, a client with escrow, and a gateway that starts."""

    name: str
    executor: ChainClient
    client: ChainClient
    gateway: ChainClient


@pytest.fixture(scope="module")
def market(anvil, deployed, make_model, make_participant, make_client, new_account) -> Market:
    name = f"test/outbox-{uuid.uuid4().hex[:8]}"
    executor = make_participant(make_model(name, price=PRICE))
    gateway = ChainClient(anvil.rpc_url, new_account().key, deployed)
    return Market(name, executor, make_client(), gateway)


@pytest.fixture
def new_start(market, sign_start):
    """new_start(m=market, forge=False, lifetime=3600) -> a fresh Start of the market's client (one
    16-token lock of 160), drawn to the market's executor; forged: signed by the gateway."""

    def make(m: Market = market, *, forge: bool = False, lifetime: int = 3600):
        return sign_start(m.client, m.name, max_price=PRICE, lifetime=lifetime,
                          signer=m.gateway if forge else None)

    return make


def answers(batch: Batch, tokens: int = 5) -> list[tuple]:
    return [(keccak(text="answer"), b"\x22" * 32, tokens)] * len(batch.items)


def finish_args(batch: Batch, tokens: int = 5) -> list:
    """What the executor's finisher queues for a batch: finishBatch's arguments."""
    return [*batch.args(), answers(batch, tokens)]


def unfinished_record(batch: Batch, iid: bytes) -> tuple:
    """A record of a started batch as if it were finished: what a verdict on it would pass."""
    item = batch.items[batch.index(iid)]
    return Record(iid, batch.number, item.client, batch.terms.executor, batch.terms.model_id,
                  batch.terms.price, item.max_tokens, item.deadline, item.quorum, 5, 1, 10_000).as_tuple()


@pytest.fixture
def outbox_at(tmp_path):
    """outbox_at(client, name="outbox", **options) -> an Outbox on a file in this test's directory."""
    made = []

    def make(client: ChainClient, name: str = "outbox", **options) -> Outbox:
        made.append(Outbox(tmp_path / f"{name}.sqlite", client, **options))
        return made[-1]

    yield make
    for outbox in made:
        outbox.close()


def start_alone(m: Market, start) -> None:
    """Start one inference in a batch of its own, straight through the gateway's key."""
    executor, model_id, item = start.args
    m.gateway.transact(m.gateway.ledger.functions.startBatch(executor, model_id, [item]))


# --- enqueue ----------------------------------------------------------------------------------


def test_enqueue__same_kind_and_key__ignored(market, outbox_at):
    outbox = outbox_at(market.gateway)
    record = ("0x" + "aa" * 32, 7)
    assert outbox.enqueue("resolve", "0xaa", [record, []])
    assert not outbox.enqueue("resolve", "0xaa", [record, ["0x" + "bb" * 32]])
    assert outbox.enqueue("report_lazy", "0xaa", [record, []])  # another kind, another item
    assert outbox.counts() == {"pending": 2, "sent": 0, "done": 0, "failed": 0}
    assert outbox.counts("report_lazy") == {"pending": 1, "sent": 0, "done": 0, "failed": 0}
    assert outbox.counts("finish") == {"pending": 0, "sent": 0, "done": 0, "failed": 0}
    assert outbox.status("resolve", "0xaa").state == "pending"
    assert outbox.status("finish", "0xaa") is None


@pytest.mark.parametrize(
    "kind, key, args, message",
    [
        ("mint", "k", 1, "unknown outbox kind 'mint': expected one of start, finish, validate, vote, "
                         "resolve, report_lazy, expire, claim, rollover"),
        ("expire", "", [0, [], []], "outbox key must be a non-empty string"),
        ("start", "k", ["0x00", "0x00"], "start args must be (executor, model_id, item)"),
        ("finish", "k", [0, [], []], "finish args must be (batch, terms, items, answers)"),
        ("expire", "k", "0x00", "expire args must be (batch, terms, items)"),
        ("validate", "k", ["0x00", True, 1], "validate args must be (record, proof, passed, score)"),
        ("resolve", "k", ["0x00"], "resolve args must be (record, proof)"),
        ("vote", "k", "0x00", "vote args must be (inference_id, valid)"),
        ("claim", "k", ["0x00"], "claim args must be (participant, epoch)"),
        ("rollover", "k", object(), "rollover args are not JSON-serializable: object"),
    ],
)
def test_enqueue__malformed__rejected_and_nothing_stored(market, outbox_at, kind, key, args, message):
    outbox = outbox_at(market.gateway)
    with pytest.raises(ValueError) as err:
        outbox.enqueue(kind, key, args)
    assert str(err.value) == message
    assert outbox.counts()["pending"] == 0


def test_outbox__batch_size_out_of_range__rejected(market, tmp_path):
    with pytest.raises(ValueError, match=r"^batch_size must be in \[1, 32\], got 33$"):
        Outbox(tmp_path / "o.sqlite", market.gateway, batch_size=33)


# --- starts: grouped per executor and model ---------------------------------------------------


async def test_outbox__starts_of_one_executor__one_start_batch(market, outbox_at, new_start, batch_of,
                                                               status_of):
    outbox = outbox_at(market.gateway)
    starts = [new_start() for _ in range(3)]
    for s in starts:
        outbox.enqueue("start", s.key, s.args)
    assert await outbox.flush() == 3
    assert len({outbox.status("start", s.key).tx_hash for s in starts}) == 1  # one startBatch
    batch = batch_of(starts[0].inference_id)
    assert [i.inference_id for i in batch.items] == [s.inference_id for s in starts]  # queue order
    assert batch.terms.executor == market.executor.address
    assert [status_of(s.inference_id) for s in starts] == [STARTED] * 3
    assert outbox.counts() == {"pending": 0, "sent": 0, "done": 3, "failed": 0}
    assert await outbox.flush() == 0  # nothing left to send


async def test_outbox__starts_of_two_executors__two_start_batches(market, outbox_at, anvil, make_model,
                                                                  make_participant, sign_start, batch_of):
    name = f"test/outbox-pair-{uuid.uuid4().hex[:8]}"
    mid = make_model(name, price=PRICE)
    executors = [make_participant(mid).address, make_participant(mid).address]
    starts = []
    # equal stakes: each executor draws about every other start; two each at least
    while any(sum(s.executor == e for s in starts) < 2 for e in executors):
        starts.append(sign_start(market.client, name, max_price=PRICE))
    outbox = outbox_at(market.gateway)
    for s in starts:
        outbox.enqueue("start", s.key, s.args)
    nonce = anvil.w3.eth.get_transaction_count(market.gateway.address)
    assert await outbox.flush() == len(starts)
    assert anvil.w3.eth.get_transaction_count(market.gateway.address) == nonce + 2
    for executor in executors:
        mine = [s for s in starts if s.executor == executor]
        assert len({outbox.status("start", s.key).tx_hash for s in mine}) == 1
        batch = batch_of(mine[0].inference_id)
        assert batch.terms.executor == executor
        assert [i.inference_id for i in batch.items] == [s.inference_id for s in mine]


async def test_outbox__bad_item_in_start_batch__isolated_with_its_reason(market, outbox_at, new_start,
                                                                       batch_of, status_of):
    outbox = outbox_at(market.gateway)
    good1, bad, good2 = new_start(), new_start(forge=True), new_start()
    for s in (good1, bad, good2):
        outbox.enqueue("start", s.key, s.args)
    assert await outbox.flush() == 3
    assert outbox.status("start", good1.key).state == outbox.status("start", good2.key).state == "done"
    assert outbox.status("start", good1.key).tx_hash == outbox.status("start", good2.key).tx_hash
    failed = outbox.status("start", bad.key)
    assert (failed.state, failed.error) == ("failed", "ledger: bad signature")
    assert [i.inference_id for i in batch_of(good1.inference_id).items] == [good1.inference_id,
                                                                            good2.inference_id]
    assert [status_of(s.inference_id) for s in (good1, bad, good2)] == [STARTED, 0, STARTED]


async def test_outbox__items_fit_alone_not_together__sent_one_by_one(market, outbox_at, new_start,
                                                                    make_client):
    poor = dataclasses.replace(market, client=make_client(escrow=250))  # one lock is 16 x 10 = 160
    outbox = outbox_at(market.gateway)
    first, second = new_start(poor), new_start(poor)
    outbox.enqueue("start", first.key, first.args)
    outbox.enqueue("start", second.key, second.args)
    assert await outbox.flush() == 2
    assert outbox.status("start", first.key).state == "done"
    assert (outbox.status("start", second.key).state, outbox.status("start", second.key).error) == (
        "failed", "ledger: insufficient escrow")


async def test_outbox__start_of_a_used_nonce__fails_with_its_reason(market, outbox_at, new_start):
    """A replayed request: the Ledger's nonce bitmap refuses it, even under another key."""
    first, replay = outbox_at(market.gateway, "first"), outbox_at(market.executor, "replay")
    start = new_start()
    first.enqueue("start", start.key, start.args)
    await first.flush()
    replay.enqueue("start", start.key, start.args)
    assert await replay.flush() == 1
    assert (replay.status("start", start.key).state, replay.status("start", start.key).error) == (
        "failed", "ledger: nonce used")
    assert first.status("start", start.key).state == "done"


# --- finishes and expiries: one call per batch ------------------------------------------------


async def test_outbox__finishes_of_two_batches__one_call_each(market, outbox_at, new_start, batch_of,
                                                             status_of):
    gateway, executor = outbox_at(market.gateway, "gateway"), outbox_at(market.executor, "executor")
    starts = [new_start() for _ in range(3)]
    for s in starts[:2]:
        gateway.enqueue("start", s.key, s.args)
    await gateway.flush()
    gateway.enqueue("start", starts[2].key, starts[2].args)
    await gateway.flush()
    first, second = batch_of(starts[0].inference_id), batch_of(starts[2].inference_id)
    assert (len(first.items), len(second.items)) == (2, 1)

    executor.enqueue("finish", str(first.number), finish_args(first))
    executor.enqueue("finish", str(second.number), finish_args(second, tokens=3))
    assert await executor.flush() == 2
    done = [executor.status("finish", str(b.number)) for b in (first, second)]
    assert [d.state for d in done] == ["done", "done"] and done[0].tx_hash != done[1].tx_hash
    assert [status_of(s.inference_id) for s in starts] == [FINISHED] * 3
    assert batch_of(starts[0].inference_id).completion_tokens == (5, 5)
    assert batch_of(starts[2].inference_id).completion_tokens == (3,)
    assert await executor.flush() == 0


async def test_outbox__finish_by_another_than_the_executor__fails_alone(market, outbox_at, new_start,
                                                                      batch_of, status_of):
    outbox = outbox_at(market.gateway)
    start = new_start()
    outbox.enqueue("start", start.key, start.args)
    await outbox.flush()
    batch = batch_of(start.inference_id)
    outbox.enqueue("finish", str(batch.number), finish_args(batch))
    assert await outbox.flush() == 1
    failed = outbox.status("finish", str(batch.number))
    assert (failed.state, failed.attempts, failed.error) == ("failed", 0, "ledger: not executor")
    assert status_of(start.inference_id) == STARTED


async def test_outbox__expire_batch_after_deadline__one_call_refunds_all(market, outbox_at, anvil, new_start,
                                                                        batch_of, status_of):
    outbox = outbox_at(market.gateway)
    starts = [new_start(lifetime=5) for _ in range(2)]
    escrow = market.client.ledger.functions.escrowOf(market.client.address).call()
    for s in starts:
        outbox.enqueue("start", s.key, s.args)
    await outbox.flush()
    batch = batch_of(starts[0].inference_id)
    assert len(batch.items) == 2
    outbox.enqueue("expire", str(batch.number), list(batch.args()))
    await outbox.flush()
    assert outbox.status("expire", str(batch.number)).error == "ledger: not expired"

    window = market.gateway.ledger.functions.validation_window().call()
    anvil.w3.provider.make_request("evm_increaseTime", [5 + window + 1])  # the Ledger counts seconds
    anvil.mine(1)
    keeper = outbox_at(market.executor, "keeper")  # anyone may expire
    keeper.enqueue("expire", str(batch.number), list(batch.args()))
    assert await keeper.flush() == 1
    assert keeper.status("expire", str(batch.number)).state == "done"
    assert [status_of(s.inference_id) for s in starts] == [EXPIRED, EXPIRED]
    assert market.client.ledger.functions.escrowOf(market.client.address).call() == escrow


async def test_outbox__verdict_calls_on_unfinished_batch__single_calls_with_reasons(market, outbox_at, new_start,
                                                                                  batch_of):
    outbox = outbox_at(market.gateway)
    start = new_start()
    outbox.enqueue("start", start.key, start.args)
    await outbox.flush()
    record, key = unfinished_record(batch_of(start.inference_id), start.inference_id), start.key
    outbox.enqueue("validate", key, [record, [], True, 100])
    outbox.enqueue("resolve", key, [record, []])
    outbox.enqueue("report_lazy", key, [record, []])
    outbox.enqueue("vote", key, [key, True])
    outbox.enqueue("claim", key, [market.gateway.address, 10**6])
    outbox.enqueue("rollover", key, 10**6)
    assert await outbox.flush() == 6
    kinds = ("validate", "resolve", "report_lazy", "vote", "claim", "rollover")
    assert [(outbox.status(kind, key).state, outbox.status(kind, key).error) for kind in kinds] == [
        ("failed", "ledger: not finished"), ("failed", "ledger: not finished"),
        ("failed", "ledger: not finished"), ("failed", "ledger: no dispute"),
        ("failed", "ledger: epoch not settled"), ("failed", "ledger: epoch not settled")]


# --- restarts and outages ---------------------------------------------------------------------


async def test_outbox__restart__resends_pending_and_not_done(market, outbox_at, anvil, new_start, status_of):
    first = outbox_at(market.gateway, "shared")
    done = new_start()
    first.enqueue("start", done.key, done.args)
    await first.flush()
    done_tx = first.status("start", done.key).tx_hash
    pending = new_start()
    first.enqueue("start", pending.key, pending.args)
    first.close()  # the node stops before flushing

    second = outbox_at(market.gateway, "shared")
    assert not second.enqueue("start", done.key, done.args)  # a replayed request changes nothing
    nonce = anvil.w3.eth.get_transaction_count(market.gateway.address)
    assert await second.flush() == 1
    assert anvil.w3.eth.get_transaction_count(market.gateway.address) == nonce + 1  # one transaction
    assert second.status("start", done.key).tx_hash == done_tx
    assert second.status("start", pending.key).state == "done"
    assert status_of(pending.inference_id) == STARTED


@pytest.fixture
def manual_mining(anvil):
    anvil.w3.provider.make_request("evm_setAutomine", [False])
    yield
    anvil.w3.provider.make_request("evm_setAutomine", [True])
    anvil.mine(1)


async def test_outbox__sent_before_crash__receipt_checked_not_resent(market, outbox_at, anvil, deployed,
                                                                      new_start, status_of, manual_mining):
    impatient = ChainClient(anvil.rpc_url, market.gateway.account.key, deployed, timeout=0.3)
    first = outbox_at(impatient, "shared")
    start = new_start()
    first.enqueue("start", start.key, start.args)
    with pytest.raises(ChainUnavailable, match="^no receipt for 0x[0-9a-f]{64} within 0.3 s$"):
        await first.flush()
    sent = first.status("start", start.key)
    assert sent.state == "sent"
    first.close()

    anvil.mine(1)  # the transaction lands while the node is down
    nonce = anvil.w3.eth.get_transaction_count(market.gateway.address)
    second = outbox_at(ChainClient(anvil.rpc_url, market.gateway.account.key, deployed), "shared")
    assert await second.flush() == 1
    assert second.status("start", start.key) == ItemStatus("start", start.key, "done", 0, sent.tx_hash, None)
    assert anvil.w3.eth.get_transaction_count(market.gateway.address) == nonce  # nothing resent
    assert status_of(start.inference_id) == STARTED


async def test_outbox__sent_transaction_vanished__resent(market, outbox_at, anvil, deployed, new_start,
                                                        status_of, manual_mining, caplog):
    impatient = ChainClient(anvil.rpc_url, market.gateway.account.key, deployed, timeout=0.3)
    outbox = outbox_at(impatient)
    start = new_start()
    outbox.enqueue("start", start.key, start.args)
    with pytest.raises(ChainUnavailable):
        await outbox.flush()
    lost = outbox.status("start", start.key).tx_hash
    anvil.w3.provider.make_request("anvil_dropTransaction", [lost])
    anvil.w3.provider.make_request("evm_setAutomine", [True])
    outbox.client = ChainClient(anvil.rpc_url, market.gateway.account.key, deployed)
    assert await outbox.flush() == 1
    assert f"transaction {lost} vanished; 1 item(s) will be resent" in caplog.text
    resent = outbox.status("start", start.key)
    # Same nonce, same call, same fees: the resent transaction may well have the same hash.
    assert resent.state == "done"
    assert anvil.w3.eth.get_transaction_receipt(resent.tx_hash)["status"] == 1
    assert status_of(start.inference_id) == STARTED


def rpc_switch(rpc_url: str) -> tuple[FastAPI, dict]:
    """An HTTP relay to the RPC node that answers 503 while `state["down"]`, like a node that is
    restarting behind a load balancer."""
    app, state = FastAPI(), {"down": False, "refused": 0}

    @app.post("/")
    async def relay(request: Request):
        if state["down"]:
            state["refused"] += 1
            return Response("unavailable", status_code=503)
        async with httpx.AsyncClient() as http:
            r = await http.post(rpc_url, content=await request.body(),
                                headers={"content-type": "application/json"})
        return Response(r.content, media_type="application/json")

    return app, state


async def test_run__rpc_down__backs_off_keeps_items_then_sends(market, outbox_at, anvil, deployed, serve_app,
                                                              new_start, status_of):
    app, switch = rpc_switch(anvil.rpc_url)
    client = ChainClient(serve_app(app), market.gateway.account.key, deployed)
    outbox = outbox_at(client, flush_interval=0.02, max_backoff=0.1)
    start = new_start()
    outbox.enqueue("start", start.key, start.args)
    switch["down"] = True
    stop = asyncio.Event()
    task = asyncio.create_task(outbox.run(stop))
    while switch["refused"] < 3:  # several attempts, each refused
        await asyncio.sleep(0.02)
    assert outbox.status("start", start.key).state == "pending"
    switch["down"] = False
    for _ in range(200):
        if outbox.status("start", start.key).state == "done":
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert outbox.status("start", start.key).state == "done"
    assert status_of(start.inference_id) == STARTED


# --- a block that changes the outcome ---------------------------------------------------------


def _pending_before_epoch_end(m: Market, anvil, blocks: int) -> None:
    """Mine until the pending block (where the next transaction or estimate runs) is `blocks`
    blocks before the last one of its epoch."""
    ledger = m.executor.ledger.functions
    length, genesis = ledger.epoch_length().call(), ledger.genesis_block().call()
    pending = m.executor.w3.eth.block_number + 1
    anvil.mine((length - 1 - blocks - (pending - genesis)) % length)


async def test_finish__estimated_in_one_epoch_mined_in_the_next__headroom_covers_it(market, anvil, new_start,
                                                                                    batch_of, status_of):
    """An executor's epoch account is fresh storage in a new epoch: a finish estimated in the old
    one, where its account exists, needs more gas than that estimate when it lands in the new one."""
    starts = [new_start() for _ in range(4)]
    for s in starts:
        start_alone(market, s)
    batches = [batch_of(s.inference_id) for s in starts]
    ex, ledger = market.executor, market.executor.ledger.functions
    for (first, second), headroom in (((batches[0], batches[1]), 0), ((batches[2], batches[3]), GAS_HEADROOM)):
        _pending_before_epoch_end(market, anvil, 1)
        ex.transact(ledger.finishBatch(*finish_args(first)))  # the executor's account in this epoch
        fn = ledger.finishBatch(*finish_args(second))
        gas = int(fn.estimate_gas({"from": ex.address}, block_identifier="pending") * GAS_MARGIN)
        anvil.mine(1)  # the finish lands in the first block of the next epoch
        tx = ex.send(fn, gas + headroom)
        iid = second.items[0].inference_id
        if headroom:
            assert ex.wait(tx)["status"] == 1 and status_of(iid) == FINISHED
        else:
            with pytest.raises(ChainError) as err:
                ex.wait(tx)
            assert err.value.reason == STATE_CHANGED  # it passes when replayed before its block
            assert status_of(iid) == STARTED


@pytest.fixture
def finish_across_epochs(market, anvil, new_start, batch_of, monkeypatch):
    """finish_across_epochs(outbox) -> the batch whose finish `outbox` just sent and saw revert
    because its block moved it into a new epoch: estimated in the old one without the headroom (as
    it was), then a block mined before it is sent."""

    async def run(outbox: Outbox) -> Batch:
        first, second = new_start(), new_start()
        start_alone(market, first)
        start_alone(market, second)
        monkeypatch.setattr(client_module, "GAS_HEADROOM", 0)
        ex = market.executor
        _pending_before_epoch_end(market, anvil, 1)
        ex.transact(ex.ledger.functions.finishBatch(*finish_args(batch_of(first.inference_id))))
        estimate = ex.estimate

        def estimate_then_a_block(fn):
            gas = estimate(fn)
            anvil.mine(1)
            return gas

        monkeypatch.setattr(ex, "estimate", estimate_then_a_block)
        batch = batch_of(second.inference_id)
        outbox.enqueue("finish", str(batch.number), finish_args(batch))
        assert await outbox.flush() == 1
        monkeypatch.setattr(ex, "estimate", estimate)
        return batch

    return run


async def test_outbox__revert_caused_by_its_block__sent_again(market, outbox_at, finish_across_epochs,
                                                              status_of):
    outbox = outbox_at(market.executor, defer_delay=0.0)
    batch = await finish_across_epochs(outbox)
    retried = outbox.status("finish", str(batch.number))
    assert (retried.state, retried.attempts, retried.error) == ("pending", 1, STATE_CHANGED)
    assert await outbox.flush() == 1
    assert outbox.status("finish", str(batch.number)).state == "done"
    assert status_of(batch.items[0].inference_id) == FINISHED


async def test_outbox__deferred_item__waits_for_its_delay(market, outbox_at, finish_across_epochs, status_of):
    outbox = outbox_at(market.executor, defer_delay=3600.0)
    batch = await finish_across_epochs(outbox)
    assert await outbox.flush() == 0  # not due for an hour: not even estimated
    deferred = outbox.status("finish", str(batch.number))
    assert (deferred.state, deferred.attempts, deferred.error) == ("pending", 1, STATE_CHANGED)
    assert status_of(batch.items[0].inference_id) == STARTED


async def test_outbox__deferrals_used_up__failed(market, outbox_at, finish_across_epochs, status_of):
    outbox = outbox_at(market.executor, max_deferrals=0)
    batch = await finish_across_epochs(outbox)
    failed = outbox.status("finish", str(batch.number))
    assert (failed.state, failed.attempts, failed.error) == ("failed", 0, STATE_CHANGED)
    assert status_of(batch.items[0].inference_id) == STARTED
