"""Epochs: reward pools, eligibility, pull-based claims, reputation per clean epoch, rollover."""

import ape
import pytest

from conftest import EPOCH, FEE_BPS, MAX_REPUTATION, PRICE, TOKEN, WINDOW, only

POOL = 3 * TOKEN
INELIGIBLE, FORFEITED, CLAIMED = 1, 2, 4


@pytest.fixture(autouse=True)
def _network(network):
    return network


@pytest.fixture
def epoch(ledger, chain, gov, token):
    """Mines to the start of a fresh epoch whose pool gov funded with POOL; returns it."""
    e = ledger.epochOf(chain.blocks.head.number) + 1
    token.mint(gov, POOL, sender=gov)
    token.approve(ledger, POOL, sender=gov)
    ledger.fundRewards(e, 1, POOL, sender=gov)
    chain.mine(ledger.genesis_block() + e * EPOCH - chain.blocks.head.number)
    return e


def settle(ledger, chain, e):
    chain.mine(max(0, ledger.claimBlock(e) - chain.blocks.head.number))


def validated(ledger, chain, client, finish, accounts_by_address, tokens=10):
    batch, executor = finish(client, tokens=tokens)
    record, proof = only(batch)
    chain.mine(2)
    [validator] = [accounts_by_address(v) for v in ledger.validatorsOf(record.as_tuple(), proof)]
    ledger.submitValidation(record.as_tuple(), proof, True, 0, sender=validator)
    return executor, validator, record


def test_claim__clean_epoch__fees_reward_and_reputation(ledger, registry, chain, client, gov, finish, epoch,
                                                        accounts_by_address, token, conserved):
    executor, validator, record = validated(ledger, chain, client, finish, accounts_by_address)
    assert ledger.epochOf(record.finish_block) == epoch
    fee = 10 * PRICE * FEE_BPS // 10_000
    with ape.reverts("ledger: epoch not settled"):
        ledger.claim(executor, epoch, sender=gov)
    settle(ledger, chain, epoch)
    before = token.balanceOf(executor)
    tx = ledger.claim(executor, epoch, sender=gov)  # anyone may trigger; the owner is paid
    assert (tx.events[-1].fees, tx.events[-1].reward) == (10 * PRICE - fee, POOL)
    assert token.balanceOf(executor) == before + 10 * PRICE - fee + POOL
    assert registry.reputationOf(executor) == 1
    ledger.claim(validator, epoch, sender=validator)  # fees only: it served nothing
    assert ledger.accounts(validator, epoch).flags == CLAIMED and registry.reputationOf(validator) == 0
    with ape.reverts("ledger: already claimed"):
        ledger.claim(executor, epoch, sender=gov)
    with ape.reverts("ledger: nothing to claim"):
        ledger.claim(gov, epoch, sender=gov)
    conserved()


def test_claim__reward_split_by_weight_among_eligible_only(ledger, chain, client, gov, network, finish, start, epoch,
                                                           conserved):
    a, b = network[:2]
    finish(client, tokens=10, executor=a)
    finish(client, tokens=30, executor=b)
    assert ledger.epochs(epoch).eligible_weight == 40 * PRICE
    # a third batch that b never finishes: b served less than its share
    batch, _ = start(client, executor=b)
    chain.pending_timestamp = batch.items[0].deadline + WINDOW + 1
    ledger.expireBatch(*batch.args(), sender=gov)
    assert ledger.accounts(b, epoch).flags == INELIGIBLE
    assert ledger.epochs(epoch).eligible_weight == 10 * PRICE
    settle(ledger, chain, epoch)
    assert ledger.claim(a, epoch, sender=gov).events[-1].reward == POOL
    assert ledger.claim(b, epoch, sender=gov).events[-1].reward == 0
    conserved()


def test_claim__two_eligible__proportional(ledger, chain, client, gov, network, finish, epoch):
    a, b = network[:2]
    finish(client, tokens=10, executor=a)
    finish(client, 2, tokens=[10, 20], executor=b)
    settle(ledger, chain, epoch)
    assert ledger.claim(a, epoch, sender=gov).events[-1].reward == POOL // 4
    assert ledger.claim(b, epoch, sender=gov).events[-1].reward == POOL * 3 // 4


def test_reputation__clean_epochs__capped_at_max(ledger, registry, chain, client, gov, network, finish, epoch):
    executor = network[0]
    for _ in range(MAX_REPUTATION + 1):
        batch, _ = finish(client, executor=executor)
        e = ledger.epochOf(batch.finish_block)
        settle(ledger, chain, e)
        ledger.claim(executor, e, sender=gov)
    assert registry.reputationOf(executor) == MAX_REPUTATION


def test_fund_rewards__rejections(ledger, chain, gov, epoch):
    with ape.reverts("ledger: epoch closed"):
        ledger.fundRewards(epoch - 1, 1, 1, sender=gov)
    with ape.reverts("ledger: zero amount"):
        ledger.fundRewards(epoch, 0, 1, sender=gov)
    with ape.reverts("ledger: too many epochs"):
        ledger.fundRewards(epoch, 1025, 1, sender=gov)


def test_rollover__nobody_eligible__pool_moves_on(ledger, chain, gov, epoch, conserved):
    with ape.reverts("ledger: epoch not settled"):
        ledger.rollover(epoch, sender=gov)
    settle(ledger, chain, epoch)
    tx = ledger.rollover(epoch, sender=gov)
    to = tx.events[0].to_epoch
    assert (tx.events[0].amount, to) == (POOL, ledger.epochOf(tx.block_number) + 1)
    assert ledger.epochs(epoch).pool == 0 and ledger.epochs(to).pool == POOL
    with ape.reverts("ledger: nothing to roll"):
        ledger.rollover(epoch, sender=gov)
    conserved()


def test_rollover__someone_eligible__reverts(ledger, chain, client, gov, finish, epoch):
    finish(client)
    settle(ledger, chain, epoch)
    with ape.reverts("ledger: nothing to roll"):
        ledger.rollover(epoch, sender=gov)
