"""Disputes: a failed verdict, a jury drawn after it, stake-weighted votes, and every outcome."""

import ape
import pytest
from eth_utils import keccak

from agents.chain.batches import FINISHED, INVALIDATED, VALIDATED

from conftest import (FEE_BPS, FUNDS, JURY_SIZE, JURY_WINDOW, MODEL_ID, PENALTY_BPS, PRICE, SLASH_BPS, STAKE, UNBONDING,
                      only)

INELIGIBLE, FORFEITED = 1, 2


@pytest.fixture(autouse=True)
def _network(network):
    return network


@pytest.fixture
def disputed(ledger, chain, client, finish, accounts_by_address):
    """A finished inference its validator failed: (record, proof, executor, accuser, open block)."""

    def disputed(tokens=10):
        batch, executor = finish(client, tokens=tokens)
        record, proof = only(batch)
        chain.mine(2)
        [accuser] = [accounts_by_address(v) for v in ledger.validatorsOf(record.as_tuple(), proof)]
        tx = ledger.submitValidation(record.as_tuple(), proof, False, 0, sender=accuser)
        return record, proof, executor, accuser, tx.block_number

    return disputed


def jury(ledger, registry, chain, accounts_by_address, record, opened):
    """The jury as docs/protocol.md defines it, drawn through the Registry."""
    if chain.blocks.head.number < opened + 2:
        chain.mine(opened + 2 - chain.blocks.head.number)
    d = ledger.disputes(record.inference_id)
    rand = keccak(record.inference_id + bytes(chain.blocks[opened + 1].hash))
    return [accounts_by_address(a) for a in registry.drawDistinct(MODEL_ID, rand, [d.executor, d.accuser], JURY_SIZE)]


def test_dispute__jury_votes_invalid__refund_slash_forfeit(ledger, registry, chain, client, disputed,
                                                            accounts_by_address, conserved):
    record, proof, executor, accuser, opened = disputed(tokens=10)
    [juror] = jury(ledger, registry, chain, accounts_by_address, record, opened)
    assert juror not in (executor, accuser)
    with ape.reverts("ledger: voting open"):
        ledger.resolve(record.as_tuple(), proof, sender=client)
    tx = ledger.vote(record.inference_id, False, sender=juror)
    assert (tx.events[0].valid, tx.events[0].weight) == (False, STAKE)
    assert [a for a in ledger.disputes(record.inference_id).jury] == [juror.address]
    with ape.reverts("ledger: record mismatch"):
        ledger.resolve(record.as_tuple(), [keccak(b"not a sibling")], sender=client)
    tx = ledger.resolve(record.as_tuple(), proof, sender=client)  # everyone voted: no need to wait
    resolved = [e for e in tx.events if e.event_name == "DisputeResolved"][0]
    assert (resolved.invalid, resolved.votes_valid, resolved.votes_invalid) == (True, 0, STAKE)
    cost = 10 * PRICE
    fee = cost * FEE_BPS // 10_000
    assert ledger.escrowOf(client) == FUNDS  # the cost came back
    e = ledger.epochOf(record.finish_block)
    assert ledger.accounts(executor, e).flags == INELIGIBLE | FORFEITED
    assert ledger.accounts(executor, e).fees == 0
    assert ledger.accounts(accuser, e).fees == fee  # paid from the slashed stake
    slashed = STAKE * SLASH_BPS // 10_000
    assert registry.stakeOf(executor) == STAKE - slashed and registry.reputationOf(executor) == 0
    assert ledger.epochs(ledger.epochOf(tx.block_number) + 1).pool == slashed - fee
    assert ledger.stateOf(record.batch, record.inference_id).status == INVALIDATED
    assert ledger.pendingJudgements(executor) == ledger.pendingJudgements(accuser) == 0
    assert ledger.stats(executor).invalidated == 1
    with ape.reverts("ledger: no dispute"):
        ledger.resolve(record.as_tuple(), proof, sender=client)
    with ape.reverts("ledger: already decided"):
        ledger.submitValidation(record.as_tuple(), proof, False, 0, sender=accuser)
    conserved()


def test_dispute__jury_votes_valid__accuser_penalized(ledger, registry, chain, client, disputed, accounts_by_address,
                                                      conserved):
    record, proof, executor, accuser, opened = disputed()
    [juror] = jury(ledger, registry, chain, accounts_by_address, record, opened)
    ledger.vote(record.inference_id, True, sender=juror)
    ledger.resolve(record.as_tuple(), proof, sender=executor)
    penalty = STAKE * PENALTY_BPS // 10_000
    assert registry.stakeOf(accuser) == STAKE - penalty and registry.reputationOf(accuser) == 0
    assert registry.stakeOf(executor) == STAKE
    e = ledger.epochOf(record.finish_block)
    assert ledger.accounts(executor, e).fees == 10 * PRICE and ledger.accounts(executor, e).flags == 0
    assert ledger.escrowOf(client) == FUNDS - 10 * PRICE
    state = ledger.stateOf(record.batch, record.inference_id)
    assert state.status == VALIDATED
    conserved()


