"""The validator's CPU-bound step, parsing a prefill's `prompt_logprobs` and judging the artifact
against it, run in a worker process of its own.

A validation's parse and checks hold the GIL for tens of milliseconds (orjson parses a 256-token
answer's 6.5 MB of top-256 `prompt_logprobs` in about 40 ms, without releasing it). In a thread of
the node's process that stalls its event loop, and with it the requests the node is serving as
gateway or executor. A process of its own takes that work off the node's GIL; this module imports
only what the step needs, so the worker starts light.
"""

from __future__ import annotations

import asyncio
import importlib
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from agents.node.model_client import PREFILL_TOP, ModelSpec, prompt_logprobs
from agents.verification.artifact import Artifact
from agents.verification.noise import seed_from_inference_id
from agents.verification.validator import PrefillScores, Verdict, validate


def judging_pool() -> ProcessPoolExecutor:
    """One worker, started by `spawn` (forking a process that runs threads is unsafe), with this
    module imported before its first task."""
    return ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"),
                               initializer=importlib.import_module, initargs=(__name__,))


async def in_judging_process(ctx, fn, *args):
    """`fn(*args)` in `ctx.judging`. A worker that died (killed for memory, a crash in native
    code) breaks its pool for good: it is replaced for the next call, and this one raises
    BrokenProcessPool for the caller's retry."""
    pool = ctx.judging
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
    except BrokenProcessPool:
        if ctx.judging is pool:  # not replaced already by a concurrent call
            ctx.judging = judging_pool()
        raise


def verdict_of(raw: bytes, artifact: Artifact, output_ids: list[int], request_hash: bytes,
               completion_tokens: int, inference_id: bytes, spec: ModelSpec) -> Verdict:
    """The verdict on `artifact` from the raw prefill response over prompt + output."""
    scores = PrefillScores.from_prompt_logprobs(prompt_logprobs(raw), output_ids, PREFILL_TOP)
    return validate(artifact, scores, request_hash=request_hash,
                    seed=seed_from_inference_id(inference_id), completion_tokens=completion_tokens,
                    eos_id=spec.eos_token_id, vocab_size=spec.vocab_size)
