"""Ledger after start: finish, validation assignment and verdicts, settle, expire, escrow, claim."""

import ape
import pytest
from eth_utils import keccak

from conftest import FEE_BPS, FUNDS, MAX_REPUTATION, MODEL_ID, PRICE, SLASH_BPS, STAKE, WINDOW, ZERO


@pytest.fixture(autouse=True)
def _network(network):
    return network


def finish_args(s, tokens=10):
    return (s.inference_id, keccak(b"answer"), keccak(b"artifact"), tokens)


def expected_validator(chain, registry, inference_id, finish_block, reputation, executor):
    """The assignment recomputed in Python from docs/protocol.md."""
    rand = keccak(inference_id + bytes(chain.blocks[finish_block + 1].hash))
    p_bps = 10_000 - 9_900 * reputation // MAX_REPUTATION
    if int.from_bytes(rand, "big") % 10_000 >= p_bps:
        return ZERO
    return registry.drawValidator(MODEL_ID, keccak(rand), executor)


def other(hosts, executor):
    return next(h for h in hosts if h.address != executor.address)


# ---------------------------------------------------------------- finish

def test_finish__by_executor__refunds_unused_and_holds_cost(ledger, client, start, conserved, chain):
    s, executor = start(client, max_tokens=64)
    tx = ledger.finish(finish_args(s, tokens=10), sender=executor)
    [event] = tx.events
    assert (event.event_name, bytes(event.inference_id), event.executor) == ("Finished", s.inference_id, executor)
    assert (event.completion_tokens, event.cost) == (10, 10 * PRICE)
    assert bytes(event.response_hash) == keccak(b"answer") and bytes(event.artifact_digest) == keccak(b"artifact")
    assert ledger.escrowOf(client) == FUNDS - 10 * PRICE
    assert (ledger.totalLocked(), ledger.totalPending()) == (0, 10 * PRICE)
    record = ledger.inference(s.inference_id)
    assert (record.status, record.lock, record.cost, record.completion_tokens) == (2, 64 * PRICE, 10 * PRICE, 10)
    assert record.finish_block == tx.block_number
    assert ledger.stats(executor).served == 1
    conserved()


def test_finish__not_started__reverts(ledger, start, client):
    s, executor = start(client)
    with ape.reverts("ledger: not started"):
        ledger.finish((keccak(b"nope"), keccak(b"a"), keccak(b"b"), 1), sender=executor)
    ledger.finish(finish_args(s), sender=executor)
    with ape.reverts("ledger: not started"):
        ledger.finish(finish_args(s), sender=executor)


def test_finish__wrong_executor__reverts(ledger, start, client, network):
    s, executor = start(client)
    with ape.reverts("ledger: not executor"):
        ledger.finish(finish_args(s), sender=other(network, executor))


def test_finish__more_tokens_than_max__reverts(ledger, start, client):
    s, executor = start(client, max_tokens=8)
    with ape.reverts("ledger: too many tokens"):
        ledger.finish(finish_args(s, tokens=9), sender=executor)
    ledger.finish(finish_args(s, tokens=8), sender=executor)


def test_finish_batch__same_executor__all_finished(ledger, gov, client, sign, accounts_by_address, conserved):
    signed = [sign(client) for _ in range(6)]
    ledger.startBatch([s.args() for s in signed], sender=gov)
    by_executor = {}
    for s in signed:
        by_executor.setdefault(s.executor, []).append(s)
    for address, batch in by_executor.items():
        tx = ledger.finishBatch([finish_args(s, tokens=5) for s in batch], sender=accounts_by_address(address))
        assert len(tx.events) == len(batch)
    assert ledger.totalPending() == 6 * 5 * PRICE
    conserved()


# ---------------------------------------------------------------- assignment and verdicts

def test_validator_of__before_next_block__pending(ledger, start, client, chain):
    s, executor = start(client)
    ledger.finish(finish_args(s), sender=executor)
    with ape.reverts("ledger: assignment pending"):
        ledger.validatorOf(s.inference_id)
    chain.mine(2)
    assert ledger.validatorOf(s.inference_id) != ZERO


def test_validator_of__not_finished__reverts(ledger, start, client):
    s, _ = start(client)
    with ape.reverts("ledger: not finished"):
        ledger.validatorOf(s.inference_id)


def test_validator_of__matches_python_and_never_executor(ledger, registry, finish, client, chain, network):
    # At reputation 0 every inference is validated, by the one other host.
    for _ in range(3):
        s, executor = finish(client)
        chain.mine(2)
        record = ledger.inference(s.inference_id)
        expected = expected_validator(chain, registry, s.inference_id, record.finish_block, 0, executor.address)
        assert ledger.validatorOf(s.inference_id) == expected == other(network, executor).address


def test_validator_of__reputation_fixed_at_finish(ledger, registry, finish, client, chain, network):
    s, executor = finish(client)
    chain.mine(2)
    ledger.submitValidation(s.inference_id, True, 1, sender=other(network, executor))
    assert registry.reputationOf(executor) == 1
    # Later inferences by the same executor use p = 10000 - 9900 / 4.
    for _ in range(4):
        s2, ex2 = finish(client)
        chain.mine(2)
        rep = registry.reputationOf(ex2)
        record = ledger.inference(s2.inference_id)
        assert ledger.validatorOf(s2.inference_id) == expected_validator(
            chain, registry, s2.inference_id, record.finish_block, rep, ex2.address)


