"""A web3 client for one participant's key: contract bindings, local signing, nonces, revert reasons.

Bindings come from the compiled build (agents.chain.build) and the addresses from the deployments
file, never from hand-copied JSON. Transactions are signed locally, so the RPC node never holds a
key, and nonces are handed out locally under a lock, so many threads can send without waiting for
each other's receipts.
"""

from __future__ import annotations

import threading
from typing import Any

import requests
from eth_abi import decode
from eth_abi.exceptions import DecodingError
from eth_account import Account
from hexbytes import HexBytes
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import (
    ContractLogicError,
    ProviderConnectionError,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)
from web3.middleware import AttributeDictMiddleware

from agents.chain.build import contract_type

# Error(string): the selector that starts the payload of a revert with a reason
_ERROR_SELECTOR = "0x08c379a0"
# Head room over eth_estimateGas: state can change between the estimate and the inclusion. The
# additive part covers a transaction that lands in the first block of a new epoch after an estimate
# in the old one: the Ledger's epoch accounts are fresh storage then, three slots at up to 17,100
# more gas each than the estimate saw. Unused gas is not charged.
GAS_MARGIN, GAS_HEADROOM = 1.2, 60_000
# The reason of a mined revert whose replay on the state before its block passes: the block (an
# earlier transaction in it, or its number) changed the outcome, so sending again may succeed.
STATE_CHANGED = "transaction reverted"
# Seconds between receipt polls. Each poll is a web3 call of a millisecond or two of CPU; at one
# block a second, polling 20 times a second took CPU from the requests that share the machine.
RECEIPT_POLL_S = 0.2
# Failures of the transport rather than of the transaction: worth retrying later.
_TRANSPORT_ERRORS = (requests.RequestException, ProviderConnectionError, OSError)


