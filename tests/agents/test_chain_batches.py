"""The Python mirror of the Ledger's batch commitments (agents.chain.batches): Merkle trees whose
proofs check as snekmate's `_process_proof` checks them, and batches assembled from event args.
Against the deployed Ledger: tests/contracts/test_records.py."""

from __future__ import annotations

import pytest
from eth_utils import keccak, to_checksum_address

from agents.chain import batches
from agents.chain.batches import Item, Terms

EXECUTOR = "0x" + "11" * 20
CLIENT = "0x" + "22" * 20


def process_proof(proof: list[bytes], leaf: bytes) -> bytes:
    """snekmate's merkle_proof_verification._process_proof: sorted pairs up the branch."""
    node = leaf
    for sibling in proof:
        node = keccak(min(node, sibling) + max(node, sibling))
    return node


def leaves(n: int) -> list[bytes]:
    return [keccak(i.to_bytes(32, "big")) for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 16, 17, 32])
def test_merkle_proof__every_leaf__proves_the_root(n):
    tree = leaves(n)
    root = batches.merkle_root(tree)
    for i, leaf in enumerate(tree):
        proof = batches.merkle_proof(tree, i)
        assert len(proof) <= 5  # the Ledger's MAX_PROOF for its 32 items
        assert process_proof(proof, leaf) == root


def test_merkle_proof__other_leaf__does_not_prove_the_root():
    tree = leaves(5)
    root = batches.merkle_root(tree)
    assert process_proof(batches.merkle_proof(tree, 1), keccak(b"forged")) != root
    assert process_proof(batches.merkle_proof(tree, 1), tree[2]) != root


def test_merkle_root__single_leaf__is_the_leaf_and_empty_refused():
    (leaf,) = leaves(1)
    assert batches.merkle_root([leaf]) == leaf
    assert batches.merkle_proof([leaf], 0) == []
    with pytest.raises(ValueError, match="^a Merkle tree needs at least one leaf$"):
        batches.merkle_root([])


def test_packed__zeroes_the_status_bits():
    digest = b"\xff" * 32
    assert batches.packed(digest) == b"\xff" * 31 + b"\x00"


def _started(n: int) -> tuple[dict, list[dict]]:
    begun = {"batch": 7, "executor": EXECUTOR, "model_id": b"m" * 32, "price": 3, "size": n}
    items = [{"inference_id": bytes([i]) * 32, "client": CLIENT, "max_tokens": 10 + i,
              "deadline": 1000 + i, "quorum": i % 2} for i in range(n)]
    return begun, items


def test_assemble__finished_batch__records_and_proofs():
    begun, items = _started(3)
    answers = [{"inference_id": a["inference_id"], "completion_tokens": 5} for a in reversed(items)]
    batch = batches.assemble(7, begun, items, {"p_bps": 250}, 40, answers)
    assert batch.finished and batch.terms == Terms(to_checksum_address(EXECUTOR), b"m" * 32, 3)
    record, proof = batch.proven(b"\x01" * 32)
    assert (record.batch, record.max_tokens, record.completion_tokens, record.finish_block, record.p_bps) == (
        7, 11, 5, 40, 250)
    assert process_proof(proof, record.leaf()) == batch.root()
    assert batch.args() == (7, (to_checksum_address(EXECUTOR), b"m" * 32, 3),
                            [Item(bytes([i]) * 32, to_checksum_address(CLIENT), 10 + i, 1000 + i, i % 2).as_tuple()
                             for i in range(3)])


def test_assemble__missing_started_event__refused():
    begun, items = _started(3)
    with pytest.raises(ValueError, match="^batch 7: 2 Started events, BatchStarted says 3$"):
        batches.assemble(7, begun, items[:2])


def test_assemble__finished_events_of_other_items__refused():
    begun, items = _started(2)
    answers = [{"inference_id": b"\x09" * 32, "completion_tokens": 1}, {"inference_id": items[1]["inference_id"],
                                                                        "completion_tokens": 1}]
    with pytest.raises(ValueError, match="^batch 7: the Finished events do not match its items$"):
        batches.assemble(7, begun, items, {"p_bps": 1}, 40, answers)


def test_proven__started_batch_or_unknown_item__refused():
    begun, items = _started(2)
    batch = batches.assemble(7, begun, items)
    with pytest.raises(ValueError, match="^batch 7 is not finished$"):
        batch.proven(items[0]["inference_id"])
    finished = batches.assemble(7, begun, items, {"p_bps": 1}, 40,
                                [{"inference_id": a["inference_id"], "completion_tokens": 0} for a in items])
    with pytest.raises(KeyError, match="is not in batch 7"):
        finished.proven(b"\x09" * 32)
