"""Gateway role: the public OpenAI-compatible API.

It rebuilds the signed InferenceRequest from the OpenAI body and the X-Nullius-* headers, admits
it (signature, deadline, nonce, escrow, model, limits), draws the executor exactly as the Ledger
will, forwards a signed ExecuteOrder and, at the same time, queues `start` in the outbox. Every
refusal happens before anything is recorded or queued.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from eth_utils import to_checksum_address
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from agents.chain.client import ChainUnavailable
from agents.node.chain_view import ZERO_ADDRESS, AdmissionReads, Head, draw_seed
from agents.node.context import NodeContext, log
from agents.node.errors import ApiError, from_validation
from agents.node.peers import PeerUnreachable
from agents.node.timing import PhaseTimer
from agents.protocol import eip712
from agents.protocol.messages import (
    H_CLIENT, H_DEADLINE, H_EXECUTOR, H_INFERENCE_ID, H_MAX_PRICE, H_NONCE, H_QUORUM,
    H_SERVER_TIMING, H_SIGNATURE, ExecuteOrder, RequestMappingError, request_from_openai,
)
from agents.protocol.requests import InferenceRequest

# An OpenAI body is small; anything far beyond the prompt limit is refused before parsing.
MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Auth:
    client: str
    nonce: int
    deadline: int
    max_price: int
    quorum: int
    signature: bytes


@dataclass(frozen=True)
class Admission:
    inference_id: bytes
    lock: int
    seed_block: int  # a recent block whose hash seeds the executor draw
    executor: str  # the drawn one, or the zero address when nobody serves the model
    url: str  # the executor's
    order: ExecuteOrder | None  # signed for the drawn executor; None when nobody was drawn


def _int_header(headers, name: str, default: int | None = None) -> int:
    raw = headers.get(name)
    if raw is None:
        if default is not None:
            return default
        raise ApiError(400, f"missing header {name}", "missing_header", name)
    try:
        value = int(raw, 0)
    except ValueError:
        raise ApiError(400, f"header {name} must be an integer, got {raw!r}", "invalid_header",
                       name) from None
    if not 0 <= value < 2**256:
        raise ApiError(400, f"header {name} is out of range", "invalid_header", name)
    return value


def auth_from_headers(headers) -> Auth:
    """The client's authorization from the X-Nullius-* headers."""
    client = headers.get(H_CLIENT)
    if client is None:
        raise ApiError(400, f"missing header {H_CLIENT}", "missing_header", H_CLIENT)
    raw_sig = headers.get(H_SIGNATURE)
    if raw_sig is None:
        raise ApiError(400, f"missing header {H_SIGNATURE}", "missing_header", H_SIGNATURE)
    try:
        signature = bytes.fromhex(raw_sig.removeprefix("0x"))
    except ValueError:
        signature = b""
    if len(signature) != 65:
        raise ApiError(400, f"header {H_SIGNATURE} must be 65 bytes of 0x hex", "invalid_signature",
                       H_SIGNATURE)
    return Auth(client, _int_header(headers, H_NONCE), _int_header(headers, H_DEADLINE),
                _int_header(headers, H_MAX_PRICE), _int_header(headers, H_QUORUM, 0), signature)


def build_request(kind: str, raw: bytes, auth: Auth) -> tuple[InferenceRequest, bool]:
    """(request, stream) from the raw body; raises ApiError naming the field at fault."""
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body is {len(raw)} bytes, the limit is {MAX_BODY_BYTES}",
                       "body_too_large")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", "invalid_json") from None
    try:
        request = request_from_openai(kind, body, client=auth.client, nonce=auth.nonce,
                                      deadline=auth.deadline, max_price=auth.max_price,
                                      quorum=auth.quorum)
    except RequestMappingError as exc:
        raise ApiError(400, str(exc), "invalid_parameter", exc.param) from None
    except ValidationError as exc:
        raise from_validation(exc) from None
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be a boolean", "invalid_parameter", "stream")
    return request, stream


def prompt_chars(request: InferenceRequest) -> int:
    if request.prompt is not None:
        return len(request.prompt)
    return sum(len(m.content) for m in request.messages)


def check_limits(request: InferenceRequest, max_prompt_chars: int, max_tokens: int) -> None:
    chars = prompt_chars(request)
    if chars > max_prompt_chars:
        raise ApiError(400, f"prompt is {chars} characters, the limit is {max_prompt_chars}",
                       "prompt_too_long", "messages" if request.messages else "prompt")
    if request.max_tokens > max_tokens:
        raise ApiError(400, f"max_tokens is {request.max_tokens}, the limit is {max_tokens}",
                       "max_tokens_too_large", "max_tokens")


def check_signature(request: InferenceRequest, domain: eip712.Domain, signature: bytes) -> None:
    try:
        signer = eip712.recover_client(request, domain, signature)
    except ValueError as exc:
        raise ApiError(400, f"malformed signature: {exc}", "invalid_signature", H_SIGNATURE) from None
    if signer.lower() != request.client.lower():
        raise ApiError(401, f"signature is by {signer}, not by client {request.client}",
                       "signature_mismatch", H_SIGNATURE)


