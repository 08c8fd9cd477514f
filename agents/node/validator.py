"""Validator role: check the inferences the chain assigns to this node, and sit on juries.

Validation. On a `Finished` event it waits for the block after the finish (the assignment's
randomness) and asks `ledger.validatorsOf(record, proof)`: one validator, or 1 + quorum when the client
paid for more. If this node is one of them it gets the artifact by CID from its own store or the
executor's /ipfs route (trusting neither: the bytes must hash to the digest on chain), checks the
request against the hash on chain, tokenizes the prompt, runs one teacher-forced prefill on its own
model node, and queues the verdict.

Jury duty. A failed verdict opens a dispute; its jury is drawn from the hash of the block after it
opened. On `DisputeOpened` a node that is neither the executor nor the accuser waits for that block,
reads `juryOf`, and if it was drawn runs the same check and votes valid or invalid before the
deadline.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.artifacts.cid import cid_from_digest
from agents.artifacts.fetch import fetch_artifact
from agents.artifacts.store import ArtifactError
from agents.node.chain_view import DISPUTED, FINISHED, VALIDATED, ZERO_ADDRESS, InferenceInfo
from agents.node.context import NodeContext, log
from agents.node.judging import in_judging_process, verdict_of
from agents.node.model_client import model_spec, prefill, tokenize
from agents.verification.artifact import Artifact, ArtifactError as FormatError
from agents.verification.validator import precheck

ROLE, JURY = "validate", "vote"
MAX_LOGGED_FAULTS = 10
# blocks before a window closes from which a missing artifact is the executor's fault: the verdict
# or vote still needs a block or two to land
LAST_CALL = 2
# statuses in which a verdict is still accepted (another validator's failed verdict opens a
# dispute, but the other validators of a quorum may still submit theirs)
OPEN_FOR_VERDICTS = (FINISHED, VALIDATED, DISPUTED)


@dataclass(frozen=True)
class Outcome:
    passed: bool
    score: int
    faults: tuple[str, ...]  # "<position or artifact> <kind>: <detail>"


def describe(fault) -> str:
    where = "artifact" if fault.position is None else f"position {fault.position}"
    return f"{where} {fault.kind}: {fault.detail}"


def _hex(inference_id: bytes) -> str:
    return "0x" + inference_id.hex()


def _is(a: str, b: str) -> bool:
    return a.lower() == b.lower()


# ------------------------------------------------------------------------------ validation

def on_finished(ctx: NodeContext, inference_id: bytes, executor: str, block: int) -> None:
    """A finish was mined in `block`: the Ledger reveals the assignment, drawn from the hash of
    block + 1, once a later block exists."""
    if not _is(executor, ctx.address):
        ctx.state.watch(ROLE, inference_id, block + 2)


async def tick(ctx: NodeContext, head: int, window: int) -> None:
    for inference_id in ctx.state.due(ROLE, head):
        try:
            await judge(ctx, inference_id, head, window)
        except Exception:  # one inference's trouble (its own model node down) must not stall the rest
            log.exception("validator: checking %s failed; retrying next tick", _hex(inference_id))


async def judge(ctx: NodeContext, inference_id: bytes, head: int, window: int) -> None:
    info = await ctx.read(ctx.chain.inference, inference_id)
    if info.status not in OPEN_FOR_VERDICTS or head > info.finish_block + window:
        ctx.state.unwatch(ROLE, inference_id)  # decided already, or too late for a verdict
        return
    validators = await ctx.read(ctx.chain.validators_of, info.record, info.proof)
    slot = next((k for k, v in enumerate(validators) if _is(v, ctx.address)), None)
    if slot is None or (await ctx.read(ctx.chain.state, info.batch.number, inference_id)).voted_mask >> slot & 1:
        ctx.state.unwatch(ROLE, inference_id)  # not assigned, or its verdict is in already
        return
    outcome = await outcome_or_wait(ctx, inference_id, info, head, info.finish_block + window)
    if outcome is None:
        return
    ctx.outbox.enqueue(ROLE, _hex(inference_id),
                       [info.record.as_tuple(), list(info.proof), outcome.passed, outcome.score])
    ctx.state.unwatch(ROLE, inference_id)
    ctx.metrics.verdicts.labels(str(outcome.passed).lower()).inc()
    log.info("validator: %s %s, score %d%s", _hex(inference_id),
             "passed" if outcome.passed else "FAILED", outcome.score, _faults(outcome))


# ------------------------------------------------------------------------------ jury duty

def on_dispute_opened(ctx: NodeContext, inference_id: bytes, executor: str, accuser: str,
                      block: int) -> None:
    """A dispute opened in `block`: its jury is drawn from the hash of block + 1, never from the
    executor or the accuser."""
    if not (_is(executor, ctx.address) or _is(accuser, ctx.address)):
        ctx.state.watch(JURY, inference_id, block + 2)


async def jury_tick(ctx: NodeContext, head: int, jury_window: int) -> None:
    for inference_id in ctx.state.due(JURY, head):
        try:
            await sit(ctx, inference_id, head, jury_window)
        except Exception:
            log.exception("juror: checking %s failed; retrying next tick", _hex(inference_id))


async def sit(ctx: NodeContext, inference_id: bytes, head: int, jury_window: int) -> None:
    dispute = await ctx.read(ctx.chain.dispute, inference_id)
    deadline = dispute.opened_block + 1 + jury_window
    if not dispute.open or head > deadline:
        ctx.state.unwatch(JURY, inference_id)
        return
    jury = await ctx.read(ctx.chain.jury_of, inference_id)
    seat = next((k for k, juror in enumerate(jury) if _is(juror, ctx.address)), None)
    if seat is None or dispute.voted_mask >> seat & 1:
        ctx.state.unwatch(JURY, inference_id)  # not drawn, or voted already
        return
    info = await ctx.read(ctx.chain.inference, inference_id)
    outcome = await outcome_or_wait(ctx, inference_id, info, head, deadline)
    if outcome is None:
        return
    ctx.outbox.enqueue(JURY, _hex(inference_id), [_hex(inference_id), outcome.passed])
    ctx.state.unwatch(JURY, inference_id)
    ctx.metrics.verdicts.labels(str(outcome.passed).lower()).inc()
    log.info("juror: %s voted %s, score %d%s", _hex(inference_id),
             "valid" if outcome.passed else "INVALID", outcome.score, _faults(outcome))


# ------------------------------------------------------------------------------ the check

async def outcome_or_wait(ctx: NodeContext, inference_id: bytes, info: InferenceInfo, head: int,
                          last_block: int) -> Outcome | None:
    """The check's outcome; None while the artifact is missing and there is time to retry. Still
    missing as the window closes, it is the executor's fault."""
    try:
        return await check(ctx, inference_id, info)
    except ArtifactError as exc:
        if head < last_block - LAST_CALL:
            log.warning("validator: %s artifact not available yet: %s", _hex(inference_id), exc)
            return None
        return Outcome(False, 0, (f"artifact unavailable: {exc}",))


