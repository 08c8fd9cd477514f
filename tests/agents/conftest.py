"""Shared fixtures for the agents' tests: a real anvil, the real contracts, real HTTP servers.

`anvil` and `deployed` are session-scoped: one chain for the whole run, so tests must not assume a
fresh chain (use fresh nonces and accounts, read balances before and after). Accounts are named
after their roles and derived from anvil's mnemonic.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3

from agents.devnet.accounts import anvil_account
from agents.protocol.nonces import NonceCounter
from agents.protocol.requests import InferenceRequest

TOKEN = 10**18

REPO = Path(__file__).resolve().parents[2]
ANVIL = REPO / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"


@dataclass
class Anvil:
    rpc_url: str
    w3: Web3
    process: subprocess.Popen

    def account(self, index: int) -> LocalAccount:
        """anvil's funded account `index` (0..9 hold 10000 ETH each)."""
        return anvil_account(index)

    def mine(self, blocks: int = 1) -> None:
        self.w3.provider.make_request("anvil_mine", [blocks])


def start_anvil(log_path: Path, *extra: str) -> Anvil:
    """Start anvil on a port the OS picks and wait until it answers."""
    log = open(log_path, "wb")
    # Logs go to a file: a pipe nobody drains would fill up and stall anvil.
    process = subprocess.Popen([str(ANVIL), "--host", "127.0.0.1", "--port", "0", *extra],
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        match = re.search(r"Listening on 127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace"))
        if match:
            rpc_url = f"http://127.0.0.1:{match.group(1)}"
            return Anvil(rpc_url, Web3(Web3.HTTPProvider(rpc_url)), process)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(f"anvil did not start:\n{log_path.read_text(errors='replace')[-2000:]}")


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def anvil(tmp_path_factory) -> Anvil:
    node = start_anvil(tmp_path_factory.mktemp("anvil") / "anvil.log")
    yield node
    stop_process(node.process)


@pytest.fixture(scope="session")
def gov(anvil) -> LocalAccount:
    return anvil.account(0)


@pytest.fixture(scope="session")
def deployed(anvil, gov, tmp_path_factory):
    """The contracts deployed by the one deploy routine, with its default parameters."""
    from agents.chain.build import ensure_compiled
    from agents.chain.deploy import DeployParams, deploy

    ensure_compiled(REPO)
    return deploy(anvil.w3, gov.key, DeployParams(), out_dir=tmp_path_factory.mktemp("deployments"))


@pytest.fixture(scope="session")
def new_account(anvil):
    """new_account() -> a fresh key holding 100 ETH: no two tests share an account by accident."""

    def make() -> LocalAccount:
        account = Account.create()
        anvil.w3.provider.make_request("anvil_setBalance", [account.address, hex(100 * 10**18)])
        return account

    return make


@pytest.fixture(scope="session")
def gov_chain(anvil, gov, deployed):
    from agents.chain.client import ChainClient

    return ChainClient(anvil.rpc_url, gov.key, deployed)


@pytest.fixture(scope="session")
def make_model(anvil, gov, deployed):
    """make_model(name, price_per_token) -> model id, registered by gov."""
    from agents.chain.deploy import register_model

    def make(name: str, price: int = 10) -> bytes:
        return register_model(anvil.w3, gov.key, deployed, name, b"\x11" * 32, price)

    return make


@pytest.fixture(scope="session")
def make_participant(anvil, deployed, gov_chain, new_account):
    """make_participant(model_id, stake=100 tokens, url=...) -> ChainClient of a registered participant."""
    from agents.chain.client import ChainClient

    def make(model_id: bytes, stake: int = 100 * TOKEN, url: str = "http://127.0.0.1:1"):
        chain = ChainClient(anvil.rpc_url, new_account().key, deployed)
        gov_chain.transact(gov_chain.token.functions.mint(chain.address, stake))
        chain.transact(chain.token.functions.approve(deployed.registry, stake))
        chain.transact(chain.registry.functions.register(stake, url, model_id))
        return chain

    return make


