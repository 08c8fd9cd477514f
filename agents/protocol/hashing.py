"""Canonical hashing: the bytes that everyone hashes must be the same bytes."""

from __future__ import annotations

import json
from typing import Any

from eth_utils import keccak


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: one encoding per value."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def keccak_json(obj: Any) -> bytes:
    return keccak(canonical_json(obj))
