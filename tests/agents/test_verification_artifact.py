"""The artifact format: round trip, determinism, size, and every malformed input."""

import struct

import numpy as np
import pytest
from eth_utils import keccak

from agents.protocol.requests import InferenceRequest
from agents.verification import artifact
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
    # uniform output indices and exponential gaps of mean 2 nats: costlier than a real top-5
    assert bytes_per_token(make(n=256, escaped=range(0, 256, 10))) == pytest.approx(13.41, abs=0.01)
    assert bytes_per_token(make(n=256, escaped=())) == pytest.approx(13.22, abs=0.01)
    assert bytes_per_token(make(n=16, escaped=(3,))) <= 16.0


def test_rice_parameters__the_smallest_encoding_wins():
    a = make(n=64, escaped=())
    p_first, p_delta = a.encode()[8] >> 4, a.encode()[8] & 0x0F
    assert (p_first, p_delta) == (_best_rice(a, 0), _best_rice(a, 1))
    assert 0 <= p_first <= 12 and 0 <= p_delta <= 12


def test_rice_parameter__ties_go_to_the_smallest_and_empty_streams_take_0():
    # [1] costs 2 bits at p = 0 (unary 1, stop) and 2 at p = 1 (stop, one bit)
    assert artifact._rice_parameter(np.array([1], dtype=np.int64)) == 0
    assert artifact._rice_parameter(np.array([3, 3], dtype=np.int64)) == 1  # 8 bits at 0, 6 at 1, 6 at 2
    assert artifact._rice_parameter(np.array([], dtype=np.int64)) == 0


def _best_rice(a: Artifact, stream: int) -> int:
    codes = np.rint(-a.topk_logprobs * 128).astype(np.int64)
    values = codes[:, 0] if stream == 0 else np.diff(codes, axis=1).ravel()
    sizes = [int((values >> p).sum()) + len(values) * (1 + p) for p in range(13)]
    return sizes.index(min(sizes))


def test_unsorted_logprobs__round_trip_with_the_flag():
    a = make(n=8, escaped=())
    lps = a.topk_logprobs.copy()
    lps[2, [0, 3]] = lps[2, [3, 0]]  # an executor may publish any order; the validator faults it
    b = Artifact.build(REQUEST, 1, a.output_ids, a.topk_ids, lps)
    data = b.encode()
    assert data[5] == 0x02 and a.encode()[5] == 0
    assert np.array_equal(Artifact.decode(data).topk_logprobs, lps)


def test_empty_output__round_trips():
    a = Artifact.build(REQUEST, 0, [], np.zeros((0, 5), int), np.zeros((0, 5)))
    assert Artifact.decode(a.encode()) == a


def test_k1__round_trips():
    a = Artifact.build(REQUEST, 5, [3, 9], [[3], [4]], [[-0.1], [-2.0]])
    assert Artifact.decode(a.encode()) == a


FIELDS = ["magic", "version", "flags", "k", "id_bits", "rice", "seed", "n", "r"]


def _header(data: bytes, **changes) -> bytes:
    fields = dict(zip(FIELDS, struct.unpack_from(">4sBBBBBQII", data)))
    fields.update(changes)
    return struct.pack(">4sBBBBBQII", *fields.values()) + data[25:]


def _payload(data: bytes, a: Artifact) -> bytes:
    return data[25 + len(a.request_json):]


SAMPLE = make(n=64, escaped=())


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d[:10], "truncated header: 10 of 25 bytes"),
        (lambda d: _header(d, magic=b"NULX"), "bad magic b'NULX', expected b'NULA'"),
        (lambda d: _header(d, version=1), "unsupported version 1, expected 2"),
        (lambda d: _header(d, flags=1), "encrypted artifacts are not supported in version 2"),
        (lambda d: _header(d, flags=4), "unknown flags 0x04"),
        (lambda d: _header(d, k=0), r"k must be in \[1, 64\], got 0"),
        (lambda d: _header(d, id_bits=33), r"id_bits must be in \[1, 32\], got 33"),
        (lambda d: _header(d, rice=0xD0), r"Rice parameters \(13, 0\) must be at most 12"),
        (lambda d: _header(d, r=1 << 23), "request of 8388608 bytes exceeds 4194304"),
        (lambda d: d[:100], r"truncated request: 75 of \d+ bytes"),
        (lambda d: d[:-300], r"truncated payload: \d+ bytes for 64 tokens at k=5"),
        (lambda d: d[:-20], "truncated payload: 816 bytes end inside a field"),
        (lambda d: d + b"\x00", "1 trailing bytes after the payload"),
        (lambda d: _header(d, n=1 << 30), r"truncated payload: \d+ bytes for 1073741824 tokens at k=5"),
        # a wrong width or k misreads the streams: some check downstream trips
        (lambda d: _header(d, id_bits=13), "output index 6 out of range for k=5"),
        (lambda d: _header(d, k=4), "161 trailing bytes after the payload"),
        (lambda d: d[:-1] + bytes([d[-1] | 1]), "nonzero padding bits"),
    ],
)
def test_decode__malformed__raises_naming_the_problem(mutate, message):
    data = SAMPLE.encode() if "padding" not in message else make(n=63, escaped=()).encode()
    with pytest.raises(ArtifactError, match=message):
        Artifact.decode(mutate(data))


