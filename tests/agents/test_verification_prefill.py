"""The validator's prefill over the output positions alone, on the real reference model: the same
rows, bit for bit, as the prefill over every position (what vLLM's prompt_logprobs return)."""

from pathlib import Path

import numpy as np
import pytest

from agents.mlnode.engine import Engine
from agents.verification.sampler import SamplingParams

REF = Path(__file__).resolve().parents[2] / "models" / "ref-tiny"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(REF, threads=1)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_prefill_from_start__equals_the_full_prefill_rows(engine, temperature):
    prompt = engine.tokenizer("def add(a, b):\n    return")["input_ids"]
    gen = engine.generate(prompt, SamplingParams(temperature), 5, 24, 5)
    ids = prompt + gen.output_ids
    full = engine.prefill(ids, 20)
    part = engine.prefill(ids, 20, start=len(prompt))
    rows = slice(len(prompt) - 1, None)
    assert part.topk_ids.shape == (len(gen.output_ids), 20)
    for field in ("topk_ids", "topk_logprobs", "token_logprobs", "token_ranks"):
        assert np.array_equal(getattr(part, field), getattr(full, field)[rows]), field
    assert np.array_equal(part.topk_ids[:, :5], gen.topk_ids)  # the executor's own top-5


@pytest.mark.parametrize("start", [0, 9])
def test_prefill_start_out_of_range__raises(engine, start):
    with pytest.raises(ValueError, match=rf"start must be in \[1, 8\], got {start}"):
        engine.prefill([5] * 8, 3, start=start)