@pytest.fixture(scope="session")
def make_client(anvil, deployed, gov_chain, new_account):
    """make_client(escrow=10 tokens) -> ChainClient of a client with that much in Ledger escrow."""
    from agents.chain.client import ChainClient

    def make(escrow: int = 10 * TOKEN):
        chain = ChainClient(anvil.rpc_url, new_account().key, deployed)
        gov_chain.transact(gov_chain.token.functions.mint(chain.address, escrow))
        chain.transact(chain.token.functions.approve(deployed.ledger, escrow))
        chain.transact(chain.ledger.functions.deposit(escrow))
        return chain

    return make


@dataclass(frozen=True)
class Start:
    """A signed request as a gateway queues its start: `args` are the outbox's "start" args."""

    inference_id: bytes
    request: InferenceRequest
    executor: str  # drawn by the Registry with the seed block's hash
    model_id: bytes
    seed_block: int
    item: list  # the Ledger's StartItem, as agents.node.gateway.start_item builds it

    @property
    def key(self) -> str:
        return "0x" + self.inference_id.hex()

    @property
    def args(self) -> list:
        return [self.executor, "0x" + self.model_id.hex(), self.item]


@pytest.fixture(scope="session")
def sign_start(anvil, deployed, gov_chain):
    """sign_start(client, model, *, max_tokens=16, max_price=10, lifetime=3600, quorum=0,
    signer=None) -> Start: a fresh request of `client` (an account or a ChainClient) for the model
    named `model`, signed by the client (or by `signer`, a forgery), seeded with the latest block.
    Nonces come from one NonceCounter, as a client's do."""
    from agents.node.gateway import start_item
    from agents.protocol.eip712 import Domain, inference_id, model_id, sign_request

    domain = Domain(deployed.chain_id, deployed.ledger)
    nonces = NonceCounter()

    def sign(client, model: str, *, max_tokens: int = 16, max_price: int = 10, lifetime: int = 3600,
             quorum: int = 0, signer=None) -> Start:
        account = getattr(client, "account", client)
        latest = anvil.w3.eth.get_block("latest")
        request = InferenceRequest(model=model, prompt="hi", max_tokens=max_tokens, max_price=max_price,
                                   nonce=nonces(), deadline=latest["timestamp"] + lifetime,
                                   client=account.address, quorum=quorum)
        iid = inference_id(request, domain)
        signature = sign_request(request, domain, getattr(signer, "account", signer or account).key)
        seed = keccak(iid + latest["hash"])
        executor = gov_chain.registry.functions.drawExecutor(model_id(model), seed).call()
        return Start(iid, request, executor, model_id(model), latest["number"],
                     start_item(request, signature, latest["number"]))

    return sign


@pytest.fixture(scope="session")
def batch_of(deployed, gov_chain):
    """batch_of(inference_id) -> the Batch its `Started` log names, rebuilt from the Ledger's events
    (agents.chain.batches.load_batch); None when it was never started."""
    from agents.chain.batches import load_batch

    def find(iid: bytes):
        logs = gov_chain.ledger.events.Started().get_logs(
            from_block=deployed.start_block, argument_filters={"inference_id": iid})
        if not logs:
            return None
        return load_batch(gov_chain.ledger, logs[0]["args"]["batch"], logs[0]["blockNumber"])

    return find


@pytest.fixture(scope="session")
def status_of(deployed, gov_chain):
    """status_of(inference_id) -> its Ledger status (`stateOf` in the batch its `Started` log
    names); 0 when it was never started."""

    def status(iid: bytes) -> int:
        logs = gov_chain.ledger.events.Started().get_logs(
            from_block=deployed.start_block, argument_filters={"inference_id": iid})
        if not logs:
            return 0
        return gov_chain.ledger.functions.stateOf(logs[0]["args"]["batch"], iid).call()[0]

    return status


@pytest.fixture
def serve_app():
    """serve_app(app) -> base URL: runs an ASGI app over real HTTP on a free port until the test ends."""
    servers = []

    def serve(app) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        servers.append((server, thread, sock))
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield serve
    for server, thread, sock in servers:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
