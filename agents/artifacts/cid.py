"""Artifact addresses: raw CIDv1 (codec 0x55) over a sha2-256 multihash.

This is what `ipfs block put --cid-codec=raw --mhtype=sha2-256` returns for the same bytes, so the
embedded store, any kubo node and any trustless gateway agree on the name of an artifact. The
chain stores only the 32-byte digest; the CID is rebuilt from it.
"""

from __future__ import annotations

import hashlib

from multiformats import CID, multihash

CODEC = "raw"
HASH = "sha2-256"
DIGEST_BYTES = 32
# The longest encoding of a raw sha2-256 CIDv1 is base16 (73 characters); anything much longer is
# not one of ours, and refusing it early bounds the work a hostile string can cause.
MAX_CID_CHARS = 96


class CIDError(ValueError):
    """A string that is not a raw sha2-256 CIDv1."""


def cid_from_digest(digest: bytes) -> str:
    """The canonical (base32) CID of the block whose sha256 is `digest`."""
    if len(digest) != DIGEST_BYTES:
        raise CIDError(f"a sha2-256 digest is {DIGEST_BYTES} bytes, got {len(digest)}")
    return str(CID("base32", 1, CODEC, multihash.wrap(digest, HASH)))


def cid_of(data: bytes) -> str:
    """The canonical CID of `data`."""
    return cid_from_digest(hashlib.sha256(data).digest())


def digest_from_cid(cid: str) -> bytes:
    """The sha256 digest a CID names; rejects every CID that is not raw sha2-256 v1."""
    if not isinstance(cid, str):
        raise CIDError(f"a CID is a string, got {type(cid).__name__}")
    if len(cid) > MAX_CID_CHARS:
        raise CIDError(f"malformed CID: {len(cid)} characters, at most {MAX_CID_CHARS}")
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
