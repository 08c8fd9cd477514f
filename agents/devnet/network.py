"""One local network: anvil, the deployed contracts, N participants (node + model node), clients.

Every participant is a pair of real processes talking HTTP: `nullius mlnode` serving a model and
`nullius node` running the gateway, executor, validator and keeper roles. Cheating participants
serve the smaller substitute model under the reference model's name.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from web3 import Web3

from agents.chain.build import ensure_compiled
from agents.chain.client import ChainClient
from agents.chain.deploy import DeployParams, Deployments, deploy, register_model
from agents.devnet.accounts import anvil_account
from agents.devnet.processes import ProcessGroup
from agents.protocol.eip712 import model_id

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "nullius/ref-tiny"
REFERENCE_MODEL = REPO / "models" / "ref-tiny"
SUBSTITUTE_MODEL = REPO / "models" / "sub-nano"
TOKEN = 10**18  # one whole payment token in base units


@dataclass(frozen=True)
class DevnetConfig:
    participants: int = 3
    cheaters: int = 1  # the last `cheaters` participants serve the substitute model
    clients: int = 1
    host: str = "127.0.0.1"
    port_base: int = 0  # 0: pick free ports
    data_dir: Path = REPO / "devnet-data"
    block_time: int = 1
    # Every model node of the devnet shares this machine's cores: with torch's default of one
    # thread per core, their OpenMP threads oversubscribe the cores and spin against each other
    # (on 2 cores, a tiny model decoded 2.5x slower at 2 threads than at 1 under load).
    mlnode_threads: int = 1
    price_per_token: int = 10**12
    stake: int = 1_000 * TOKEN
    client_funds: int = 100 * TOKEN
    deploy: DeployParams = field(default_factory=DeployParams)


@dataclass
class Participant:
    index: int
    address: str
    private_key: str
    cheater: bool
    node_url: str
    mlnode_url: str


@dataclass
class Devnet:
    config: DevnetConfig
    rpc_url: str
    deployments: Deployments
    participants: list[Participant]
    client_keys: list[str]
    procs: ProcessGroup

    @property
    def gateway_url(self) -> str:
        return self.participants[0].node_url

    def stop(self) -> None:
        self.procs.stop()


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _ports(config: DevnetConfig, count: int) -> list[int]:
    if config.port_base:
        return [config.port_base + i for i in range(count)]
    # all held at once: a port closed before the next is asked for can be handed out again, and
    # two processes given one port lose a race at startup ("address already in use")
    with ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind((config.host, 0))
        return [s.getsockname()[1] for s in sockets]


def anvil_binary() -> str:
    local = REPO / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
    found = shutil.which("anvil") or (str(local) if local.exists() else None)
    if not found:
        raise FileNotFoundError("anvil not found: run `make install` (npm install) first")
    return found


def _spec_hash(model_dir: Path) -> bytes:
    return hashlib.sha256((model_dir / "manifest.json").read_bytes()).digest()


def start(config: DevnetConfig, log=print) -> Devnet:
    """Bring the whole network up; the caller owns `stop()`."""
    data = config.data_dir
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    procs = ProcessGroup(data / "logs")
    try:
        return _start(config, procs, log)
    except BaseException:
        procs.stop()
        raise


def _start(config: DevnetConfig, procs: ProcessGroup, log) -> Devnet:
    data = config.data_dir
    n = config.participants
    ports = _ports(config, 1 + 2 * n)
    rpc_url = f"http://{config.host}:{ports[0]}"

    log("compiling contracts")
    ensure_compiled(REPO)

    log(f"starting anvil at {rpc_url} (block time {config.block_time} s)")
    procs.start(
        "anvil",
        [anvil_binary(), "--host", config.host, "--port", str(ports[0]),
         "--block-time", str(config.block_time), "--silent"],
    )
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    _wait_rpc(w3, procs)

    gov = anvil_account(0)
    log("deploying contracts")
    deployments = deploy(w3, gov.key, config.deploy, out_dir=data / "deployments")
    register_model(w3, gov.key, deployments, MODEL_NAME, _spec_hash(REFERENCE_MODEL),
                   config.price_per_token)
    gov_chain = ChainClient(rpc_url, gov.key, deployments)

    participants: list[Participant] = []
    for i in range(n):
        acct = anvil_account(1 + i)
        cheater = i >= n - config.cheaters
        node_port, ml_port = ports[1 + 2 * i], ports[2 + 2 * i]
        participants.append(Participant(
            index=i, address=acct.address, private_key=acct.key.hex(), cheater=cheater,
            node_url=f"http://{config.host}:{node_port}",
            mlnode_url=f"http://{config.host}:{ml_port}",
        ))
        chain = ChainClient(rpc_url, acct.key, deployments)
        gov_chain.transact(gov_chain.token.functions.mint(acct.address, config.stake))
        chain.transact(chain.token.functions.approve(deployments.registry, config.stake))
        chain.transact(chain.registry.functions.register(
            config.stake, participants[-1].node_url, model_id(MODEL_NAME)))
    log(f"registered {n} participants ({config.cheaters} cheating) with "
        f"{config.stake // TOKEN} tokens of stake each")

    client_keys = []
    for j in range(config.clients):
        acct = anvil_account(1 + n + j)
        client_keys.append(acct.key.hex())
        gov_chain.transact(gov_chain.token.functions.mint(acct.address, config.client_funds))

    for p in participants:
        model_dir = SUBSTITUTE_MODEL if p.cheater else REFERENCE_MODEL
        procs.start(f"mlnode-{p.index}", [
            sys.executable, "-m", "agents.cli", "mlnode", "--model", str(model_dir),
            "--served-name", MODEL_NAME, "--host", config.host,
            "--port", p.mlnode_url.rsplit(":", 1)[1], "--threads", str(config.mlnode_threads),
        ])
        config_file = data / f"participant-{p.index}" / "node.json"
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(json.dumps(_node_config(config, p, rpc_url, data), indent=2))
        procs.start(f"node-{p.index}", [
            sys.executable, "-m", "agents.cli", "node", "--config", str(config_file),
        ])
    for p in participants:
        procs.wait_http(f"mlnode-{p.index}", p.mlnode_url + "/health")
        procs.wait_http(f"node-{p.index}", p.node_url + "/health")
    log("all participants are up")
    return Devnet(config, rpc_url, deployments, participants, client_keys, procs)


def _wait_rpc(w3: Web3, procs: ProcessGroup, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        try:
            w3.eth.block_number
            return
        except Exception:
            time.sleep(0.1)
    raise TimeoutError("anvil did not answer")


def _node_config(config: DevnetConfig, p: Participant, rpc_url: str, data: Path) -> dict:
    host, port = p.node_url.rsplit("//", 1)[1].rsplit(":", 1)
    return {
        "private_key": p.private_key,
        "rpc_url": rpc_url,
        "deployments_file": str(data / "deployments" / "31337.json"),
        "mlnode_url": p.mlnode_url,
        "public_url": p.node_url,
        "host": host,
        "port": int(port),
        "data_dir": str(data / f"participant-{p.index}"),
        "model": MODEL_NAME,
    }
