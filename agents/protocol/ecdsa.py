"""secp256k1 signatures over 32-byte digests, in the form the chain checks: r || s || v, 65 bytes,
v in {27, 28}, s in the lower half of the group order (EIP-2, as snekmate's ECDSA at `start`).

Each answer takes three signatures (client, gateway, executor) and five recoveries on its path.
eth-account wraps the same libsecp256k1 (through coincurve) in key and signature objects that cost
about 0.24 ms per signature and 0.13 ms per recovery here; calling coincurve directly costs 0.03
and 0.05, with the same bytes (RFC 6979 nonces, tested against eth-account).
"""

from __future__ import annotations

from functools import lru_cache

from coincurve import PrivateKey, PublicKey
from eth_utils import keccak, to_checksum_address

# secp256k1's group order: the chain refuses an s above half of it, and signing never makes one
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@lru_cache(maxsize=16)
def _private_key(secret: bytes) -> PrivateKey:
    # a node signs with one key all its life; deriving its public key costs 0.04 ms per signature
    return PrivateKey(secret)


def _secret(private_key: bytes | str) -> bytes:
    if isinstance(private_key, str):
        return bytes.fromhex(private_key.removeprefix("0x"))
    return bytes(private_key)


def sign(digest: bytes, private_key: bytes | str) -> bytes:
    """65-byte r || s || v signature of a 32-byte digest, v in {27, 28}."""
    sig = _private_key(_secret(private_key)).sign_recoverable(digest, hasher=None)
    return sig[:64] + bytes([sig[64] + 27])


def recover(digest: bytes, signature: bytes) -> str:
    """The checksummed address that signed `digest`; ValueError naming the fault for a signature
    the chain would refuse."""
    if len(signature) != 65:
        raise ValueError(f"signature must be 65 bytes, got {len(signature)}")
    s, v = int.from_bytes(signature[32:64]), signature[64]
    if v not in (27, 28):
        raise ValueError(f"signature v must be 27 or 28, got {v}")
    if not 0 < s <= SECP256K1_N // 2:
        raise ValueError("signature s must be in the lower half of the curve order (EIP-2)")
    try:
        public = PublicKey.from_signature_and_message(signature[:64] + bytes([v - 27]), digest,
                                                      hasher=None)
    except ValueError as exc:
        raise ValueError(f"signature does not recover: {exc}") from None
    return to_checksum_address(keccak(public.format(compressed=False)[1:])[-20:])

