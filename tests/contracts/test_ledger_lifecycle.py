"""Ledger after startBatch: finishBatch, validation assignment, verdicts with Merkle proofs,
quorum, expireBatch, laziness."""

from dataclasses import replace

import ape
import pytest
from eth_utils import keccak

from agents.chain.batches import DISPUTED, EXPIRED, FINISHED, STARTED, VALIDATED, commitment, packed

from conftest import ANSWER, ARTIFACT, FEE_BPS, FUNDS, MODEL_ID, PRICE, WINDOW, answers, finished, only

INELIGIBLE = 1


@pytest.fixture(autouse=True)
def _network(network):
    return network


@pytest.fixture
def assigned(ledger, chain, accounts_by_address):
    """assigned(record, proof) -> validator accounts, once the assignment block exists."""

    def assigned(record, proof):
        # a view runs on the head block: the assignment's block (finish + 1) must be below it
        if chain.blocks.head.number < record.finish_block + 2:
            chain.mine(record.finish_block + 2 - chain.blocks.head.number)
        return [accounts_by_address(v) for v in ledger.validatorsOf(record.as_tuple(), proof)]

    return assigned


def expiring(chain, batch):
    """Sets the next block's time to just after every deadline of the batch plus the window."""
    chain.pending_timestamp = max(i.deadline for i in batch.items) + WINDOW + 1


# ---------------------------------------------------------------- finish

def test_finish_batch__executor__cost_to_epoch_account_rest_to_escrow(ledger, client, start, conserved):
    batch, executor = start(client, max_tokens=64)
    tx = ledger.finishBatch(*batch.args(), answers([10]), sender=executor)
    [answer, done] = tx.events
    assert (answer.event_name, done.event_name) == ("Finished", "BatchFinished")
    assert (bytes(answer.inference_id), answer.batch) == (batch.items[0].inference_id, batch.number)
    assert (bytes(answer.response_hash), bytes(answer.artifact_digest), answer.completion_tokens) == (
        ANSWER, ARTIFACT, 10)
    batch = finished(batch, tx)
    assert (done.batch, done.executor, done.p_bps) == (batch.number, executor.address, 10_000)
    assert ledger.escrowOf(client) == FUNDS - 10 * PRICE
    e = ledger.epochOf(tx.block_number)
    account = ledger.accounts(executor, e)
    assert (account.fees, account.weight, account.flags) == (10 * PRICE, 10 * PRICE, 0)
    assert ledger.epochs(e).eligible_weight == 10 * PRICE
    status, root = ledger.batchOf(batch.number)
    assert (status, bytes(root)) == (FINISHED, packed(batch.root()))
    assert ledger.stateOf(batch.number, batch.items[0].inference_id).status == FINISHED
    assert ledger.stats(executor).served == 1 and ledger.clientStats(client).spent == 10 * PRICE
    conserved()


def test_finish_batch__three__each_cost_and_refund(ledger, client, start, finish_batch, conserved):
    batch, executor = start(client, 3, max_tokens=32)
    batch = finish_batch(batch, executor, [5, 0, 32])  # 0: not served, the whole lock comes back
    assert ledger.escrowOf(client) == FUNDS - 37 * PRICE and ledger.totalLocked() == 0
    account = ledger.accounts(executor, ledger.epochOf(batch.finish_block))
    assert (account.fees, account.weight) == (37 * PRICE, 37 * PRICE)
    assert ledger.stats(executor).served == 3 and ledger.clientStats(client).spent == 37 * PRICE
    assert [r.completion_tokens for r in batch.records()] == [5, 0, 32]
    conserved()


def test_finish_batch__not_executor__reverts(ledger, client, start, network):
    batch, executor = start(client)
    other = next(h for h in network if h != executor)
    with ape.reverts("ledger: not executor"):
        ledger.finishBatch(*batch.args(), answers([1]), sender=other)
    # nor can another host name itself in the terms
    number, terms, items = batch.args()
    with ape.reverts("ledger: batch mismatch"):
        ledger.finishBatch(number, (other.address, *terms[1:]), items, answers([1]), sender=other)


