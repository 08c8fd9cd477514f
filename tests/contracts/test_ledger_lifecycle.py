"""Ledger after start: finish, validation assignment, verdicts, quorum, expiry, laziness."""

from dataclasses import replace

import ape
import pytest
from eth_utils import keccak

from conftest import FEE_BPS, FUNDS, PRICE, WINDOW, ZERO

STARTED, FINISHED, VALIDATED, INVALIDATED, DISPUTED, EXPIRED = 1, 2, 3, 4, 5, 6
INELIGIBLE, FORFEITED, CLAIMED = 1, 2, 4


@pytest.fixture(autouse=True)
def _network(network):
    return network


@pytest.fixture
def assigned(ledger, chain, accounts_by_address):
    """assigned(record) -> validator accounts, once the assignment block exists."""

    def assigned(record):
        # a view runs on the head block: the assignment's block (finish + 1) must be below it
        if chain.blocks.head.number < record.finish_block + 2:
            chain.mine(record.finish_block + 2 - chain.blocks.head.number)
        return [accounts_by_address(v) for v in ledger.validatorsOf(record.as_tuple())]

    return assigned


def finish_args(record, tokens=10):
    return (record.as_tuple(), keccak(b"answer"), keccak(b"artifact"), tokens)


# ---------------------------------------------------------------- finish

def test_finish__executor__cost_to_epoch_account_rest_to_escrow(ledger, client, start, conserved):
    s, executor, record = start(client, max_tokens=64)
    tx = ledger.finish(finish_args(record, 10), sender=executor)
    [event] = tx.events
    assert (event.event_name, event.completion_tokens, event.cost, event.p_bps) == ("Finished", 10, 10 * PRICE, 10_000)
    assert ledger.escrowOf(client) == FUNDS - 10 * PRICE
    e = ledger.epochOf(tx.block_number)
    account = ledger.accounts(executor, e)
    assert (account.fees, account.weight, account.flags) == (10 * PRICE, 10 * PRICE, 0)
    assert ledger.epochs(e).eligible_weight == 10 * PRICE
    done = replace(record, completion_tokens=10, finish_block=tx.block_number, p_bps=10_000)
    state = ledger.stateOf(record.inference_id)
    assert (state.status, bytes(state.record_hash)) == (FINISHED, done.record_hash())
    assert ledger.stats(executor).served == 1 and ledger.clientStats(client).spent == 10 * PRICE
    conserved()


def test_finish__rejections(ledger, client, start, network, finish_record):
    s, executor, record = start(client, max_tokens=16)
    other = next(h for h in network if h != executor)
    with ape.reverts("ledger: record mismatch"):
        ledger.finish(finish_args(replace(record, price=PRICE - 1)), sender=executor)
    with ape.reverts("ledger: not executor"):
        ledger.finish(finish_args(record), sender=other)
    with ape.reverts("ledger: too many tokens"):
        ledger.finish(finish_args(record, 17), sender=executor)
    with ape.reverts("ledger: not started"):
        ledger.finish(finish_args(replace(record, inference_id=keccak(b"unknown"))), sender=executor)
    done = finish_record(record, executor, 16)
    with ape.reverts("ledger: record mismatch"):
        ledger.finish(finish_args(record), sender=executor)
    with ape.reverts("ledger: not started"):
        ledger.finish(finish_args(done), sender=executor)


def same_executor(start, client, n):
    """n started inferences that the draw gave to one executor."""
    by_executor = {}
    while True:
        s, executor, record = start(client)
        by_executor.setdefault(executor, []).append(record)
        if len(by_executor[executor]) == n:
            return executor, by_executor[executor]


def test_finish_batch__one_bad__reverts_all(ledger, client, start, conserved):
    executor, records = same_executor(start, client, 4)
    ledger.finishBatch([finish_args(r) for r in records[:2]], sender=executor)
    assert [ledger.stateOf(r.inference_id).status for r in records] == [FINISHED, FINISHED, STARTED, STARTED]
    with ape.reverts("ledger: too many tokens"):
        ledger.finishBatch([finish_args(records[2]), finish_args(records[3], 65)], sender=executor)
    assert ledger.stateOf(records[2].inference_id).status == STARTED
    conserved()


