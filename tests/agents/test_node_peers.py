"""The calls along an answer's path (agents.node.peers), against real local HTTP servers: what the
gateway and the executor make of a peer that answers, refuses, fails or cannot be reached."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from eth_account import Account

from agents.node import executor, gateway
from agents.node.config import NodeSettings
from agents.node.context import NodeContext
from agents.node.errors import ApiError
from agents.node.metrics import NodeMetrics
from agents.node.peers import Peers, PeerUnreachable
from agents.node.state import NodeState
from agents.node.timing import PhaseTimer
from agents.protocol.eip712 import Domain, inference_id, sign_request
from agents.protocol.messages import H_EXECUTOR, ExecuteOrder
from agents.protocol.requests import InferenceRequest

CLIENT, GATEWAY = Account.create(), Account.create()
DOMAIN = Domain(31337, "0x" + "11" * 20)
EXECUTOR = "0x" + "22" * 20


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def serve(handler) -> TestServer:
    app = web.Application()
    app.router.add_post("/{tail:.*}", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def order(stream: bool = False) -> ExecuteOrder:
    request = InferenceRequest(model="nullius/ref-tiny", prompt="def f(", max_tokens=8,
                               temperature=0.0, max_price=1, nonce=2**200 + 1,
                               deadline=int(time.time()) + 300, client=CLIENT.address)
    signature = sign_request(request, DOMAIN, CLIENT.key)
    return ExecuteOrder(request=request, client_signature="0x" + signature.hex(),
                        inference_id="0x" + inference_id(request, DOMAIN).hex(), seed_block=1,
                        gateway=GATEWAY.address, stream=stream).sign(GATEWAY.key)


def node(tmp_path, mlnode_url: str) -> NodeContext:
    settings = NodeSettings(private_key="0x" + "11" * 32, mlnode_url=mlnode_url)
    return NodeContext(settings=settings, account=Account.from_key(settings.private_key), chain=None,
                       reads=None, state=NodeState(tmp_path / "node.sqlite"), outbox=None, store=None,
                       http=None, metrics=NodeMetrics(), domain=DOMAIN)


def timer() -> PhaseTimer:
    return PhaseTimer(NodeMetrics().phase_seconds, "test")


# -- Peers ------------------------------------------------------------------------------------

async def test_post__json_body_and_whole_answer():
    seen = {}

    async def echo(request: web.Request) -> web.Response:
        seen["type"], seen["body"] = request.content_type, await request.read()
        return web.Response(body=b'{"ok":1}', status=201, headers={"Server-Timing": "x;dur=1.0"})

    server = await serve(echo)
    peers = Peers(timeout=5)
    try:
        r = await peers.post(str(server.make_url("/a")), {"nonce": 2**200 + 1})
    finally:
        await peers.close()
        await server.close()
    assert (r.status, r.content, r.headers["server-timing"]) == (201, b'{"ok":1}', "x;dur=1.0")
    # the standard library's JSON: orjson refuses integers beyond 64 bits
    assert seen == {"type": "application/json", "body": b'{"nonce":1606938044258990275541962092341162602522202993782792835301377}'}


async def test_post__closed_port__unreachable_names_the_error():
    peers = Peers(timeout=5)
    try:
        with pytest.raises(PeerUnreachable, match=r"^ClientConnectorError\("):
            await peers.post(f"http://127.0.0.1:{closed_port()}/a", {})
    finally:
        await peers.close()


async def test_post__no_answer_within_timeout__unreachable():
    async def stall(_: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    server = await serve(stall)
    peers = Peers(timeout=0.2)
    try:
        with pytest.raises(PeerUnreachable, match=r"^(Socket|Server)TimeoutError\("):
            await peers.post(str(server.make_url("/a")), {})
    finally:
        await peers.close()
        await server.close()


async def test_open_stream__chunks_as_sent():
    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(3):
            await response.write(b"data: %d\n\n" % i)
        await response.write_eof()
        return response

    server = await serve(events)
    peers = Peers(timeout=5)
    try:
        r = await peers.open_stream(str(server.make_url("/s")), {})
        lines = [line async for line in r.content]
        r.release()
    finally:
        await peers.close()
        await server.close()
    assert lines == [b"data: 0\n", b"\n", b"data: 1\n", b"\n", b"data: 2\n", b"\n"]


# -- the gateway's order to the executor -----------------------------------------------------

async def test_forward__executor_unreachable__502_names_it(tmp_path):
    ctx = node(tmp_path, "http://unused")
    with pytest.raises(ApiError) as err:
        await gateway.forward(ctx, f"http://127.0.0.1:{closed_port()}", order(),
                              {H_EXECUTOR: EXECUTOR}, timer())
    await ctx.peers.close()
    assert (err.value.status, err.value.code) == (502, "executor_unreachable")
    assert err.value.message.startswith(f"executor {EXECUTOR} unreachable: ClientConnectorError(")


@pytest.mark.parametrize("stream", [False, True])
async def test_forward__executor_refuses__502_relays_its_message(tmp_path, stream):
    async def refuse(_: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "this node is not the drawn executor"}},
                                 status=403)

    server = await serve(refuse)
    ctx = node(tmp_path, "http://unused")
    try:
        with pytest.raises(ApiError) as err:
            await gateway.forward(ctx, str(server.make_url("/")), order(stream),
                                  {H_EXECUTOR: EXECUTOR}, timer())
    finally:
        await ctx.peers.close()
        await server.close()
    assert (err.value.status, err.value.code, err.value.message) == (
        502, "executor_error", f"executor {EXECUTOR} failed (403): this node is not the drawn executor")


# -- the executor's call to its model node ---------------------------------------------------

async def test_execute__model_node_unreachable__502_names_it(tmp_path):
    ctx = node(tmp_path, f"http://127.0.0.1:{closed_port()}")
    o = order()
    with pytest.raises(ApiError) as err:
        await executor.execute(ctx, o, bytes.fromhex(o.inference_id[2:]), timer())
    await ctx.peers.close()
    assert (err.value.status, err.value.code) == (502, "model_node_unreachable")
    assert err.value.message.startswith("model node unreachable: ClientConnectorError(")


@pytest.mark.parametrize("stream", [False, True])
async def test_execute__model_node_fails__502_with_its_answer(tmp_path, stream):
    async def fail(_: web.Request) -> web.Response:
        return web.Response(status=500, text="CUDA out of memory")

    server = await serve(fail)
    ctx = node(tmp_path, str(server.make_url("")).rstrip("/"))
    o = order(stream)
    try:
        with pytest.raises(ApiError) as err:
            await executor.execute(ctx, o, bytes.fromhex(o.inference_id[2:]), timer())
    finally:
        await ctx.peers.close()
        await server.close()
    assert (err.value.status, err.value.code, err.value.message) == (
        502, "model_node_error", "model node failed (500): CUDA out of memory")
    assert err.value.body()["error"]["type"] == "upstream_error"