def test_finish_batch__too_many_tokens_in_one__reverts_all(ledger, client, start, finish_batch, conserved):
    batch, executor = start(client, 2, max_tokens=16)
    with ape.reverts("ledger: too many tokens"):
        ledger.finishBatch(*batch.args(), answers([16, 17]), sender=executor)
    assert ledger.batchOf(batch.number).status == STARTED and ledger.escrowOf(client) == FUNDS - 32 * PRICE
    finish_batch(batch, executor, [16, 16])
    conserved()


def test_finish_batch__items_not_as_started__reverts(ledger, client, start):
    batch, executor = start(client, 3)
    number, terms, items = batch.args()
    tampered = [
        (terms, [items[0], replace(batch.items[1], max_tokens=65).as_tuple(), items[2]]),
        (terms, [items[0], replace(batch.items[1], deadline=items[1][3] + 1).as_tuple(), items[2]]),
        (terms, [items[1], items[0], items[2]]),  # wrong order
        (terms, items[:2]),  # one missing
        (terms, items + [items[0]]),  # one more
        ((terms[0], terms[1], PRICE - 1), items),  # another price
    ]
    for t, i in tampered:
        with ape.reverts("ledger: batch mismatch"):
            ledger.finishBatch(number, t, i, answers([1] * len(i)), sender=executor)
    with ape.reverts("ledger: not started"):
        ledger.finishBatch(number + 1, terms, items, answers([1] * 3), sender=executor)


def test_finish_batch__answers_not_one_per_item__reverts(ledger, client, start):
    batch, executor = start(client, 2)
    for count in (1, 3, 0):
        with ape.reverts("ledger: answers mismatch"):
            ledger.finishBatch(*batch.args(), answers([1] * count), sender=executor)


def test_finish_batch__twice__reverts(ledger, client, start, finish_batch):
    batch, executor = start(client)
    finish_batch(batch, executor)
    with ape.reverts("ledger: not started"):
        ledger.finishBatch(*batch.args(), answers([10]), sender=executor)


# ---------------------------------------------------------------- assignment and verdicts

def test_validators_of__new_executor__always_one_other(ledger, client, finish, assigned):
    batch, executor = finish(client)
    record, proof = only(batch)
    with ape.reverts("ledger: assignment pending"):
        ledger.validatorsOf(record.as_tuple(), proof)
    [validator] = assigned(record, proof)
    assert validator != executor
    with ape.reverts("ledger: record mismatch"):
        ledger.validatorsOf(replace(record, inference_id=keccak(b"x")).as_tuple(), proof)
    with ape.reverts("ledger: not finished"):
        ledger.validatorsOf(replace(record, batch=batch.number + 1).as_tuple(), proof)


def test_validators_of__started_batch__not_finished(ledger, client, start, chain):
    batch, _ = start(client)
    chain.mine(2)
    as_if_finished = replace(batch, finish_block=chain.blocks.head.number - 2, p_bps=10_000, completion_tokens=(1,))
    record, proof = only(as_if_finished)
    with ape.reverts("ledger: not finished"):
        ledger.validatorsOf(record.as_tuple(), proof)


def test_validators_of__no_output_tokens__nobody_even_with_quorum(ledger, client, finish, chain, gov):
    """An item finished with 0 tokens was not answered: nothing was paid, nothing is checked."""
    batch, _ = finish(client, 2, tokens=[0, 10], quorum=1)
    chain.mine(2)
    unanswered, answered = [batch.proven(i.inference_id) for i in batch.items]
    assert ledger.validatorsOf(unanswered[0].as_tuple(), unanswered[1]) == []
    assert len(ledger.validatorsOf(answered[0].as_tuple(), answered[1])) == 2
    chain.mine(WINDOW)
    with ape.reverts("ledger: nobody lazy"):
        ledger.reportLazy(unanswered[0].as_tuple(), unanswered[1], sender=gov)


def test_submit_validation__passed__fee_to_validator(ledger, client, finish, assigned, conserved):
    batch, executor = finish(client, tokens=10)
    record, proof = only(batch)
    [validator] = assigned(record, proof)
    tx = ledger.submitValidation(record.as_tuple(), proof, True, 77, sender=validator)
    assert [(e.event_name, e.passed, e.score) for e in tx.events] == [("Validated", True, 77)]
    fee = 10 * PRICE * FEE_BPS // 10_000
    e = ledger.epochOf(record.finish_block)
    assert ledger.accounts(validator, e).fees == fee and ledger.accounts(validator, e).validations == 1
    assert ledger.accounts(executor, e).fees == 10 * PRICE - fee
    state = ledger.stateOf(batch.number, record.inference_id)
    assert (state.status, state.voted_mask, state.passed_mask) == (VALIDATED, 1, 1)
    assert ledger.batchOf(batch.number).status == FINISHED  # a verdict is the inference's, not the batch's
    with ape.reverts("ledger: already submitted"):
        ledger.submitValidation(record.as_tuple(), proof, True, 0, sender=validator)
    conserved()


