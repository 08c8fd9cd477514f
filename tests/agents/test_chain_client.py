"""ChainClient against a real anvil and the deployed contracts: signing, nonces, revert reasons."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from eth_abi import encode
from web3.exceptions import ContractLogicError

from agents.chain.client import ChainClient, ChainError, ChainUnavailable, revert_reason


def test_client__bindings_from_build__read_the_deployment(gov_chain, deployed):
    assert gov_chain.ledger.address == deployed.ledger
    assert gov_chain.registry.address == deployed.registry
    assert gov_chain.ledger.functions.token().call() == deployed.token
    assert gov_chain.chain_id == 31337


def test_client__other_chain_id__rejected(anvil, gov, deployed):
    with pytest.raises(ValueError) as err:
        ChainClient(anvil.rpc_url, gov.key, deployed.model_copy(update={"chain_id": 10}))
    assert str(err.value) == f"RPC {anvil.rpc_url} serves chain 31337, the deployments are for chain 10"


def test_client__unreachable_rpc__unavailable(gov, deployed):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    with pytest.raises(ChainUnavailable, match=f"^RPC {url} unreachable: "):
        ChainClient(url, gov.key, deployed)


def test_transact__withdraw__mined_and_counted(make_client):
    client = make_client(escrow=500)
    receipt = client.transact(client.ledger.functions.withdraw(200))
    assert receipt["status"] == 1
    assert client.ledger.functions.escrowOf(client.address).call() == 300
    assert client.token.functions.balanceOf(client.address).call() == 200


def test_transact__revert_at_estimate__reason_and_no_nonce_used(make_client):
    client = make_client(escrow=500)
    nonce = client.w3.eth.get_transaction_count(client.address)
    with pytest.raises(ChainError) as err:
        client.transact(client.ledger.functions.withdraw(501))
    assert err.value.reason == "ledger: insufficient escrow"
    assert err.value.tx_hash is None  # refused before sending: no gas spent
    assert client.w3.eth.get_transaction_count(client.address) == nonce
    client.transact(client.ledger.functions.withdraw(500))  # the next nonce is still the right one


def test_transact__mined_revert__reason_replayed(make_client):
    client = make_client(escrow=500)
    # An explicit gas limit skips the estimate, so the transaction is mined and fails on chain.
    with pytest.raises(ChainError) as err:
        client.transact(client.ledger.functions.withdraw(501), gas=200_000)
    assert err.value.reason == "ledger: insufficient escrow"
    receipt = client.w3.eth.get_transaction_receipt(err.value.tx_hash)
    assert receipt["status"] == 0


def test_transact__revert_in_other_contract__its_reason(make_client):
    client = make_client(escrow=1)
    with pytest.raises(ChainError, match="^registry: unknown model$"):
        client.transact(client.registry.functions.register(10**20, "http://x", b"\x00" * 32))


def test_send__many_threads__one_nonce_each(make_client):
    client = make_client(escrow=100)
    first = client.w3.eth.get_transaction_count(client.address)
    with ThreadPoolExecutor(8) as pool:
        receipts = list(pool.map(lambda _: client.transact(client.ledger.functions.withdraw(1)), range(24)))
    nonces = sorted(client.w3.eth.get_transaction(r["transactionHash"])["nonce"] for r in receipts)
    assert nonces == list(range(first, first + 24))
    assert client.ledger.functions.escrowOf(client.address).call() == 76


def test_send__key_used_elsewhere_meanwhile__nonce_resynced(make_client, anvil, deployed):
    client = make_client(escrow=100)
    elsewhere = ChainClient(anvil.rpc_url, client.account.key, deployed)  # another process, same key
    client.transact(client.ledger.functions.withdraw(1))
    elsewhere.transact(elsewhere.ledger.functions.withdraw(1))
    client.transact(client.ledger.functions.withdraw(1))  # its cached nonce is stale: "nonce too low"
    assert client.ledger.functions.escrowOf(client.address).call() == 97


@pytest.mark.parametrize(
    "exc, reason",
    [
        (
            ContractLogicError("execution reverted: ledger: expired",
                               data="0x08c379a0" + encode(["string"], ["ledger: expired"]).hex()),
            "ledger: expired",
        ),
        (ContractLogicError("execution reverted", data="0x"), "execution reverted"),
        (ContractLogicError("execution reverted: registry: x", data="0x08c379a0ff"), "registry: x"),
    ],
)
def test_revert_reason__payloads__decoded_or_message(exc, reason):
    assert revert_reason(exc) == reason
