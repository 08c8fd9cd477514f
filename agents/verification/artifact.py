"""The inference artifact: what an executor publishes so that anyone can validate its answer.

Binary format, version 1. Every integer is big-endian; one content has exactly one encoding.

    offset  size  field
    0       4     magic b"NULA"
    4       1     version = 1
    5       1     flags: bit 0 = encrypted (reserved; v1 rejects it), other bits must be 0
    6       1     k, the top-k width, 1..64
    7       1     id_bits, the width of a token id: the bit length of the largest id stored (>= 1)
    8       8     seed (u64), the sampling seed of the inference
    16      4     n, the number of output tokens
    20      4     r, the length of the request bytes
    24      r     the request: canonical JSON of `InferenceRequest.canonical()` (its keccak is the
                  request_hash the client signed)
    24+r    ...   bit-packed payload, most significant bit first, zero-padded to a whole byte:
                    n*k top-k ids                  (id_bits each, per position, best first)
                    n*k top-k logprob codes        (12 bits each)
                    n output indices               (bit_length(k) bits: the output token's index
                                                    in its position's top-k, or k = "escaped")
                    one id per escaped index       (id_bits each, in position order)

Logprob quantization: code = round(-logprob * 128), clipped to [0, 4095]; the decoded logprob is
-code / 128. The rounding error is at most 1/256 nat, and every logprob below -4095/128 (about
-32 nats) is stored as that floor. The validator clamps its own logprobs to the same floor and
allows for the rounding error in its tolerance. At k = 5 and a 4096-token vocabulary a position
costs 5*12 + 5*12 + 3 = 123 bits, about 15.4 bytes; a 32k vocabulary costs about 17.3.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from agents.protocol.hashing import canonical_json
from agents.protocol.requests import InferenceRequest

MAGIC = b"NULA"
VERSION = 1
FLAG_ENCRYPTED = 0x01
MAX_K = 64
MAX_REQUEST_BYTES = 1 << 22
LP_BITS = 12
LP_SCALE = 128  # codes per nat
LP_MAX_CODE = (1 << LP_BITS) - 1
LP_FLOOR = -LP_MAX_CODE / LP_SCALE
LP_QUANT_ERROR = 0.5 / LP_SCALE

_HEADER = struct.Struct(">4sBBBBQII")


class ArtifactError(ValueError):
    """A malformed artifact; the message names the problem."""


def quantize_logprobs(logprobs: np.ndarray) -> np.ndarray:
    """Logprobs to their 12-bit codes (see the module docstring)."""
    return np.clip(np.rint(-np.asarray(logprobs, dtype=np.float64) * LP_SCALE), 0, LP_MAX_CODE).astype(np.int64)


def dequantize_logprobs(codes: np.ndarray) -> np.ndarray:
    return -np.asarray(codes, dtype=np.float64) / LP_SCALE


def _index_bits(k: int) -> int:
    return k.bit_length()  # enough for 0..k, where k marks an escaped id


@dataclass(frozen=True, eq=False)
class Artifact:
    """One inference's artifact. Logprobs are held already quantized, as decode returns them."""

    request_json: bytes
    seed: int
    output_ids: np.ndarray  # (n,) int64
    topk_ids: np.ndarray  # (n, k) int64, best first
    topk_logprobs: np.ndarray  # (n, k) float64, multiples of 1/LP_SCALE

    @classmethod
    def build(
        cls, request: InferenceRequest, seed: int, output_ids, topk_ids, topk_logprobs
    ) -> "Artifact":
        """The executor's constructor: canonical request bytes and quantized logprobs."""
        lps = np.asarray(topk_logprobs, dtype=np.float64)
        if np.isnan(lps).any():
            raise ArtifactError("top-k logprobs contain NaN")
        if (lps > LP_QUANT_ERROR).any():
            raise ArtifactError("top-k logprobs must be <= 0")
        return cls(
            request_json=canonical_json(request.canonical()),
            seed=seed,
            output_ids=np.asarray(output_ids, dtype=np.int64),
            topk_ids=np.asarray(topk_ids, dtype=np.int64),
            topk_logprobs=dequantize_logprobs(quantize_logprobs(lps)),
        )

    def __post_init__(self) -> None:
        n = self.output_ids.shape[0] if self.output_ids.ndim == 1 else -1
        if n < 0:
            raise ArtifactError("output ids must be one-dimensional")
        if self.topk_ids.ndim != 2 or self.topk_ids.shape[0] != n:
            raise ArtifactError(f"top-k ids must have shape (n={n}, k), got {self.topk_ids.shape}")
        if self.topk_logprobs.shape != self.topk_ids.shape:
            raise ArtifactError(
                f"top-k logprobs shape {self.topk_logprobs.shape} != top-k ids shape {self.topk_ids.shape}"
            )
        if not 1 <= self.k <= MAX_K:
            raise ArtifactError(f"k must be in [1, {MAX_K}], got {self.k}")
        if not 0 <= self.seed < 1 << 64:
            raise ArtifactError(f"seed must be in [0, 2**64), got {self.seed}")
        for name, ids in (("output", self.output_ids), ("top-k", self.topk_ids)):
            if ids.size and (ids.min() < 0 or ids.max() >= 1 << 32):
                raise ArtifactError(f"{name} ids must be in [0, 2**32)")
        if n and (np.diff(np.sort(self.topk_ids, axis=1), axis=1) == 0).any():
            row = int(np.nonzero((np.diff(np.sort(self.topk_ids, axis=1), axis=1) == 0).any(axis=1))[0][0])
            raise ArtifactError(f"duplicate id in the top-k at position {row}")
        if not np.array_equal(dequantize_logprobs(quantize_logprobs(self.topk_logprobs)), self.topk_logprobs):
            raise ArtifactError("top-k logprobs are not quantized; construct with Artifact.build")
        if len(self.request_json) > MAX_REQUEST_BYTES:
            raise ArtifactError(f"request of {len(self.request_json)} bytes exceeds {MAX_REQUEST_BYTES}")
        request = self.request()  # raises on a non-canonical or invalid request
        if n > request.max_tokens:
            raise ArtifactError(f"{n} output tokens exceed max_tokens {request.max_tokens}")

    @property
    def k(self) -> int:
        return self.topk_ids.shape[1]

    @property
    def n(self) -> int:
        return self.output_ids.shape[0]

    @property
    def id_bits(self) -> int:
        largest = max(int(self.output_ids.max(initial=0)), int(self.topk_ids.max(initial=0)))
        return max(1, largest.bit_length())

    def request(self) -> InferenceRequest:
        try:
            request = InferenceRequest.model_validate_json(self.request_json)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'json'}: {e['msg']}" for e in exc.errors())
            raise ArtifactError(f"invalid request: {problems}") from None
        if canonical_json(request.canonical()) != self.request_json:
            raise ArtifactError("request bytes are not canonical JSON")
        return request

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Artifact) and self.encode() == other.encode()

    def encode(self) -> bytes:
        k, n, id_bits = self.k, self.n, self.id_bits
        hits = self.topk_ids == self.output_ids[:, None]
        index = np.where(hits.any(axis=1), hits.argmax(axis=1), k)
        escaped = self.output_ids[index == k]
        bits = np.concatenate(
            [
                _to_bits(self.topk_ids.ravel(), id_bits),
                _to_bits(quantize_logprobs(self.topk_logprobs).ravel(), LP_BITS),
                _to_bits(index, _index_bits(k)),
                _to_bits(escaped, id_bits),
            ]
        )
        header = _HEADER.pack(MAGIC, VERSION, 0, k, id_bits, self.seed, n, len(self.request_json))
        return header + self.request_json + np.packbits(bits).tobytes()

    @classmethod
    def decode(cls, data: bytes) -> "Artifact":
        """Strict inverse of `encode`: anything else raises ArtifactError naming the problem."""
        if len(data) < _HEADER.size:
            raise ArtifactError(f"truncated header: {len(data)} of {_HEADER.size} bytes")
        magic, version, flags, k, id_bits, seed, n, r = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise ArtifactError(f"bad magic {magic!r}, expected {MAGIC!r}")
        if version != VERSION:
            raise ArtifactError(f"unsupported version {version}, expected {VERSION}")
        if flags & FLAG_ENCRYPTED:
            raise ArtifactError("encrypted artifacts are not supported in version 1")
        if flags:
            raise ArtifactError(f"unknown flags 0x{flags:02x}")
        if not 1 <= k <= MAX_K:
            raise ArtifactError(f"k must be in [1, {MAX_K}], got {k}")
        if not 1 <= id_bits <= 32:
            raise ArtifactError(f"id_bits must be in [1, 32], got {id_bits}")
        if r > MAX_REQUEST_BYTES:
            raise ArtifactError(f"request of {r} bytes exceeds {MAX_REQUEST_BYTES}")
        if len(data) < _HEADER.size + r:
            raise ArtifactError(f"truncated request: {len(data) - _HEADER.size} of {r} bytes")
        request_json = data[_HEADER.size : _HEADER.size + r]
        payload = data[_HEADER.size + r :]
        index_bits = _index_bits(k)
        fixed = n * k * (id_bits + LP_BITS) + n * index_bits
        if len(payload) * 8 < fixed:
            raise ArtifactError(f"truncated payload: {len(payload)} bytes for {n} tokens at k={k}")
        bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
        topk_ids = _from_bits(bits, 0, n * k, id_bits).reshape(n, k)
        offset = n * k * id_bits
        codes = _from_bits(bits, offset, n * k, LP_BITS).reshape(n, k)
        offset += n * k * LP_BITS
        index = _from_bits(bits, offset, n, index_bits)
        offset += n * index_bits
        if (index > k).any():
            raise ArtifactError(f"output index {int(index.max())} out of range for k={k}")
        n_escaped = int((index == k).sum())
        end = offset + n_escaped * id_bits
        if len(payload) < -(-end // 8):
            raise ArtifactError(f"truncated payload: {len(payload)} of {-(-end // 8)} bytes")
        if len(payload) > -(-end // 8):
            raise ArtifactError(f"{len(payload) - -(-end // 8)} trailing bytes after the payload")
        if bits[end:].any():
            raise ArtifactError("nonzero padding bits")
        output_ids = np.empty(n, dtype=np.int64)
        in_topk = index < k
        output_ids[in_topk] = topk_ids[in_topk, index[in_topk]]
        output_ids[~in_topk] = _from_bits(bits, offset, n_escaped, id_bits)
        artifact = cls(
            request_json=bytes(request_json),
            seed=seed,
            output_ids=output_ids,
            topk_ids=topk_ids,
            topk_logprobs=dequantize_logprobs(codes),
        )
        # the last checks that make the encoding unique
        if artifact.id_bits != id_bits:
            raise ArtifactError(f"id_bits {id_bits} is not minimal ({artifact.id_bits})")
        escaped_ids = output_ids[~in_topk]
        if (escaped_ids[:, None] == topk_ids[~in_topk]).any():
            raise ArtifactError("escaped output id is in its top-k")
        return artifact


def _to_bits(values: np.ndarray, width: int) -> np.ndarray:
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((np.asarray(values, dtype=np.int64)[:, None] >> shifts) & 1).astype(np.uint8).ravel()


def _from_bits(bits: np.ndarray, offset: int, count: int, width: int) -> np.ndarray:
    chunk = bits[offset : offset + count * width].reshape(count, width).astype(np.int64)
    return chunk @ (1 << np.arange(width - 1, -1, -1, dtype=np.int64))


def bytes_per_token(artifact: Artifact) -> float:
    """Encoded size per output token, header included and the request bytes excluded."""
    return (len(artifact.encode()) - len(artifact.request_json)) / max(1, artifact.n)
