"""The vLLM logits processor, driven through a stand-in for vLLM's interface module.

vLLM cannot be installed here (it needs CUDA). `FakeVllm` is a mock of only
`vllm.v1.sample.logits_processor` (BatchUpdate, LogitsProcessor, MoveDirectionality), shaped
after vLLM's documented V1 interface, so the processor's own logic runs for real on CPU tensors.
"""

from __future__ import annotations

import enum
import importlib
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.verification.sampler import SamplingParams, sample_torch

V = 4096


class MoveDirectionality(enum.Enum):
    UNIDIRECTIONAL = enum.auto()
    SWAP = enum.auto()


@dataclass(frozen=True)
class BatchUpdate:
    batch_size: int
    removed: list
    added: list
    moved: list


def vllm_params(temperature=1.0, top_p=1.0, top_k=-1, seed=None):
    """vLLM's SamplingParams as the processor reads it (a mock: four attributes)."""
    return types.SimpleNamespace(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)


@pytest.fixture
def plugin(monkeypatch):
    fake = types.ModuleType("vllm.v1.sample.logits_processor")
    fake.BatchUpdate, fake.MoveDirectionality = BatchUpdate, MoveDirectionality
    fake.LogitsProcessor = type("LogitsProcessor", (), {})
    for name in ("vllm", "vllm.v1", "vllm.v1.sample"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.v1.sample.logits_processor", fake)
    monkeypatch.delitem(sys.modules, "agents.mlnode.vllm_plugin", raising=False)
    module = importlib.import_module("agents.mlnode.vllm_plugin")
    yield module.SeededGumbelProcessor(None, torch.device("cpu"), False)
    sys.modules.pop("agents.mlnode.vllm_plugin", None)


def logits(rows: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).normal(0, 3, (rows, V)).astype(np.float32))


def only_finite(row: torch.Tensor) -> list[int]:
    return torch.nonzero(torch.isfinite(row)).flatten().tolist()


def test_apply__forces_the_cpu_samplers_token_and_leaves_other_rows(plugin):
    warm_out, greedy_out = [11, 12], []
    plugin.update_state(BatchUpdate(3, [], [
        (0, vllm_params(0.8, 0.9, 50, seed=5), [1, 2], warm_out),
        (2, vllm_params(0.0), [3], greedy_out),
    ], []))
    raw = logits(3)
    out = plugin.apply(raw.clone())
    assert only_finite(out[0]) == [sample_torch(raw[0], SamplingParams(0.8, 0.9, 50), 5, 2)]
    assert only_finite(out[2]) == [int(raw[2].argmax())]
    assert torch.equal(out[1], raw[1])  # not a request of ours this step

    warm_out.append(99)  # vLLM appends to the live list: the next step is position 3
    out = plugin.apply(raw.clone())
    assert only_finite(out[0]) == [sample_torch(raw[0], SamplingParams(0.8, 0.9, 50), 5, 3)]


def test_update_state__follows_removes_swaps_and_moves(plugin):
    a, b = vllm_params(seed=1), vllm_params(seed=2)
    plugin.update_state(BatchUpdate(2, [], [(0, a, None, []), (1, b, None, [])], []))
    plugin.update_state(BatchUpdate(2, [], [], [(0, 1, MoveDirectionality.SWAP)]))
    assert [plugin.rows[i][1] for i in (0, 1)] == [2, 1]
    plugin.update_state(BatchUpdate(1, [0], [], [(1, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    assert list(plugin.rows) == [0] and plugin.rows[0][1] == 1
    plugin.update_state(None)
    assert list(plugin.rows) == [0]


def test_validate_params__seed_out_of_range__raises(plugin):
    type(plugin).validate_params(vllm_params(seed=2**64 - 1))
    with pytest.raises(ValueError, match=r"^seed must be in \[0, 2\*\*64\), got -1$"):
        type(plugin).validate_params(vllm_params(seed=-1))
    assert plugin.is_argmax_invariant() is False


def test_apply__reproduces_the_cpu_engine_from_its_raw_logprobs(plugin):
    """Fed the CPU engine's raw logprobs, position by position, the processor picks its tokens."""
    from agents.mlnode.engine import Engine

    engine = Engine.load(Path(__file__).resolve().parents[2] / "models" / "ref-tiny")
    prompt = engine.tokenizer("def main():\n").input_ids
    gen = engine.generate(prompt, SamplingParams(0.9, 0.95, 40), 123, 12, logprobs=V)
    rows = np.take_along_axis(gen.topk_logprobs, np.argsort(gen.topk_ids, axis=1), axis=1)
    output: list[int] = []
    plugin.update_state(BatchUpdate(1, [], [(0, vllm_params(0.9, 0.95, 40, 123), prompt, output)],
                                    []))
    for row in rows:
        output.append(int(plugin.apply(torch.from_numpy(row[None].copy())).argmax()))
    assert output == gen.output_ids