def test_dispute__no_votes__valid_by_default_juror_lazy(ledger, registry, chain, client, disputed,
                                                        accounts_by_address, conserved):
    record, proof, executor, accuser, opened = disputed()
    [juror] = jury(ledger, registry, chain, accounts_by_address, record, opened)
    chain.mine(opened + JURY_WINDOW - chain.blocks.head.number)
    with ape.reverts("ledger: voting open"):  # lands on the deadline block itself
        ledger.resolve(record.as_tuple(), proof, sender=client)
    tx = ledger.resolve(record.as_tuple(), proof, sender=client)
    assert [(e.event_name, getattr(e, "reason", None)) for e in tx.events][:1] == [("Ineligible", 2)]
    e = ledger.epochOf(record.finish_block)
    assert ledger.accounts(juror, e).flags == INELIGIBLE
    assert registry.stakeOf(accuser) == STAKE and registry.stakeOf(executor) == STAKE
    assert ledger.stateOf(record.batch, record.inference_id).status == VALIDATED
    with ape.reverts("ledger: no dispute"):
        ledger.vote(record.inference_id, True, sender=juror)
    conserved()


def test_vote__rejections(ledger, registry, chain, disputed, accounts_by_address):
    record, proof, executor, accuser, opened = disputed()
    with ape.reverts("ledger: jury pending"):
        ledger.vote(record.inference_id, True, sender=accuser)
    [juror] = jury(ledger, registry, chain, accounts_by_address, record, opened)
    ledger.vote(record.inference_id, True, sender=juror)
    with ape.reverts("ledger: already voted"):
        ledger.vote(record.inference_id, False, sender=juror)
    with ape.reverts("ledger: not juror"):
        ledger.vote(record.inference_id, True, sender=accuser)
    with ape.reverts("ledger: not juror"):
        ledger.vote(record.inference_id, True, sender=executor)
    with ape.reverts("ledger: no dispute"):
        ledger.vote(keccak(b"none"), True, sender=juror)


def test_vote__after_deadline__reverts(ledger, registry, chain, disputed, accounts_by_address):
    record, proof, executor, accuser, opened = disputed()
    [juror] = jury(ledger, registry, chain, accounts_by_address, record, opened)
    chain.mine(opened + 1 + JURY_WINDOW - chain.blocks.head.number)
    with ape.reverts("ledger: voting closed"):
        ledger.vote(record.inference_id, False, sender=juror)


def test_dispute__open__blocks_withdrawal_and_claims(ledger, registry, chain, disputed, accounts_by_address, gov):
    record, proof, executor, accuser, opened = disputed()
    registry.exit(sender=executor)
    e = ledger.epochOf(record.finish_block)
    chain.mine(max(UNBONDING, ledger.claimBlock(e) - chain.blocks.head.number))
    with ape.reverts("registry: judgement pending"):
        registry.withdrawStake(sender=executor)
    with ape.reverts("ledger: dispute pending"):
        ledger.claim(executor, e, sender=gov)
    ledger.resolve(record.as_tuple(), proof, sender=gov)  # nobody voted: valid by default
    registry.withdrawStake(sender=executor)
    ledger.claim(executor, e, sender=gov)
    assert registry.stakeOf(executor) == 0


def test_dispute__one_inference_judged_once(ledger, registry, chain, client, finish, accounts_by_address, conserved):
    batch, executor = finish(client, quorum=1)
    record, proof = only(batch)
    chain.mine(2)
    first, second = [accounts_by_address(v) for v in ledger.validatorsOf(record.as_tuple(), proof)]
    ledger.submitValidation(record.as_tuple(), proof, False, 0, sender=first)
    tx = ledger.submitValidation(record.as_tuple(), proof, False, 0, sender=second)  # joins the open dispute
    assert [e.event_name for e in tx.events] == ["Validated"]
    chain.mine(JURY_WINDOW + 2)
    # the only juror left is the second validator, who does not vote: valid by default
    ledger.resolve(record.as_tuple(), proof, sender=client)
    assert ledger.stateOf(record.batch, record.inference_id).status == VALIDATED
    assert ledger.disputes(record.inference_id).jury == [second.address]
    assert ledger.accounts(second, ledger.epochOf(record.finish_block)).flags == INELIGIBLE
    assert ledger.epochs(ledger.epochOf(record.finish_block)).open_disputes == 0
    conserved()


def test_dispute__one_of_a_batch_invalid__only_its_cost_back(ledger, registry, chain, client, finish,
                                                            accounts_by_address, conserved):
    batch, executor = finish(client, 2, tokens=[10, 20])
    record, proof = batch.proven(batch.items[0].inference_id)
    chain.mine(2)
    [accuser] = [accounts_by_address(v) for v in ledger.validatorsOf(record.as_tuple(), proof)]
    opened = ledger.submitValidation(record.as_tuple(), proof, False, 0, sender=accuser).block_number
    [juror] = jury(ledger, registry, chain, accounts_by_address, record, opened)
    ledger.vote(record.inference_id, False, sender=juror)
    ledger.resolve(record.as_tuple(), proof, sender=client)
    assert ledger.escrowOf(client) == FUNDS - 20 * PRICE
    assert [ledger.stateOf(batch.number, i.inference_id).status for i in batch.items] == [INVALIDATED, FINISHED]
    conserved()
