"""The inference id and the client's signature: eth-account's EIP-712 encoding, and the chain's rules
for what a valid signature is (the Ledger refuses the rest at `start`, snekmate's ECDSA module)."""

from __future__ import annotations

import random

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

from agents.protocol import ecdsa, eip712
from agents.protocol.requests import InferenceRequest

CLIENT = Account.from_key("0x" + "33" * 32)
DOMAIN = eip712.Domain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
N = ecdsa.SECP256K1_N


def _request(rng: random.Random | None = None) -> InferenceRequest:
    rng = rng or random.Random(0)
    return InferenceRequest(model=rng.choice(["nullius/ref-tiny", "other/model"]),
                            prompt="def f(x):" * rng.randint(1, 9), max_tokens=rng.randint(1, 512),
                            max_price=rng.getrandbits(200), nonce=rng.getrandbits(256),
                            deadline=rng.getrandbits(64), client=CLIENT.address,
                            quorum=rng.randint(0, 3))


def _eth_account_signable(request: InferenceRequest, domain: eip712.Domain):
    message = {"client": to_checksum_address(request.client),
               "modelId": eip712.model_id(request.model), "requestHash": request.request_hash,
               "maxTokens": request.max_tokens, "maxPrice": request.max_price,
               "nonce": request.nonce, "deadline": request.deadline, "quorum": request.quorum}
    return encode_typed_data(domain_data=domain.as_dict(), message_types=eip712.INFERENCE_TYPES,
                             message_data=message)


@pytest.mark.parametrize("seed", range(20))
def test_inference_id__equals_eth_account_typed_data_digest(seed):
    rng = random.Random(seed)
    domain = eip712.Domain(rng.choice([1, 8453, 31337]), "0x" + rng.randbytes(20).hex())
    request = _request(rng)
    signable = _eth_account_signable(request, domain)
    assert eip712.inference_id(request, domain) == keccak(
        b"\x19" + signable.version + signable.header + signable.body)


def test_sign_request__equals_eth_account_typed_data_signature():
    request = _request()
    expected = Account.sign_message(_eth_account_signable(request, DOMAIN), CLIENT.key).signature
    assert eip712.sign_request(request, DOMAIN, CLIENT.key) == bytes(expected)


def test_recover_client__own_signature__client():
    request = _request()
    assert eip712.recover_client(request, DOMAIN, eip712.sign_request(request, DOMAIN, CLIENT.key)) \
        == CLIENT.address


def test_recover_client__other_domain__other_address():
    request = _request()
    signature = eip712.sign_request(request, DOMAIN, CLIENT.key)
    assert eip712.recover_client(request, eip712.Domain(1, DOMAIN.ledger), signature) != CLIENT.address


def _malleated(signature: bytes) -> bytes:
    """The same signature with s -> n - s and v flipped: ecrecover gives the same signer."""
    s, v = int.from_bytes(signature[32:64]), signature[64]
    return signature[:32] + (N - s).to_bytes(32) + bytes([55 - v])


@pytest.mark.parametrize("forge, message", [
    (_malleated, "signature s must be in the lower half of the curve order (EIP-2)"),
    (lambda sig: sig[:64] + bytes([sig[64] - 27]), "signature v must be 27 or 28, got"),
    (lambda sig: sig[:32] + bytes(32) + sig[64:], "signature s must be in the lower half"),
    (lambda sig: sig[:64], "signature must be 65 bytes, got 64"),
    (lambda sig: bytes(32) + sig[32:], "signature does not recover"),
])
def test_recover_client__signature_the_chain_refuses__raises_naming_fault(forge, message):
    request = _request()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        eip712.recover_client(request, DOMAIN, forge(eip712.sign_request(request, DOMAIN, CLIENT.key)))
