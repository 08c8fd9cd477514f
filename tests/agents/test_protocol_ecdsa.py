"""coincurve signatures against eth-account's: the same bytes, the same signer, the chain's form."""

from __future__ import annotations

import random

import pytest
from eth_account import Account
from eth_account.messages import defunct_hash_message, encode_defunct

from agents.protocol import ecdsa


@pytest.mark.parametrize("seed", range(20))
def test_sign__equals_eth_account_signature(seed):
    rng = random.Random(seed)
    account, digest = Account.from_key(rng.randbytes(32)), rng.randbytes(32)
    expected = bytes(Account.unsafe_sign_hash(digest, account.key).signature)
    assert ecdsa.sign(digest, account.key) == expected
    assert ecdsa.sign(digest, account.key.hex()) == expected  # a hex key, with or without 0x
    assert ecdsa.recover(digest, expected) == account.address


def test_sign__v_27_or_28_and_s_in_the_lower_half():
    rng = random.Random(7)
    for _ in range(50):
        signature = ecdsa.sign(rng.randbytes(32), rng.randbytes(32))
        assert signature[64] in (27, 28)
        assert 0 < int.from_bytes(signature[32:64]) <= ecdsa.SECP256K1_N // 2


def test_sign__eip191_digest__equals_eth_account_message_signature():
    digest, account = bytes(range(32)), Account.from_key(b"\x11" * 32)
    assert ecdsa.sign(defunct_hash_message(primitive=digest), account.key) == bytes(
        Account.sign_message(encode_defunct(primitive=digest), account.key).signature)


def test_recover__other_digest__other_address():
    account = Account.from_key(b"\x22" * 32)
    signature = ecdsa.sign(b"\x01" * 32, account.key)
    assert ecdsa.recover(b"\x02" * 32, signature) != account.address


@pytest.mark.parametrize("forge, message", [
    (lambda sig: sig[:32] + (ecdsa.SECP256K1_N - int.from_bytes(sig[32:64])).to_bytes(32)
     + bytes([55 - sig[64]]), "signature s must be in the lower half of the curve order"),
    (lambda sig: sig[:64] + bytes([sig[64] - 27]), "signature v must be 27 or 28, got [01]"),
    (lambda sig: sig + b"\x00", "signature must be 65 bytes, got 66"),
    (lambda sig: b"\xff" * 32 + sig[32:], "signature does not recover"),
])
def test_recover__signature_the_chain_refuses__raises_naming_fault(forge, message):
    signature = ecdsa.sign(b"\x03" * 32, b"\x33" * 32)
    with pytest.raises(ValueError, match=message):
        ecdsa.recover(b"\x03" * 32, forge(signature))
