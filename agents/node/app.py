"""The participant node: one FastAPI app serving the gateway, executor and artifact routes, whose
lifespan owns the background work (the outbox and the role loop), its retries and its shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from contextlib import asynccontextmanager

import httpx
import uvicorn
from eth_account import Account
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from agents.artifacts.fetch import ipfs_router
from agents.artifacts.store import open_store
from agents.chain.client import ChainClient
from agents.chain.deploy import Deployments
from agents.chain.events import EventPoller
from agents.chain.outbox import Outbox
from agents.chain.rpc import AsyncRpc
from agents.node import errors, executor, finisher, gateway, keeper, validator
from agents.node.chain_view import ChainView, HotReads
from agents.node.config import NodeSettings
from agents.node.context import NodeContext, log
from agents.node.judging import judging_pool
from agents.node.metrics import NodeMetrics
from agents.node.state import NodeState
from agents.protocol.eip712 import Domain


# Idle connections are kept longer than the callers' keep-alive expiry (httpx's 5 s, aiohttp's
# 15 s), so that the calling side always closes them first: with equal timeouts, a gateway could
# send an order on a connection the executor was closing, and see a ReadError.
KEEP_ALIVE_S = 75
# /health: a head read older than this (the follower reads every head_refresh) means no chain
HEALTH_STALE_S = 10.0
HEALTH_PROBE_S = 2.0  # seconds the model node gets to answer /health's probe
SWITCH_INTERVAL_S = 0.0005


def build_context(settings: NodeSettings) -> NodeContext:
    deployments = Deployments.load(settings.deployments_file)
    client = ChainClient(settings.rpc_url, settings.private_key, deployments)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    chain, http = ChainView(client), httpx.AsyncClient(timeout=settings.request_timeout)
    return NodeContext(
        settings=settings,
        account=Account.from_key(settings.private_key),
        chain=chain,
        reads=HotReads(chain, AsyncRpc(http, settings.rpc_url)),
        state=NodeState(settings.data_dir / "node.sqlite"),
        outbox=Outbox(settings.data_dir / "outbox.sqlite", client),
        store=open_store(settings.artifact_store_url),
        http=http,
        metrics=NodeMetrics(),
        domain=Domain(deployments.chain_id, deployments.ledger),
        judging=judging_pool(),
    )


def finished_handler(ctx: NodeContext, window: int):
    """Hand each inference of a BatchFinished event to the roles that wait on it (idempotent:
    replays are harmless)."""

    async def handle(event) -> None:
        number, executor_, block = event["args"]["batch"], event["args"]["executor"], event["blockNumber"]
        for inference_id in await ctx.read(ctx.chain.finished_in, number, block):
            validator.on_finished(ctx, inference_id, executor_, block)
            keeper.on_finished(ctx, inference_id, executor_, block, window)

    return handle


def batch_started_handler(ctx: NodeContext):
    """Open each batch started for this node as executor, for its finish."""

    async def handle(event) -> None:
        await finisher.on_batch_started(ctx, event["args"]["batch"], event["blockNumber"])

    return handle


def dispute_handler(ctx: NodeContext):
    """Hand each DisputeOpened event to jury duty and to the keeper that resolves it."""

    async def handle(event) -> None:
        args = event["args"]
        inference_id = bytes(args["inference_id"])
        validator.on_dispute_opened(ctx, inference_id, args["executor"], args["accuser"],
                                    event["blockNumber"])
        keeper.on_dispute_opened(ctx, inference_id, args["executor"], args["accuser"], args["deadline"])

    return handle


async def tick_loop(ctx: NodeContext, window: int, jury_window: int, stop: asyncio.Event) -> None:
    """The one loop of the validator and keeper roles: a failed tick is logged and retried."""
    while not stop.is_set():
        try:
            head = await ctx.read(ctx.chain.block_number)
            await finisher.tick(ctx, int(time.time()))
            await validator.tick(ctx, head, window)
            await validator.jury_tick(ctx, head, jury_window)
            await keeper.tick(ctx, head, window)
        except Exception:
            log.exception("role tick failed; retrying")
        try:
            await asyncio.wait_for(stop.wait(), ctx.settings.poll_interval)
        except TimeoutError:
            pass


def create_app(settings: NodeSettings) -> FastAPI:
    ctx = build_context(settings)
    window, jury_window = ctx.chain.validation_window(), ctx.chain.jury_window()
    filters = {"BatchStarted": {"executor": ctx.address}}
    pollers = {name: EventPoller(ctx.chain.client, ctx.chain.client.ledger, name,
                                 settings.data_dir / "events.sqlite", ctx.chain.client.deployments.start_block,
                                 argument_filters=filters.get(name))
               for name in ("BatchStarted", "BatchFinished", "DisputeOpened")}
    handlers = {"BatchStarted": batch_started_handler(ctx), "BatchFinished": finished_handler(ctx, window),
                "DisputeOpened": dispute_handler(ctx)}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stop = asyncio.Event()
        ctx.judging.submit(os.getpid)  # start the judging process now, not at the first validation
        tasks = [asyncio.create_task(ctx.outbox.run(stop), name="outbox"),
                 *(asyncio.create_task(poller.run(handlers[name], stop, settings.poll_interval),
                                       name=f"events:{name}") for name, poller in pollers.items()),
                 asyncio.create_task(tick_loop(ctx, window, jury_window, stop), name="roles"),
                 asyncio.create_task(ctx.follow_head(stop), name="head")]
        log.info("node %s up at %s serving %s", ctx.address, settings.url, settings.model)
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, *ctx.background, return_exceptions=True)
            await ctx.http.aclose()
            await ctx.peers.close()
            for poller in pollers.values():
                poller.close()
            ctx.outbox.close()
            ctx.state.close()
            ctx.judging.shutdown(cancel_futures=True)

    app = FastAPI(title="Nullius participant node", lifespan=lifespan)
    app.state.ctx = ctx
    errors.install(app)
    app.include_router(gateway.router)
    app.include_router(executor.router)
    app.include_router(ipfs_router(ctx.store))

    @app.get("/health")
    async def health() -> JSONResponse:
        status, body = await health_report(ctx)
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def metrics(_: Request) -> Response:
        return Response(ctx.metrics.render(ctx.outbox.counts()), media_type="text/plain; version=0.0.4")

    return app


async def health_report(ctx: NodeContext) -> tuple[int, dict]:
    """200 when the node can serve: its head follower read the chain lately and its model node
    answers; else 503 with the problems named. Uses the follower's last read, not a chain call."""
    s, problems = ctx.settings, []
    if ctx.head_read_at is None:
        problems.append(f"no head read from {s.rpc_url} yet")
    elif (age := time.monotonic() - ctx.head_read_at) > HEALTH_STALE_S:
        problems.append(f"the last head read from {s.rpc_url} was {age:.1f} s ago")
    try:
        r = await ctx.http.get(s.mlnode_url.rstrip("/") + "/health", timeout=HEALTH_PROBE_S)
        if r.status_code != 200:
            problems.append(f"model node {s.mlnode_url} answered {r.status_code}")
    except httpx.HTTPError as exc:
        problems.append(f"model node {s.mlnode_url} unreachable: {exc!r}")
    body = {"status": "degraded" if problems else "ok", "problems": problems, "address": ctx.address,
            "model": s.model, "url": s.url,
            "watching": {role: ctx.state.watching(role)
                         for role in (validator.ROLE, validator.JURY, keeper.LAZY, keeper.EXPIRE,
                                      keeper.RESOLVE)},
            "open_batches": len(ctx.state.open_batches())}
    return (503 if problems else 200), body


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log shippers and `jq` read."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                 "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request at INFO: some twenty-five chain reads per inference, which bury
    # the node's own lines; its warnings still show
    logging.getLogger("httpx").setLevel(logging.WARNING)


def run(settings: NodeSettings) -> None:
    configure_logging()
    # The event loop shares the GIL with the worker threads of chain reads and the outbox; a
    # thread that wants the GIL waits up to this interval for it (5 ms by default), and each step
    # of a request that waited so added up to tens of milliseconds.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning",
                timeout_keep_alive=KEEP_ALIVE_S)