async def admit(ctx: NodeContext, request: InferenceRequest, signature: bytes, stream: bool,
                timer: PhaseTimer) -> Admission:
    """All checks before anything is recorded. The local ones come first, so a forged or malformed
    request costs no chain read; then the admission reads (status, escrow: the follower's book, or
    one batch of chain reads) while the executor is drawn from the cached stakes and the order to
    it signed, which records nothing."""
    s = ctx.settings
    if request.model != s.model:
        raise ApiError(404, f"model '{request.model}' is not served by this gateway",
                       "model_not_found", "model")
    check_limits(request, s.max_prompt_chars, s.max_tokens)
    if request.deadline <= time.time():
        raise ApiError(400, f"request expired: deadline {request.deadline} has passed",
                       "request_expired", H_DEADLINE)
    check_signature(request, ctx.domain, signature)
    inference_id = eip712.inference_id(request, ctx.domain)
    if ctx.state.nonce_used(request.client, request.nonce):
        raise _nonce_reused(request)
    mid = eip712.model_id(request.model)
    timer.lap("verify")
    try:
        head = await ctx.head()
        reads, model, fee_bps, (executor, url, order) = await asyncio.gather(
            admission_reads(ctx, request.client, request.nonce, head), ctx.model(mid),
            ctx.reads.validator_fee_bps(),
            order_for(ctx, request, signature, inference_id, head, stream))
    except ChainUnavailable as exc:
        raise ApiError(503, f"chain unavailable: {exc}", "chain_unavailable") from None
    timer.lap("admit")
    if not model.active:
        raise ApiError(404, f"model '{request.model}' is not registered on chain",
                       "model_not_found", "model")
    if model.price > request.max_price:
        raise ApiError(400, f"max_price {request.max_price} is below the model price {model.price}",
                       "max_price_too_low", H_MAX_PRICE)
    if reads.started:
        raise _nonce_reused(request)
    in_flight = in_flight_locks(ctx, request.client, reads.block)
    lock = lock_of(request, model.price, fee_bps)
    if reads.escrow - in_flight < lock:
        raise ApiError(402, f"insufficient escrow: {reads.escrow} deposited, {in_flight} in flight, "
                       f"{lock} needed", "insufficient_escrow")
    return Admission(inference_id, lock, head.number, executor, url, order)


