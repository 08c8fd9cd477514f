"""Read-only JSON-RPC posted from an asyncio event loop: eth_call batches and the head block.

For the reads a request waits on. web3.py's contract calls cost about 4 ms of CPU each (a batch of
two, 7 ms) where posting the same eth_calls costs under 1 ms (measured against the devnet's anvil),
and they block, so a node runs them in a worker thread whose GIL hand-offs also delay its event
loop. The ABIs still come from the compiled build, and eth-abi encodes and decodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count
from typing import Any

import httpx
from eth_abi import decode, encode
from eth_utils import event_abi_to_log_topic, to_checksum_address
from eth_utils.abi import function_abi_to_4byte_selector, get_abi_input_types, get_abi_output_types

from agents.chain.client import ChainUnavailable


class RpcError(ChainUnavailable):
    """The node answered a call with a JSON-RPC error object. These views do not revert, so it is
    the node's trouble (a rate limit, a block it does not have yet): worth retrying later."""


@dataclass(frozen=True)
class Call:
    to: str
    data: str  # 0x selector + encoded arguments
    output_types: tuple[str, ...]


class ContractCalls:
    """Encodes calls to one contract's view functions from its ABI; each function's selector and
    types are derived once, not per call."""

    def __init__(self, address: str, abi: list[dict]):
        self.address = address
        self._functions = {
            f["name"]: (function_abi_to_4byte_selector(f), get_abi_input_types(f),
                        tuple(get_abi_output_types(f)))
            for f in abi if f.get("type") == "function"}

    def __call__(self, name: str, *args: Any) -> Call:
        selector, inputs, outputs = self._functions[name]
        return Call(self.address, "0x" + (selector + encode(inputs, args)).hex(), outputs)


class EventDecoder:
    """One event's raw logs (as eth_getLogs returns them) decoded into its arguments by name,
    addresses checksummed, as web3's event objects give them. Every argument is a static type."""

    def __init__(self, abi: dict):
        self.topic = "0x" + event_abi_to_log_topic(abi).hex()
        self._indexed = [(i["name"], i["type"]) for i in abi["inputs"] if i["indexed"]]
        data = [i for i in abi["inputs"] if not i["indexed"]]
        self._names = [i["name"] for i in data]
        self._types = [i["type"] for i in data]
        self._addresses = {i["name"] for i in abi["inputs"] if i["type"] == "address"}

    def __call__(self, log: dict) -> dict:
        args = {name: decode([kind], bytes.fromhex(topic[2:]))[0]
                for (name, kind), topic in zip(self._indexed, log["topics"][1:])}
        args.update(zip(self._names, decode(self._types, bytes.fromhex(log["data"][2:]))))
        return {name: to_checksum_address(v) if name in self._addresses else v
                for name, v in args.items()}


def request(w3, method: str, params: list) -> Any:
    """One JSON-RPC request through a Web3's provider, past its middleware and result formatters,
    from the threads that make synchronous reads."""
    answer = w3.provider.make_request(method, params)
    if "error" in answer:
        raise RpcError(f"{method} failed: {answer['error'].get('message', answer['error'])}")
    return answer["result"]


class AsyncRpc:
    def __init__(self, http: httpx.AsyncClient, url: str, timeout: float = 10.0):
        # the timeout of the web3 reads beside these (agents.node.chain_view.ChainView)
        self.http, self.url, self.timeout = http, url, timeout
        self._ids = count(1)

    async def batch(self, requests: list[tuple[str, list]]) -> list[Any]:
        """The results of `(method, params)` requests sent in one JSON-RPC batch, in order."""
        ids = [next(self._ids) for _ in requests]
        body = [{"jsonrpc": "2.0", "id": i, "method": method, "params": params}
                for i, (method, params) in zip(ids, requests)]
        try:
            r = await self.http.post(self.url, json=body, timeout=self.timeout)
            r.raise_for_status()
            answers = {a["id"]: a for a in r.json()}
        except (httpx.HTTPError, ValueError, TypeError, KeyError) as exc:
            raise ChainUnavailable(f"JSON-RPC batch to {self.url} failed: {exc!r}") from exc
        results = []
        for i, (method, _params) in zip(ids, requests):
            answer = answers.get(i, {"error": {"message": "no answer in the batch"}})
            if "error" in answer:
                raise RpcError(f"{method} failed: {answer['error'].get('message', answer['error'])}")
            results.append(answer["result"])
        return results

    async def calls(self, calls: list[Call], block: int | str = "latest") -> list[tuple]:
        """Each call's decoded outputs (a tuple), all at one block."""
        tag = block if isinstance(block, str) else hex(block)
        raw = await self.batch([("eth_call", [{"to": c.to, "data": c.data}, tag]) for c in calls])
        return [decode(c.output_types, bytes.fromhex(data[2:])) for c, data in zip(calls, raw)]

    async def latest_block(self) -> tuple[int, bytes]:
        """The latest block's number and hash."""
        [block] = await self.batch([("eth_getBlockByNumber", ["latest", False])])
        return int(block["number"], 16), bytes.fromhex(block["hash"][2:])