def test_submit_validation__passed__pays_executor_and_fee(ledger, registry, finish, client, chain, network, conserved):
    s, executor = finish(client, tokens=10)
    validator = other(network, executor)
    chain.mine(2)
    tx = ledger.submitValidation(s.inference_id, True, 77, sender=validator)
    cost, fee = 10 * PRICE, 10 * PRICE * FEE_BPS // 10_000
    names = [e.event_name for e in tx.events]
    assert names == ["Validated", "ReputationSet", "Paid"]
    paid = tx.events[-1]
    assert (paid.executor, paid.validator, paid.executor_amount, paid.validator_fee) == (
        executor, validator, cost - fee, fee)
    assert (ledger.earnedOf(executor), ledger.earnedOf(validator)) == (cost - fee, fee)
    assert ledger.inference(s.inference_id).status == 3
    assert registry.reputationOf(executor) == 1
    assert tuple(ledger.stats(validator)) == (0, 1, 0, fee)
    assert tuple(ledger.stats(executor)) == (1, 0, 0, cost - fee)
    assert tuple(ledger.clientStats(client)) == (cost, 0)
    conserved()


def test_submit_validation__failed__refunds_client_and_slashes(ledger, registry, finish, client, chain, network,
                                                                 conserved):
    s, executor = finish(client, tokens=10)
    validator = other(network, executor)
    chain.mine(2)
    tx = ledger.submitValidation(s.inference_id, False, 3, sender=validator)
    slashed = STAKE * SLASH_BPS // 10_000
    assert [e.event_name for e in tx.events] == ["Validated", "Slashed", "ReputationSet", "Refunded"]
    assert tx.events[-1].amount == 10 * PRICE
    assert ledger.escrowOf(client) == FUNDS
    assert ledger.inference(s.inference_id).status == 4
    assert (registry.stakeOf(executor), registry.slashedTotal()) == (STAKE - slashed, slashed)
    assert registry.totalStake(MODEL_ID) == 2 * STAKE - slashed
    assert registry.reputationOf(executor) == 0
    assert tuple(ledger.stats(executor)) == (1, 0, 1, 0)
    assert tuple(ledger.clientStats(client)) == (0, 10 * PRICE)
    conserved()


def test_submit_validation__not_finished__reverts(ledger, start, client, network):
    s, executor = start(client)
    with ape.reverts("ledger: not finished"):
        ledger.submitValidation(s.inference_id, True, 0, sender=other(network, executor))


def test_submit_validation__same_block_as_finish_plus_one__pending(ledger, start, client, network):
    s, executor = start(client)
    ledger.finish(finish_args(s), sender=executor)
    with ape.reverts("ledger: assignment pending"):
        ledger.submitValidation(s.inference_id, True, 0, sender=other(network, executor))


def test_submit_validation__after_window__reverts(ledger, finish, client, chain, network):
    s, executor = finish(client)
    finish_block = ledger.inference(s.inference_id).finish_block
    chain.mine(finish_block + WINDOW - chain.blocks.head.number)
    with ape.reverts("ledger: validation window closed"):
        ledger.submitValidation(s.inference_id, True, 0, sender=other(network, executor))


def test_submit_validation__last_block_of_window__accepted(ledger, finish, client, chain, network):
    s, executor = finish(client)
    finish_block = ledger.inference(s.inference_id).finish_block
    chain.mine(finish_block + WINDOW - 1 - chain.blocks.head.number)
    ledger.submitValidation(s.inference_id, True, 0, sender=other(network, executor))
    assert ledger.inference(s.inference_id).status == 3


def test_submit_validation__by_executor__reverts(ledger, finish, client, chain):
    s, executor = finish(client)
    chain.mine(2)
    with ape.reverts("ledger: not assigned validator"):
        ledger.submitValidation(s.inference_id, False, 0, sender=executor)


def test_submit_validation__twice__reverts(ledger, finish, client, chain, network):
    s, executor = finish(client)
    chain.mine(2)
    ledger.submitValidation(s.inference_id, True, 0, sender=other(network, executor))
    with ape.reverts("ledger: already decided"):
        ledger.submitValidation(s.inference_id, True, 0, sender=other(network, executor))


def test_validator_of__full_reputation__python_formula(ledger, registry, finish, client, chain, network):
    # Raise both hosts to full reputation through passed verdicts, then check the 1% floor formula.
    while min(registry.reputationOf(h) for h in network) < MAX_REPUTATION:
        s, executor = finish(client)
        chain.mine(2)
        if ledger.validatorOf(s.inference_id) != ZERO:
            ledger.submitValidation(s.inference_id, True, 0, sender=other(network, executor))
    for _ in range(3):
        s, executor = finish(client)
        chain.mine(2)
        record = ledger.inference(s.inference_id)
        assert ledger.validatorOf(s.inference_id) == expected_validator(
            chain, registry, s.inference_id, record.finish_block, MAX_REPUTATION, executor.address)


