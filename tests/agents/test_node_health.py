"""The node's /health: 200 only when its head follower read the chain lately and its model node
answers; otherwise 503 naming each problem. The model node is an httpx.MockTransport stand-in
(the real one is covered by test_mlnode_api), the chain is the follower's last-read time."""

from __future__ import annotations

import time

import httpx
from eth_account import Account

from agents.node.app import HEALTH_STALE_S, health_report
from agents.node.config import NodeSettings
from agents.node.context import NodeContext
from agents.node.metrics import NodeMetrics
from agents.node.state import NodeState

MLNODE = "http://model-node:8100"


def _ctx(tmp_path, model_node: httpx.MockTransport) -> NodeContext:
    settings = NodeSettings(private_key="0x" + "11" * 32, mlnode_url=MLNODE)
    return NodeContext(settings=settings, account=Account.from_key(settings.private_key), chain=None,
                       reads=None, state=NodeState(tmp_path / "node.sqlite"), outbox=None, store=None,
                       http=httpx.AsyncClient(transport=model_node), metrics=NodeMetrics(), domain=None)


def _model_node(status: int) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status))


async def test_health__fresh_head_and_model_node__200(tmp_path):
    ctx = _ctx(tmp_path, _model_node(200))
    ctx.head_read_at = time.monotonic()
    status, body = await health_report(ctx)
    assert (status, body["status"], body["problems"]) == (200, "ok", [])
    assert body["address"] == ctx.address and body["watching"]["validate"] == 0
    assert body["open_batches"] == 0  # batches started for this executor, not yet finished


async def test_health__no_head_yet_and_model_node_down__503_names_both(tmp_path):
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    ctx = _ctx(tmp_path, httpx.MockTransport(refuse))
    status, body = await health_report(ctx)
    assert (status, body["status"]) == (503, "degraded")
    assert body["problems"] == [
        "no head read from http://127.0.0.1:8545 yet",
        f"model node {MLNODE} unreachable: ConnectError('connection refused')",
    ]


async def test_health__stale_head_and_model_node_error__503(tmp_path):
    ctx = _ctx(tmp_path, _model_node(500))
    ctx.head_read_at = time.monotonic() - HEALTH_STALE_S - 1
    status, body = await health_report(ctx)
    assert status == 503
    assert body["problems"][0].startswith("the last head read from http://127.0.0.1:8545 was 11.")
    assert body["problems"][1] == f"model node {MLNODE} answered 500"