def _faults(outcome: Outcome) -> str:
    if not outcome.faults:
        return ""
    return f"; {len(outcome.faults)} faults: " + "; ".join(outcome.faults[:MAX_LOGGED_FAULTS])


async def check(ctx: NodeContext, inference_id: bytes, info: InferenceInfo) -> Outcome:
    """The verdict on a finished inference; raises ArtifactError when no source has the artifact."""
    data = await get_artifact(ctx, cid_from_digest(info.artifact_digest), info.executor)
    try:
        artifact = Artifact.decode(data)
    except FormatError as exc:
        return Outcome(False, 0, (f"artifact does not decode: {exc}",))
    s = ctx.settings
    spec = await model_spec(ctx.http, s.mlnode_url, s.model_eos_token_id, s.model_vocab_size)
    faults = precheck(artifact, info.request_hash, spec.vocab_size)
    if faults:  # a wrong request or ids outside the vocabulary: no prefill needed
        return Outcome(False, 0, tuple(map(describe, faults)))
    request = artifact.request()
    prompt_ids = await tokenize(ctx.http, s.mlnode_url, request, s.model)
    output_ids = [int(t) for t in artifact.output_ids]
    raw = await prefill(ctx.http, s.mlnode_url, s.model, prompt_ids + output_ids)
    # parsing and judging are pure CPU: in the judging process, so the node's requests keep flowing
    verdict = await in_judging_process(ctx, verdict_of, raw, artifact, output_ids, info.request_hash,
                                       info.completion_tokens, inference_id, spec)
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
