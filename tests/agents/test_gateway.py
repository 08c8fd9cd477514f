"""The participant node over real HTTP on anvil with the deployed contracts.

Two participants serve one model; each runs the whole node app (gateway, executor, validator,
keeper) in this process, with its lifespan, over a real socket. The negative tests need no model;
the happy paths start a real model node process (`nullius mlnode`) on first use.
"""

from __future__ import annotations

import asyncio
import math
import hashlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
import uvicorn
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from agents.chain.client import ChainClient
from agents.cli import main as nullius
from agents.chain.deploy import Deployments, register_model
from agents.chain.batches import load_batch
from agents.client.openai_hook import signing_http_client
from agents.client.sdk import NulliusClient, NulliusError
from agents.node import gateway
from agents.node.admission import AdmissionBook
from agents.node.app import create_app
from agents.chain.rpc import AsyncRpc
from agents.node.chain_view import (
    FINISHED, VALIDATED, ZERO_ADDRESS, ChainView, HotReads, InferenceState, Members, ModelSnapshot,
    StartedLog,
)
from agents.node.config import NodeSettings
from agents.node.context import NodeContext
from agents.node.state import NodeState
from agents.protocol import ecdsa
from agents.protocol.eip712 import Domain, inference_id, model_id, sign_request
from agents.protocol.messages import ExecuteOrder, auth_headers, request_from_openai
from agents.protocol.nonces import NonceCounter

REPO = Path(__file__).resolve().parents[2]
MODEL = "nullius/test-gateway"  # its own name: the session's chain is shared with other tests
MODEL_DIR = REPO / "models" / "ref-tiny"
PRICE = 10**6
MAX_PROMPT_CHARS = 200
MAX_TOKENS = 64
TOKEN = 10**18
_nonces = NonceCounter()  # one client process's nonces, as the SDK and the hook count them