# ---------------------------------------------------------------- settle

def test_settle__after_window__pays_executor_in_full(ledger, finish, client, chain, outsider, conserved):
    s, executor = finish(client, tokens=7)
    chain.mine(WINDOW + 1)
    tx = ledger.settle(s.inference_id, sender=outsider)
    assert tx.events[0].event_name == "Paid" and tx.events[0].validator == ZERO
    assert ledger.earnedOf(executor) == 7 * PRICE
    assert ledger.inference(s.inference_id).status == 5
    assert tuple(ledger.clientStats(client)) == (7 * PRICE, 0)
    conserved()


def test_settle__window_open__reverts(ledger, finish, client, chain, outsider):
    s, _ = finish(client)
    finish_block = ledger.inference(s.inference_id).finish_block
    chain.mine(finish_block + WINDOW - 1 - chain.blocks.head.number)
    with ape.reverts("ledger: window open"):
        ledger.settle(s.inference_id, sender=outsider)
    ledger.settle(s.inference_id, sender=outsider)


def test_settle__not_finished__reverts(ledger, start, client, outsider):
    s, _ = start(client)
    with ape.reverts("ledger: not finished"):
        ledger.settle(s.inference_id, sender=outsider)


def test_settle__after_verdict__reverts(ledger, finish, client, chain, network, outsider):
    s, executor = finish(client)
    chain.mine(2)
    ledger.submitValidation(s.inference_id, True, 0, sender=other(network, executor))
    chain.mine(WINDOW)
    with ape.reverts("ledger: already decided"):
        ledger.settle(s.inference_id, sender=outsider)


def test_settle_batch__several__all_paid(ledger, finish, client, chain, outsider, conserved):
    ids = [finish(client, tokens=3)[0].inference_id for _ in range(3)]
    chain.mine(WINDOW + 1)
    ledger.settleBatch(ids, sender=outsider)
    assert [ledger.inference(i).status for i in ids] == [5, 5, 5]
    conserved()


# ---------------------------------------------------------------- expire

def test_expire__after_deadline_and_window__refunds_lock(ledger, start, client, chain, outsider, conserved):
    s, _ = start(client, max_tokens=32)
    chain.pending_timestamp = s.request.deadline + WINDOW + 1
    tx = ledger.expire(s.inference_id, sender=outsider)
    assert (tx.events[0].event_name, tx.events[0].amount) == ("Refunded", 32 * PRICE)
    assert ledger.escrowOf(client) == FUNDS
    assert ledger.inference(s.inference_id).status == 6
    assert tuple(ledger.clientStats(client)) == (0, 32 * PRICE)
    conserved()


def test_expire__at_deadline_plus_window__reverts(ledger, start, client, chain, outsider):
    s, _ = start(client)
    chain.pending_timestamp = s.request.deadline + WINDOW
    with ape.reverts("ledger: not expired"):
        ledger.expire(s.inference_id, sender=outsider)


def test_expire__finished__reverts(ledger, finish, client, chain, outsider):
    s, _ = finish(client)
    chain.pending_timestamp = s.request.deadline + WINDOW + 1
    with ape.reverts("ledger: not started"):
        ledger.expire(s.inference_id, sender=outsider)


def test_finish__after_expire__reverts(ledger, start, client, chain, outsider):
    s, executor = start(client)
    chain.pending_timestamp = s.request.deadline + WINDOW + 1
    ledger.expire(s.inference_id, sender=outsider)
    with ape.reverts("ledger: not started"):
        ledger.finish(finish_args(s), sender=executor)


# ---------------------------------------------------------------- escrow and claims

def test_deposit__zero__reverts(ledger, client):
    with ape.reverts("ledger: zero amount"):
        ledger.deposit(0, sender=client)


def test_withdraw__free_escrow__returned(ledger, token, client, conserved):
    before = token.balanceOf(client)
    tx = ledger.withdraw(FUNDS, sender=client)
    assert [e.event_name for e in tx.events] == ["Transfer", "Withdrawn"]
    assert token.balanceOf(client) == before + FUNDS and ledger.escrowOf(client) == 0
    conserved()


def test_withdraw__locked_part__reverts(ledger, start, client):
    start(client, max_tokens=64)
    with ape.reverts("ledger: insufficient escrow"):
        ledger.withdraw(FUNDS, sender=client)
    with ape.reverts("ledger: zero amount"):
        ledger.withdraw(0, sender=client)


def test_claim__earned__transferred(ledger, token, finish, client, chain, outsider, conserved):
    s, executor = finish(client, tokens=7)
    chain.mine(WINDOW + 1)
    ledger.settle(s.inference_id, sender=outsider)
    before = token.balanceOf(executor)
    ledger.claim(sender=executor)
    assert token.balanceOf(executor) == before + 7 * PRICE and ledger.earnedOf(executor) == 0
    with ape.reverts("ledger: nothing to claim"):
        ledger.claim(sender=executor)
    conserved()
