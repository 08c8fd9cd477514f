"""agents.chain.batches against the chain: batches rebuilt from events match the commitment the
Ledger stores, and the Merkle proofs of their records are the ones the Ledger accepts."""

from dataclasses import replace

import ape
import pytest
from eth_utils import keccak

from agents.chain.batches import (EXPIRED, FINISHED, STARTED, Batch, BatchNotFound, Item, Record, Terms, assemble,
                                  commitment, load_batch, merkle_proof, merkle_root, packed)
from agents.chain.build import contract_type

from conftest import MODEL_ID, PRICE, WINDOW


@pytest.fixture(autouse=True)
def _network(network):
    return network


@pytest.fixture
def w3_ledger(chain, ledger):
    w3 = chain.provider.web3
    return w3.eth.contract(address=ledger.address, abi=contract_type("Ledger")["abi"])


def test_load_batch__started__terms_and_items_as_signed(ledger, client, network, sign_for, start_batch, w3_ledger):
    executor = network[0]
    signed = sign_for(executor, client, 2, max_tokens=32, quorum=1)
    batch = start_batch(executor, signed)
    loaded = load_batch(w3_ledger, batch.number)
    assert loaded == batch and not loaded.finished and not loaded.expired
    assert loaded.terms == Terms(executor.address, MODEL_ID, PRICE)
    assert loaded.items == tuple(Item(s.inference_id, client.address, 32, s.request.deadline, 1) for s in signed)
    status, digest = ledger.batchOf(batch.number)
    assert (status, bytes(digest)) == (STARTED, packed(commitment(loaded.terms, list(loaded.items))))


def test_load_batch__finished__records_and_root(ledger, client, start, finish_batch, w3_ledger):
    batch, executor = start(client, 3, max_tokens=32)
    done = finish_batch(batch, executor, [5, 0, 32])
    loaded = load_batch(w3_ledger, batch.number)
    assert loaded == done and loaded.finished and loaded.p_bps == 10_000
    assert [r.completion_tokens for r in loaded.records()] == [5, 0, 32]
    assert {r.finish_block for r in loaded.records()} == {done.finish_block}
    status, root = ledger.batchOf(batch.number)
    assert (status, bytes(root)) == (FINISHED, packed(loaded.root()))


def test_load_batch__expired__flagged(client, start, chain, ledger, gov, w3_ledger):
    batch, _ = start(client, 2)
    chain.pending_timestamp = max(i.deadline for i in batch.items) + WINDOW + 1
    ledger.expireBatch(*batch.args(), sender=gov)
    loaded = load_batch(w3_ledger, batch.number)
    assert loaded.expired and not loaded.finished and loaded.items == batch.items
    assert ledger.batchOf(batch.number).status == EXPIRED
    with pytest.raises(ValueError, match="is not finished"):
        loaded.records()


def test_load_batch__unknown__not_found(ledger, w3_ledger):
    with pytest.raises(BatchNotFound, match="no BatchStarted event for batch"):
        load_batch(w3_ledger, ledger.batchCount())


def test_load_batch__scan_starts_after_start__not_found(client, finish, w3_ledger, chain):
    batch, _ = finish(client)
    chain.mine(1)
    with pytest.raises(BatchNotFound, match="no BatchStarted event"):
        load_batch(w3_ledger, batch.number, from_block=batch.finish_block)


def test_load_batch__events_disagree_with_chain__not_found(client, finish, w3_ledger):
    """A lossy event source (here: the BatchFinished log withheld) is caught by the commitment check."""
    batch, _ = finish(client)

    class Withheld:
        w3 = w3_ledger.w3
        functions = w3_ledger.functions

        class events:
            BatchStarted = w3_ledger.events.BatchStarted
            Started = w3_ledger.events.Started
            Finished = w3_ledger.events.Finished

            class BatchFinished:
                def get_logs(self, **_):
                    return []

    with pytest.raises(BatchNotFound, match="do not rebuild batch"):
        load_batch(Withheld, batch.number)


