"""The inference artifact: what an executor publishes so that anyone can validate its answer.

Binary format, version 2. Every integer is big-endian; one content has exactly one encoding (the
decoder re-encodes what it read and rejects any other byte string).

    offset  size  field
    0       4     magic b"NULA"
    4       1     version = 2
    5       1     flags: bit 0 = encrypted (reserved; rejected), bit 1 = unsorted (below),
                  other bits must be 0
    6       1     k, the top-k width, 1..64
    7       1     id_bits, the width of a token id: the bit length of the largest id stored (>= 1)
    8       1     Rice parameters: p_first << 4 | p_delta, each 0..12
    9       8     seed (u64), the sampling seed of the inference
    17      4     n, the number of output tokens
    21      4     r, the length of the request bytes
    25      r     the request: canonical JSON of `InferenceRequest.canonical()` (its keccak is the
                  request_hash the client signed)
    25+r    ...   bit-packed payload, most significant bit first, zero-padded to a whole byte:
                    n*k top-k ids            id_bits each, per position, best first
                    n output indices         unary: i one-bits then a zero, i = the output token's
                                             index in its top-k, or k = "escaped"
                    one id per escape        id_bits each, in position order
                    n first codes            Rice(p_first): the n quotients in unary, then the n
                                             remainders of p_first bits
                    n*(k-1) code deltas      Rice(p_delta), likewise: code[t, j] - code[t, j-1],
                                             row by row; zigzag-mapped (d >= 0 -> 2d, d < 0 ->
                                             -2d - 1) when the unsorted flag is set, which it is
                                             exactly when some position's codes are not ascending

Logprob quantization: code = round(-logprob * 128), clipped to [0, 4095]; the decoded logprob is
-code / 128. The rounding error is at most 1/256 nat, and every logprob below -4095/128 (about
-32 nats) is stored as that floor. The validator clamps its own logprobs to the same floor and
allows for the rounding error in its tolerance.

Why this layout: a top-k is sorted, so its codes ascend and the gaps between them are small and
geometric-like; a Rice code with the parameter that minimizes the artifact (chosen by the
encoder, smallest on a tie) stores them in about 8 bits instead of 12. The output token is
usually the top-1, which the unary index stores in one bit. Each stream keeps its quotients and
remainders apart so that decoding is vectorized. At k = 5 and a 4096-token vocabulary a position
costs 60 bits of ids plus about 45 of logprobs and 1-2 of index: about 13.5 bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from agents.protocol.hashing import canonical_json
from agents.protocol.requests import InferenceRequest

MAGIC = b"NULA"
VERSION = 2
FLAG_ENCRYPTED = 0x01
FLAG_UNSORTED = 0x02
MAX_RICE = 12  # a 12-bit code never needs more
MAX_K = 64
MAX_REQUEST_BYTES = 1 << 22
LP_BITS = 12
LP_SCALE = 128  # codes per nat
LP_MAX_CODE = (1 << LP_BITS) - 1
LP_FLOOR = -LP_MAX_CODE / LP_SCALE
LP_QUANT_ERROR = 0.5 / LP_SCALE

_HEADER = struct.Struct(">4sBBBBBQII")


class ArtifactError(ValueError):
    """A malformed artifact; the message names the problem."""


def quantize_logprobs(logprobs: np.ndarray) -> np.ndarray:
    """Logprobs to their 12-bit codes (see the module docstring)."""
    return np.clip(np.rint(-np.asarray(logprobs, dtype=np.float64) * LP_SCALE), 0, LP_MAX_CODE).astype(np.int64)


def dequantize_logprobs(codes: np.ndarray) -> np.ndarray:
    return -np.asarray(codes, dtype=np.float64) / LP_SCALE


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
        codes = quantize_logprobs(self.topk_logprobs)
        deltas = np.diff(codes, axis=1).ravel()
        flags = FLAG_UNSORTED if (deltas < 0).any() else 0
        if flags:
            deltas = np.where(deltas >= 0, 2 * deltas, -2 * deltas - 1)
        p_first, p_delta = _rice_parameter(codes[:, 0]), _rice_parameter(deltas)
        bits = np.concatenate(
            [
                _to_bits(self.topk_ids.ravel(), id_bits),
                _unary_bits(index),
                _to_bits(self.output_ids[index == k], id_bits),
                *_rice_bits(codes[:, 0], p_first),
                *_rice_bits(deltas, p_delta),
            ]
        )
        header = _HEADER.pack(MAGIC, VERSION, flags, k, id_bits, p_first << 4 | p_delta, self.seed, n,
                              len(self.request_json))
        return header + self.request_json + np.packbits(bits).tobytes()

    @classmethod
    def decode(cls, data: bytes) -> "Artifact":
        """Strict inverse of `encode`: anything else raises ArtifactError naming the problem."""
        if len(data) < _HEADER.size:
            raise ArtifactError(f"truncated header: {len(data)} of {_HEADER.size} bytes")
        magic, version, flags, k, id_bits, rice, seed, n, r = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise ArtifactError(f"bad magic {magic!r}, expected {MAGIC!r}")
        if version != VERSION:
            raise ArtifactError(f"unsupported version {version}, expected {VERSION}")
        if flags & FLAG_ENCRYPTED:
            raise ArtifactError(f"encrypted artifacts are not supported in version {VERSION}")
        if flags & ~FLAG_UNSORTED:
            raise ArtifactError(f"unknown flags 0x{flags:02x}")
        if not 1 <= k <= MAX_K:
            raise ArtifactError(f"k must be in [1, {MAX_K}], got {k}")
        if not 1 <= id_bits <= 32:
            raise ArtifactError(f"id_bits must be in [1, 32], got {id_bits}")
        p_first, p_delta = rice >> 4, rice & 0x0F
        if max(p_first, p_delta) > MAX_RICE:
            raise ArtifactError(f"Rice parameters ({p_first}, {p_delta}) must be at most {MAX_RICE}")
        if r > MAX_REQUEST_BYTES:
            raise ArtifactError(f"request of {r} bytes exceeds {MAX_REQUEST_BYTES}")
        if len(data) < _HEADER.size + r:
            raise ArtifactError(f"truncated request: {len(data) - _HEADER.size} of {r} bytes")
        request_json = data[_HEADER.size : _HEADER.size + r]
        payload = data[_HEADER.size + r :]
        # every stream's least size, checked before a large n allocates anything
        least = n * k * (id_bits + 1) + n * (1 + p_first) + n * (k - 1) * p_delta
        if len(payload) * 8 < least:
            raise ArtifactError(f"truncated payload: {len(payload)} bytes for {n} tokens at k={k}")
        reader = _Reader(np.unpackbits(np.frombuffer(payload, dtype=np.uint8)))
        topk_ids = reader.fixed(n * k, id_bits).reshape(n, k)
        index = reader.unary(n)
        if (index > k).any():
            raise ArtifactError(f"output index {int(index.max())} out of range for k={k}")
        escaped = reader.fixed(int((index == k).sum()), id_bits)
        first = reader.rice(n, p_first)
        deltas = reader.rice(n * (k - 1), p_delta)
        if flags & FLAG_UNSORTED:
            deltas = np.where(deltas % 2 == 0, deltas // 2, -(deltas + 1) // 2)
        codes = np.cumsum(np.hstack([first[:, None], deltas.reshape(n, k - 1)]), axis=1)
        if codes.size and (codes.min() < 0 or codes.max() > LP_MAX_CODE):
            raise ArtifactError(f"logprob code out of range [0, {LP_MAX_CODE}]")
        end = -(-reader.offset // 8)
        if len(payload) > end:
            raise ArtifactError(f"{len(payload) - end} trailing bytes after the payload")
        if reader.bits[reader.offset :].any():
            raise ArtifactError("nonzero padding bits")
        output_ids = np.empty(n, dtype=np.int64)
        in_topk = index < k
        output_ids[in_topk] = topk_ids[in_topk, index[in_topk]]
        output_ids[~in_topk] = escaped
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
        if (escaped[:, None] == topk_ids[~in_topk]).any():
            raise ArtifactError("escaped output id is in its top-k")
        if artifact.encode() != data:  # a needless unsorted flag or a Rice parameter not the best
            raise ArtifactError("not the canonical encoding (flags or Rice parameters)")
        return artifact


class _Reader:
    """Consumes the payload bits front to back; running out is a truncated payload."""

    def __init__(self, bits: np.ndarray):
        self.bits = bits
        self.offset = 0

    def _need(self, count: int) -> None:
        if self.offset + count > len(self.bits):
            raise ArtifactError(f"truncated payload: {len(self.bits) // 8} bytes end inside a field")

    def fixed(self, count: int, width: int) -> np.ndarray:
        self._need(count * width)
        chunk = self.bits[self.offset : self.offset + count * width].reshape(count, width).astype(np.int64)
        self.offset += count * width
        return chunk @ (1 << np.arange(width - 1, -1, -1, dtype=np.int64))

    def unary(self, count: int) -> np.ndarray:
        zeros = np.flatnonzero(self.bits[self.offset :] == 0)[:count]
        if len(zeros) < count:
            raise ArtifactError(f"truncated payload: {len(self.bits) // 8} bytes end inside a unary field")
        values = np.diff(zeros, prepend=-1) - 1
        self.offset += int(zeros[-1]) + 1 if count else 0
        return values.astype(np.int64)

    def rice(self, count: int, p: int) -> np.ndarray:
        quotients = self.unary(count)
        return quotients << p | self.fixed(count, p)


def _to_bits(values: np.ndarray, width: int) -> np.ndarray:
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((np.asarray(values, dtype=np.int64)[:, None] >> shifts) & 1).astype(np.uint8).ravel()


def _unary_bits(values: np.ndarray) -> np.ndarray:
    bits = np.ones(int(values.sum()) + len(values), dtype=np.uint8)
    bits[np.cumsum(values + 1) - 1] = 0
    return bits


def _rice_parameter(values: np.ndarray) -> int:
    """The Rice parameter that stores `values` in the fewest bits, the smallest on a tie."""
    # every parameter's size in one pass: argmin takes the first, so the smallest, on a tie
    params = np.arange(MAX_RICE + 1, dtype=np.int64)
    sizes = (values[None, :] >> params[:, None]).sum(axis=1) + len(values) * (1 + params)
    return int(np.argmin(sizes))


def _rice_bits(values: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    return _unary_bits(values >> p), _to_bits(values & ((1 << p) - 1), p)


def bytes_per_token(artifact: Artifact) -> float:
    """Encoded size per output token, header included and the request bytes excluded."""
    return (len(artifact.encode()) - len(artifact.request_json)) / max(1, artifact.n)