# ---------------------------------------------------------------- assignment and verdicts

def test_validators_of__new_executor__always_one_other(ledger, client, finish, assigned, chain):
    s, executor, record = finish(client)
    with ape.reverts("ledger: assignment pending"):
        ledger.validatorsOf(record.as_tuple())
    [validator] = assigned(record)
    assert validator != executor
    with ape.reverts("ledger: not finished"):
        ledger.validatorsOf(replace(record, inference_id=keccak(b"x")).as_tuple())


def test_submit_validation__passed__fee_to_validator(ledger, client, finish, assigned, conserved):
    s, executor, record = finish(client, tokens=10)
    [validator] = assigned(record)
    tx = ledger.submitValidation(record.as_tuple(), True, 77, sender=validator)
    assert [(e.event_name, e.passed, e.score) for e in tx.events] == [("Validated", True, 77)]
    fee = 10 * PRICE * FEE_BPS // 10_000
    e = ledger.epochOf(record.finish_block)
    assert ledger.accounts(validator, e).fees == fee and ledger.accounts(validator, e).validations == 1
    assert ledger.accounts(executor, e).fees == 10 * PRICE - fee
    state = ledger.stateOf(record.inference_id)
    assert (state.status, state.voted_mask, state.passed_mask) == (VALIDATED, 1, 1)
    with ape.reverts("ledger: already submitted"):
        ledger.submitValidation(record.as_tuple(), True, 0, sender=validator)
    conserved()


def test_submit_validation__rejections(ledger, client, finish, start, assigned, network, chain):
    s, executor, record = finish(client)
    with ape.reverts("ledger: assignment pending"):
        ledger.submitValidation(record.as_tuple(), True, 0, sender=executor)
    [validator] = assigned(record)
    outsider = next(h for h in network if h not in (executor, validator))
    with ape.reverts("ledger: not assigned validator"):
        ledger.submitValidation(record.as_tuple(), True, 0, sender=outsider)
    with ape.reverts("ledger: not assigned validator"):
        ledger.submitValidation(record.as_tuple(), True, 0, sender=executor)
    with ape.reverts("ledger: record mismatch"):
        ledger.submitValidation(replace(record, completion_tokens=1).as_tuple(), True, 0, sender=validator)
    _, _, unfinished = start(client)
    with ape.reverts("ledger: not finished"):
        ledger.submitValidation(unfinished.as_tuple(), True, 0, sender=validator)
    chain.mine(record.finish_block + WINDOW - chain.blocks.head.number)
    with ape.reverts("ledger: validation window closed"):
        ledger.submitValidation(record.as_tuple(), True, 0, sender=validator)


def test_submit_validation__failed__opens_dispute(ledger, client, finish, assigned):
    s, executor, record = finish(client)
    [validator] = assigned(record)
    tx = ledger.submitValidation(record.as_tuple(), False, 3, sender=validator)
    opened = [e for e in tx.events if e.event_name == "DisputeOpened"][0]
    assert (opened.executor, opened.accuser) == (executor.address, validator.address)
    assert ledger.stateOf(record.inference_id).status == DISPUTED
    assert ledger.pendingJudgements(executor) == ledger.pendingJudgements(validator) == 1
    assert ledger.epochs(ledger.epochOf(record.finish_block)).open_disputes == 1


# ---------------------------------------------------------------- quorum

def test_start__signed_quorum__more_validators_paid_by_client(ledger, client, start, finish_record, assigned,
                                                              conserved):
    s, executor, record = start(client, max_tokens=64, quorum=1)
    lock_fee = 64 * PRICE * FEE_BPS // 10_000
    assert record.quorum == 1
    assert ledger.escrowOf(client) == FUNDS - 64 * PRICE - lock_fee
    assert ledger.totalLocked() == 64 * PRICE + lock_fee
    done = finish_record(record, executor, 10)
    fee = 10 * PRICE * FEE_BPS // 10_000
    assert ledger.escrowOf(client) == FUNDS - 10 * PRICE - fee
    validators = assigned(done)
    assert len(validators) == 2 and len(set(validators)) == 2 and executor not in validators
    for v in validators:
        ledger.submitValidation(done.as_tuple(), True, 0, sender=v)
    e = ledger.epochOf(done.finish_block)
    assert ledger.accounts(executor, e).fees == 10 * PRICE - fee
    assert ledger.stateOf(done.inference_id).passed_mask == 3
    conserved()


