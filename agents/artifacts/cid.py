"""Artifact addresses: raw CIDv1 (codec 0x55) over a sha2-256 multihash.

This is what `ipfs block put --cid-codec=raw --mhtype=sha2-256` returns for the same bytes, so the
embedded store, any kubo node and any trustless gateway agree on the name of an artifact. The
chain stores only the 32-byte digest; the CID is rebuilt from it.
"""

from __future__ import annotations

import base64
import hashlib

from multiformats import CID, multihash

CODEC = "raw"
HASH = "sha2-256"
DIGEST_BYTES = 32
# The longest encoding of a raw sha2-256 CIDv1 is base16 (73 characters); anything much longer is
# not one of ours, and refusing it early bounds the work a hostile string can cause.
MAX_CID_CHARS = 96
# version 1, codec raw (0x55), multihash sha2-256 (0x12) of 32 bytes (0x20): every canonical CID
# is multibase "b" + lower-case unpadded base32 of these bytes and the digest, "bafkrei..."
_PREFIX = bytes([0x01, 0x55, 0x12, 0x20])
_CANONICAL_PREFIX = "bafkrei"
_CANONICAL_CHARS = 59


class CIDError(ValueError):
    """A string that is not a raw sha2-256 CIDv1."""


def cid_from_digest(digest: bytes) -> str:
    """The canonical (base32) CID of the block whose sha256 is `digest`."""
    if len(digest) != DIGEST_BYTES:
        raise CIDError(f"a sha2-256 digest is {DIGEST_BYTES} bytes, got {len(digest)}")
    # the standard library's base32: multiformats' own takes 0.4 ms, on the answer's path
    return "b" + base64.b32encode(_PREFIX + digest).decode().rstrip("=").lower()


def cid_of(data: bytes) -> str:
    """The canonical CID of `data`."""
    return cid_from_digest(hashlib.sha256(data).digest())


def digest_from_cid(cid: str) -> bytes:
    """The sha256 digest a CID names; rejects every CID that is not raw sha2-256 v1."""
    if not isinstance(cid, str):
        raise CIDError(f"a CID is a string, got {type(cid).__name__}")
    if len(cid) > MAX_CID_CHARS:
        raise CIDError(f"malformed CID: {len(cid)} characters, at most {MAX_CID_CHARS}")
    if len(cid) == _CANONICAL_CHARS and cid.startswith(_CANONICAL_PREFIX):
        try:
            raw = base64.b32decode(cid[1:].upper() + "======", casefold=False)  # 58 -> 64 chars
        except ValueError:
            raw = b""
        # the canonical form names one digest only if it re-encodes to itself
        if raw[:4] == _PREFIX and cid_from_digest(raw[4:]) == cid:
            return raw[4:]
    if cid.startswith("Qm"):
        raise CIDError(f"CID {cid!r} is version 0 (dag-pb), only raw CIDv1 is accepted")
    try:
        parsed = CID.decode(cid)
    # multiformats raises ValueError, KeyError or ImportError (for hash functions whose module is
    # not installed) depending on where parsing stops; to a caller they all mean "malformed".
    except Exception as exc:  # noqa: BLE001
        raise CIDError(f"malformed CID {cid!r}: {exc}") from None
    if parsed.version != 1:
        raise CIDError(f"CID {cid!r} is version {parsed.version}, only CIDv1 is accepted")
    if parsed.codec.name != CODEC:
        raise CIDError(f"CID {cid!r} has codec {parsed.codec.name}, only raw (0x55) is accepted")
    if parsed.hashfun.name != HASH:
        raise CIDError(f"CID {cid!r} uses {parsed.hashfun.name}, only sha2-256 is accepted")
    digest = parsed.raw_digest
    if len(digest) != DIGEST_BYTES:
        raise CIDError(f"CID {cid!r} has a {len(digest)}-byte digest, expected {DIGEST_BYTES}")
    return digest


def canonical_cid(cid: str) -> str:
    """The base32 form of any accepted CID, so one block has one name on disk and on the wire."""
    return cid_from_digest(digest_from_cid(cid))


def matches(data: bytes, digest: bytes) -> bool:
    return hashlib.sha256(data).digest() == digest