# ---------------------------------------------------------------- Merkle proofs on chain

@pytest.mark.parametrize("size", [1, 2, 3, 5, 32])
def test_proofs__every_record__accepted_by_validators_of(ledger, client, finish, chain, size):
    batch, _ = finish(client, size, tokens=[t % 11 for t in range(size)])
    chain.mine(2)
    depth = (size - 1).bit_length()  # the tree's height; a carried node's proof is shorter
    for item in batch.items:
        record, proof = batch.proven(item.inference_id)
        assert len(proof) <= depth
        ledger.validatorsOf(record.as_tuple(), proof)  # reverts on a proof the Ledger refuses
    assert len(batch.proven(batch.items[0].inference_id)[1]) == depth


@pytest.mark.parametrize("size", [1, 3, 5])
def test_proofs__wrong__record_mismatch(ledger, client, finish, chain, size):
    batch, _ = finish(client, size)
    chain.mine(2)
    first, proof = batch.proven(batch.items[0].inference_id)
    last, last_proof = batch.proven(batch.items[-1].inference_id)
    wrong = [
        (first, proof + [keccak(b"one too many")]),
        (replace(first, completion_tokens=first.completion_tokens + 1), proof),
        (replace(first, finish_block=first.finish_block + 1), proof),
    ]
    if size > 1:
        wrong += [(first, proof[:-1]), (first, last_proof), (last, proof), (last, [batch.root()])]
    for record, p in wrong:
        with ape.reverts("ledger: record mismatch"):
            ledger.validatorsOf(record.as_tuple(), p)


# ---------------------------------------------------------------- the Python side alone

def leaves(n):
    return [keccak(bytes([i])) for i in range(n)]


def pair(a, b):
    return keccak(min(a, b) + max(a, b))


def test_merkle__odd_levels__last_node_carried_up():
    a, b, c, d, e = leaves(5)
    assert merkle_root([a]) == a and merkle_proof([a], 0) == []
    assert merkle_root([a, b, c]) == pair(pair(a, b), c)
    assert merkle_proof([a, b, c], 2) == [pair(a, b)]
    assert merkle_proof([a, b, c], 0) == [b, c]
    assert merkle_root([a, b, c, d, e]) == pair(pair(pair(a, b), pair(c, d)), e)
    assert merkle_proof([a, b, c, d, e], 4) == [pair(pair(a, b), pair(c, d))]
    with pytest.raises(ValueError, match="at least one leaf"):
        merkle_root([])


def test_record_leaf__every_field_counts():
    r = Record(b"\x01" * 32, 7, "0x" + "11" * 20, "0x" + "22" * 20, b"\x02" * 32, 3, 4, 5, 0, 1, 9, 100)
    assert len({r.leaf(), replace(r, batch=8).leaf(), replace(r, p_bps=99).leaf(), replace(r, quorum=1).leaf()}) == 4
    assert packed(r.leaf())[-1] == 0 and packed(r.leaf())[:-1] == r.leaf()[:-1]


def test_assemble__events_of_another_size__refused():
    started = {"executor": "0x" + "11" * 20, "model_id": MODEL_ID, "price": PRICE, "size": 2}
    item = {"inference_id": b"\x01" * 32, "client": "0x" + "22" * 20, "max_tokens": 4, "deadline": 5, "quorum": 0}
    with pytest.raises(ValueError, match="1 Started events, BatchStarted says 2"):
        assemble(0, started, [item])
    batch = assemble(0, {**started, "size": 1}, [item])
    assert isinstance(batch, Batch) and batch.items[0].max_tokens == 4
    with pytest.raises(ValueError, match="the Finished events do not match its items"):
        assemble(0, {**started, "size": 1}, [item], {"p_bps": 1}, 10,
                 [{"inference_id": b"\x02" * 32, "completion_tokens": 1}])
