"""Executor role: run an order from a gateway on the model node, with seeded sampling.

It checks the order (gateway signature and registration, client signature, inference id, that
this node is the drawn executor, once only), streams or returns the answer without the
logprobs it asked for with an ExecutionReceipt naming the artifact in the last chunk (or the
JSON body), then stores the artifact and keeps the answer for its batch's finish
(agents.node.finisher).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import orjson
from eth_utils import keccak
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from agents.artifacts.cid import cid_of, digest_from_cid
from agents.node.chain_view import draw_seed
from agents.node.context import NodeContext, log
from agents.node.errors import ApiError, from_validation
from agents.node.model_client import TOP_K, Generation, generation_call, strip_logprobs
from agents.node.peers import PeerUnreachable
from agents.node.timing import PhaseTimer
from agents.protocol import eip712
from agents.protocol.messages import (H_SERVER_TIMING, RECEIPT_FIELD, ExecuteOrder,
                                      ExecutionReceipt)
from agents.verification.artifact import Artifact
from agents.verification.noise import seed_from_inference_id

MAX_ORDER_BYTES = 1 << 20
BLOCKHASH_WINDOW = 256  # the EVM serves blockhash for the last 256 blocks only


def parse_order(raw: bytes) -> ExecuteOrder:
    if len(raw) > MAX_ORDER_BYTES:
        raise ApiError(413, f"order is {len(raw)} bytes, the limit is {MAX_ORDER_BYTES}",
                       "body_too_large")
    try:
        return ExecuteOrder.model_validate_json(raw)
    except ValidationError as exc:
        raise from_validation(exc) from None


async def check_order(ctx: NodeContext, order: ExecuteOrder) -> bytes:
    """Every check before running anything; returns the inference id. The local checks come first,
    so a forged order costs no chain read."""
    try:
        signer = order.verify()
    except ValueError as exc:
        raise ApiError(401, f"order signature: {exc}", "invalid_signature", "signature") from None
    if signer.lower() != order.gateway.lower():
        raise ApiError(401, f"order is signed by {signer}, not by gateway {order.gateway}",
                       "signature_mismatch", "signature")
    request = order.request
    if request.model != ctx.settings.model:
        raise ApiError(404, f"model '{request.model}' is not served by this executor",
                       "model_not_found", "request.model")
    if request.deadline <= time.time():  # the Ledger would refuse its start: the work would be unpaid
        raise ApiError(400, f"request expired: deadline {request.deadline} has passed",
                       "request_expired", "request.deadline")
    inference_id = eip712.inference_id(request, ctx.domain)
    if order.inference_id.lower() != "0x" + inference_id.hex():
        raise ApiError(400, "inference_id does not match the request", "inference_id_mismatch",
                       "inference_id")
    try:
        client = eip712.recover_client(request, ctx.domain, bytes.fromhex(order.client_signature[2:]))
    except ValueError:
        client = None
    if client is None or client.lower() != request.client.lower():
        raise ApiError(401, f"client signature is not by {request.client}", "signature_mismatch",
                       "client_signature")
    # the gateway's head may be newer than this node's cached one
    head = (await ctx.head(at_least=order.seed_block)).number
    if not head - BLOCKHASH_WINDOW < order.seed_block <= head:
        raise ApiError(400, f"seed block {order.seed_block} is not within the last "
                       f"{BLOCKHASH_WINDOW} blocks (head {head})", "stale_seed_block", "seed_block")
    gateway, drawn = await asyncio.gather(ctx.participant(order.gateway),
                                          drawn_executor(ctx, inference_id, order.seed_block))
    if not gateway.active:
        raise ApiError(403, f"gateway {order.gateway} is not a registered participant",
                       "unknown_gateway", "gateway")
    if drawn.lower() != ctx.address.lower():
        raise ApiError(403, f"this node is not the drawn executor: the draw picks {drawn}",
                       "not_drawn_executor", "seed_block")
    if not ctx.state.claim_execution(inference_id):
        raise ApiError(409, f"inference 0x{inference_id.hex()} was already executed",
                       "already_executed", "inference_id")
    return inference_id


async def drawn_executor(ctx: NodeContext, inference_id: bytes, seed_block: int) -> str:
    """The draw's pick, computed from the cached members when the seed block's hash is known here
    (no chain read); a pick other than this node is confirmed by the chain before a refusal, as
    the cached stakes may predate a change."""
    seed_hash = ctx.chain.known_blockhash(seed_block)
    if seed_hash is not None:
        members = await ctx.members()
        if members.draw(draw_seed(inference_id, seed_hash)).lower() == ctx.address.lower():
            return ctx.address
    return await ctx.read(ctx.chain.draw_executor, ctx.model_id, inference_id, seed_block)


def build_artifact(order: ExecuteOrder, seed: int, gen: Generation) -> bytes:
    # an empty answer still has k columns
    shape = (len(gen.token_ids), TOP_K)
    return Artifact.build(order.request, seed, gen.token_ids,
                          np.asarray(gen.top_ids, dtype=np.int64).reshape(shape),
                          np.asarray(gen.top_logprobs, dtype=np.float64).reshape(shape)).encode()


def record(ctx: NodeContext, inference_id: bytes, artifact: bytes, response_hash: bytes,
           completion_tokens: int, deadline: int) -> None:
    """Store the artifact, then keep the answer for the batch's finish; the order matters: a
    finish must never point at an artifact that was not stored. Blocking."""
    cid = ctx.store.put(artifact)
    ctx.state.save_answer(inference_id, response_hash, digest_from_cid(cid), completion_tokens, deadline)


async def conclude(ctx: NodeContext, order: ExecuteOrder, inference_id: bytes,
                   gen: Generation) -> ExecutionReceipt:
    """Build the artifact and sign the receipt that names it. The two fsynced writes of `record`
    (about 8 ms here) run detached, so the answer leaves without waiting for them and a client
    that hangs up cannot cancel them. A crash before they end loses only this executor's fee:
    without an answer its batch is finished with 0 tokens for it, and the client refunded."""
    response_hash = keccak(text=gen.text)
    artifact = build_artifact(order, seed_from_inference_id(inference_id), gen)
    cid = cid_of(artifact)
    ctx.metrics.completion_tokens.inc(len(gen.token_ids))

    async def write() -> None:
        try:
            await ctx.read(record, ctx, inference_id, artifact, response_hash,
                           len(gen.token_ids), order.request.deadline)
        except Exception:
            log.exception("executor: could not record inference 0x%s; it will be finished unpaid",
                          inference_id.hex())
            return
        log.info("executor: inference 0x%s answered with %d tokens, artifact %s",
                 inference_id.hex(), len(gen.token_ids), cid)

    ctx.spawn(write())
    return ExecutionReceipt(inference_id="0x" + inference_id.hex(), executor=ctx.address,
                            response_hash="0x" + response_hash.hex(), artifact_cid=cid,
                            completion_tokens=len(gen.token_ids)).sign(ctx.account.key)


async def execute(ctx: NodeContext, order: ExecuteOrder, inference_id: bytes,
                  timer: PhaseTimer) -> Response:
    kind = order.request.kind
    path, body = generation_call(order.request, ctx.settings.model,
                                 seed_from_inference_id(inference_id), order.stream)
    url = ctx.settings.mlnode_url.rstrip("/") + path
    gen = Generation()
    try:
        if not order.stream:
            r = await ctx.peers.post(url, body)
            if r.status != 200:
                raise ApiError(502, f"model node failed ({r.status}): {r.text()}", "model_node_error")
            timer.lap("model")
            # orjson: with top-k logprobs at every position, a 256-token answer is about 60 kB of
            # JSON, which the standard library parses and writes several times slower
            payload = orjson.loads(r.content)
            gen.add_choice(kind, payload["choices"][0])
            receipt = await conclude(ctx, order, inference_id, gen)
            timer.lap("receipt")
            payload = strip_logprobs(payload)
            payload[RECEIPT_FIELD] = receipt.model_dump(mode="json")
            return Response(orjson.dumps(payload), media_type="application/json",
                            headers={H_SERVER_TIMING: timer.header()})
        upstream = await ctx.peers.open_stream(url, body)
    except PeerUnreachable as exc:
        raise ApiError(502, f"model node unreachable: {exc}", "model_node_unreachable") from None
    if upstream.status != 200:
        text = (await upstream.read())[:300].decode(errors="replace")
        upstream.release()
        raise ApiError(502, f"model node failed ({upstream.status}): {text}", "model_node_error")

    async def relay():
        try:
            async for line in upstream.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = orjson.loads(data)
                if chunk.get("choices"):
                    gen.add_choice(kind, chunk["choices"][0])
                yield b"data: " + orjson.dumps(strip_logprobs(chunk)) + b"\n\n"
        finally:
            upstream.release()
        timer.lap("model")
        receipt = await conclude(ctx, order, inference_id, gen)
        timer.lap("receipt")
        # shaped like OpenAI's usage chunk (no choices) so SDKs pass it through
        final = {"object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                 "choices": [], RECEIPT_FIELD: receipt.model_dump(mode="json")}
        yield b"data: " + orjson.dumps(final) + b"\n\n"
        yield b"data: [DONE]\n\n"

    # the header leaves before the answer, so it holds the checks only; /metrics has the rest
    return StreamingResponse(relay(), media_type="text/event-stream",
                             headers={H_SERVER_TIMING: timer.header()})


router = APIRouter()


@router.post("/nullius/v1/execute")
async def execute_route(http_request: Request) -> Response:
    ctx: NodeContext = http_request.app.state.ctx
    ctx.metrics.requests.labels("executor").inc()
    timer = PhaseTimer(ctx.metrics.phase_seconds, "executor")
    try:
        order = parse_order(await http_request.body())
        inference_id = await check_order(ctx, order)
        timer.lap("check")
        return await execute(ctx, order, inference_id, timer)
    except ApiError as exc:
        ctx.metrics.errors.labels("executor", exc.code).inc()
        raise
