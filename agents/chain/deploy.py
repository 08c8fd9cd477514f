"""The one deploy routine: MockToken (unless a token is given), Registry, Ledger, wiring, and on a
MockToken deployment the reward pools of the first `reward_epochs` epochs.

Both `ape run deploy` and the devnet call `deploy`, which writes `deployments/<chain_id>.json`,
the file every other part reads its addresses from.
"""

from __future__ import annotations

from pathlib import Path

from eth_account import Account
from pydantic import BaseModel, ConfigDict, Field, model_validator
from web3 import Web3

from agents.chain.build import contract_type
from agents.protocol.eip712 import model_id

TOKEN = 10**18  # one whole token of an 18-decimal ERC-20, in base units
RECEIPT_TIMEOUT_S = 120


class DeployParams(BaseModel):
    """Constructor parameters, in blocks and basis points; the defaults suit the devnet (1 s blocks),
    where a demo must see epochs settle in minutes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_stake: int = Field(default=100 * TOKEN, gt=0)
    unbonding_blocks: int = Field(default=60, ge=0)
    validation_window: int = Field(default=8, ge=2, le=256, description="blocks")
    jury_window: int = Field(default=8, ge=1, le=250, description="blocks")
    jury_size: int = Field(default=3, ge=1, le=5)
    epoch_length: int = Field(default=30, gt=0, description="blocks")
    settlement_delay: int = Field(default=20, ge=0, description="blocks after an epoch before its claims")
    max_reputation: int = Field(default=20, gt=0)
    slash_bps: int = Field(default=1_000, ge=0, le=10_000)
    validator_fee_bps: int = Field(default=1_000, ge=0, le=10_000)
    accuser_penalty_bps: int = Field(default=500, ge=0, le=10_000)
    # The devnet's emission schedule: the deployer mints and funds this much per epoch (MockToken only).
    reward_per_epoch: int = Field(default=10 * TOKEN, ge=0)
    reward_epochs: int = Field(default=200, ge=0, le=1024)

    @model_validator(mode="after")
    def _judgements_end_in_time(self) -> "DeployParams":
        # Every verdict and dispute must end before claims open and before stake can leave.
        judged = self.validation_window + self.jury_window + 2
        if self.settlement_delay <= judged:
            raise ValueError(f"settlement_delay ({self.settlement_delay}) must exceed validation_window + "
                             f"jury_window + 2 ({judged})")
        if self.unbonding_blocks <= judged:
            raise ValueError(f"unbonding_blocks ({self.unbonding_blocks}) must exceed validation_window + "
                             f"jury_window + 2 ({judged})")
        return self

    def ledger_params(self) -> tuple:
        """The Ledger constructor's `Params` tuple."""
        return (self.validation_window, self.jury_window, self.jury_size, self.epoch_length,
                self.settlement_delay, self.max_reputation, self.slash_bps, self.validator_fee_bps,
                self.accuser_penalty_bps)


class Deployments(BaseModel):
    """Addresses of one chain's deployment, as written to deployments/<chain_id>.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chain_id: int
    token: str
    registry: str
    ledger: str
    start_block: int = Field(description="block of the first deployment: where event scans begin")

    @classmethod
    def load(cls, path: Path | str) -> "Deployments":
        return cls.model_validate_json(Path(path).read_text())

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path


def deploy(
    w3: Web3,
    deployer_key: bytes | str,
    params: DeployParams,
    token: str | None = None,
    out_dir: Path | str = "deployments",
) -> Deployments:
    """Deploy and wire the contracts from `deployer_key` (who becomes the Registry's gov)."""
    sender = _Sender(w3, deployer_key)
    token_block = None
    if token is None:
        token, token_block = sender.deploy("MockToken")
    registry, registry_block = sender.deploy("Registry", token, params.min_stake, params.unbonding_blocks)
    ledger, _ = sender.deploy("Ledger", token, registry, params.ledger_params())
    sender.call("Registry", registry, "setLedger", ledger)
    if token_block is not None and params.reward_epochs and params.reward_per_epoch:
        total = params.reward_epochs * params.reward_per_epoch
        sender.call("MockToken", token, "mint", sender.account.address, total)
        sender.call("MockToken", token, "approve", ledger, total)
        sender.call("Ledger", ledger, "fundRewards", 0, params.reward_epochs, params.reward_per_epoch)
    deployments = Deployments(
        chain_id=w3.eth.chain_id,
        token=Web3.to_checksum_address(token),
        registry=registry,
        ledger=ledger,
        start_block=registry_block if token_block is None else token_block,
    )
    deployments.save(Path(out_dir) / f"{deployments.chain_id}.json")
    return deployments


def register_model(
    w3: Web3,
    deployer_key: bytes | str,
    deployments: Deployments,
    name: str,
    spec_hash: bytes,
    price: int,
) -> bytes:
    """Register a model as gov; returns its id, keccak(name)."""
    mid = model_id(name)
    _Sender(w3, deployer_key).call("Registry", deployments.registry, "registerModel", mid, name, spec_hash, price)
    return mid


class _Sender:
    """Signs locally and waits for each receipt, failing loudly on a revert."""

    def __init__(self, w3: Web3, key: bytes | str):
        self.w3 = w3
        self.account = Account.from_key(key)
        self.chain_id = w3.eth.chain_id

    def deploy(self, name: str, *args) -> tuple[str, int]:
        ct = contract_type(name)
        factory = self.w3.eth.contract(abi=ct["abi"], bytecode=ct["bytecode"])
        receipt = self._send(factory.constructor(*args), f"deploy {name}")
        return receipt["contractAddress"], receipt["blockNumber"]

    def call(self, name: str, address: str, fn: str, *args) -> None:
        contract = self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=contract_type(name)["abi"])
        self._send(contract.functions[fn](*args), f"{name}.{fn}")

    def _send(self, fn, what: str):
        tx = fn.build_transaction({
            "from": self.account.address,
            "nonce": self.w3.eth.get_transaction_count(self.account.address, "pending"),
            "chainId": self.chain_id,
        })
        tx_hash = self.w3.eth.send_raw_transaction(self.account.sign_transaction(tx).raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_S)
        if receipt["status"] != 1:
            raise RuntimeError(f"{what} reverted in transaction {tx_hash.to_0x_hex()}")
        return receipt