class ChainError(Exception):
    """A transaction the chain refused: `reason` is the decoded revert string, e.g. "ledger: expired"."""

    def __init__(self, reason: str, tx_hash: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.tx_hash = tx_hash


class ChainUnavailable(Exception):
    """The RPC node could not be reached or did not answer in time; the same call may succeed later."""


def revert_reason(exc: ContractLogicError) -> str:
    """The reason string of a revert, e.g. "ledger: expired"; "execution reverted" when it has none."""
    data = exc.data if isinstance(exc.data, str) else ""
    if data[:10].lower() == _ERROR_SELECTOR:
        try:
            return decode(["string"], bytes.fromhex(data[10:]))[0]
        except (ValueError, DecodingError):
            pass  # a malformed payload: the node's message is all there is
    message = exc.message or str(exc)
    return message.removeprefix("execution reverted: ") or "execution reverted"


class ChainClient:
    def __init__(self, rpc_url: str, private_key: bytes | str, deployments, *, timeout: float = 60.0):
        """`deployments` is an agents.chain.deploy.Deployments (chain_id, token, registry, ledger)."""
        # Of web3's default middleware only the attribute dicts: its validation layer asks the node
        # for the chain id on every estimate and receipt poll (checked once, below), and the ENS
        # and gas-price layers have nothing to do for calls that name addresses and carry gas.
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 10}),
                       middleware=[AttributeDictMiddleware])
        self.account = Account.from_key(private_key)
        self.address = self.account.address
        self.deployments = deployments
        self.timeout = timeout
        try:
            chain_id = self.w3.eth.chain_id
        except _TRANSPORT_ERRORS as exc:
            raise ChainUnavailable(f"RPC {rpc_url} unreachable: {exc}") from exc
        if chain_id != deployments.chain_id:
            raise ValueError(f"RPC {rpc_url} serves chain {chain_id}, the deployments are for chain {deployments.chain_id}")
        self.chain_id = chain_id
        self.token = self.contract("MockToken", deployments.token)
        self.registry = self.contract("Registry", deployments.registry)
        self.ledger = self.contract("Ledger", deployments.ledger)
        self._nonce_lock = threading.Lock()
        self._next_nonce: int | None = None

    def contract(self, name: str, address: str):
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=contract_type(name)["abi"])

    # --- sending ------------------------------------------------------------------------------

    def estimate(self, fn: ContractFunction) -> int:
        """Gas for `fn` from this account, with margin; raises ChainError with the revert reason."""
        try:
            # Against the pending block: the transaction runs in the next block, and checks such
            # as "seed_block < block.number" must see that block's number, not the latest one's.
            gas = fn.estimate_gas({"from": self.address}, block_identifier="pending")
            return int(gas * GAS_MARGIN) + GAS_HEADROOM
        except ContractLogicError as exc:
            raise ChainError(revert_reason(exc)) from None
        except _TRANSPORT_ERRORS as exc:
            raise ChainUnavailable(f"estimate failed: {exc}") from exc

    def send(self, fn: ContractFunction, gas: int | None = None) -> str:
        """Sign and broadcast `fn`; returns the transaction hash without waiting for it to be mined.

        Without `gas`, the gas is estimated first, so a call that would revert raises ChainError
        here and spends nothing.
        """
        if gas is None:
            gas = self.estimate(fn)
        with self._nonce_lock:
            for attempt in (1, 2):
                try:
                    if self._next_nonce is None:
                        self._next_nonce = self.w3.eth.get_transaction_count(self.address, "pending")
                    tx = fn.build_transaction(
                        {"from": self.address, "nonce": self._next_nonce, "gas": gas, "chainId": self.chain_id}
                    )
                    tx_hash = self.w3.eth.send_raw_transaction(self.account.sign_transaction(tx).raw_transaction)
                    break
                except (Web3RPCError, *_TRANSPORT_ERRORS) as exc:
                    # The node may or may not have taken it: ask it for the nonce next time.
                    self._next_nonce = None
                    message = str(getattr(exc, "message", None) or exc)
                    if attempt == 1 and "nonce too low" in message:
                        continue  # something else sent from this key: once more with the node's nonce
                    # Other rejections (no funds for gas, pool full) can pass too: try again later.
                    raise ChainUnavailable(f"send failed: {message}") from exc
            self._next_nonce += 1
        return tx_hash.to_0x_hex()

    def wait(self, tx_hash: str, timeout: float | None = None) -> dict:
        """The receipt of a sent transaction; raises ChainError (with the reason) if it reverted."""
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=timeout or self.timeout, poll_latency=RECEIPT_POLL_S
            )
        except TimeExhausted as exc:
            raise ChainUnavailable(f"no receipt for {tx_hash} within {timeout or self.timeout:g} s") from exc
        except _TRANSPORT_ERRORS as exc:
            raise ChainUnavailable(f"waiting for {tx_hash} failed: {exc}") from exc
        if receipt["status"] != 1:
            raise ChainError(self._replay_reason(tx_hash, receipt["blockNumber"]), tx_hash)
        return receipt

    def receipt(self, tx_hash: str) -> dict | None:
        """The receipt if the transaction is mined, None if not (yet); does not wait."""
        try:
            return self.w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None
        except _TRANSPORT_ERRORS as exc:
            raise ChainUnavailable(f"receipt lookup failed: {exc}") from exc

    def is_known(self, tx_hash: str) -> bool:
        """Whether the node knows the transaction at all (mined or waiting in its pool)."""
        try:
            self.w3.eth.get_transaction(tx_hash)
        except TransactionNotFound:
            return False
        except _TRANSPORT_ERRORS as exc:
            raise ChainUnavailable(f"transaction lookup failed: {exc}") from exc
        return True

    def transact(self, fn: ContractFunction, gas: int | None = None) -> dict:
        """Send `fn` and wait for its receipt. Raises ChainError("ledger: ...") on a revert and
        ChainUnavailable when the node cannot be reached."""
        return self.wait(self.send(fn, gas))

    def _replay_reason(self, tx_hash: str, block: int) -> str:
        """A mined transaction's receipt has no reason: replay it on the state before its block."""
        tx = self.w3.eth.get_transaction(tx_hash)
        call: dict[str, Any] = {"from": tx["from"], "to": tx["to"], "data": HexBytes(tx["input"]), "gas": tx["gas"]}
        try:
            self.w3.eth.call(call, block_identifier=block - 1)
        except ContractLogicError as exc:
            return revert_reason(exc)
        # It succeeds on the earlier state, so its block changed the outcome.
        return STATE_CHANGED
