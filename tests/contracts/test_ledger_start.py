"""Ledger.start / startBatch: signature, draw, escrow, and every rejection in spec order."""

import ape
import pytest
from eth_utils import keccak

from agents.protocol import ecdsa, eip712

from conftest import FUNDS, MODEL_ID, PRICE, ZERO


@pytest.fixture(autouse=True)
def _network(network):
    return network


def test_start__python_signature__accepted_with_python_id(ledger, gov, client, sign, conserved):
    s = sign(client, max_tokens=64)
    tx = ledger.start(s.args(), sender=gov)
    [event] = tx.events
    assert event.event_name == "Started"
    assert bytes(event.inference_id) == s.inference_id
    assert event.client == client.address and event.executor == s.executor
    assert bytes(event.model_id) == MODEL_ID and bytes(event.request_hash) == s.request.request_hash
    assert (event.price, event.max_tokens, event.deadline) == (PRICE, 64, s.request.deadline)
    assert ledger.escrowOf(client) == FUNDS - 64 * PRICE
    assert ledger.totalLocked() == 64 * PRICE
    state = ledger.stateOf(s.inference_id)
    assert (state.status, bytes(state.record_hash)) == (1, s.record().record_hash())
    conserved()


def test_start__deadline_passed__reverts(ledger, gov, client, sign, chain):
    s = sign(client, deadline=chain.pending_timestamp - 1)
    with ape.reverts("ledger: expired"):
        ledger.start(s.args(), sender=gov)


def test_start__unknown_model__reverts(ledger, gov, client, sign, network):
    s = sign(client, model="nullius/unknown")
    with ape.reverts("ledger: unknown model"):
        ledger.start(s.args(executor=network[0].address), sender=gov)


def test_start__price_above_max__reverts(ledger, gov, client, sign):
    s = sign(client, max_price=PRICE - 1)
    with ape.reverts("ledger: price above max"):
        ledger.start(s.args(), sender=gov)


def test_start__signed_by_someone_else__reverts(ledger, gov, client, outsider, sign):
    s = sign(client, key=outsider.private_key)
    with ape.reverts("ledger: bad signature"):
        ledger.start(s.args(), sender=gov)


def test_start__field_changed_after_signing__reverts(ledger, gov, client, sign):
    s = sign(client, max_tokens=64)
    with ape.reverts("ledger: bad signature"):
        ledger.start(s.args(max_tokens=65), sender=gov)


def test_start__malformed_signature__reverts_in_ecdsa(ledger, gov, client, sign):
    s = sign(client)
    with ape.reverts("ecdsa: invalid signature"):
        ledger.start(s.args(signature=b"\x00" * 65), sender=gov)


def test_start__malleated_signature__reverts_in_ecdsa(ledger, gov, client, sign):
    """The high-s twin of a valid signature recovers the same client; EIP-2 refuses it, and so
    does the gateway (agents.protocol.eip712.recover_client)."""
    s = sign(client)
    sig = bytes(s.signature)
    high = sig[:32] + (ecdsa.SECP256K1_N - int.from_bytes(sig[32:64])).to_bytes(32) + bytes([55 - sig[64]])
    with ape.reverts("ecdsa: invalid signature `s` value"):
        ledger.start(s.args(signature=high), sender=gov)


def test_start__replayed__reverts(ledger, gov, client, sign):
    s = sign(client)
    ledger.start(s.args(), sender=gov)
    with ape.reverts("ledger: already started"):
        ledger.start(s.args(), sender=gov)


def test_start__seed_block_not_yet_mined__reverts(ledger, gov, client, sign, chain):
    s = sign(client)
    with ape.reverts("ledger: stale seed block"):
        ledger.start(s.args(seed_block=chain.blocks.head.number + 1), sender=gov)


def test_start__seed_block_256_back__passes_and_257_back__reverts(ledger, gov, client, sign, chain):
    ok, old = sign(client), sign(client)
    chain.mine(255 - (chain.blocks.head.number - ok.seed_block))
    ledger.start(ok.args(), sender=gov)  # mined 256 blocks after its seed block
    assert chain.blocks.head.number == ok.seed_block + 256
    with ape.reverts("ledger: stale seed block"):
        ledger.start(old.args(seed_block=chain.blocks.head.number - 256), sender=gov)


def test_start__executor_not_drawn__reverts(ledger, gov, client, sign, network):
    s = sign(client)
    other = next(h for h in network if h.address != s.executor)
    with ape.reverts("ledger: executor mismatch"):
        ledger.start(s.args(executor=other.address), sender=gov)


def test_start__zero_executor__reverts(ledger, gov, client, sign):
    s = sign(client)
    with ape.reverts("ledger: executor mismatch"):
        ledger.start(s.args(executor=ZERO), sender=gov)


def test_start__lock_above_escrow__reverts(ledger, gov, outsider, sign):
    s = sign(outsider)
    with ape.reverts("ledger: insufficient escrow"):
        ledger.start(s.args(), sender=gov)


def test_start_batch__three__all_started(ledger, gov, client, sign, conserved):
    signed = [sign(client, max_tokens=10 + i) for i in range(3)]
    tx = ledger.startBatch([s.args() for s in signed], sender=gov)
    assert [bytes(e.inference_id) for e in tx.events] == [s.inference_id for s in signed]
    assert ledger.totalLocked() == (10 + 11 + 12) * PRICE
    conserved()


def test_start_batch__one_bad__reverts_all(ledger, gov, client, sign):
    good, bad = sign(client), sign(client, max_price=PRICE - 1)
    with ape.reverts("ledger: price above max"):
        ledger.startBatch([good.args(), bad.args()], sender=gov)
    assert ledger.stateOf(good.inference_id).status == 0
    assert ledger.escrowOf(client) == FUNDS


def test_domain__matches_python(ledger, domain):
    fields, name, version, chain_id, verifying, _, _ = ledger.eip712Domain()
    assert (name, version, chain_id, verifying) == ("Nullius", "1", domain.chain_id, domain.ledger)


def test_inference_id__is_eip712_digest(ledger, gov, client, sign):
    s = sign(client)
    ledger.start(s.args(), sender=gov)
    assert ledger.stateOf(s.inference_id).status == 1
    assert ledger.stateOf(keccak(b"unknown")).status == 0
