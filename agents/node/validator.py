"""Validator role: check the inferences the chain assigns to this node, with one prefill each.

On a `Finished` event it waits for the block after the finish (the assignment's randomness),
asks `ledger.validatorOf`, and if it is this node: gets the artifact by CID from its own store or
the executor's /ipfs route (trusting neither: the bytes must hash to the digest on chain), checks
the request against the hash on chain, tokenizes the prompt and runs one teacher-forced prefill on
its own model node, and queues the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.artifacts.cid import cid_from_digest
from agents.artifacts.fetch import fetch_artifact
from agents.artifacts.store import ArtifactError
from agents.node.chain_view import FINISHED, ZERO_ADDRESS, InferenceInfo
from agents.node.context import NodeContext, log
from agents.node.model_client import PREFILL_TOP, model_spec, prefill, tokenize
from agents.verification.artifact import Artifact, ArtifactError as FormatError
from agents.verification.noise import seed_from_inference_id
from agents.verification.validator import PrefillScores, precheck, validate

ROLE = "validate"
MAX_LOGGED_FAULTS = 10


@dataclass(frozen=True)
class Outcome:
    passed: bool
    score: int
    faults: tuple[str, ...]  # "<position or artifact> <kind>: <detail>"


def describe(fault) -> str:
    where = "artifact" if fault.position is None else f"position {fault.position}"
    return f"{where} {fault.kind}: {fault.detail}"


def on_finished(ctx: NodeContext, inference_id: bytes, executor: str, block: int) -> None:
    """A finish was mined in `block`: the Ledger reveals the assignment, drawn from the hash of
    block + 1, once a later block exists."""
    if executor.lower() != ctx.address.lower():
        ctx.state.watch(ROLE, inference_id, block + 2)


async def tick(ctx: NodeContext, head: int, window: int) -> None:
    for inference_id in ctx.state.due(ROLE, head):
        try:
            await judge(ctx, inference_id, head, window)
        except Exception:  # one inference's trouble (its own model node down) must not stall the rest
            log.exception("validator: checking 0x%s failed; retrying next tick", inference_id.hex())


async def judge(ctx: NodeContext, inference_id: bytes, head: int, window: int) -> None:
    if (await ctx.read(ctx.chain.validator_of, inference_id)).lower() != ctx.address.lower():
        ctx.state.unwatch(ROLE, inference_id)
        return
    info = await ctx.read(ctx.chain.inference, inference_id)
    if info.status != FINISHED or head > info.finish_block + window:
        # decided already, or too late for a verdict: the keeper settles it
        ctx.state.unwatch(ROLE, inference_id)
        return
    try:
        outcome = await check(ctx, inference_id, info)
    except ArtifactError as exc:
        # retried every tick; still missing as the window closes (two blocks left for the
        # verdict to land), it is the executor's fault
        if head < info.finish_block + window - 2:
            log.warning("validator: 0x%s artifact not available yet: %s", inference_id.hex(), exc)
            return
        outcome = Outcome(False, 0, (f"artifact unavailable: {exc}",))
    ctx.outbox.enqueue(ROLE, "0x" + inference_id.hex(),
                       ["0x" + inference_id.hex(), outcome.passed, outcome.score])
    ctx.state.unwatch(ROLE, inference_id)
    ctx.metrics.verdicts.labels(str(outcome.passed).lower()).inc()
    detail = ""
    if outcome.faults:
        detail = f"; {len(outcome.faults)} faults: " + "; ".join(outcome.faults[:MAX_LOGGED_FAULTS])
    log.info("validator: 0x%s %s, score %d%s", inference_id.hex(),
             "passed" if outcome.passed else "FAILED", outcome.score, detail)


async def check(ctx: NodeContext, inference_id: bytes, info: InferenceInfo) -> Outcome:
    """The verdict on a finished inference; raises ArtifactError when no source has the artifact."""
    data = await get_artifact(ctx, cid_from_digest(info.artifact_digest), info.executor)
    try:
        artifact = Artifact.decode(data)
    except FormatError as exc:
        return Outcome(False, 0, (f"artifact does not decode: {exc}",))
    spec = await model_spec(ctx.http, ctx.settings.mlnode_url)
    faults = precheck(artifact, info.request_hash, spec.vocab_size)
    if faults:  # a wrong request or ids outside the vocabulary: no prefill needed
        return Outcome(False, 0, tuple(map(describe, faults)))
    request = artifact.request()
    prompt_ids = await tokenize(ctx.http, ctx.settings.mlnode_url, request, ctx.settings.model)
    output_ids = [int(t) for t in artifact.output_ids]
    raw = await prefill(ctx.http, ctx.settings.mlnode_url, ctx.settings.model, prompt_ids + output_ids)
    scores = PrefillScores.from_prompt_logprobs(raw, output_ids, PREFILL_TOP)
    verdict = validate(artifact, scores, request_hash=info.request_hash,
                       seed=seed_from_inference_id(inference_id),
                       completion_tokens=info.completion_tokens, eos_id=spec.eos_token_id,
                       vocab_size=spec.vocab_size)
    return Outcome(verdict.passed, int(verdict.score), tuple(map(describe, verdict.faults)))


async def get_artifact(ctx: NodeContext, cid: str, executor: str) -> bytes:
    """From this node's store, else from the executor and the configured gateways, verified."""
    try:
        return await ctx.read(ctx.store.get, cid)
    except ArtifactError:
        pass
    sources = list(ctx.settings.artifact_gateways)
    if executor != ZERO_ADDRESS:
        sources.insert(0, (await ctx.read(ctx.chain.participant, executor)).url)
    return await fetch_artifact(cid, sources, client=ctx.http)