def test_submit_validation__one_of_a_batch__others_unchanged(ledger, client, finish, assigned):
    batch, executor = finish(client, 3)
    record, proof = batch.proven(batch.items[1].inference_id)
    [validator] = assigned(record, proof)
    ledger.submitValidation(record.as_tuple(), proof, True, 0, sender=validator)
    assert [ledger.stateOf(batch.number, i.inference_id).status for i in batch.items] == [FINISHED, VALIDATED, FINISHED]


def test_submit_validation__rejections(ledger, client, finish, start, assigned, network, chain):
    unfinished, _ = start(client)
    batch, executor = finish(client, 2)
    record, proof = batch.proven(batch.items[0].inference_id)
    with ape.reverts("ledger: assignment pending"):
        ledger.submitValidation(record.as_tuple(), proof, True, 0, sender=executor)
    [validator] = assigned(record, proof)
    outsider = next(h for h in network if h not in (executor, validator))
    with ape.reverts("ledger: not assigned validator"):
        ledger.submitValidation(record.as_tuple(), proof, True, 0, sender=outsider)
    with ape.reverts("ledger: not assigned validator"):
        ledger.submitValidation(record.as_tuple(), proof, True, 0, sender=executor)
    with ape.reverts("ledger: record mismatch"):
        ledger.submitValidation(replace(record, completion_tokens=1).as_tuple(), proof, True, 0, sender=validator)
    sibling, sibling_proof = batch.proven(batch.items[1].inference_id)
    with ape.reverts("ledger: record mismatch"):  # the other record's proof
        ledger.submitValidation(record.as_tuple(), sibling_proof, True, 0, sender=validator)
    with ape.reverts("ledger: record mismatch"):  # the root itself as a proof
        ledger.submitValidation(record.as_tuple(), [batch.root()], True, 0, sender=validator)
    as_if_finished = replace(unfinished, finish_block=record.finish_block, p_bps=record.p_bps, completion_tokens=(10,))
    with ape.reverts("ledger: not finished"):
        ledger.submitValidation(only(as_if_finished)[0].as_tuple(), [], True, 0, sender=validator)
    chain.mine(record.finish_block + WINDOW - chain.blocks.head.number)
    with ape.reverts("ledger: validation window closed"):
        ledger.submitValidation(record.as_tuple(), proof, True, 0, sender=validator)


def test_submit_validation__record_moved_to_another_finished_batch__mismatch(ledger, client, finish, assigned):
    batch, executor = finish(client)
    other, _ = finish(client)
    record, proof = only(batch)
    [validator] = assigned(record, proof)
    with ape.reverts("ledger: record mismatch"):
        ledger.submitValidation(replace(record, batch=other.number).as_tuple(), proof, True, 0, sender=validator)


def test_submit_validation__failed__opens_dispute(ledger, client, finish, assigned):
    batch, executor = finish(client)
    record, proof = only(batch)
    [validator] = assigned(record, proof)
    tx = ledger.submitValidation(record.as_tuple(), proof, False, 3, sender=validator)
    opened = [e for e in tx.events if e.event_name == "DisputeOpened"][0]
    assert (opened.executor, opened.accuser) == (executor.address, validator.address)
    assert ledger.stateOf(batch.number, record.inference_id).status == DISPUTED
    assert ledger.pendingJudgements(executor) == ledger.pendingJudgements(validator) == 1
    assert ledger.epochs(ledger.epochOf(record.finish_block)).open_disputes == 1


# ---------------------------------------------------------------- quorum

