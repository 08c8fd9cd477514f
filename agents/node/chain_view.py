"""The chain reads the roles make, typed, over the contracts of an `agents.chain.client.ChainClient`.

Every call is synchronous web3; async handlers run them with `asyncio.to_thread`.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import keccak, to_checksum_address

ZERO_ADDRESS = "0x" + "00" * 20
# Ledger statuses (docs/protocol.md section 2)
NONE, STARTED, FINISHED, VALIDATED, INVALIDATED, SETTLED, EXPIRED = range(7)


def draw_seed(inference_id: bytes, seed_blockhash: bytes) -> bytes:
    """The executor draw's seed: keccak(inference_id ‖ blockhash(seed_block)), as the Ledger checks."""
    return keccak(inference_id + seed_blockhash)


@dataclass(frozen=True)
class Model:
    name: str
    spec_hash: bytes
    price: int
    active: bool


@dataclass(frozen=True)
class ParticipantInfo:
    stake: int
    reputation: int
    model_id: bytes
    url: str
    active: bool


@dataclass(frozen=True)
class InferenceInfo:
    status: int
    client: str
    executor: str
    model_id: bytes
    request_hash: bytes
    lock: int
    cost: int
    finish_block: int
    response_hash: bytes
    artifact_digest: bytes
    completion_tokens: int


class ChainView:
    def __init__(self, client):
        self.client = client
        self.w3 = client.w3

    def block_number(self) -> int:
        return self.w3.eth.block_number

    def blockhash(self, number: int) -> bytes:
        return bytes(self.w3.eth.get_block(number)["hash"])

    def timestamp(self) -> int:
        return self.w3.eth.get_block("latest")["timestamp"]

    def model(self, model_id: bytes) -> Model:
        return Model(*self.client.registry.functions.model(model_id).call())

    def participant(self, address: str) -> ParticipantInfo:
        stake, reputation, model_id, url, active, _exit_block = (
            self.client.registry.functions.participant(to_checksum_address(address)).call())
        return ParticipantInfo(stake, reputation, model_id, url, active)

    def escrow_of(self, client: str) -> int:
        return self.client.ledger.functions.escrowOf(to_checksum_address(client)).call()

    def draw_executor(self, model_id: bytes, inference_id: bytes, seed_block: int) -> str:
        seed = draw_seed(inference_id, self.blockhash(seed_block))
        return self.client.registry.functions.drawExecutor(model_id, seed).call()

    def inference(self, inference_id: bytes) -> InferenceInfo:
        return InferenceInfo(*self.client.ledger.functions.inference(inference_id).call())

    def validator_of(self, inference_id: bytes) -> str:
        return self.client.ledger.functions.validatorOf(inference_id).call()

    def validation_window(self) -> int:
        return self.client.ledger.functions.validation_window().call()
