"""Fixtures for the contract tests: one session deploy on anvil, roles, factories.

ape isolates each test with a chain snapshot, so session-scoped deploys are shared safely.
Clients sign with the protocol's own Python EIP-712 code, and every batch a helper starts or
finishes is rebuilt by agents.chain.batches from the transaction's events: a start that the
Ledger accepts proves the Python and Vyper sides agree on the typed data, and a finish checks
that the Python Merkle root is the one the Ledger logged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import pytest
from eth_utils import keccak

from agents.chain import batches
from agents.chain.batches import Batch, Record
from agents.protocol.eip712 import Domain, inference_id, model_id, sign_request
from agents.protocol.requests import InferenceRequest

TOKEN = 10**18
MODEL = "nullius/ref-tiny"
MODEL_ID = model_id(MODEL)
SPEC_HASH = keccak(b"manifest")
PRICE = 10**12  # per output token
MIN_STAKE = 100 * TOKEN
STAKE = 1_000 * TOKEN
UNBONDING = 20
WINDOW = 8  # blocks, and seconds after a deadline for expiry
JURY_WINDOW = 6
JURY_SIZE = 3
EPOCH = 40
SETTLEMENT = 20
MAX_REPUTATION = 4
SLASH_BPS = 1_000
FEE_BPS = 2_000
PENALTY_BPS = 500
PARAMS = (WINDOW, JURY_WINDOW, JURY_SIZE, EPOCH, SETTLEMENT, MAX_REPUTATION, SLASH_BPS, FEE_BPS, PENALTY_BPS)
FUNDS = 10 * TOKEN
ZERO = "0x" + "00" * 20
ANSWER, ARTIFACT = keccak(b"answer"), keccak(b"artifact")


@pytest.fixture(scope="session")
def gov(accounts):
    return accounts[0]


@pytest.fixture(scope="session")
def client(accounts):
    return accounts[1]


@pytest.fixture(scope="session")
def hosts(accounts):
    """Accounts that serve the model; which one executes an inference is up to the draw."""
    return [accounts[2], accounts[3], accounts[4]]


@pytest.fixture(scope="session")
def outsider(accounts):
    return accounts[9]


@pytest.fixture(scope="session")
def token(project, gov):
    return gov.deploy(project.MockToken)


@pytest.fixture(scope="session")
def registry(project, gov, token):
    return gov.deploy(project.Registry, token, MIN_STAKE, UNBONDING)


@pytest.fixture(scope="session")
def ledger(project, gov, token, registry):
    ledger = gov.deploy(project.Ledger, token, registry, PARAMS)
    registry.setLedger(ledger, sender=gov)
    registry.registerModel(MODEL_ID, MODEL, SPEC_HASH, PRICE, sender=gov)
    return ledger


@pytest.fixture(scope="session")
def fund(token):
    def fund(account, spender, amount):
        token.mint(account, amount, sender=account)
        token.approve(spender, amount, sender=account)

    return fund


@pytest.fixture(scope="session")
def make_participant(registry, fund):
    def make(account, stake=STAKE, model=MODEL_ID, url="http://node.example"):
        fund(account, registry, stake)
        registry.register(stake, url, model, sender=account)
        return account

    return make


@pytest.fixture(scope="module")
def network(ledger, registry, hosts, client, fund, make_participant):
    """Three hosts staked on the model and a client with FUNDS in escrow.

    Module-scoped: ape rolls it back at the end of each module that uses it.
    """
    for host in hosts:
        make_participant(host)
    fund(client, ledger, FUNDS)
    ledger.deposit(FUNDS, sender=client)
    return hosts


@dataclass
class Signed:
    request: InferenceRequest
    signature: bytes
    inference_id: bytes
    seed_block: int
    executor: str  # the drawn executor (an address string)

    def item(self, **override) -> tuple:
        """The StartItem as the tuple the ABI takes, with fields replaced by keyword."""
        fields = {
            "client": self.request.client,
            "request_hash": self.request.request_hash,
            "max_tokens": self.request.max_tokens,
            "max_price": self.request.max_price,
            "nonce": self.request.nonce,
            "deadline": self.request.deadline,
            "quorum": self.request.quorum,
            "seed_block": self.seed_block,
            "signature": self.signature,
        }
        fields.update(override)
        return tuple(fields.values())


def answers(tokens) -> list[tuple]:
    """`finishBatch` answers, one per output token count."""
    return [(ANSWER, ARTIFACT, t) for t in tokens]


def started(tx) -> Batch:
    """The batch a `startBatch` transaction started, from its events."""
    [begun] = [e for e in tx.events if e.event_name == "BatchStarted"]
    items = [e.event_arguments for e in tx.events if e.event_name == "Started"]
    return batches.assemble(begun.batch, begun.event_arguments, items)


def finished(batch: Batch, tx) -> Batch:
    """`batch` as a `finishBatch` transaction finished it, from its events; asserts that the
    Python Merkle root is the one the Ledger stored."""
    [done] = [e for e in tx.events if e.event_name == "BatchFinished"]
    tokens = {bytes(e.inference_id): e.completion_tokens for e in tx.events if e.event_name == "Finished"}
    batch = replace(batch, finish_block=tx.block_number, p_bps=done.p_bps,
                    completion_tokens=tuple(tokens[i.inference_id] for i in batch.items))
    assert batch.root() == bytes(done.root)
    return batch


def only(batch: Batch) -> tuple[Record, list[bytes]]:
    """The record and Merkle proof of a finished batch's only inference."""
    [item] = batch.items
    return batch.proven(item.inference_id)


