"""The client SDK: escrow, signed inference through any gateway, and checks against the chain."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from eth_utils import keccak

from agents.chain.client import ChainClient
from agents.chain.deploy import Deployments
from agents.node.chain_view import ChainView, InferenceInfo
from agents.protocol.eip712 import Domain, inference_id, model_id, sign_request
from agents.protocol.nonces import NonceCounter
from agents.protocol.messages import (
    H_EXECUTOR, H_INFERENCE_ID, H_SERVER_TIMING, RECEIPT_FIELD, ExecutionReceipt, auth_headers,
    openai_body, parse_server_timing,
)
from agents.protocol.requests import ChatMessage, InferenceRequest

DEFAULT_MODEL = "nullius/ref-tiny"


class NulliusError(Exception):
    """A gateway refusal (with its error code) or an answer that does not check out."""

    def __init__(self, message: str, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code, self.status = code, status


@dataclass(frozen=True)
class InferenceResult:
    inference_id: bytes
    executor: str
    text: str
    receipt: ExecutionReceipt
    response: dict
    # the gateway's and the executor's phases in ms, from the Server-Timing header
    timings: dict[str, float] = field(default_factory=dict)


class NulliusClient:
    def __init__(self, gateway_url: str, rpc_url: str, private_key: str | bytes,
                 deployments: Deployments | str | Path, timeout: float = 120.0):
        if not isinstance(deployments, Deployments):
            deployments = Deployments.load(deployments)
        self.chain = ChainClient(rpc_url, private_key, deployments)
        self.view = ChainView(self.chain)
        self.private_key = private_key
        self.address = self.chain.address
        self.domain = Domain(deployments.chain_id, deployments.ledger)
        self.http = httpx.Client(base_url=gateway_url.rstrip("/"), timeout=timeout)
        self.nonces = NonceCounter()

    # escrow ------------------------------------------------------------------------------

    def deposit(self, amount: int) -> None:
        self.chain.transact(self.chain.token.functions.approve(self.chain.ledger.address, amount))
        self.chain.transact(self.chain.ledger.functions.deposit(amount))

    def withdraw(self, amount: int) -> None:
        self.chain.transact(self.chain.ledger.functions.withdraw(amount))

    def escrow(self) -> int:
        return self.view.escrow_of(self.address)

    def price(self, model: str = DEFAULT_MODEL) -> int:
        return self.view.model(model_id(model)).price

    # inference ---------------------------------------------------------------------------

    def build_request(self, *, model: str = DEFAULT_MODEL, prompt: str | None = None,
                      messages: list[dict] | None = None, max_tokens: int,
                      temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                      max_price: int | None = None, nonce: int | None = None,
                      deadline_s: int = 300, quorum: int = 0) -> InferenceRequest:
        """A request ready to sign; `max_price` defaults to the model's registered price.
        `quorum` buys that many extra validators: the inference is then always validated, by
        1 + quorum of them, and each is paid the validator fee on the cost."""
        return InferenceRequest(
            model=model, prompt=prompt,
            messages=None if messages is None else tuple(ChatMessage(**m) for m in messages),
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            max_price=self.price(model) if max_price is None else max_price,
            nonce=self.nonces() if nonce is None else nonce,
            deadline=int(time.time()) + deadline_s, client=self.address, quorum=quorum)

    def sign(self, request: InferenceRequest) -> bytes:
        return sign_request(request, self.domain, self.private_key)

    def send(self, request: InferenceRequest, signature: bytes) -> InferenceResult:
        """POST a signed request to the gateway; checks the receipt against the answer."""
        path = "/v1/completions" if request.kind == "completion" else "/v1/chat/completions"
        r = self.http.post(path, json=openai_body(request), headers=auth_headers(request, signature))
        if r.status_code != 200:
            try:
                err = r.json()["error"]
            except Exception:
                raise NulliusError(f"gateway answered {r.status_code}: {r.text[:300]}",
                                   status=r.status_code) from None
            raise NulliusError(err["message"], err.get("code"), r.status_code)
        payload = r.json()
        choice = payload["choices"][0]
        text = choice["text"] if request.kind == "completion" else choice["message"]["content"]
        expected_id = inference_id(request, self.domain)
        receipt = check_receipt(payload.get(RECEIPT_FIELD), expected_id, text)
        if r.headers.get(H_INFERENCE_ID, "").lower() != "0x" + expected_id.hex():
            raise NulliusError("gateway answered for another inference id")
        if r.headers.get(H_EXECUTOR, "").lower() != receipt.executor.lower():
            raise NulliusError("the receipt's executor is not the one the gateway named")
        return InferenceResult(expected_id, receipt.executor, text, receipt, payload,
                               parse_server_timing(r.headers.get(H_SERVER_TIMING, "")))

    def infer(self, **kwargs) -> InferenceResult:
        """Build, sign and send a request; takes `build_request`'s arguments."""
        request = self.build_request(**kwargs)
        return self.send(request, self.sign(request))

    # checks against the chain ------------------------------------------------------------

    def status(self, inference_id: bytes) -> InferenceInfo:
        return self.view.inference(inference_id)

    def verify(self, inference_id: bytes, text: str) -> bool:
        """True when `text` is the answer whose hash the executor committed on chain."""
        return self.status(inference_id).response_hash == keccak(text=text)


def check_receipt(raw: dict | None, expected_id: bytes, text: str) -> ExecutionReceipt:
    """The executor's signed receipt, checked against the inference id and the answer text."""
    if raw is None:
        raise NulliusError("the answer carries no execution receipt")
    receipt = ExecutionReceipt.model_validate(raw)
    try:
        signer = receipt.verify()
    except ValueError as exc:
        raise NulliusError(f"execution receipt: {exc}") from None
    if signer.lower() != receipt.executor.lower():
        raise NulliusError(f"execution receipt is signed by {signer}, not by {receipt.executor}")
    if receipt.inference_id.lower() != "0x" + expected_id.hex():
        raise NulliusError("execution receipt is for another inference")
    if receipt.response_hash.lower() != "0x" + keccak(text=text).hex():
        raise NulliusError("execution receipt does not match the answer text")
    return receipt