def test_decode__output_index_past_k__raises():
    # a one-token artifact whose index reads k + 1 = six one-bits then a zero
    a = Artifact.build(REQUEST, 1, [3], [[3, 4, 5, 6, 7]], [[-0.1, -1, -2, -3, -4]])
    data = a.encode()
    bits = np.unpackbits(np.frombuffer(_payload(data, a), np.uint8))
    forged = np.concatenate([bits[:5 * 3], [1] * 6, bits[5 * 3:]])  # ids are 3 bits wide
    payload = np.packbits(forged[: len(forged) - len(forged) % 8 + (8 if len(forged) % 8 else 0)]).tobytes()
    with pytest.raises(ArtifactError, match="output index 6 out of range for k=5"):
        Artifact.decode(data[: 25 + len(a.request_json)] + payload)


def _encode_with(a: Artifact, p_first: int, p_delta: int, flags: int = 0) -> bytes:
    """`Artifact.encode` with chosen Rice parameters and flags: a second encoding of the content."""
    hits = a.topk_ids == a.output_ids[:, None]
    index = np.where(hits.any(axis=1), hits.argmax(axis=1), a.k)
    codes = np.rint(-a.topk_logprobs * 128).astype(np.int64)
    deltas = np.diff(codes, axis=1).ravel()
    if flags & 2:
        deltas = np.where(deltas >= 0, 2 * deltas, -2 * deltas - 1)
    bits = np.concatenate([
        artifact._to_bits(a.topk_ids.ravel(), a.id_bits), artifact._unary_bits(index),
        artifact._to_bits(a.output_ids[index == a.k], a.id_bits),
        *artifact._rice_bits(codes[:, 0], p_first), *artifact._rice_bits(deltas, p_delta),
    ])
    head = struct.pack(">4sBBBBBQII", b"NULA", 2, flags, a.k, a.id_bits, p_first << 4 | p_delta, a.seed, a.n,
                       len(a.request_json))
    return head + a.request_json + np.packbits(bits).tobytes()


def test_decode__second_encoding_of_the_same_content__raises():
    a = make(n=64, escaped=(5,))
    data = a.encode()
    best = (data[8] >> 4, data[8] & 0x0F)
    assert _encode_with(a, *best) == data  # the helper is the encoder
    for forged in (_encode_with(a, best[0] + 1, best[1]), _encode_with(a, best[0], best[1] - 1),
                   _encode_with(a, *best, flags=2)):
        with pytest.raises(ArtifactError, match=r"not the canonical encoding \(flags or Rice parameters\)"):
            Artifact.decode(forged)  # the same content, but only one byte string is accepted


def test_decode__unary_field_without_its_end__raises():
    a = Artifact.build(REQUEST, 1, [3], [[3, 4, 5, 6, 7]], [[0.0] * 5])
    bits = np.concatenate([artifact._to_bits(a.topk_ids.ravel(), 3), np.ones(9, np.uint8)])
    head = struct.pack(">4sBBBBBQII", b"NULA", 2, 0, 5, 3, 0, 1, 1, len(a.request_json))
    with pytest.raises(ArtifactError, match="truncated payload: 3 bytes end inside a unary field"):
        Artifact.decode(head + a.request_json + np.packbits(bits).tobytes())


def test_decode__logprob_code_out_of_range__raises():
    a = Artifact.build(REQUEST, 1, [3], [[3, 4, 5, 6, 7]], [[0.0] * 5])
    # ids 3..7 in 3 bits; index '0'; first code 0 with p = 0: '0'; then zigzag deltas with
    # p = 0: '10' (zigzag 1 = -1, a code below 0) and three '0'
    bits = np.concatenate([artifact._to_bits(a.topk_ids.ravel(), 3), [0, 0, 1, 0, 0, 0, 0, 0, 0]])
    head = struct.pack(">4sBBBBBQII", b"NULA", 2, 2, 5, 3, 0, 1, 1, len(a.request_json))
    with pytest.raises(ArtifactError, match=r"logprob code out of range \[0, 4095\]"):
        Artifact.decode(head + a.request_json + np.packbits(bits.astype(np.uint8)).tobytes())


def test_decode__request_not_canonical__raises():
    a = make()
    spaced = a.request_json.replace(b'"model":', b'"model": ')
    data = _header(a.encode(), r=len(spaced))
    data = data[:25] + spaced + data[25 + len(a.request_json):]
    with pytest.raises(ArtifactError, match="request bytes are not canonical JSON"):
        Artifact.decode(data)


def test_decode__request_invalid__raises():
    a = make()
    bad = a.request_json.replace(b'"max_tokens":256', b'"max_tokens":-1')
    data = a.encode()
    with pytest.raises(ArtifactError, match="invalid request: max_tokens: Input should be greater than or equal to 1"):
        Artifact.decode(_header(data, r=len(bad))[:25] + bad + data[25 + len(a.request_json):])


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
    bits = np.unpackbits(np.frombuffer(data[25 + len(narrow.request_json):], np.uint8))
    k = 5
    ids_bits = bits[: k * 11].reshape(k, 11)
    widened = np.concatenate([np.hstack([np.zeros((k, 1), np.uint8), ids_bits]).ravel(), bits[k * 11 :]])
    payload = np.packbits(widened).tobytes()
    forged = _header(data, id_bits=12)[: 25 + len(narrow.request_json)] + payload
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
