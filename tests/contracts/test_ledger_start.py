"""Ledger.startBatch: signatures, nonces, draws, escrow, and every rejection in spec order."""

import ape
import pytest

from agents.chain.batches import STARTED
from agents.protocol import ecdsa
from agents.protocol.eip712 import model_id

from conftest import FUNDS, MODEL_ID, PRICE, ZERO


@pytest.fixture(autouse=True)
def _network(network):
    return network


@pytest.fixture
def drawn(sign, accounts_by_address):
    """drawn(client, **fields) -> (Signed, its executor account)."""

    def drawn(client, **fields):
        s = sign(client, **fields)
        return s, accounts_by_address(s.executor)

    return drawn


def test_start_batch__python_signature__accepted_with_python_id(ledger, gov, client, drawn, conserved):
    s, executor = drawn(client, max_tokens=64)
    number = ledger.batchCount()
    tx = ledger.startBatch(executor, MODEL_ID, [s.item()], sender=gov)
    [item, begun] = tx.events
    assert (item.event_name, begun.event_name) == ("Started", "BatchStarted")
    assert bytes(item.inference_id) == s.inference_id
    assert (item.client, item.batch, item.nonce) == (client.address, number, s.request.nonce)
    assert bytes(item.request_hash) == s.request.request_hash
    assert (item.max_tokens, item.deadline, item.quorum) == (64, s.request.deadline, 0)
    assert (begun.batch, begun.executor, bytes(begun.model_id), begun.price, begun.size) == (
        number, executor.address, MODEL_ID, PRICE, 1)
    assert ledger.batchCount() == number + 1
    assert ledger.escrowOf(client) == FUNDS - 64 * PRICE
    assert ledger.totalLocked() == 64 * PRICE
    assert ledger.stateOf(number, s.inference_id).status == STARTED
    assert ledger.nonceUsed(client, s.request.nonce)
    conserved()


def test_start_batch__three__all_started_one_lock_each(ledger, gov, client, sign_for, network, conserved):
    executor = network[0]
    signed = [s for i in range(3) for s in sign_for(executor, client, max_tokens=10 + i)]
    tx = ledger.startBatch(executor, MODEL_ID, [s.item() for s in signed], sender=gov)
    assert [bytes(e.inference_id) for e in tx.events if e.event_name == "Started"] == [s.inference_id for s in signed]
    assert tx.events[-1].size == 3
    assert ledger.totalLocked() == (10 + 11 + 12) * PRICE
    assert ledger.escrowOf(client) == FUNDS - (10 + 11 + 12) * PRICE
    conserved()


def test_start_batch__numbers__count_up(ledger, client, start):
    first, _ = start(client)
    second, _ = start(client, 2)
    assert second.number == first.number + 1 == ledger.batchCount() - 1


def test_start_batch__empty__reverts(ledger, gov, network):
    with ape.reverts("ledger: empty batch"):
        ledger.startBatch(network[0], MODEL_ID, [], sender=gov)


def test_start_batch__one_bad__reverts_all(ledger, gov, client, sign_for, network, start_batch):
    executor = network[0]
    [good] = sign_for(executor, client)
    [bad] = sign_for(executor, client, max_price=PRICE - 1)
    count = ledger.batchCount()
    with ape.reverts("ledger: price above max"):
        ledger.startBatch(executor, MODEL_ID, [good.item(), bad.item()], sender=gov)
    assert ledger.batchCount() == count and ledger.batchOf(count).status == 0
    assert ledger.escrowOf(client) == FUNDS and not ledger.nonceUsed(client, good.request.nonce)
    start_batch(executor, [good])  # its nonce is free again


def test_start_batch__unknown_model__reverts(ledger, gov, client, sign, network):
    s = sign(client, model="nullius/unknown")
    with ape.reverts("ledger: unknown model"):
        ledger.startBatch(network[0], model_id("nullius/unknown"), [s.item()], sender=gov)


def test_start_batch__deadline_passed__reverts(ledger, gov, client, drawn, chain):
    s, executor = drawn(client, deadline=chain.pending_timestamp - 1)
    with ape.reverts("ledger: expired"):
        ledger.startBatch(executor, MODEL_ID, [s.item()], sender=gov)


def test_start_batch__price_above_max__reverts(ledger, gov, client, drawn):
    s, executor = drawn(client, max_price=PRICE - 1)
    with ape.reverts("ledger: price above max"):
        ledger.startBatch(executor, MODEL_ID, [s.item()], sender=gov)