def test_start__signed_quorum__more_validators_paid_by_client(ledger, client, start, finish_batch, assigned,
                                                              conserved):
    batch, executor = start(client, max_tokens=64, quorum=1)
    lock_fee = 64 * PRICE * FEE_BPS // 10_000
    assert batch.items[0].quorum == 1
    assert ledger.escrowOf(client) == FUNDS - 64 * PRICE - lock_fee
    assert ledger.totalLocked() == 64 * PRICE + lock_fee
    batch = finish_batch(batch, executor, 10)
    fee = 10 * PRICE * FEE_BPS // 10_000
    assert ledger.escrowOf(client) == FUNDS - 10 * PRICE - fee
    record, proof = only(batch)
    validators = assigned(record, proof)
    assert len(validators) == 2 and len(set(validators)) == 2 and executor not in validators
    for v in validators:
        ledger.submitValidation(record.as_tuple(), proof, True, 0, sender=v)
    e = ledger.epochOf(record.finish_block)
    assert ledger.accounts(executor, e).fees == 10 * PRICE - fee
    assert ledger.stateOf(batch.number, record.inference_id).passed_mask == 3
    conserved()


def test_start__signed_quorum__rejections(ledger, gov, client, sign_for, network, conserved):
    executor = network[0]
    [too_large] = sign_for(executor, client, quorum=3)
    with ape.reverts("ledger: quorum too large"):
        ledger.startBatch(executor, MODEL_ID, [too_large.item(quorum=4)], sender=gov)
    [s] = sign_for(executor, client, quorum=1)
    with ape.reverts("ledger: bad signature"):
        ledger.startBatch(executor, MODEL_ID, [s.item(quorum=0)], sender=gov)  # a gateway cannot drop the quorum
    with ape.reverts("ledger: bad signature"):
        ledger.startBatch(executor, MODEL_ID, [s.item(quorum=2)], sender=gov)  # nor raise it at the client's cost
    # the fees of the quorum must fit the escrow too: exactly the plain lock is not enough
    ledger.withdraw(ledger.escrowOf(client) - 64 * PRICE, sender=client)
    with ape.reverts("ledger: insufficient escrow"):
        ledger.startBatch(executor, MODEL_ID, [s.item()], sender=gov)
    assert not ledger.nonceUsed(client, s.request.nonce)
    conserved()


# ---------------------------------------------------------------- expiry

def test_expire_batch__past_deadlines_and_window__refunds_and_executor_ineligible_once(ledger, client, start, chain,
                                                                                      gov, conserved):
    batch, executor = start(client, 2, max_tokens=64)
    with ape.reverts("ledger: not expired"):
        ledger.expireBatch(*batch.args(), sender=gov)
    expiring(chain, batch)
    tx = ledger.expireBatch(*batch.args(), sender=gov)
    assert [e.event_name for e in tx.events] == ["Refunded", "Refunded", "Ineligible", "BatchExpired"]
    assert [bytes(e.inference_id) for e in tx.events[:2]] == [i.inference_id for i in batch.items]
    assert (tx.events[0].amount, tx.events[1].amount, tx.events[2].reason) == (64 * PRICE, 64 * PRICE, 3)
    assert (tx.events[3].batch, tx.events[3].executor) == (batch.number, executor.address)
    assert ledger.escrowOf(client) == FUNDS and ledger.totalLocked() == 0
    assert ledger.clientStats(client).refunded == 128 * PRICE
    assert ledger.accounts(executor, ledger.epochOf(tx.block_number)).flags == INELIGIBLE
    status, digest = ledger.batchOf(batch.number)
    assert (status, bytes(digest)) == (EXPIRED, packed(commitment(batch.terms, list(batch.items))))
    assert ledger.stateOf(batch.number, batch.items[0].inference_id).status == EXPIRED
    with ape.reverts("ledger: not started"):
        ledger.expireBatch(*batch.args(), sender=gov)
    with ape.reverts("ledger: not started"):
        ledger.finishBatch(*batch.args(), answers([1, 1]), sender=executor)
    conserved()


def test_expire_batch__quorum__lock_and_fees_back(ledger, client, start, chain, gov, conserved):
    batch, _ = start(client, max_tokens=64, quorum=2)
    expiring(chain, batch)
    tx = ledger.expireBatch(*batch.args(), sender=gov)
    assert tx.events[0].amount == 64 * PRICE * (10_000 + 2 * FEE_BPS) // 10_000
    assert ledger.escrowOf(client) == FUNDS
    conserved()