def test_start__signed_quorum__rejections(ledger, gov, client, sign, start, conserved):
    with ape.reverts("ledger: quorum too large"):
        ledger.start(sign(client, quorum=3).args(quorum=4), sender=gov)
    s = sign(client, quorum=1)
    with ape.reverts("ledger: bad signature"):
        ledger.start(s.args(quorum=0), sender=gov)  # a gateway cannot drop the quorum signed for
    with ape.reverts("ledger: bad signature"):
        ledger.start(s.args(quorum=2), sender=gov)  # nor raise it at the client's expense
    # the fees of the quorum must fit the escrow too: exactly the plain lock is not enough
    ledger.withdraw(ledger.escrowOf(client) - 64 * PRICE, sender=client)
    with ape.reverts("ledger: insufficient escrow"):
        ledger.start(s.args(), sender=gov)
    assert ledger.stateOf(s.inference_id).status == 0
    conserved()


# ---------------------------------------------------------------- expiry and laziness

def test_expire__past_deadline_and_window__refund_and_executor_ineligible(ledger, client, start, chain, gov,
                                                                          conserved):
    s, executor, record = start(client, max_tokens=64)
    with ape.reverts("ledger: not expired"):
        ledger.expire(record.as_tuple(), sender=gov)
    chain.pending_timestamp = record.deadline + WINDOW + 1
    tx = ledger.expire(record.as_tuple(), sender=gov)
    assert [e.event_name for e in tx.events] == ["Refunded", "Ineligible"]
    assert (tx.events[0].amount, tx.events[1].reason) == (64 * PRICE, 3)
    assert ledger.escrowOf(client) == FUNDS and ledger.totalLocked() == 0
    assert ledger.accounts(executor, ledger.epochOf(tx.block_number)).flags == INELIGIBLE
    assert ledger.stateOf(record.inference_id).status == EXPIRED
    with ape.reverts("ledger: not started"):
        ledger.expire(record.as_tuple(), sender=gov)
    with ape.reverts("ledger: not started"):
        ledger.finish(finish_args(record), sender=executor)
    conserved()


def test_expire__finished__reverts(ledger, client, finish, chain, gov):
    s, executor, record = finish(client)
    chain.pending_timestamp = record.deadline + WINDOW + 1
    with ape.reverts("ledger: not started"):
        ledger.expireBatch([record.as_tuple()], sender=gov)


def test_report_lazy__no_verdict__validator_ineligible(ledger, client, finish, assigned, chain, gov):
    s, executor, record = finish(client)
    [validator] = assigned(record)
    with ape.reverts("ledger: window open"):
        ledger.reportLazy(record.as_tuple(), sender=gov)
    chain.mine(record.finish_block + WINDOW + 1 - chain.blocks.head.number)
    tx = ledger.reportLazy(record.as_tuple(), sender=gov)
    assert (tx.events[0].participant, tx.events[0].reason) == (validator.address, 2)
    assert ledger.accounts(validator, ledger.epochOf(record.finish_block)).flags == INELIGIBLE
    with ape.reverts("ledger: nobody lazy"):
        ledger.reportLazy(record.as_tuple(), sender=gov)


def test_report_lazy__verdict_given__nobody_lazy(ledger, client, finish, assigned, chain, gov):
    s, executor, record = finish(client)
    [validator] = assigned(record)
    ledger.submitValidation(record.as_tuple(), True, 0, sender=validator)
    chain.mine(WINDOW)
    with ape.reverts("ledger: nobody lazy"):
        ledger.reportLazy(record.as_tuple(), sender=gov)
    e = ledger.epochOf(record.finish_block)
    chain.mine(ledger.claimBlock(e) - chain.blocks.head.number)
    with ape.reverts("ledger: epoch settled"):
        ledger.reportLazy(record.as_tuple(), sender=gov)
