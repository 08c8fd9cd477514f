"""The artifact format: round trip, determinism, size, and every malformed input."""

import struct

import numpy as np
import pytest
from eth_utils import keccak

from agents.protocol.requests import InferenceRequest
from agents.verification.artifact import (
    LP_FLOOR,
    LP_QUANT_ERROR,
    Artifact,
    ArtifactError,
    bytes_per_token,
)

REQUEST = InferenceRequest(
    model="nullius/ref-tiny", prompt="def add(a, b):", max_tokens=256, temperature=0.7,
    max_price=10, nonce=3, deadline=1_900_000_000, client="0x" + "Ab" * 20,
)


def make(n=64, k=5, vocab=4096, seed=99, escaped=(3,)) -> Artifact:
    rng = np.random.default_rng(n * 31 + k)
    ids = np.array([rng.choice(vocab, k, replace=False) for _ in range(n)])
    lps = -np.sort(rng.exponential(2.0, (n, k)), axis=1)
    out = ids[np.arange(n), rng.integers(0, k, n)]
    for t in escaped:
        out[t] = next(i for i in range(vocab) if i not in ids[t])
    return Artifact.build(REQUEST, seed, out, ids, lps)


def test_round_trip__same_content_same_bytes():
    a = make()
    data = a.encode()
    b = Artifact.decode(data)
    assert b == a and b.encode() == data
    assert b.seed == 99 and b.k == 5 and b.n == 64
    assert np.array_equal(b.output_ids, a.output_ids) and np.array_equal(b.topk_ids, a.topk_ids)
    assert np.array_equal(b.topk_logprobs, a.topk_logprobs)
    assert b.request() == REQUEST.model_copy(update={"client": REQUEST.client.lower()})
    assert keccak(b.request_json) == REQUEST.request_hash
    assert make().encode() == data  # built twice from the same content


def test_quantization__error_at_most_half_a_step_and_floor():
    raw = np.array([[0.0, -0.1234567, -5.5, -31.99, -80.0]])
    a = Artifact.build(REQUEST, 1, [7], [[1, 2, 3, 4, 7]], raw)
    assert np.abs(a.topk_logprobs[0, :4] - raw[0, :4]).max() <= LP_QUANT_ERROR
    assert a.topk_logprobs[0, 4] == LP_FLOOR
    assert LP_FLOOR == -4095 / 128


def test_size__within_16_bytes_per_token_at_k5_vocab_4096():
    a = make(n=256, escaped=range(0, 256, 10))
    assert bytes_per_token(a) <= 16.0
    assert bytes_per_token(make(n=256, escaped=())) == pytest.approx(15.47, abs=0.01)


def test_empty_output__round_trips():
    a = Artifact.build(REQUEST, 0, [], np.zeros((0, 5), int), np.zeros((0, 5)))
    assert Artifact.decode(a.encode()) == a


def _header(data: bytes, **changes) -> bytes:
    fields = dict(zip(["magic", "version", "flags", "k", "id_bits", "seed", "n", "r"], struct.unpack_from(">4sBBBBQII", data)))
    fields.update(changes)
    return struct.pack(">4sBBBBQII", *fields.values()) + data[24:]


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d[:10], "truncated header: 10 of 24 bytes"),
        (lambda d: _header(d, magic=b"NULX"), "bad magic b'NULX', expected b'NULA'"),
        (lambda d: _header(d, version=2), "unsupported version 2, expected 1"),
        (lambda d: _header(d, flags=1), "encrypted artifacts are not supported in version 1"),
        (lambda d: _header(d, flags=4), "unknown flags 0x04"),
        (lambda d: _header(d, k=0), r"k must be in \[1, 64\], got 0"),
        (lambda d: _header(d, id_bits=33), r"id_bits must be in \[1, 32\], got 33"),
        (lambda d: _header(d, r=1 << 23), "request of 8388608 bytes exceeds 4194304"),
        (lambda d: d[:100], r"truncated request: 76 of \d+ bytes"),
        (lambda d: d[:-30], "truncated payload: "),
        (lambda d: d[:-1], "truncated payload: 983 bytes for 64 tokens at k=5"),
        (lambda d: d + b"\x00", "1 trailing bytes after the payload"),
        (lambda d: _header(d, n=65), "truncated payload: "),
        (lambda d: _header(d, n=63), r"output index \d+ out of range for k=5"),
        (lambda d: _header(d, id_bits=13), "truncated payload"),
        (lambda d: _header(d, k=4), r"output index \d+ out of range for k=4"),
        (lambda d: d[:-1] + bytes([d[-1] | 1]), "nonzero padding bits"),
    ],
)
def test_decode__malformed__raises_naming_the_problem(mutate, message):
    data = make(n=64, escaped=()).encode()  # 123 bits per token: 7872 bits, so no padding
    data = make(n=63, escaped=()).encode() if "padding" in message else data
    with pytest.raises(ArtifactError, match=message):
        Artifact.decode(mutate(data))


