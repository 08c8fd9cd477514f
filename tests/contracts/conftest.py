"""Fixtures for the contract tests: one session deploy on anvil, roles, factories.

ape isolates each test with a chain snapshot, so session-scoped deploys are shared safely.
Clients sign with the protocol's own Python EIP-712 code, so a start that the Ledger accepts
proves the Python and Vyper sides agree on the typed data.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import pytest
from eth_utils import keccak

from agents.chain.records import Record
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

    def args(self, **override):
        """StartArgs as the tuple the ABI takes, with fields replaced by keyword."""
        fields = {
            "client": self.request.client,
            "model_id": model_id(self.request.model),
            "request_hash": self.request.request_hash,
            "max_tokens": self.request.max_tokens,
            "max_price": self.request.max_price,
            "nonce": self.request.nonce,
            "deadline": self.request.deadline,
            "signature": self.signature,
            "seed_block": self.seed_block,
            "executor": self.executor,
            "quorum": self.request.quorum,
        }
        fields.update(override)
        return tuple(fields.values())

    def record(self) -> Record:
        """The record `start` stores for it."""
        r = self.request
        return Record(self.inference_id, r.client, self.executor, model_id(r.model), PRICE, r.max_tokens, r.deadline,
                      r.quorum)


@pytest.fixture(scope="session")
def domain(chain, ledger):
    return Domain(chain_id=chain.chain_id, ledger=ledger.address)


@pytest.fixture(scope="session")
def sign(chain, registry, domain):
    """sign(client, **fields) -> Signed, with the executor drawn from the latest block."""
    nonces = itertools.count()

    def sign(client, *, key=None, model=MODEL, max_tokens=64, max_price=PRICE, deadline=None, prompt="hi",
             quorum=0):
        request = InferenceRequest(
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            max_price=max_price,
            nonce=next(nonces),
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
def accounts_by_address(accounts):
    return lambda address: next(a for a in accounts if a.address == address)


@pytest.fixture(scope="session")
def start(ledger, gov, sign, accounts_by_address):
    """start(client, **sign_fields) -> (Signed, executor account, Record): a started inference."""

    def start(client, **fields):
        s = sign(client, **fields)
        ledger.start(s.args(), sender=gov)
        return s, accounts_by_address(s.executor), s.record()

    return start


@pytest.fixture(scope="session")
def finish_record(ledger):
    """finish_record(record, executor, tokens) -> the finished Record."""

    def finish_record(record, executor, tokens=10):
        tx = ledger.finish((record.as_tuple(), keccak(b"answer"), keccak(b"artifact"), tokens), sender=executor)
        [event] = [e for e in tx.events if e.event_name == "Finished"]
        return replace(record, completion_tokens=tokens, finish_block=tx.block_number, p_bps=event.p_bps)

    return finish_record


@pytest.fixture(scope="session")
def finish(start, finish_record):
    """finish(client, tokens=...) -> (Signed, executor account, finished Record)."""

    def finish(client, tokens=10, **fields):
        s, executor, record = start(client, **fields)
        return s, executor, finish_record(record, executor, tokens)

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
