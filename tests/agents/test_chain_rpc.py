"""The event loop's JSON-RPC reads against a real anvil: the same values as web3's contract calls,
and errors that name the call or the endpoint."""

from __future__ import annotations

import socket

import httpx
import pytest
from eth_utils import to_checksum_address

from agents.chain.client import ChainUnavailable
from agents.chain.rpc import AsyncRpc, ContractCalls, RpcError
from agents.node.chain_view import AdmissionReads, ChainView, HotReads


async def test_calls__decode_like_web3(anvil, make_client):
    chain = make_client(escrow=1234)
    ledger = ContractCalls(chain.ledger.address, chain.ledger.abi)
    iid = b"\x42" * 32
    async with httpx.AsyncClient() as http:
        (escrow,), (state,), (token,) = await AsyncRpc(http, anvil.rpc_url).calls(
            [ledger("escrowOf", chain.address), ledger("stateOf", 3, iid), ledger("token")])
    assert escrow == chain.ledger.functions.escrowOf(chain.address).call() == 1234
    assert state == tuple(chain.ledger.functions.stateOf(3, iid).call())
    assert to_checksum_address(token) == chain.ledger.functions.token().call()  # eth-abi: lower case


async def test_hot_reads__head_and_admission__match_the_chain(anvil, make_client):
    chain = make_client(escrow=77)
    view = ChainView(chain)
    async with httpx.AsyncClient() as http:
        reads = HotReads(view, AsyncRpc(http, anvil.rpc_url))
        head = await reads.head()
        admission = await reads.admission(chain.address, 5)
        escrows = await reads.escrows([chain.address, "0x" + "ab" * 20], head.number)
        fee_bps = await reads.validator_fee_bps()
    block = anvil.w3.eth.get_block(head.number)
    assert head.hash == bytes(block["hash"])
    assert view.known_blockhash(head.number) == head.hash  # remembered for the executor's draw
    assert admission == AdmissionReads(False, 77, None)
    assert escrows == {chain.address.lower(): 77, "0x" + "ab" * 20: 0}
    assert fee_bps == chain.ledger.functions.validator_fee_bps().call() == 1_000


async def test_batch__error_object__names_the_method(anvil):
    async with httpx.AsyncClient() as http:
        with pytest.raises(RpcError) as err:
            await AsyncRpc(http, anvil.rpc_url).batch([("eth_blockNumber", []), ("eth_noSuchMethod", [])])
    assert str(err.value).startswith("eth_noSuchMethod failed: ")


async def test_batch__unreachable__chain_unavailable():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    async with httpx.AsyncClient() as http:
        with pytest.raises(ChainUnavailable, match=f"^JSON-RPC batch to {url} failed: ConnectError"):
            await AsyncRpc(http, url).latest_block()
