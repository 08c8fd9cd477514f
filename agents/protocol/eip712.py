"""EIP-712 typed data for inference authorizations; the digest is the inference id.

The Ledger contract rebuilds the same struct hash with snekmate's EIP-712 module and recovers the
client from the signature, so the field order and types here are part of the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

from agents.protocol.requests import InferenceRequest

DOMAIN_NAME = "Nullius"
DOMAIN_VERSION = "1"

INFERENCE_TYPES = {
    "Inference": [
        {"name": "client", "type": "address"},
        {"name": "modelId", "type": "bytes32"},
        {"name": "requestHash", "type": "bytes32"},
        {"name": "maxTokens", "type": "uint256"},
        {"name": "maxPrice", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
        {"name": "quorum", "type": "uint256"},
    ]
}


def model_id(name: str) -> bytes:
    """The on-chain id of a model: keccak of its registry name."""
    return keccak(text=name)


@dataclass(frozen=True)
class Domain:
    chain_id: int
    ledger: str  # the verifying contract

    def as_dict(self) -> dict:
        return {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": to_checksum_address(self.ledger),
        }


def inference_message(request: InferenceRequest) -> dict:
    return {
        "client": to_checksum_address(request.client),
        "modelId": model_id(request.model),
        "requestHash": request.request_hash,
        "maxTokens": request.max_tokens,
        "maxPrice": request.max_price,
        "nonce": request.nonce,
        "deadline": request.deadline,
        "quorum": request.quorum,
    }


def _signable(request: InferenceRequest, domain: Domain):
    return encode_typed_data(
        domain_data=domain.as_dict(),
        message_types=INFERENCE_TYPES,
        message_data=inference_message(request),
    )


def inference_id(request: InferenceRequest, domain: Domain) -> bytes:
    """The EIP-712 digest of the request's authorization: unique per (client, nonce, request)."""
    signable = _signable(request, domain)
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def sign_request(request: InferenceRequest, domain: Domain, private_key: bytes | str) -> bytes:
    """65-byte r || s || v signature by the client."""
    return bytes(Account.sign_message(_signable(request, domain), private_key).signature)


def recover_client(request: InferenceRequest, domain: Domain, signature: bytes) -> str:
    """The address that signed; raises ValueError on a malformed signature."""
    if len(signature) != 65:
        raise ValueError(f"signature must be 65 bytes, got {len(signature)}")
    return Account.recover_message(_signable(request, domain), signature=signature)