def test_decode__request_not_canonical__raises():
    a = make()
    spaced = a.request_json.replace(b'"model":', b'"model": ')
    data = _header(a.encode(), r=len(spaced))
    data = data[:24] + spaced + data[24 + len(a.request_json):]
    with pytest.raises(ArtifactError, match="request bytes are not canonical JSON"):
        Artifact.decode(data)


def test_decode__request_invalid__raises():
    a = make()
    bad = a.request_json.replace(b'"max_tokens":256', b'"max_tokens":-1')
    data = a.encode()
    with pytest.raises(ArtifactError, match="invalid request: max_tokens: Input should be greater than or equal to 1"):
        Artifact.decode(_header(data, r=len(bad))[:24] + bad + data[24 + len(a.request_json):])


def test_decode__more_tokens_than_max_tokens__raises():
    short = REQUEST.model_copy(update={"max_tokens": 8})
    a = make(n=8)
    assert Artifact.build(short, 1, a.output_ids, a.topk_ids, a.topk_logprobs).n == 8
    with pytest.raises(ArtifactError, match="9 output tokens exceed max_tokens 8"):
        Artifact.build(short, 1, make(n=9).output_ids, make(n=9).topk_ids, make(n=9).topk_logprobs)


def test_decode__non_minimal_or_escaped_in_topk__raises():
    a = make(n=1, escaped=())
    ids = a.topk_ids.copy()
    ids[0, 0] = 4095  # a 12-bit id; then shrink it to fit 11 bits but keep id_bits = 12
    wide = Artifact.build(REQUEST, 1, ids[:, 1], ids, a.topk_logprobs)
    narrow = Artifact.build(REQUEST, 1, ids[:, 1] % 2048, ids % 2048, a.topk_logprobs)
    assert narrow.id_bits == 11 and wide.id_bits == 12
    # re-encode the narrow content with 12-bit ids: same content, second encoding
    data = narrow.encode()
    bits = np.unpackbits(np.frombuffer(data[24 + len(narrow.request_json):], np.uint8))
    k = 5
    ids_bits = bits[: k * 11].reshape(k, 11)
    widened = np.concatenate([np.hstack([np.zeros((k, 1), np.uint8), ids_bits]).ravel(), bits[k * 11 :]])
    payload = np.packbits(widened).tobytes()
    forged = _header(data, id_bits=12)[: 24 + len(narrow.request_json)] + payload
    with pytest.raises(ArtifactError, match="id_bits 12 is not minimal"):
        Artifact.decode(forged)


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: Artifact.build(REQUEST, 1, [1], [[1, 2, 2, 3, 4]], [[-1] * 5]), "duplicate id in the top-k at position 0"),
        (lambda: Artifact.build(REQUEST, 1, [1], [[1, 2, 3, 4, 5]], [[0.5] + [-1] * 4]), "top-k logprobs must be <= 0"),
        (lambda: Artifact.build(REQUEST, 1, [1], [[1, 2, 3, 4, 5]], [[np.nan] * 5]), "top-k logprobs contain NaN"),
        (lambda: Artifact.build(REQUEST, 1, [1, 2], [[1, 2, 3, 4, 5]], [[-1] * 5]), r"top-k ids must have shape \(n=2, k\)"),
        (lambda: Artifact.build(REQUEST, 1, [1], [[1, 2, 3, 4, 5]], [[-1] * 4]), "top-k logprobs shape"),
        (lambda: Artifact.build(REQUEST, 2**64, [1], [[1, 2, 3, 4, 5]], [[-1] * 5]), r"seed must be in \[0, 2\*\*64\)"),
        (lambda: Artifact.build(REQUEST, 1, [-1], [[1, 2, 3, 4, 5]], [[-1] * 5]), r"output ids must be in \[0, 2\*\*32\)"),
        (lambda: Artifact(b"{}", 1, np.array([1]), np.array([[1]]), np.array([[-0.3]])), "not quantized"),
    ],
)
def test_build__inconsistent_content__raises(build, message):
    with pytest.raises(ArtifactError, match=message):
        build()