@pytest.fixture(scope="session")
def domain(chain, ledger):
    return Domain(chain_id=chain.chain_id, ledger=ledger.address)


@pytest.fixture(scope="session")
def sign(chain, registry, domain):
    """sign(client, **fields) -> Signed, with the executor drawn from the latest block."""
    nonces = itertools.count()

    def sign(client, *, key=None, model=MODEL, max_tokens=64, max_price=PRICE, deadline=None, prompt="hi",
             quorum=0, nonce=None):
        request = InferenceRequest(
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            max_price=max_price,
            nonce=next(nonces) if nonce is None else nonce,
            deadline=chain.pending_timestamp + 3600 if deadline is None else deadline,
            client=client.address,
            quorum=quorum,
        )
        iid = inference_id(request, domain)
        signature = sign_request(request, domain, key or client.private_key)
        seed_block = chain.blocks.head.number
        seed = keccak(iid + bytes(chain.blocks[seed_block].hash))
        executor = registry.drawExecutor(model_id(model), seed)
        return Signed(request, signature, iid, seed_block, executor)

    return sign


@pytest.fixture(scope="session")
def sign_for(sign):
    """sign_for(executor, client, n, **fields) -> n Signed whose real draw picks `executor`.

    Requests drawn to another host are left out, as a gateway batches per executor. Each try
    numbers its prompt, so that a fixed nonce too gives a new inference id and a new draw."""

    def sign_for(executor, client, n=1, *, prompt="hi", **fields):
        signed = []
        for attempt in itertools.count():
            if len(signed) == n:
                return signed
            s = sign(client, prompt=f"{prompt} {attempt}", **fields)
            if s.executor == executor.address:
                signed.append(s)

    return sign_for


@pytest.fixture(scope="session")
def accounts_by_address(accounts):
    return lambda address: next(a for a in accounts if a.address == address)


@pytest.fixture(scope="session")
def start_batch(ledger, gov):
    """start_batch(executor, signed) -> Batch: `startBatch` of the signed requests, sent by gov."""

    def start_batch(executor, signed):
        return started(ledger.startBatch(executor, MODEL_ID, [s.item() for s in signed], sender=gov))

    return start_batch


@pytest.fixture(scope="session")
def start(sign, sign_for, start_batch, accounts_by_address):
    """start(client, n=1, executor=None, **sign_fields) -> (Batch, executor account): a started
    batch of n requests drawn to `executor` (by default, to whom the first request is drawn)."""

    def start(client, n=1, executor=None, **fields):
        if executor is None:
            first = sign(client, **fields)
            executor = accounts_by_address(first.executor)
            signed = [first] + sign_for(executor, client, n - 1, **fields)
        else:
            signed = sign_for(executor, client, n, **fields)
        return start_batch(executor, signed), executor

    return start


@pytest.fixture(scope="session")
def finish_batch(ledger):
    """finish_batch(batch, executor, tokens=10) -> the finished Batch; `tokens` is one output
    token count for every item, or a list of one per item."""

    def finish_batch(batch, executor, tokens=10):
        counts = list(tokens) if isinstance(tokens, (list, tuple)) else [tokens] * len(batch.items)
        return finished(batch, ledger.finishBatch(*batch.args(), answers(counts), sender=executor))

    return finish_batch


@pytest.fixture(scope="session")
def finish(start, finish_batch):
    """finish(client, n=1, tokens=10, executor=None, **sign_fields) -> (finished Batch, executor
    account)."""

    def finish(client, n=1, tokens=10, executor=None, **fields):
        batch, executor = start(client, n, executor, **fields)
        return finish_batch(batch, executor, tokens), executor

    return finish


@pytest.fixture(scope="session")
def conserved(token, ledger, registry):
    """Asserts both contracts' token conservation invariants."""

    def check():
        assert token.balanceOf(ledger) == (
            ledger.totalEscrow() + ledger.totalLocked() + ledger.totalFees() + ledger.totalPool()
        )
        assert token.balanceOf(registry) == registry.totalStaked()

    return check
