"""The outbox against a real anvil and the deployed Ledger: batching, isolation, deferral, restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from dataclasses import dataclass

import httpx
import pytest
from eth_utils import keccak
from fastapi import FastAPI, Request, Response

from agents.chain import client as client_module
from agents.chain.client import (GAS_HEADROOM, GAS_MARGIN, STATE_CHANGED, ChainClient, ChainError,
                                 ChainUnavailable)
from agents.chain.outbox import ItemStatus, Outbox
from agents.chain.records import Record
from agents.node.gateway import start_args
from agents.protocol.eip712 import Domain, inference_id, sign_request
from agents.protocol.requests import InferenceRequest

STARTED, FINISHED, EXPIRED = 1, 2, 6
_nonces = itertools.count(1)


@dataclass
class Market:
    """One model served by one executor, a client with escrow, and a gateway that starts."""

    name: str
    executor: ChainClient
    client: ChainClient
    gateway: ChainClient
    domain: Domain


@pytest.fixture(scope="module")
def market(anvil, deployed, make_model, make_participant, make_client, new_account) -> Market:
    name = f"test/outbox-{uuid.uuid4().hex[:8]}"
    executor = make_participant(make_model(name, price=10))
    gateway = ChainClient(anvil.rpc_url, new_account().key, deployed)
    return Market(name, executor, make_client(), gateway, Domain(31337, deployed.ledger))


def new_start(m: Market, *, forge: bool = False, lifetime: int = 3600) -> tuple[str, list]:
    """A fresh signed request as the gateway would start it: (inference id hex, StartArgs)."""
    w3 = m.gateway.w3
    latest = w3.eth.get_block("latest")
    request = InferenceRequest(model=m.name, prompt="hi", max_tokens=16, max_price=10, nonce=next(_nonces),
                               deadline=latest["timestamp"] + lifetime, client=m.client.address)
    iid = inference_id(request, m.domain)
    signature = sign_request(request, m.domain, (m.gateway if forge else m.client).account.key)
    seed = keccak(iid + latest["hash"])
    executor = m.gateway.registry.functions.drawExecutor(keccak(text=m.name), seed).call()
    return "0x" + iid.hex(), start_args(request, signature, latest["number"], executor)


def record_of(iid: str, start: list) -> tuple:
    """The record `start` stores for these StartArgs (the market's price is 10 per token)."""
    client, model, _request_hash, max_tokens, _max_price, _nonce, deadline, _sig, _seed, executor, quorum = start
    return Record(bytes.fromhex(iid[2:]), client, executor, model, 10, max_tokens, deadline, quorum).as_tuple()


def finish_args(iid: str, start: list, tokens: int = 5) -> list:
    return [record_of(iid, start), keccak(text="answer"), b"\x22" * 32, tokens]


def status_of(m: Market, iid: str) -> int:
    return m.gateway.ledger.functions.stateOf(iid).call()[0]


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


# --- enqueue ----------------------------------------------------------------------------------


def test_enqueue__same_kind_and_key__ignored(market, outbox_at):
    outbox = outbox_at(market.gateway)
    assert outbox.enqueue("resolve", "0xaa", ["0x" + "aa" * 32])
    assert not outbox.enqueue("resolve", "0xaa", ["0x" + "bb" * 32])
    assert outbox.enqueue("expire", "0xaa", ["0x" + "aa" * 32])  # another kind, another item
    assert outbox.counts() == {"pending": 2, "sent": 0, "done": 0, "failed": 0}
    assert outbox.counts("expire") == {"pending": 1, "sent": 0, "done": 0, "failed": 0}
    assert outbox.counts("finish") == {"pending": 0, "sent": 0, "done": 0, "failed": 0}
    assert outbox.status("resolve", "0xaa").state == "pending"
    assert outbox.status("finish", "0xaa") is None


@pytest.mark.parametrize(
    "kind, key, args, message",
    [
        ("mint", "k", 1, "unknown outbox kind 'mint': expected one of start, finish, validate, vote, "
                         "resolve, report_lazy, expire, claim, rollover"),
        ("expire", "", "0x00", "outbox key must be a non-empty string"),
        ("validate", "k", ["0x00", True], "validate args must be (record, passed, score)"),
        ("vote", "k", "0x00", "vote args must be (inference_id, valid)"),
        ("claim", "k", ["0x00"], "claim args must be (participant, epoch)"),
        ("expire", "k", object(), "expire args are not JSON-serializable: object"),
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


# --- batches ----------------------------------------------------------------------------------


async def test_outbox__starts_then_finishes__one_batch_transaction_each(market, outbox_at):
    gateway, executor = outbox_at(market.gateway, "gateway"), outbox_at(market.executor, "executor")
    starts = [new_start(market) for _ in range(3)]
    for iid, args in starts:
        gateway.enqueue("start", iid, args)
    assert await gateway.flush() == 3
    tx_hashes = {gateway.status("start", iid).tx_hash for iid, _ in starts}
    assert len(tx_hashes) == 1  # one startBatch for all three
    assert [status_of(market, iid) for iid, _ in starts] == [STARTED] * 3

    for iid, _ in starts:
        executor.enqueue("finish", iid, finish_args(iid, args))
    assert await executor.flush() == 3
    assert len({executor.status("finish", iid).tx_hash for iid, _ in starts}) == 1
    assert [status_of(market, iid) for iid, _ in starts] == [FINISHED] * 3
    assert gateway.counts() == executor.counts() == {"pending": 0, "sent": 0, "done": 3, "failed": 0}
    assert await executor.flush() == 0  # nothing left to send


async def test_outbox__start_and_finish_in_one_flush__start_goes_first(market, outbox_at):
    outbox = outbox_at(market.executor)  # an executor may start its own inferences too
    iid, args = new_start(market)
    outbox.enqueue("finish", iid, finish_args(iid, args))  # queued first, sent second
    outbox.enqueue("start", iid, args)
    assert await outbox.flush() == 2
    assert status_of(market, iid) == FINISHED


async def test_outbox__bad_item_in_batch__isolated_with_its_reason(market, outbox_at):
    outbox = outbox_at(market.gateway)
    good1, bad, good2 = new_start(market), new_start(market, forge=True), new_start(market)
    for iid, args in (good1, bad, good2):
        outbox.enqueue("start", iid, args)
    assert await outbox.flush() == 3
    assert outbox.status("start", good1[0]).state == outbox.status("start", good2[0]).state == "done"
    assert outbox.status("start", good1[0]).tx_hash == outbox.status("start", good2[0]).tx_hash  # still batched
    failed = outbox.status("start", bad[0])
    assert (failed.state, failed.error) == ("failed", "ledger: bad signature")
    assert [status_of(market, iid) for iid in (good1[0], bad[0], good2[0])] == [STARTED, 0, STARTED]


async def test_outbox__items_fit_alone_not_together__sent_one_by_one(market, outbox_at, make_client):
    poor = dataclasses.replace(market, client=make_client(escrow=250))  # one lock is 16 x 10 = 160
    outbox = outbox_at(market.gateway)
    first, second = new_start(poor), new_start(poor)
    outbox.enqueue("start", *first)
    outbox.enqueue("start", *second)
    assert await outbox.flush() == 2
    assert outbox.status("start", first[0]).state == "done"
    assert (outbox.status("start", second[0]).state, outbox.status("start", second[0]).error) == (
        "failed", "ledger: insufficient escrow")


async def test_outbox__finish_before_start__deferred_then_done(market, outbox_at):
    gateway = outbox_at(market.gateway, "gateway")
    executor = outbox_at(market.executor, "executor", defer_delay=0.0)
    iid, args = new_start(market)
    executor.enqueue("finish", iid, finish_args(iid, args))
    assert await executor.flush() == 1
    deferred = executor.status("finish", iid)
    assert (deferred.state, deferred.attempts, deferred.error) == ("pending", 1, "ledger: not started")

    gateway.enqueue("start", iid, args)
    await gateway.flush()
    assert await executor.flush() == 1
    assert executor.status("finish", iid).state == "done"
    assert status_of(market, iid) == FINISHED


async def test_outbox__finish_batch_with_unstarted_item__rest_batched_one_deferred(market, outbox_at):
    gateway, executor = outbox_at(market.gateway, "gateway"), outbox_at(market.executor, "executor")
    starts = [new_start(market) for _ in range(3)]
    for iid, args in starts[:2]:
        gateway.enqueue("start", iid, args)
    await gateway.flush()
    for iid, _ in starts:
        executor.enqueue("finish", iid, finish_args(iid, args))
    assert await executor.flush() == 3
    done = [executor.status("finish", iid) for iid, _ in starts[:2]]
    assert [s.state for s in done] == ["done", "done"] and done[0].tx_hash == done[1].tx_hash
    late = executor.status("finish", starts[2][0])
    assert (late.state, late.attempts, late.error) == ("pending", 1, "ledger: not started")


async def test_outbox__finish_never_started__fails_after_deferrals(market, outbox_at):
    outbox = outbox_at(market.executor, max_deferrals=2, defer_delay=0.0)
    iid, args = new_start(market)
    outbox.enqueue("finish", iid, finish_args(iid, args))
    for attempts in (1, 2):
        await outbox.flush()
        assert outbox.status("finish", iid).attempts == attempts
    await outbox.flush()
    failed = outbox.status("finish", iid)
    assert (failed.state, failed.attempts, failed.error) == ("failed", 2, "ledger: not started")


async def test_outbox__deferred_item__waits_for_its_delay(market, outbox_at):
    outbox = outbox_at(market.executor, defer_delay=3600.0)
    iid, args = new_start(market)
    outbox.enqueue("finish", iid, finish_args(iid, args))
    await outbox.flush()
    assert await outbox.flush() == 0  # not due for an hour: not even estimated
    assert outbox.status("finish", iid).attempts == 1


async def test_outbox__expire_batch_after_deadline__expired(market, outbox_at, anvil):
    outbox = outbox_at(market.gateway)
    starts = [new_start(market, lifetime=5) for _ in range(2)]
    for iid, args in starts:
        outbox.enqueue("start", iid, args)
    await outbox.flush()
    early = starts[0][0]
    outbox.enqueue("expire", early, record_of(*starts[0]))
    await outbox.flush()
    assert outbox.status("expire", early).error == "ledger: not expired"

    window = market.gateway.ledger.functions.validation_window().call()
    anvil.w3.provider.make_request("evm_increaseTime", [5 + window + 1])  # the Ledger counts seconds
    anvil.mine(1)
    keeper = outbox_at(market.executor, "keeper")  # anyone may expire
    for iid, args in starts:
        keeper.enqueue("expire", iid, record_of(iid, args))
    assert await keeper.flush() == 2
    assert len({keeper.status("expire", iid).tx_hash for iid, _ in starts}) == 1  # one expireBatch
    assert [status_of(market, iid) for iid, _ in starts] == [EXPIRED, EXPIRED]


async def test_outbox__validate_vote_claim_rollover__single_calls_with_reasons(market, outbox_at):
    outbox = outbox_at(market.gateway)
    iid, args = new_start(market)
    outbox.enqueue("start", iid, args)
    outbox.enqueue("validate", iid, [record_of(iid, args), True, 100])
    outbox.enqueue("vote", iid, [iid, True])
    outbox.enqueue("claim", iid, [market.gateway.address, 10**6])
    outbox.enqueue("rollover", iid, 10**6)
    assert await outbox.flush() == 5
    assert outbox.status("start", iid).state == "done"
    kinds = ("validate", "vote", "claim", "rollover")
    assert [(outbox.status(kind, iid).state, outbox.status(kind, iid).error) for kind in kinds] == [
        ("failed", "ledger: not finished"), ("failed", "ledger: no dispute"),
        ("failed", "ledger: epoch not settled"), ("failed", "ledger: epoch not settled")]


# --- restarts and outages ---------------------------------------------------------------------


async def test_outbox__restart__resends_pending_and_not_done(market, outbox_at, anvil):
    first = outbox_at(market.gateway, "shared")
    done_iid, done_args = new_start(market)
    first.enqueue("start", done_iid, done_args)
    await first.flush()
    done_tx = first.status("start", done_iid).tx_hash
    pending_iid, pending_args = new_start(market)
    first.enqueue("start", pending_iid, pending_args)
    first.close()  # the node stops before flushing

    second = outbox_at(market.gateway, "shared")
    assert not second.enqueue("start", done_iid, done_args)  # a replayed request changes nothing
    nonce = anvil.w3.eth.get_transaction_count(market.gateway.address)
    assert await second.flush() == 1
    assert anvil.w3.eth.get_transaction_count(market.gateway.address) == nonce + 1  # one transaction
    assert second.status("start", done_iid).tx_hash == done_tx
    assert second.status("start", pending_iid).state == "done"
    assert status_of(market, pending_iid) == STARTED


@pytest.fixture
def manual_mining(anvil):
    anvil.w3.provider.make_request("evm_setAutomine", [False])
    yield
    anvil.w3.provider.make_request("evm_setAutomine", [True])
    anvil.mine(1)


async def test_outbox__sent_before_crash__receipt_checked_not_resent(market, outbox_at, anvil, deployed,
                                                                      manual_mining):
    impatient = ChainClient(anvil.rpc_url, market.gateway.account.key, deployed, timeout=0.3)
    first = outbox_at(impatient, "shared")
    iid, args = new_start(market)
    first.enqueue("start", iid, args)
    with pytest.raises(ChainUnavailable, match="^no receipt for 0x[0-9a-f]{64} within 0.3 s$"):
        await first.flush()
    sent = first.status("start", iid)
    assert sent.state == "sent"
    first.close()

    anvil.mine(1)  # the transaction lands while the node is down
    nonce = anvil.w3.eth.get_transaction_count(market.gateway.address)
    second = outbox_at(ChainClient(anvil.rpc_url, market.gateway.account.key, deployed), "shared")
    assert await second.flush() == 1
    assert second.status("start", iid) == ItemStatus("start", iid, "done", 0, sent.tx_hash, None)
    assert anvil.w3.eth.get_transaction_count(market.gateway.address) == nonce  # nothing resent
    assert status_of(market, iid) == STARTED


async def test_outbox__sent_transaction_vanished__resent(market, outbox_at, anvil, deployed, manual_mining,
                                                        caplog):
    impatient = ChainClient(anvil.rpc_url, market.gateway.account.key, deployed, timeout=0.3)
    outbox = outbox_at(impatient)
    iid, args = new_start(market)
    outbox.enqueue("start", iid, args)
    with pytest.raises(ChainUnavailable):
        await outbox.flush()
    lost = outbox.status("start", iid).tx_hash
    anvil.w3.provider.make_request("anvil_dropTransaction", [lost])
    anvil.w3.provider.make_request("evm_setAutomine", [True])
    outbox.client = ChainClient(anvil.rpc_url, market.gateway.account.key, deployed)
    assert await outbox.flush() == 1
    assert f"transaction {lost} vanished; 1 item(s) will be resent" in caplog.text
    resent = outbox.status("start", iid)
    # Same nonce, same call, same fees: the resent transaction may well have the same hash.
    assert resent.state == "done"
    assert anvil.w3.eth.get_transaction_receipt(resent.tx_hash)["status"] == 1
    assert status_of(market, iid) == STARTED


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


async def test_run__rpc_down__backs_off_keeps_items_then_sends(market, outbox_at, anvil, deployed, serve_app):
    app, switch = rpc_switch(anvil.rpc_url)
    client = ChainClient(serve_app(app), market.gateway.account.key, deployed)
    outbox = outbox_at(client, flush_interval=0.02, max_backoff=0.1)
    iid, args = new_start(market)
    outbox.enqueue("start", iid, args)
    switch["down"] = True
    stop = asyncio.Event()
    task = asyncio.create_task(outbox.run(stop))
    while switch["refused"] < 3:  # several attempts, each refused
        await asyncio.sleep(0.02)
    assert outbox.status("start", iid).state == "pending"
    switch["down"] = False
    for _ in range(200):
        if outbox.status("start", iid).state == "done":
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert outbox.status("start", iid).state == "done"
    assert status_of(market, iid) == STARTED


# --- a block that changes the outcome ---------------------------------------------------------


def _pending_before_epoch_end(m: Market, anvil, blocks: int) -> None:
    """Mine until the pending block (where the next transaction or estimate runs) is `blocks`
    blocks before the last one of its epoch."""
    ledger = m.executor.ledger.functions
    length, genesis = ledger.epoch_length().call(), ledger.genesis_block().call()
    pending = m.executor.w3.eth.block_number + 1
    anvil.mine((length - 1 - blocks - (pending - genesis)) % length)


async def test_finish__estimated_in_one_epoch_mined_in_the_next__headroom_covers_it(market, outbox_at, anvil):
    """An executor's epoch account is fresh storage in a new epoch: a finish estimated in the old
    one, where its account exists, needs more gas than that estimate when it lands in the new one."""
    gateway = outbox_at(market.gateway, "gateway")
    starts = [new_start(market) for _ in range(4)]
    for iid, args in starts:
        gateway.enqueue("start", iid, args)
    await gateway.flush()
    ex, ledger = market.executor, market.executor.ledger.functions
    for (first, second), headroom in (((starts[0], starts[1]), 0), ((starts[2], starts[3]), GAS_HEADROOM)):
        _pending_before_epoch_end(market, anvil, 1)
        ex.transact(ledger.finish(finish_args(*first)))  # the executor's account in this epoch
        fn = ledger.finish(finish_args(*second))
        gas = int(fn.estimate_gas({"from": ex.address}, block_identifier="pending") * GAS_MARGIN)
        anvil.mine(1)  # the finish lands in the first block of the next epoch
        tx = ex.send(fn, gas + headroom)
        if headroom:
            assert ex.wait(tx)["status"] == 1 and status_of(market, second[0]) == FINISHED
        else:
            with pytest.raises(ChainError) as err:
                ex.wait(tx)
            assert err.value.reason == STATE_CHANGED  # it passes when replayed before its block
            assert status_of(market, second[0]) == STARTED


async def test_outbox__revert_caused_by_its_block__sent_again(market, outbox_at, anvil, monkeypatch):
    """A finish mined in a new epoch after an estimate in the old one, without the headroom (as it
    was): the mined revert is the block's doing, so the outbox estimates and sends it again."""
    gateway, outbox = outbox_at(market.gateway, "gateway"), outbox_at(market.executor, defer_delay=0.0)
    (first, args1), (iid, args) = starts = [new_start(market) for _ in range(2)]
    for key, start in starts:
        gateway.enqueue("start", key, start)
    await gateway.flush()
    monkeypatch.setattr(client_module, "GAS_HEADROOM", 0)
    ex = market.executor
    _pending_before_epoch_end(market, anvil, 1)
    ex.transact(ex.ledger.functions.finish(finish_args(first, args1)))
    estimate = ex.estimate

    def estimate_then_a_block(fn):
        gas = estimate(fn)
        anvil.mine(1)
        return gas

    monkeypatch.setattr(ex, "estimate", estimate_then_a_block)
    outbox.enqueue("finish", iid, finish_args(iid, args))
    await outbox.flush()
    retried = outbox.status("finish", iid)
    assert (retried.state, retried.attempts, retried.error) == ("pending", 1, STATE_CHANGED)
    monkeypatch.setattr(ex, "estimate", estimate)
    await outbox.flush()
    assert outbox.status("finish", iid).state == "done"
    assert status_of(market, iid) == FINISHED