def test_expire_batch__one_deadline_not_passed__reverts(ledger, client, sign_for, start_batch, network, chain, gov):
    executor = network[0]
    now = chain.pending_timestamp
    signed = sign_for(executor, client, deadline=now + 100) + sign_for(executor, client, deadline=now + 200)
    batch = start_batch(executor, signed)
    chain.pending_timestamp = now + 100 + WINDOW + 1  # the first is expired, the second not yet
    with ape.reverts("ledger: not expired"):
        ledger.expireBatch(*batch.args(), sender=gov)
    chain.pending_timestamp = now + 200 + WINDOW  # on the limit itself: not yet
    with ape.reverts("ledger: not expired"):
        ledger.expireBatch(*batch.args(), sender=gov)
    chain.pending_timestamp = now + 200 + WINDOW + 1
    ledger.expireBatch(*batch.args(), sender=gov)
    assert ledger.batchOf(batch.number).status == EXPIRED


def test_expire_batch__items_not_as_started__reverts(ledger, client, start, chain, gov):
    batch, _ = start(client, 2)
    number, terms, items = batch.args()
    expiring(chain, batch)
    with ape.reverts("ledger: batch mismatch"):
        ledger.expireBatch(number, terms, items[:1], sender=gov)
    with ape.reverts("ledger: batch mismatch"):
        ledger.expireBatch(number, terms, [replace(batch.items[0], max_tokens=65).as_tuple(), items[1]], sender=gov)


def test_expire_batch__finished__reverts(ledger, client, finish, chain, gov):
    batch, _ = finish(client)
    expiring(chain, batch)
    with ape.reverts("ledger: not started"):
        ledger.expireBatch(*batch.args(), sender=gov)


def test_verdicts__expired_batch__not_finished(ledger, client, start, chain, gov, network):
    """An expired batch has no records: a record made up for it is refused by every verdict call."""
    batch, executor = start(client)
    expiring(chain, batch)
    tx = ledger.expireBatch(*batch.args(), sender=gov)
    chain.mine(WINDOW + 2)
    made_up = replace(batch, finish_block=tx.block_number, p_bps=10_000, completion_tokens=(10,))
    record, proof = only(made_up)
    validator = next(h for h in network if h != executor)
    with ape.reverts("ledger: not finished"):
        ledger.validatorsOf(record.as_tuple(), proof)
    with ape.reverts("ledger: not finished"):
        ledger.submitValidation(record.as_tuple(), proof, False, 0, sender=validator)
    with ape.reverts("ledger: not finished"):
        ledger.reportLazy(record.as_tuple(), proof, sender=gov)
    with ape.reverts("ledger: not finished"):
        ledger.resolve(record.as_tuple(), proof, sender=gov)


# ---------------------------------------------------------------- laziness

def test_report_lazy__no_verdict__validator_ineligible(ledger, client, finish, assigned, chain, gov):
    batch, executor = finish(client)
    record, proof = only(batch)
    [validator] = assigned(record, proof)
    with ape.reverts("ledger: window open"):
        ledger.reportLazy(record.as_tuple(), proof, sender=gov)
    chain.mine(record.finish_block + WINDOW + 1 - chain.blocks.head.number)
    with ape.reverts("ledger: record mismatch"):
        ledger.reportLazy(replace(record, p_bps=0).as_tuple(), proof, sender=gov)
    tx = ledger.reportLazy(record.as_tuple(), proof, sender=gov)
    assert (tx.events[0].participant, tx.events[0].reason) == (validator.address, 2)
    assert ledger.accounts(validator, ledger.epochOf(record.finish_block)).flags == INELIGIBLE
    with ape.reverts("ledger: nobody lazy"):
        ledger.reportLazy(record.as_tuple(), proof, sender=gov)


def test_report_lazy__verdict_given__nobody_lazy(ledger, client, finish, assigned, chain, gov):
    batch, executor = finish(client)
    record, proof = only(batch)
    [validator] = assigned(record, proof)
    ledger.submitValidation(record.as_tuple(), proof, True, 0, sender=validator)
    chain.mine(WINDOW)
    with ape.reverts("ledger: nobody lazy"):
        ledger.reportLazy(record.as_tuple(), proof, sender=gov)
    e = ledger.epochOf(record.finish_block)
    chain.mine(ledger.claimBlock(e) - chain.blocks.head.number)
    with ape.reverts("ledger: epoch settled"):
        ledger.reportLazy(record.as_tuple(), proof, sender=gov)
