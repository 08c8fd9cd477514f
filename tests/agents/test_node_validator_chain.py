"""The executor, validator, juror and keeper roles against the real Ledger on anvil: the executor
finishes a batch of two, a failed verdict on one opens a dispute, the drawn juror votes, the
executor's keeper resolves it, and the chain invalidates that one alone.

Only the check itself is replaced (it needs model nodes; the devnet test runs it for real): here
every participant finds the answer wrong. Everything else is real: the batches, records and proofs
rebuilt from events by ChainView, the assignment and jury draws, the outbox sending the
transactions.
"""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import pytest
from eth_utils import keccak

from agents.chain.batches import Record
from agents.chain.outbox import Outbox
from agents.node import finisher, keeper, validator
from agents.node.chain_view import DISPUTED, FINISHED, INVALIDATED, NONE, ChainView
from agents.node.metrics import NodeMetrics
from agents.node.state import NodeState

PRICE = 10


def node(chain, tmp_path, name: str):
    """A node's context as the roles see it, on real chain reads, state and outbox."""
    async def read(fn, *args):
        return fn(*args)

    return SimpleNamespace(address=chain.address, chain=ChainView(chain), read=read,
                           state=NodeState(tmp_path / name / "node.sqlite"),
                           outbox=Outbox(tmp_path / name / "outbox.sqlite", chain), metrics=NodeMetrics())


@pytest.fixture
def market(anvil, deployed, make_model, make_participant, make_client, tmp_path):
    name = f"test/jury-{uuid.uuid4().hex[:8]}"
    mid = make_model(name, price=PRICE)
    nodes = {}
    for i in range(3):
        chain = make_participant(mid)
        nodes[chain.address] = node(chain, tmp_path, f"p{i}")
    yield SimpleNamespace(name=name, model_id=mid, nodes=nodes, client=make_client())
    for n in nodes.values():
        n.outbox.close()
        n.state.close()


async def start_and_finish(m, sign_start) -> tuple[list, SimpleNamespace]:
    """Two signed requests drawn to one executor, started in one batch through its outbox, answered
    with 5 and 3 tokens and finished by its finisher."""
    drawn: dict[str, list] = {}
    while True:  # among three members, two of any four draws share an executor
        start = sign_start(m.client, m.name, max_price=PRICE)
        starts = drawn.setdefault(start.executor, [])
        starts.append(start)
        if len(starts) == 2:
            break
    ex = m.nodes[starts[0].executor]
    for s, tokens in zip(starts, (5, 3)):
        ex.outbox.enqueue("start", s.key, s.args)
        ex.state.save_answer(s.inference_id, keccak(text="answer"), b"\x22" * 32, tokens, s.request.deadline)
    await ex.outbox.flush()
    (begun,) = ex.chain.ledger.events.BatchStarted().get_logs(
        from_block=starts[0].seed_block, argument_filters={"executor": ex.address})
    await finisher.on_batch_started(ex, begun["args"]["batch"], begun["blockNumber"])
    await finisher.tick(ex, int(time.time()))
    await ex.outbox.flush()
    return starts, ex


async def flush_all(m) -> None:
    for n in m.nodes.values():
        await n.outbox.flush()


async def test_roles__failed_verdict__jury_upholds_and_keeper_resolves(market, anvil, sign_start, monkeypatch):
    m = market

    async def finds_it_wrong(ctx, inference_id, info):
        return validator.Outcome(False, 0, ("position 0 sampling: not the perturbed argmax",))

    monkeypatch.setattr(validator, "check", finds_it_wrong)
    (judged, other), ex = await start_and_finish(m, sign_start)
    iid, key = judged.inference_id, judged.key
    assert ex.chain.inference(b"\x00" * 32).status == NONE

    info = ex.chain.inference(iid)
    (finish,) = ex.chain.ledger.events.BatchFinished().get_logs(
        from_block=0, argument_filters={"batch": info.batch.number})
    assert info.status == FINISHED
    assert [i.inference_id for i in info.batch.items] == [iid, other.inference_id]
    assert info.record == Record(iid, info.batch.number, m.client.address, ex.address, m.model_id, PRICE, 16,
                                 judged.request.deadline, 0, completion_tokens=5,
                                 finish_block=finish["blockNumber"], p_bps=10_000)
    assert list(info.proof) == [ex.chain.inference(other.inference_id).record.leaf()]
    assert (info.cost, info.artifact_digest) == (5 * PRICE, b"\x22" * 32)

    window = ex.chain.validation_window()
    anvil.mine(2)  # views run on the latest block, which must be past finish_block + 1
    head = ex.chain.block_number()
    for n in m.nodes.values():
        validator.on_finished(n, iid, ex.address, finish["blockNumber"])
        keeper.on_finished(n, iid, ex.address, finish["blockNumber"], window)
        await validator.tick(n, head, window)
    (accuser,) = ex.chain.validators_of(info.record, info.proof)  # reputation 0: always validated, by one
    assert [n.address for n in m.nodes.values() if n.outbox.status("validate", key)] == [accuser]
    await flush_all(m)
    assert ex.chain.state(info.batch.number, iid).status == DISPUTED
    assert ex.chain.state(info.batch.number, other.inference_id).status == FINISHED

    (opened,) = ex.chain.ledger.events.DisputeOpened().get_logs(from_block=0, argument_filters={"inference_id": iid})
    assert (opened["args"]["executor"], opened["args"]["accuser"]) == (ex.address, accuser)
    for n in m.nodes.values():
        validator.on_dispute_opened(n, iid, ex.address, accuser, opened["blockNumber"])
        keeper.on_dispute_opened(n, iid, ex.address, accuser, opened["args"]["deadline"])
    anvil.mine(2)
    head = ex.chain.block_number()
    (juror,) = ex.chain.jury_of(iid)  # three participants: the one who is neither party
    assert juror not in (ex.address, accuser)
    for n in m.nodes.values():
        await validator.jury_tick(n, head, ex.chain.jury_window())
    assert [n.address for n in m.nodes.values() if n.outbox.status("vote", key)] == [juror]
    await flush_all(m)
    assert ex.chain.dispute(iid).voted_mask == 1

    anvil.mine(max(0, opened["args"]["deadline"] + 1 - ex.chain.block_number()))
    head = ex.chain.block_number()
    for n in m.nodes.values():
        await keeper.resolve(n, head)
    assert [n.address for n in m.nodes.values() if n.outbox.status("resolve", key)] == [ex.address]
    await flush_all(m)
    assert [ex.outbox.status("resolve", key).state, ex.outbox.status("resolve", key).error] == ["done", None]
    assert ex.chain.state(info.batch.number, iid).status == INVALIDATED
    assert ex.chain.state(info.batch.number, other.inference_id).status == FINISHED
    assert not ex.chain.dispute(iid).open
    (resolved,) = ex.chain.ledger.events.DisputeResolved().get_logs(from_block=0, argument_filters={"inference_id": iid})
    assert resolved["args"]["invalid"] and resolved["args"]["votes_invalid"] > 0 == resolved["args"]["votes_valid"]
    # spent: both answers (5 and 3 tokens); refunded: the invalidated one
    assert tuple(m.client.ledger.functions.clientStats(m.client.address).call()) == (8 * PRICE, 5 * PRICE)
