"""The validator, juror and keeper roles against the real Ledger on anvil: a failed verdict opens a
dispute, the drawn juror votes, the executor's keeper resolves it, and the chain invalidates.

Only the check itself is replaced (it needs model nodes; the devnet test runs it for real): here
every participant finds the answer wrong. Everything else is real: the records rebuilt from events
by ChainView, the assignment and jury draws, the outbox sending the transactions.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from eth_utils import keccak

from agents.chain.outbox import Outbox
from agents.chain.records import Record
from agents.node import keeper, validator
from agents.node.chain_view import DISPUTED, FINISHED, INVALIDATED, NONE, ChainView
from agents.node.gateway import start_args
from agents.node.metrics import NodeMetrics
from agents.node.state import NodeState
from agents.protocol.eip712 import Domain, inference_id, sign_request
from agents.protocol.requests import InferenceRequest

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
    yield SimpleNamespace(name=name, model_id=mid, nodes=nodes, client=make_client(),
                          domain=Domain(31337, deployed.ledger))
    for n in nodes.values():
        n.outbox.close()
        n.state.close()


def start_and_finish(m, anvil) -> tuple[bytes, Record, SimpleNamespace]:
    """A signed request started and finished by its drawn executor, through the executor's outbox."""
    latest = anvil.w3.eth.get_block("latest")
    request = InferenceRequest(model=m.name, prompt="hi", max_tokens=16, max_price=PRICE, nonce=1,
                               deadline=latest["timestamp"] + 3600, client=m.client.address)
    iid = inference_id(request, m.domain)
    some = next(iter(m.nodes.values()))
    executor = some.chain.draw_executor(m.model_id, iid, latest["number"])
    ex = m.nodes[executor]
    ex.outbox.enqueue("start", "0x" + iid.hex(), start_args(
        request, sign_request(request, m.domain, m.client.account.key), latest["number"], executor))
    record = Record(iid, m.client.address, executor, m.model_id, PRICE, 16, request.deadline)
    ex.outbox.enqueue("finish", "0x" + iid.hex(), [record.as_tuple(), keccak(text="answer"), b"\x22" * 32, 5])
    return iid, record, ex


async def flush_all(m) -> None:
    for n in m.nodes.values():
        await n.outbox.flush()


async def test_roles__failed_verdict__jury_upholds_and_keeper_resolves(market, anvil, monkeypatch):
    m = market

    async def finds_it_wrong(ctx, inference_id, info):
        return validator.Outcome(False, 0, ("position 0 sampling: not the perturbed argmax",))

    monkeypatch.setattr(validator, "check", finds_it_wrong)
    iid, started, ex = start_and_finish(m, anvil)
    assert ex.chain.inference(b"\x00" * 32).status == NONE
    await ex.outbox.flush()

    info = ex.chain.inference(iid)
    (finish,) = ex.chain.ledger.events.Finished().get_logs(from_block=0, argument_filters={"inference_id": iid})
    assert info.status == FINISHED
    assert info.record == Record(iid, m.client.address, ex.address, m.model_id, PRICE, 16, started.deadline,
                                 completion_tokens=5, finish_block=finish["blockNumber"], p_bps=10_000)
    assert (info.cost, info.artifact_digest) == (5 * PRICE, b"\x22" * 32)

    window = ex.chain.validation_window()
    anvil.mine(2)  # views run on the latest block, which must be past finish_block + 1
    head = ex.chain.block_number()
    for n in m.nodes.values():
        validator.on_finished(n, iid, ex.address, finish["blockNumber"])
        keeper.on_finished(n, iid, ex.address, finish["blockNumber"], window)
        await validator.tick(n, head, window)
    (accuser,) = ex.chain.validators_of(info.record)  # reputation 0: always validated, by one
    assert [n.address for n in m.nodes.values() if n.outbox.status("validate", "0x" + iid.hex())] == [accuser]
    await flush_all(m)
    assert ex.chain.state(iid).status == DISPUTED

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
    assert [n.address for n in m.nodes.values() if n.outbox.status("vote", "0x" + iid.hex())] == [juror]
    await flush_all(m)
    assert ex.chain.dispute(iid).voted_mask == 1

    anvil.mine(max(0, opened["args"]["deadline"] + 1 - ex.chain.block_number()))
    head = ex.chain.block_number()
    for n in m.nodes.values():
        await keeper.resolve(n, head)
    assert [n.address for n in m.nodes.values() if n.outbox.status("resolve", "0x" + iid.hex())] == [ex.address]
    await flush_all(m)
    assert ex.chain.state(iid).status == INVALIDATED
    assert not ex.chain.dispute(iid).open
    (resolved,) = ex.chain.ledger.events.DisputeResolved().get_logs(from_block=0, argument_filters={"inference_id": iid})
    assert resolved["args"]["invalid"] and resolved["args"]["votes_invalid"] > 0 == resolved["args"]["votes_valid"]
    assert tuple(m.client.ledger.functions.clientStats(m.client.address).call()) == (5 * PRICE, 5 * PRICE)