def lock_of(request: InferenceRequest, price: int, validator_fee_bps: int) -> int:
    """What `start` locks: the worst-case cost, plus a validator fee on it per extra validator."""
    lock = request.max_tokens * price
    return lock + request.quorum * (lock * validator_fee_bps // 10_000)


def _nonce_reused(request: InferenceRequest) -> ApiError:
    return ApiError(409, f"nonce {request.nonce} of client {request.client} was already used",
                    "nonce_reused", H_NONCE)


async def draw_executor(ctx: NodeContext, inference_id: bytes, head: Head) -> str:
    """The draw's pick with `head` as the seed block, from the served model's cached members and
    stakes (the executor checks it again, and the Ledger at `start`)."""
    return (await ctx.members()).draw(draw_seed(inference_id, head.hash))


async def order_for(ctx: NodeContext, request: InferenceRequest, signature: bytes,
                    inference_id: bytes, head: Head, stream: bool) -> tuple[str, str, ExecuteOrder | None]:
    """(executor, its URL, the signed order to it) for the draw at `head`; no order when nobody
    serves the model."""
    executor = await draw_executor(ctx, inference_id, head)
    if executor == ZERO_ADDRESS:
        return executor, "", None
    url = (await ctx.participant(executor)).url
    order = ExecuteOrder(request=request, client_signature="0x" + signature.hex(),
                         inference_id="0x" + inference_id.hex(), seed_block=head.number,
                         gateway=ctx.address, stream=stream).sign(ctx.account.key)
    return executor, url, order


async def admission_reads(ctx: NodeContext, client: str, nonce: int, head: Head) -> AdmissionReads:
    """Whether the client's nonce was started (by any request) and its escrow: from the follower's
    book and index when they are current and follow this client (agents.node.admission), else read
    (the Ledger's nonce bitmap)."""
    escrow = ctx.admission.escrow(client, head.number, ctx.settings.chain_cache_ttl)
    ctx.admission.saw(client)
    ctx.metrics.admissions.labels("chain" if escrow is None else "book").inc()
    if escrow is None:
        return await ctx.reads.admission(client, nonce)
    return AdmissionReads(ctx.state.nonce_started(client, nonce), escrow, ctx.admission.block)


def in_flight_locks(ctx: NodeContext, client: str, block: int | None) -> int:
    """Locks of this client's accepted requests that its escrow as of `block` (None: the latest)
    still includes. Locks whose start the index holds at or before the admission book's block are
    in every escrow read from now on, and those that expired or failed never will be: they are
    released for good. A start the outbox saw land is in the latest escrow, but maybe not yet in
    the book's. (A request of the same client admitted across the book's move to the block of
    such a start can miss its lock once; the Ledger refuses an overdrawn start.)"""
    total = 0
    now = time.time()
    for inference_id, lock, deadline in ctx.state.pending_locks(client):
        started = ctx.state.started_block(inference_id)
        item = ctx.outbox.status("start", "0x" + inference_id.hex())
        never = deadline < now or (item is not None and item.state == "failed")
        if never or (started is not None and started <= ctx.admission.block):
            ctx.state.release_lock(inference_id)
        if block is None:
            included = started is not None or (item is not None and item.state == "done")
        else:  # the book may have moved past `block` since the escrow was taken from it
            included = started is not None and started <= block
        if not (never or included):
            total += lock
    return total


async def dispatch(ctx: NodeContext, request: InferenceRequest, signature: bytes, stream: bool):
    timer = PhaseTimer(ctx.metrics.phase_seconds, "gateway")
    a = await admit(ctx, request, signature, stream, timer)
    inference_id, seed_block, executor = a.inference_id, a.seed_block, a.executor
    if a.order is None:
        raise ApiError(503, f"no participant serves model '{request.model}'", "no_executor", "model")
    if not ctx.state.claim_nonce(request.client, request.nonce, inference_id, a.lock, request.deadline):
        raise _nonce_reused(request)
    # The start is queued (a durable SQLite write) while the executor already works.
    queued = asyncio.create_task(asyncio.to_thread(
        ctx.outbox.enqueue, "start", "0x" + inference_id.hex(),
        [executor, "0x" + eip712.model_id(request.model).hex(), start_item(request, signature, seed_block)]))
    ctx.state.watch("expire", inference_id, request.deadline)
    log.info("gateway: inference 0x%s to executor %s (seed block %d)", inference_id.hex(), executor,
             seed_block)
    headers = {H_INFERENCE_ID: "0x" + inference_id.hex(), H_EXECUTOR: executor}
    timer.lap("order")
    try:
        return await forward(ctx, a.url, a.order, headers, timer)
    finally:
        await queued


def start_item(request: InferenceRequest, signature: bytes, seed_block: int) -> list:
    """A Ledger StartItem, in field order (docs/protocol.md section 2); `startBatch` takes the
    executor and the model once per batch."""
    return [to_checksum_address(request.client), "0x" + request.request_hash.hex(), request.max_tokens,
            request.max_price, request.nonce, request.deadline, request.quorum, seed_block,
            "0x" + signature.hex()]


async def forward(ctx: NodeContext, url: str, order: ExecuteOrder, headers: dict,
                  timer: PhaseTimer) -> Response:
    target = url.rstrip("/") + "/nullius/v1/execute"
    body = order.model_dump(mode="json")
    try:
        if not order.stream:
            r = await ctx.peers.post(target, body)
            if r.status != 200:
                raise _executor_error(headers[H_EXECUTOR], r.status, r.content)
            timer.lap("executor")
            # relayed as is: the client checks the executor's receipt, not the gateway
            timing = timer.header(r.headers.get(H_SERVER_TIMING))
            return Response(r.content, media_type="application/json",
                            headers={**headers, H_SERVER_TIMING: timing})
        upstream = await ctx.peers.open_stream(target, body)
    except PeerUnreachable as exc:
        raise ApiError(502, f"executor {headers[H_EXECUTOR]} unreachable: {exc}",
                       "executor_unreachable") from None
    if upstream.status != 200:
        content = await upstream.read()
        upstream.release()
        raise _executor_error(headers[H_EXECUTOR], upstream.status, content)

    async def relay():
        try:
            async for chunk in upstream.content.iter_any():
                yield chunk
        finally:
            upstream.release()

    timer.lap("executor")  # until the executor's first byte
    timing = timer.header(upstream.headers.get(H_SERVER_TIMING))
    return StreamingResponse(relay(), media_type="text/event-stream",
                             headers={**headers, H_SERVER_TIMING: timing})


def _executor_error(executor: str, status: int, content: bytes) -> ApiError:
    try:
        message = json.loads(content)["error"]["message"]
    except Exception:
        message = content[:200].decode(errors="replace")
    return ApiError(502, f"executor {executor} failed ({status}): {message}", "executor_error")


router = APIRouter()


async def _handle(kind: str, http_request: Request) -> Response:
    ctx: NodeContext = http_request.app.state.ctx
    ctx.metrics.requests.labels("gateway").inc()
    try:
        auth = auth_from_headers(http_request.headers)
        request, stream = build_request(kind, await http_request.body(), auth)
        return await dispatch(ctx, request, auth.signature, stream)
    except ApiError as exc:
        ctx.metrics.errors.labels("gateway", exc.code).inc()
        raise


@router.post("/v1/chat/completions")
async def chat_completions(http_request: Request) -> Response:
    return await _handle("chat", http_request)


@router.post("/v1/completions")
async def completions(http_request: Request) -> Response:
    return await _handle("completion", http_request)