def _bind() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def _url(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


@dataclass
class Node:
    account: LocalAccount
    url: str
    ctx: NodeContext
    server: uvicorn.Server
    thread: threading.Thread


@dataclass
class Net:
    rpc_url: str
    deployments: Deployments
    domain: Domain
    gov: ChainClient
    nodes: list[Node]
    mlnode_url: str

    @property
    def gateway(self) -> Node:
        return self.nodes[0]

    def node(self, address: str) -> Node:
        return next(n for n in self.nodes if n.account.address == address)

    def funded(self, deposit: int = 0) -> LocalAccount:
        """A fresh account with gas, tokens and `deposit` in escrow."""
        acct = Account.create()
        self.gov.w3.provider.make_request("anvil_setBalance", [acct.address, hex(10**20)])
        self.gov.transact(self.gov.token.functions.mint(acct.address, 10 * TOKEN))
        if deposit:
            chain = ChainClient(self.rpc_url, acct.key, self.deployments)
            chain.transact(chain.token.functions.approve(self.deployments.ledger, deposit))
            chain.transact(chain.ledger.functions.deposit(deposit))
        return acct


@pytest.fixture(scope="module")
def net(anvil, gov, deployed, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway")
    deployments_file = deployed.save(tmp / "deployments.json")
    spec_hash = hashlib.sha256((MODEL_DIR / "manifest.json").read_bytes()).digest()
    register_model(anvil.w3, gov.key, deployed, MODEL, spec_hash, PRICE)
    gov_chain = ChainClient(anvil.rpc_url, gov.key, deployed)
    mlnode_url = _url(_bind())  # the model node starts on this port only when a test needs it
    stake = gov_chain.registry.functions.min_stake().call()
    nodes = []
    for i in range(2):
        acct = Account.create()
        sock = _bind()
        anvil.w3.provider.make_request("anvil_setBalance", [acct.address, hex(10**20)])
        gov_chain.transact(gov_chain.token.functions.mint(acct.address, stake))
        chain = ChainClient(anvil.rpc_url, acct.key, deployed)
        chain.transact(chain.token.functions.approve(deployed.registry, stake))
        chain.transact(chain.registry.functions.register(stake, _url(sock), model_id(MODEL)))
        settings = NodeSettings(
            private_key=acct.key.hex(), rpc_url=anvil.rpc_url, deployments_file=deployments_file,
            mlnode_url=mlnode_url, public_url=_url(sock), data_dir=tmp / f"node-{i}", model=MODEL,
            max_prompt_chars=MAX_PROMPT_CHARS, max_tokens=MAX_TOKENS, poll_interval=0.2)
        app = create_app(settings)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        nodes.append(Node(acct, _url(sock), app.state.ctx, server, thread))
    for node in nodes:
        deadline = time.monotonic() + 20
        while not node.server.started:
            assert time.monotonic() < deadline, "node did not start"
            time.sleep(0.02)
    yield Net(anvil.rpc_url, deployed, Domain(deployed.chain_id, deployed.ledger), gov_chain,
              nodes, mlnode_url)
    for node in nodes:
        node.server.should_exit = True
    for node in nodes:
        node.thread.join(timeout=15)


@pytest.fixture(scope="module")
def mlnode(net):
    port = net.mlnode_url.rsplit(":", 1)[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "mlnode", "--model", str(MODEL_DIR),
         "--served-name", MODEL, "--port", port],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(net.mlnode_url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlnode did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    yield net.mlnode_url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def client_acct(net):
    return net.funded(deposit=TOKEN)


def _body(kind: str = "completion", **kw) -> dict:
    base = {"model": MODEL, "max_tokens": 8}
    base |= {"prompt": "def f(x):\n"} if kind == "completion" else {
        "messages": [{"role": "user", "content": "def f(x):"}]}
    return base | kw


def _headers(net: Net, acct: LocalAccount, body: dict, kind: str = "completion", *,
             nonce: int | None = None, deadline: int | None = None, max_price: int = PRICE,
             signer: LocalAccount | None = None, quorum: int = 0) -> dict:
    request = request_from_openai(
        kind, body, client=acct.address, nonce=_nonces() if nonce is None else nonce,
        deadline=int(time.time()) + 300 if deadline is None else deadline, max_price=max_price,
        quorum=quorum)
    return auth_headers(request, sign_request(request, net.domain, (signer or acct).key))


def _post(url: str, body, headers: dict, kind: str = "completion") -> httpx.Response:
    path = "/v1/completions" if kind == "completion" else "/v1/chat/completions"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + path, content=content, headers=headers | {"content-type": "application/json"},
                      timeout=60)


def _snapshot(net: Net, acct: LocalAccount) -> tuple:
    """Everything a refused request must leave alone: escrow, the starts and finishes queued,
    watch lists. (Other outbox kinds belong to the keepers' own schedule, such as rollovers.)"""
    view = ChainView(net.gov)
    return (view.escrow_of(acct.address),
            [sum(n.ctx.outbox.counts(kind).values()) for n in net.nodes for kind in ("start", "finish")],
            [n.ctx.state.pending_locks(acct.address) for n in net.nodes],
            [n.ctx.state.watching("expire") for n in net.nodes])


def _error(r: httpx.Response) -> tuple:
    return r.status_code, r.json()["error"]["code"], r.json()["error"]["message"]


# ------------------------------------------------------------------------ gateway refusals


def test_gateway__malformed_json__400_nothing_changes(net, client_acct):
    headers = _headers(net, client_acct, _body())
    before = _snapshot(net, client_acct)
    r = _post(net.gateway.url, b'{"model": ', headers)
    assert _error(r) == (400, "invalid_json",
                         "request body is not valid JSON: Expecting value: line 1 column 11 (char 10)")
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert _snapshot(net, client_acct) == before


def test_gateway__unknown_model__404_nothing_changes(net, client_acct):
    body = _body(model="nullius/nope")
    before = _snapshot(net, client_acct)
    r = _post(net.gateway.url, body, _headers(net, client_acct, body))
    assert _error(r) == (404, "model_not_found", "model 'nullius/nope' is not served by this gateway")
    assert r.json()["error"]["param"] == "model"
    assert _snapshot(net, client_acct) == before


def test_gateway__oversized_prompt__400_nothing_changes(net, client_acct):
    body = _body(prompt="x" * (MAX_PROMPT_CHARS + 1))
    before = _snapshot(net, client_acct)
    r = _post(net.gateway.url, body, _headers(net, client_acct, body))
    assert _error(r) == (400, "prompt_too_long", "prompt is 201 characters, the limit is 200")
    assert _snapshot(net, client_acct) == before


def test_gateway__oversized_max_tokens__400_nothing_changes(net, client_acct):
    body = _body(max_tokens=MAX_TOKENS + 1)
    before = _snapshot(net, client_acct)
    r = _post(net.gateway.url, body, _headers(net, client_acct, body))
    assert _error(r) == (400, "max_tokens_too_large", "max_tokens is 65, the limit is 64")
    assert _snapshot(net, client_acct) == before


def test_gateway__unsupported_parameter__400_names_it(net, client_acct):
    body = _body(logit_bias={"1": 5})
    before = _snapshot(net, client_acct)
    r = _post(net.gateway.url, body, _headers(net, client_acct, _body()))
    assert _error(r) == (400, "invalid_parameter", "unsupported parameter 'logit_bias'")
    assert r.json()["error"]["param"] == "logit_bias"
    assert _snapshot(net, client_acct) == before


def test_gateway__short_signature__400_nothing_changes(net, client_acct):
    body = _body()
    headers = _headers(net, client_acct, body) | {"X-Nullius-Signature": "0x1234"}
    before = _snapshot(net, client_acct)
    r = _post(net.gateway.url, body, headers)
    assert _error(r) == (400, "invalid_signature",
                         "header X-Nullius-Signature must be 65 bytes of 0x hex")
    assert _snapshot(net, client_acct) == before


def test_gateway__malleated_signature__400_before_the_chain_refuses_it(net, client_acct):
    """s -> n - s recovers the same client, but the Ledger's ECDSA check refuses a high s at
    `start`: the gateway refuses it first, or the executor would work for nothing."""
    body = _body()
    headers = _headers(net, client_acct, body)
    sig = bytes.fromhex(headers["X-Nullius-Signature"][2:])
    s = int.from_bytes(sig[32:64])
    malleated = sig[:32] + (ecdsa.SECP256K1_N - s).to_bytes(32) + bytes([55 - sig[64]])
    before = _snapshot(net, client_acct)
    r = _post(net.gateway.url, body, headers | {"X-Nullius-Signature": "0x" + malleated.hex()})
    assert _error(r) == (400, "invalid_signature", "malformed signature: signature s must be in "
                         "the lower half of the curve order (EIP-2)")
    assert _snapshot(net, client_acct) == before


def test_gateway__signature_over_other_body__401_nothing_changes(net, client_acct):
    body = _body()
    headers = _headers(net, client_acct, _body(max_tokens=7))
    before = _snapshot(net, client_acct)
    r = _post(net.gateway.url, body, headers)
    status, code, message = _error(r)
    assert (status, code) == (401, "signature_mismatch")
    assert message.endswith(f", not by client {client_acct.address}")
    assert _snapshot(net, client_acct) == before


def test_gateway__forged_signature__401_names_signer(net, client_acct):
    forger = Account.create()
    body = _body()
    before = _snapshot(net, client_acct)
    r = _post(net.gateway.url, body, _headers(net, client_acct, body, signer=forger))
    assert _error(r) == (401, "signature_mismatch",
                         f"signature is by {forger.address}, not by client {client_acct.address}")
    assert _snapshot(net, client_acct) == before


def test_gateway__expired_deadline__400_nothing_changes(net, client_acct):
    body = _body()
    deadline = int(time.time()) - 5
    before = _snapshot(net, client_acct)
    r = _post(net.gateway.url, body, _headers(net, client_acct, body, deadline=deadline))
    assert _error(r) == (400, "request_expired", f"request expired: deadline {deadline} has passed")
    assert _snapshot(net, client_acct) == before


def test_gateway__max_price_below_price__400_nothing_changes(net, client_acct):
    body = _body()
    before = _snapshot(net, client_acct)
    r = _post(net.gateway.url, body, _headers(net, client_acct, body, max_price=PRICE - 1))
    assert _error(r) == (400, "max_price_too_low",
                         f"max_price {PRICE - 1} is below the model price {PRICE}")
    assert _snapshot(net, client_acct) == before


def test_gateway__too_little_escrow__402_nothing_changes(net):
    poor = net.funded(deposit=8 * PRICE - 1)
    body = _body(max_tokens=8)
    before = _snapshot(net, poor)
    r = _post(net.gateway.url, body, _headers(net, poor, body))
    assert _error(r) == (402, "insufficient_escrow",
                         f"insufficient escrow: {8 * PRICE - 1} deposited, 0 in flight, {8 * PRICE} needed")
    assert _snapshot(net, poor) == before


def test_gateway__quorum_fees_beyond_escrow__402_nothing_changes(net):
    """Escrow for the answer alone is not enough when the client signed for an extra validator."""
    poor = net.funded(deposit=8 * PRICE)
    body = _body(max_tokens=8)
    before = _snapshot(net, poor)
    r = _post(net.gateway.url, body, _headers(net, poor, body, quorum=1))
    fee = 8 * PRICE * net.gov.ledger.functions.validator_fee_bps().call() // 10_000
    assert _error(r) == (402, "insufficient_escrow",
                         f"insufficient escrow: {8 * PRICE} deposited, 0 in flight, {8 * PRICE + fee} needed")
    assert _snapshot(net, poor) == before


def test_gateway__quorum_not_signed__401_nothing_changes(net, client_acct):
    body = _body()
    headers = _headers(net, client_acct, body) | {"X-Nullius-Quorum": "1"}
    before = _snapshot(net, client_acct)
    status, code, message = _error(_post(net.gateway.url, body, headers))
    assert (status, code) == (401, "signature_mismatch")
    assert message.endswith(f", not by client {client_acct.address}")
    assert _snapshot(net, client_acct) == before


@pytest.mark.parametrize("value, message", [
    ("4", "quorum: Input should be less than or equal to 3"),
    ("-1", "header X-Nullius-Quorum is out of range"),
    ("two", "header X-Nullius-Quorum must be an integer, got 'two'"),
])
def test_gateway__bad_quorum__400_names_it(net, client_acct, value, message):
    body = _body()
    headers = _headers(net, client_acct, body) | {"X-Nullius-Quorum": value}
    before = _snapshot(net, client_acct)
    status, _code, got = _error(_post(net.gateway.url, body, headers))
    assert (status, got) == (400, message)
    assert _snapshot(net, client_acct) == before


def test_gateway__chain_unreachable__503_nothing_changes(net, client_acct):
    ctx = net.gateway.ctx
    rpc = ctx.reads.rpc
    dead = _url(_bind())  # bound, never listening: connections are refused
    body = _body()
    before = _snapshot(net, client_acct)
    url, rpc.url = rpc.url, dead
    try:
        time.sleep(ctx.settings.chain_cache_ttl + 0.2)  # what the follower read last has expired
        status, code, message = _error(_post(net.gateway.url, body, _headers(net, client_acct, body)))
    finally:
        rpc.url = url
    assert (status, code) == (503, "chain_unavailable")
    assert message.startswith(f"chain unavailable: JSON-RPC batch to {dead} failed: ConnectError")
    assert _snapshot(net, client_acct) == before


def test_gateway__missing_header__400_names_it(net, client_acct):
    body = _body()
    headers = _headers(net, client_acct, body)
    del headers["X-Nullius-Nonce"]
    r = _post(net.gateway.url, body, headers)
    assert _error(r) == (400, "missing_header", "missing header X-Nullius-Nonce")


def test_gateway__fastapi_404__has_the_one_error_shape(net):
    r = httpx.get(net.gateway.url + "/v1/nothing")
    assert _error(r) == (404, "not_found", "Not Found")


# ------------------------------------------------------------------------ executor refusals


def _order(net: Net, acct: LocalAccount, gateway: LocalAccount) -> tuple[ExecuteOrder, bytes, int]:
    body = _body()
    headers = _headers(net, acct, body)
    request = request_from_openai(
        "completion", body, client=acct.address, nonce=int(headers["X-Nullius-Nonce"]),
        deadline=int(headers["X-Nullius-Deadline"]), max_price=PRICE)
    iid = inference_id(request, net.domain)
    seed_block = net.gov.w3.eth.block_number
    order = ExecuteOrder(request=request, client_signature=headers["X-Nullius-Signature"],
                         inference_id="0x" + iid.hex(), seed_block=seed_block,
                         gateway=gateway.address).sign(gateway.key)
    return order, iid, seed_block


def _execute(url: str, order: ExecuteOrder) -> httpx.Response:
    return httpx.post(url + "/nullius/v1/execute", json=order.model_dump(mode="json"), timeout=60)


def test_executor__order_from_unregistered_gateway__403(net, client_acct):
    stranger = Account.create()
    order, _, _ = _order(net, client_acct, stranger)
    r = _execute(net.nodes[0].url, order)
    assert _error(r) == (403, "unknown_gateway",
                         f"gateway {stranger.address} is not a registered participant")


def test_executor__order_signed_by_other_than_gateway__401(net, client_acct):
    stranger = Account.create()
    order, _, _ = _order(net, client_acct, net.nodes[1].account)
    forged = order.model_copy(update={"signature": None}).sign(stranger.key)
    r = _execute(net.nodes[0].url, forged)
    assert _error(r) == (401, "signature_mismatch",
                         f"order is signed by {stranger.address}, not by gateway {net.nodes[1].account.address}")


def test_executor__not_the_drawn_executor__403(net, client_acct):
    order, iid, seed_block = _order(net, client_acct, net.gateway.account)
    drawn = ChainView(net.gov).draw_executor(model_id(MODEL), iid, seed_block)
    other = next(n for n in net.nodes if n.account.address != drawn)
    r = _execute(other.url, order)
    assert _error(r) == (403, "not_drawn_executor",
                         f"this node is not the drawn executor: the draw picks {drawn}")
    assert other.ctx.state.answers([iid]) == {}  # nothing kept for a finish


def test_executor__expired_request__400(net, client_acct):
    order, _, _ = _order(net, client_acct, net.gateway.account)
    expired = order.request.model_copy(update={"deadline": int(time.time()) - 1})
    order = order.model_copy(update={"request": expired, "signature": None}).sign(net.gateway.account.key)
    r = _execute(net.nodes[0].url, order)
    assert _error(r) == (400, "request_expired",
                         f"request expired: deadline {expired.deadline} has passed")


def test_executor__malformed_order__400_names_field(net):
    r = httpx.post(net.nodes[0].url + "/nullius/v1/execute", json={"inference_id": "0x12"})
    assert _error(r) == (400, "invalid_parameter", "request: Field required")
    assert r.json()["error"]["param"] == "request"


# ------------------------------------------------------------------------ happy paths


def _wait_status(net: Net, iid: bytes, wanted: set[int], anvil, timeout: float = 60) -> int:
    """The inference's status once it is one of `wanted` (or at `timeout`). Transactions mine
    their own blocks; once the inference is finished a block is mined at once, since the
    validator's assignment needs the block after the finish, then one a second at most: the
    validation window is 8 blocks, and mining five a second closed it on a busy validator."""
    view = ChainView(net.gov)
    deadline, mined_at = time.monotonic() + timeout, -math.inf
    while True:
        status = view.inference(iid).status
        if status in wanted or time.monotonic() > deadline:
            return status
        if status == FINISHED and time.monotonic() - mined_at >= 1.0:
            anvil.mine(1)
            mined_at = time.monotonic()
        time.sleep(0.1)


def test_sdk__infer__answer_on_chain_and_validated(net, mlnode, client_acct, anvil):
    client = NulliusClient(net.gateway.url, net.rpc_url, client_acct.key, net.deployments)
    escrow = client.escrow()
    result = client.infer(model=MODEL, prompt="def f(x):\n", max_tokens=8, temperature=0.7)
    assert result.receipt.verify() == result.executor
    assert 1 <= result.receipt.completion_tokens <= 8
    assert _wait_status(net, result.inference_id, {VALIDATED}, anvil) == VALIDATED
    assert client.verify(result.inference_id, result.text)
    assert not client.verify(result.inference_id, result.text + " ")
    info = client.status(result.inference_id)
    assert info.cost == result.receipt.completion_tokens * PRICE
    assert client.escrow() == escrow - info.cost


class StandInOutbox:
    """Outbox states of start items, stood in for: the accounting reads nothing else."""

    def __init__(self, states: dict[str, str]):
        self.states = states

    def status(self, kind: str, key: str):
        assert kind == "start"
        state = self.states.get(key)
        return None if state is None else SimpleNamespace(state=state)


def test_in_flight_locks__only_starts_the_escrow_read_lacks_count(tmp_path):
    state = NodeState(tmp_path / "node.sqlite")
    client, later = "0x" + "ab" * 20, int(time.time()) + 300
    ids = [bytes([i]) * 32 for i in range(5)]
    for nonce, (iid, lock, deadline) in enumerate([(ids[0], 1, later), (ids[1], 10, later),
                                                   (ids[2], 100, later), (ids[3], 1000, later),
                                                   (ids[4], 10_000, int(time.time()) - 1)]):
        assert state.claim_nonce(client, nonce, iid, lock, deadline)
    outbox = StandInOutbox({"0x" + ids[0].hex(): "pending", "0x" + ids[1].hex(): "sent",
                            "0x" + ids[2].hex(): "done", "0x" + ids[3].hex(): "failed"})
    book = AdmissionBook()
    book.update(50, {})
    ctx = SimpleNamespace(state=state, outbox=outbox, admission=book)
    # read at the latest block: the landed start (done) is in it; failed and expired ones are
    # released for good
    assert gateway.in_flight_locks(ctx, client, None) == 11
    assert [i for i, _, _ in state.pending_locks(client)] == ids[:3]
    # the book's escrow, at block 50, lacks the landed start until the index holds it by then
    assert gateway.in_flight_locks(ctx, client, 50) == 111
    state.index_started([StartedLog(ids[2], 51, later, client, 2)], 51, int(time.time()))
    assert gateway.in_flight_locks(ctx, client, 50) == 111
    book.update(51, {})
    # an escrow taken from the book at 50, counted after it moved on: the start still counts
    assert gateway.in_flight_locks(ctx, client, 50) == 111
    assert gateway.in_flight_locks(ctx, client, 51) == 11
    assert [i for i, _, _ in state.pending_locks(client)] == ids[:2]  # released for good
    outbox.states["0x" + ids[1].hex()] = "done"
    assert gateway.in_flight_locks(ctx, client, None) == 1
    assert gateway.in_flight_locks(ctx, client, 51) == 11
    assert gateway.in_flight_locks(ctx, "0x" + "cd" * 20, None) == 0


def test_node_state__index_of_starts__resumes_and_forgets_past_deadlines(tmp_path):
    now, client = int(time.time()), "0x" + "Ab" * 20
    state = NodeState(tmp_path / "node.sqlite")
    assert state.indexed_through(default=6) == 6
    state.index_started([StartedLog(b"\x01" * 32, 8, now + 60, client, 2**200),
                         StartedLog(b"\x02" * 32, 9, now - 1, client, 5)], through=10, now=now)
    state.close()
    state = NodeState(tmp_path / "node.sqlite")  # a restart
    assert state.indexed_through(default=6) == 10
    assert state.started_block(b"\x01" * 32) == 8
    assert state.started_block(b"\x02" * 32) is None  # its request can no longer be admitted
    assert state.started_block(b"\x03" * 32) is None
    # the nonce of a start, whatever request it signed, in any case of the client's address
    assert state.nonce_started(client, 2**200) and state.nonce_started(client.lower(), 2**200)
    assert not state.nonce_started(client, 2**200 + 1)
    assert not state.nonce_started(client, 5)  # forgotten with its deadline
    assert not state.nonce_started("0x" + "cd" * 20, 2**200)


async def _model_snapshot(net: Net, view: ChainView) -> ModelSnapshot:
    async with httpx.AsyncClient() as http:
        reads = HotReads(view, AsyncRpc(http, net.rpc_url))
        return await reads.snapshot(model_id(MODEL), (await reads.head()).number)


def test_members_draw__same_pick_as_the_registry(net):
    view = ChainView(net.gov)
    snapshot = asyncio.run(_model_snapshot(net, view))
    members = snapshot.members
    assert len(members.addresses) == len(net.nodes)
    # the raw JSON-RPC reads decode as web3 does
    assert snapshot.model == view.model(model_id(MODEL))
    assert snapshot.participants == tuple(view.participant(a) for a in members.addresses)
    assert members.stakes == tuple(p.stake for p in snapshot.participants)
    for i in range(64):
        seed = keccak(i.to_bytes(32, "big"))
        assert members.draw(seed) == view.registry.functions.drawExecutor(model_id(MODEL), seed).call()


@pytest.mark.parametrize("r, picked", [(0, "a"), (1, "b"), (2, "b"), (3, "c"), (5, "c"), (6, "a")])
def test_members_draw__walks_stakes_in_order(r, picked):
    assert Members(("a", "b", "c"), (1, 2, 3)).draw(r.to_bytes(32, "big")) == picked


def test_members_draw__no_stake__zero_address():
    assert Members((), ()).draw(b"\x01" * 32) == ZERO_ADDRESS


def test_sdk__infer__server_timing_splits_the_latency(net, mlnode, client_acct, anvil):
    client = NulliusClient(net.gateway.url, net.rpc_url, client_acct.key, net.deployments)
    result = client.infer(model=MODEL, prompt="def f(x):\n", max_tokens=4, temperature=0.0)
    # its writes (start, finish, validation) land after the answer: let them, for the next tests
    assert _wait_status(net, result.inference_id, {VALIDATED}, anvil) == VALIDATED
    assert list(result.timings) == ["verify", "admit", "order", "executor", "executor-check",
                                    "executor-model", "executor-receipt"]
    assert all(ms >= 0 for ms in result.timings.values())
    # the executor's phases happen inside the gateway's wait for it
    executor_side = sum(ms for name, ms in result.timings.items() if name.startswith("executor-"))
    assert executor_side <= result.timings["executor"]
    metrics = httpx.get(net.gateway.url + "/metrics").text
    assert 'nullius_phase_seconds_count{phase="admit",role="gateway"}' in metrics


def test_gateway__replayed_request__409_nothing_changes(net, mlnode, client_acct, anvil):
    body = _body(max_tokens=4)
    headers = _headers(net, client_acct, body)
    first = _post(net.gateway.url, body, headers)
    assert first.status_code == 200, first.text
    # the first answer's own writes (start, finish, validation) land after it; let them settle
    iid = bytes.fromhex(first.headers["X-Nullius-Inference-Id"][2:])
    assert _wait_status(net, iid, {VALIDATED}, anvil) == VALIDATED
    before = _snapshot(net, client_acct)
    r = _post(net.gateway.url, body, headers)
    assert _error(r) == (409, "nonce_reused",
                         f"nonce {headers['X-Nullius-Nonce']} of client {client_acct.address} "
                         "was already used")
    assert _snapshot(net, client_acct) == before


def _followed(node: Node, client: str, inference_id: bytes | None = None, timeout: float = 10) -> None:
    """Wait until `node`'s admission book follows `client` (and its index holds the start), just
    read: a request sent now finds it current for most of `chain_cache_ttl`."""
    ctx, deadline = node.ctx, time.monotonic() + timeout
    while (ctx.admission.escrow(client, ctx.admission.block, ctx.settings.chain_cache_ttl) is None
           or ctx.admission.age > 0.1
           or (inference_id is not None and ctx.state.started_block(inference_id) is None)):
        assert time.monotonic() < deadline, "the head follower did not take the client up"
        time.sleep(0.05)


def _admissions(node: Node) -> dict[str, float]:
    """The node's admission counts by source, from its /metrics."""
    text = httpx.get(node.url + "/metrics").text
    return {source: sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith(f'nullius_admissions_total{{source="{source}"}}'))
            for source in ("book", "chain")}


class ChainCutOff:
    """The node's request-path reads pointed at a port that refuses connections, for a moment
    shorter than `chain_cache_ttl`: whatever the node still answers, it answers without a read."""

    def __init__(self, node: Node):
        self.rpc = node.ctx.reads.rpc

    def __enter__(self):
        self.url, self.rpc.url = self.rpc.url, _url(_bind())

    def __exit__(self, *exc):
        self.rpc.url = self.url


def test_gateway__followed_client__admitted_without_a_chain_read(net, mlnode, client_acct):
    body = _body(max_tokens=2)
    assert _post(net.gateway.url, body, _headers(net, client_acct, body)).status_code == 200
    _followed(net.gateway, client_acct.address)
    before = _admissions(net.gateway)
    with ChainCutOff(net.gateway):
        r = _post(net.gateway.url, body, _headers(net, client_acct, body))
    assert r.status_code == 200, r.text
    assert _admissions(net.gateway) == {"book": before["book"] + 1, "chain": before["chain"]}


def test_gateway__request_started_through_another_gateway__409_from_the_index(net, mlnode, client_acct,
                                                                             anvil):
    """A client replays a signed request at a second gateway once its start landed: the second
    gateway's index of starts refuses it, with no chain read and nothing changed."""
    first, second = net.nodes
    body = _body(max_tokens=2)
    r = _post(second.url, body, _headers(net, client_acct, body))  # the second gateway knows the client
    assert r.status_code == 200, r.text
    iid = bytes.fromhex(r.headers["X-Nullius-Inference-Id"][2:])
    assert _wait_status(net, iid, {FINISHED, VALIDATED}, anvil) in {FINISHED, VALIDATED}
    headers = _headers(net, client_acct, body)
    r = _post(first.url, body, headers)
    assert r.status_code == 200, r.text
    iid = bytes.fromhex(r.headers["X-Nullius-Inference-Id"][2:])
    # finished: the client's escrow is settled, and a validation changes nothing checked below
    assert _wait_status(net, iid, {FINISHED, VALIDATED}, anvil) in {FINISHED, VALIDATED}
    before = _snapshot(net, client_acct)
    _followed(second, client_acct.address, iid)
    with ChainCutOff(second):
        r = _post(second.url, body, headers)
    assert _error(r) == (409, "nonce_reused",
                         f"nonce {headers['X-Nullius-Nonce']} of client {client_acct.address} "
                         "was already used")
    assert _snapshot(net, client_acct) == before


def test_hot_reads__started_logs__as_web3_decodes_them(net, mlnode, client_acct, anvil):
    body = _body(max_tokens=2)
    r = _post(net.gateway.url, body, _headers(net, client_acct, body))
    iid = bytes.fromhex(r.headers["X-Nullius-Inference-Id"][2:])
    assert _wait_status(net, iid, {FINISHED, VALIDATED}, anvil) in {FINISHED, VALIDATED}
    view = ChainView(net.gov)
    head = view.block_number()
    expected = [StartedLog(bytes(e["args"]["inference_id"]), e["blockNumber"], e["args"]["deadline"],
                           e["args"]["client"], e["args"]["nonce"])
                for e in view.ledger.events.Started().get_logs(from_block=view.start_block, to_block=head)]

    async def read() -> list[StartedLog]:
        async with httpx.AsyncClient() as http:
            return await HotReads(view, AsyncRpc(http, net.rpc_url)).started(view.start_block, head)

    assert iid in [log.inference_id for log in expected]
    assert asyncio.run(read()) == expected


def test_chain_view__raw_reads__as_web3_reads_them(net, mlnode, client_acct, anvil):
    body = _body(max_tokens=2)
    r = _post(net.gateway.url, body, _headers(net, client_acct, body))
    iid = bytes.fromhex(r.headers["X-Nullius-Inference-Id"][2:])
    # validated: the block whose hash draws the validators exists
    assert _wait_status(net, iid, {VALIDATED}, anvil) == VALIDATED
    view, ledger = ChainView(net.gov), net.gov.ledger
    block = view.block_number()
    info = view.inference(iid)
    number = info.batch.number
    batch = load_batch(ledger, number, view.start_block)
    assert info.batch == batch == view.batch(number, view.start_block, block)[0]
    assert (info.record, list(info.proof)) == batch.proven(iid)
    assert view.state(number, iid, block) == InferenceState(
        *ledger.functions.stateOf(number, iid).call(block_identifier=block))
    assert view.validators_of(info.record, info.proof) == ledger.functions.validatorsOf(
        info.record.as_tuple(), list(info.proof)).call()
    assert view.finished_in(number, info.finish_block) == [item.inference_id for item in batch.items]
    for n in (info.finish_block, block, block + 1000):
        assert view.epoch_of(n) == ledger.functions.epochOf(n).call()
        assert view.claim_block(view.epoch_of(n)) == ledger.functions.claimBlock(view.epoch_of(n)).call()
    (finished,) = ledger.events.Finished().get_logs(from_block=view.start_block, to_block=block,
                                                    argument_filters={"inference_id": iid})
    assert view._logs("Finished", [iid], view.start_block, block) == [
        {"args": dict(finished["args"]), "blockNumber": finished["blockNumber"]}]


def test_sdk__infer_with_quorum__signed_quorum_on_chain_and_paid(net, mlnode, client_acct, anvil):
    client = NulliusClient(net.gateway.url, net.rpc_url, client_acct.key, net.deployments)
    escrow = client.escrow()
    result = client.infer(model=MODEL, prompt="def f(x):\n", max_tokens=8, temperature=0.7, quorum=1)
    assert _wait_status(net, result.inference_id, {FINISHED, VALIDATED}, anvil) in {FINISHED, VALIDATED}
    info = client.status(result.inference_id)
    assert info.record.quorum == 1
    fee = info.cost * net.gov.ledger.functions.validator_fee_bps().call() // 10_000
    assert client.escrow() == escrow - info.cost - fee


def test_openai_package__quorum_header__signed_by_the_hook(net, mlnode, client_acct, anvil):
    http = signing_http_client(client_acct.key, net.domain, PRICE)
    oa = openai.OpenAI(base_url=net.gateway.url + "/v1", api_key="unused", http_client=http)
    raw = oa.completions.with_raw_response.create(
        model=MODEL, prompt="import os\n", max_tokens=4, extra_headers={"X-Nullius-Quorum": "2"})
    iid = bytes.fromhex(raw.headers["X-Nullius-Inference-Id"][2:])
    _wait_status(net, iid, {FINISHED, VALIDATED}, anvil)
    assert ChainView(net.gov).inference(iid).record.quorum == 2


def test_openai_package__chat_and_stream_through_signing_hook(net, mlnode, client_acct, anvil):
    http = signing_http_client(client_acct.key, net.domain, PRICE)
    oa = openai.OpenAI(base_url=net.gateway.url + "/v1", api_key="unused", http_client=http)
    raw = oa.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "def add(a, b):"}], max_tokens=6,
        temperature=0)
    chat = raw.parse()
    iid = bytes.fromhex(raw.headers["X-Nullius-Inference-Id"][2:])
    assert chat.choices[0].message.content is not None
    assert chat.model_extra["nullius_receipt"]["executor"] == raw.headers["X-Nullius-Executor"]

    chunks = list(oa.completions.create(model=MODEL, prompt="import os\n", max_tokens=6,
                                        stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    receipt = chunks[-1].model_extra["nullius_receipt"]
    assert receipt["response_hash"] == "0x" + keccak(text=text).hex()
    assert _wait_status(net, iid, {FINISHED, VALIDATED}, anvil) in {FINISHED, VALIDATED}
    # the executor records a streamed answer after its last chunk, whatever the client does next
    streamed = bytes.fromhex(receipt["inference_id"][2:])
    assert _wait_status(net, streamed, {FINISHED, VALIDATED}, anvil) in {FINISHED, VALIDATED}


def test_cli__infer_then_status__answer_matches_chain(net, mlnode, client_acct, anvil, capsys):
    common = ["client", "--gateway", net.gateway.url, "--rpc-url", net.rpc_url,
              "--key", client_acct.key.hex(), "--deployments", str(net.gateway.ctx.settings.deployments_file)]
    assert nullius([*common, "infer", "--model", MODEL, "--prompt", "class A:", "--max-tokens", "4"]) == 0
    out = capsys.readouterr().out
    iid = re.search(r"inference (0x[0-9a-f]{64}) by", out).group(1)
    _wait_status(net, bytes.fromhex(iid[2:]), {FINISHED, VALIDATED}, anvil)
    assert nullius([*common, "status", iid]) == 0
    assert re.search(r"status\W+(finished|validated)\b", capsys.readouterr().out)
    assert nullius([*common, "status", iid, "--text", "surely not the answer"]) == 1
    assert "answer does NOT match the chain" in capsys.readouterr().out


def test_cli__refused_input__error_names_it_and_nothing_changes(net, client_acct, capsys):
    common = ["client", "--gateway", net.gateway.url, "--rpc-url", net.rpc_url,
              "--key", client_acct.key.hex(), "--deployments", str(net.gateway.ctx.settings.deployments_file)]
    before = _snapshot(net, client_acct)
    assert nullius([*common, "infer", "--model", MODEL, "--prompt", "x", "--max-tokens", "0"]) == 2
    assert capsys.readouterr().out == "error: max_tokens: Input should be greater than or equal to 1\n"
    assert nullius([*common, "withdraw", str(before[0] + 1)]) == 1
    assert capsys.readouterr().out == "error: ledger: insufficient escrow\n"
    assert _snapshot(net, client_acct) == before


def test_sdk__gateway_refusal__raises_with_code(net, mlnode):
    poor = net.funded(deposit=0)
    client = NulliusClient(net.gateway.url, net.rpc_url, poor.key, net.deployments)
    with pytest.raises(NulliusError, match="insufficient escrow: 0 deposited") as info:
        client.infer(model=MODEL, prompt="x", max_tokens=2)
    assert (info.value.code, info.value.status) == ("insufficient_escrow", 402)


def test_metrics__count_requests_and_errors(net):
    text = httpx.get(net.gateway.url + "/metrics").text
    assert 'nullius_errors_total{code="insufficient_escrow",role="gateway"}' in text
    assert 'nullius_outbox{state="pending"}' in text
