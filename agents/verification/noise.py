"""Counter-based Gumbel noise: the same bits in numpy and torch, on CPU and GPU.

Each (seed, position, token id) triple maps to a 32-bit hash with no state, so any party can
recompute the noise of any position in any order. The hash uses only operations that numpy and
torch define identically on int64 (xor, logical shifts of non-negative values, wrapping
multiplication, masking), which is why the same code runs on either array type.
"""

from __future__ import annotations

import math
from typing import Any

MASK32 = 0xFFFFFFFF
# 24 bits of the hash feed the uniform: exact in float32 as well as float64.
_UNIFORM_BITS = 24
_UNIFORM_SCALE = 1.0 / (1 << _UNIFORM_BITS)


def _mix32(x: Any) -> Any:
    """lowbias32 (Chris Wellons): a 32-bit integer finalizer with low bias.

    `x` holds values in [0, 2**32) as int64 (numpy array, torch tensor or Python int).
    Products may wrap int64, but only their low 32 bits are kept, which wrapping preserves.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    x = x ^ (x >> 16)
    return x


def seed_words(seed: int) -> tuple[int, int]:
    """Split a 64-bit seed into the two 32-bit key words the hash consumes."""
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed & MASK32, (seed >> 32) & MASK32


def position_key(seed: int, position: int) -> int:
    """The per-position key: depends on the whole seed and the position, never on the token."""
    k0, k1 = seed_words(seed)
    return _mix32(position & MASK32 ^ _mix32(k1 ^ _mix32(k0)))


def hash_bits(seed: int, position: int, token_ids: Any) -> Any:
    """32-bit hash of (seed, position, token id) for an int64 array of token ids."""
    return _mix32(token_ids ^ position_key(seed, position))


def uniform_from_bits(bits: Any) -> Any:
    """Map float64 copies of the top hash bits to a uniform in (0, 1), never exactly 0 or 1."""
    return (bits + 0.5) * _UNIFORM_SCALE


def _top_bits(bits: Any) -> Any:
    return bits >> (32 - _UNIFORM_BITS)


def gumbel_numpy(seed: int, position: int, vocab_size: int):
    """Gumbel noise for every token id at one position, as float64 numpy."""
    import numpy as np

    bits = hash_bits(seed, position, np.arange(vocab_size, dtype=np.int64))
    u = uniform_from_bits(_top_bits(bits).astype(np.float64))
    return -np.log(-np.log(u))


def gumbel_torch(seed: int, position: int, vocab_size: int, device: Any = "cpu"):
    """Gumbel noise for every token id at one position, as float64 torch on `device`."""
    import torch

    bits = hash_bits(seed, position, torch.arange(vocab_size, dtype=torch.int64, device=device))
    u = uniform_from_bits(_top_bits(bits).to(torch.float64))
    return -torch.log(-torch.log(u))


def gumbel_at(seed: int, positions, token_ids):
    """Gumbel noise of `token_ids` at `positions` (numpy int64 arrays that broadcast together), as
    float64 numpy: a validator's noise for each position's candidates in one array operation."""
    import numpy as np

    bits = hash_bits(seed, np.asarray(positions, dtype=np.int64), np.asarray(token_ids, dtype=np.int64))
    return -np.log(-np.log(uniform_from_bits(_top_bits(bits).astype(np.float64))))


def gumbel_max_outside(seed: int, position: int, vocab_size: int, known) -> float:
    """The largest noise at `position` over the token ids in [0, vocab_size) not in `known`
    (-inf when there are none). The noise rises with the hash's top bits, so the maximum is taken
    over integers and only one logarithm is computed."""
    import numpy as np

    top = _top_bits(hash_bits(seed, position, np.arange(vocab_size, dtype=np.int64)))
    top[np.asarray(known, dtype=np.int64)] = -1
    best = int(top.max(initial=-1))
    return -math.inf if best < 0 else -math.log(-math.log(uniform_from_bits(float(best))))


# No token's noise exceeds this: the uniform is at most 1 - 2**-25 (see `uniform_from_bits`).
GUMBEL_MAX = -math.log(-math.log(uniform_from_bits(float((1 << _UNIFORM_BITS) - 1))))


def gumbel_scalar(seed: int, position: int, token_id: int) -> float:
    """The noise of one token: what a validator needs to re-check a single position."""
    u = uniform_from_bits(float(_top_bits(hash_bits(seed, position, token_id))))
    return -math.log(-math.log(u))


def seed_from_inference_id(inference_id: bytes) -> int:
    """The sampling seed of an inference: the first 8 bytes of its id, big-endian."""
    if len(inference_id) != 32:
        raise ValueError(f"inference id must be 32 bytes, got {len(inference_id)}")
    return int.from_bytes(inference_id[:8], "big")