def test_start_batch__signed_by_someone_else__reverts(ledger, gov, client, outsider, drawn):
    s, executor = drawn(client, key=outsider.private_key)
    with ape.reverts("ledger: bad signature"):
        ledger.startBatch(executor, MODEL_ID, [s.item()], sender=gov)


def test_start_batch__field_changed_after_signing__reverts(ledger, gov, client, drawn):
    s, executor = drawn(client, max_tokens=64)
    with ape.reverts("ledger: bad signature"):
        ledger.startBatch(executor, MODEL_ID, [s.item(max_tokens=65)], sender=gov)


def test_start_batch__signature_too_short__reverts(ledger, gov, client, drawn):
    s, executor = drawn(client)
    with ape.reverts("ledger: bad signature"):
        ledger.startBatch(executor, MODEL_ID, [s.item(signature=bytes(s.signature)[:63])], sender=gov)


def test_start_batch__malformed_signature__reverts_in_ecdsa(ledger, gov, client, drawn):
    s, executor = drawn(client)
    with ape.reverts("ecdsa: invalid signature"):
        ledger.startBatch(executor, MODEL_ID, [s.item(signature=b"\x00" * 65)], sender=gov)


def test_start_batch__malleated_signature__reverts_in_ecdsa(ledger, gov, client, drawn):
    """The high-s twin of a valid signature recovers the same client; EIP-2 refuses it, and so
    does the gateway (agents.protocol.eip712.recover_client)."""
    s, executor = drawn(client)
    sig = bytes(s.signature)
    high = sig[:32] + (ecdsa.SECP256K1_N - int.from_bytes(sig[32:64])).to_bytes(32) + bytes([55 - sig[64]])
    with ape.reverts("ecdsa: invalid signature `s` value"):
        ledger.startBatch(executor, MODEL_ID, [s.item(signature=high)], sender=gov)


def compact(signature: bytes) -> bytes:
    """The EIP-2098 64-byte form of a 65-byte signature: r, then s with v's parity in its top bit."""
    vs = int.from_bytes(signature[32:64]) | (signature[64] - 27) << 255
    return signature[:32] + vs.to_bytes(32)


def test_start_batch__compact_twin_of_a_started_signature__nonce_used(ledger, gov, client, drawn):
    """snekmate's ecrecover takes EIP-2098 signatures too, so one authorization has two encodings;
    the replay guard is the signed nonce, not the signature, so the twin cannot start it again."""
    s, executor = drawn(client)
    ledger.startBatch(executor, MODEL_ID, [s.item()], sender=gov)
    with ape.reverts("ledger: nonce used"):
        ledger.startBatch(executor, MODEL_ID, [s.item(signature=compact(bytes(s.signature)))], sender=gov)


def test_start_batch__compact_signature__accepted(ledger, gov, client, drawn):
    s, executor = drawn(client)
    ledger.startBatch(executor, MODEL_ID, [s.item(signature=compact(bytes(s.signature)))], sender=gov)
    assert ledger.nonceUsed(client, s.request.nonce)


# ---------------------------------------------------------------- the replay guard

def test_start_batch__replayed_in_a_later_batch__reverts(ledger, gov, client, drawn):
    s, executor = drawn(client)
    ledger.startBatch(executor, MODEL_ID, [s.item()], sender=gov)
    with ape.reverts("ledger: nonce used"):
        ledger.startBatch(executor, MODEL_ID, [s.item()], sender=gov)


def test_start_batch__same_item_twice_in_one_batch__reverts(ledger, gov, client, drawn):
    s, executor = drawn(client)
    with ape.reverts("ledger: nonce used"):
        ledger.startBatch(executor, MODEL_ID, [s.item(), s.item()], sender=gov)
    assert not ledger.nonceUsed(client, s.request.nonce)


def test_start_batch__other_request_same_nonce__reverts(ledger, gov, client, sign_for, network):
    """A nonce is spent once per client, whatever the request that signed it."""
    executor = network[0]
    [first] = sign_for(executor, client)
    ledger.startBatch(executor, MODEL_ID, [first.item()], sender=gov)
    [again] = sign_for(executor, client, nonce=first.request.nonce, prompt="another")
    assert again.inference_id != first.inference_id
    with ape.reverts("ledger: nonce used"):
        ledger.startBatch(executor, MODEL_ID, [again.item()], sender=gov)


def test_nonce_used__one_bit_per_nonce_per_client(ledger, gov, client, outsider, fund, sign_for, network):
    executor = network[0]
    fund(outsider, ledger, FUNDS)
    ledger.deposit(FUNDS, sender=outsider)
    nonces = [2**64 + 255, 2**64 + 256]  # the last bit of one bitmap word, the first of the next
    mine = [s for n in nonces for s in sign_for(executor, client, nonce=n)]
    ledger.startBatch(executor, MODEL_ID, [s.item() for s in mine], sender=gov)
    assert [ledger.nonceUsed(client, n) for n in [2**64 + 254, *nonces, 2**64 + 257]] == [False, True, True, False]
    assert not ledger.nonceUsed(outsider, nonces[0])
    [theirs] = sign_for(executor, outsider, nonce=nonces[0])  # another client's nonce space
    ledger.startBatch(executor, MODEL_ID, [theirs.item()], sender=gov)
    assert ledger.nonceUsed(outsider, nonces[0])


# ---------------------------------------------------------------- seed block and draw

def test_start_batch__seed_block_not_yet_mined__reverts(ledger, gov, client, drawn, chain):
    s, executor = drawn(client)
    with ape.reverts("ledger: stale seed block"):
        ledger.startBatch(executor, MODEL_ID, [s.item(seed_block=chain.blocks.head.number + 1)], sender=gov)


def test_start_batch__seed_block_256_back__passes_and_257_back__reverts(ledger, gov, client, sign_for, network,
                                                                         chain):
    executor = network[0]
    [ok], [old] = sign_for(executor, client), sign_for(executor, client)
    chain.mine(255 - (chain.blocks.head.number - ok.seed_block))
    ledger.startBatch(executor, MODEL_ID, [ok.item()], sender=gov)  # mined 256 blocks after its seed block
    assert chain.blocks.head.number == ok.seed_block + 256
    with ape.reverts("ledger: stale seed block"):
        ledger.startBatch(executor, MODEL_ID, [old.item(seed_block=chain.blocks.head.number - 256)], sender=gov)


def test_start_batch__executor_not_drawn__reverts(ledger, gov, client, drawn, network):
    s, executor = drawn(client)
    other = next(h for h in network if h != executor)
    with ape.reverts("ledger: executor mismatch"):
        ledger.startBatch(other, MODEL_ID, [s.item()], sender=gov)


def test_start_batch__one_item_drawn_to_another_executor__reverts(ledger, gov, client, sign_for, network):
    a, b = network[0], network[1]
    mine, [theirs] = sign_for(a, client, 2), sign_for(b, client)
    with ape.reverts("ledger: executor mismatch"):
        ledger.startBatch(a, MODEL_ID, [mine[0].item(), theirs.item(), mine[1].item()], sender=gov)


def test_start_batch__zero_executor__reverts(ledger, gov, client, drawn):
    s, _ = drawn(client)
    with ape.reverts("ledger: executor mismatch"):
        ledger.startBatch(ZERO, MODEL_ID, [s.item()], sender=gov)


def test_start_batch__lock_above_escrow__reverts(ledger, gov, outsider, drawn):
    s, executor = drawn(outsider)
    with ape.reverts("ledger: insufficient escrow"):
        ledger.startBatch(executor, MODEL_ID, [s.item()], sender=gov)


def test_start_batch__locks_together_above_escrow__reverts(ledger, gov, client, sign_for, network):
    """Each lock comes out of the escrow as its item starts: the second of two that fit alone does not."""
    executor = network[0]
    ledger.withdraw(FUNDS - 100 * PRICE, sender=client)
    signed = sign_for(executor, client, 2, max_tokens=60)
    with ape.reverts("ledger: insufficient escrow"):
        ledger.startBatch(executor, MODEL_ID, [s.item() for s in signed], sender=gov)


# ---------------------------------------------------------------- typed data

def test_domain__matches_python(ledger, domain):
    fields, name, version, chain_id, verifying, _, _ = ledger.eip712Domain()
    assert (name, version, chain_id, verifying) == ("Nullius", "1", domain.chain_id, domain.ledger)


def test_state_of__started_batch__started_unknown_batch__none(ledger, client, start):
    batch, _ = start(client)
    [item] = batch.items
    assert ledger.stateOf(batch.number, item.inference_id).status == STARTED
    assert ledger.batchOf(batch.number + 1).status == ledger.stateOf(batch.number + 1, item.inference_id).status == 0
