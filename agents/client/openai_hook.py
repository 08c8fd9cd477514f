"""Sign every OpenAI request on its way out, so the official `openai` package works unchanged:

    http = signing_http_client(key, domain, max_price)
    openai.OpenAI(base_url=gateway + "/v1", api_key="unused", http_client=http)

The hook reads the JSON body the SDK built, maps it to the InferenceRequest the gateway will
rebuild (agents.protocol.messages.request_from_openai), signs it and adds the X-Nullius-* headers.
A call buys extra validators with `extra_headers={"X-Nullius-Quorum": "2"}`: the hook signs
that quorum too.
"""

from __future__ import annotations

import json
import time

import httpx
from eth_account import Account

from agents.protocol.eip712 import Domain, sign_request
from agents.protocol.nonces import NonceCounter
from agents.protocol.messages import H_QUORUM, auth_headers, request_from_openai

DEFAULT_DEADLINE_S = 300


def _kind(path: str) -> str | None:
    if path.endswith("/chat/completions"):
        return "chat"
    if path.endswith("/completions"):
        return "completion"
    return None


def signer(private_key: str | bytes, domain: Domain, max_price: int,
           deadline_s: int = DEFAULT_DEADLINE_S):
    """An httpx request hook that signs completion requests; other requests pass untouched."""
    address = Account.from_key(private_key).address
    nonces = NonceCounter()

    def sign(request: httpx.Request) -> None:
        kind = _kind(request.url.path)
        if kind is None or request.method != "POST":
            return
        body = json.loads(request.read())
        quorum = request.headers.get(H_QUORUM, "0")
        if not quorum.isdigit():
            raise ValueError(f"{H_QUORUM} must be a small integer, got {quorum!r}")
        inference = request_from_openai(
            kind, body, client=address, nonce=nonces(),
            deadline=int(time.time()) + deadline_s, max_price=max_price, quorum=int(quorum))
        request.headers.update(auth_headers(inference, sign_request(inference, domain, private_key)))

    return sign


def signing_http_client(private_key: str | bytes, domain: Domain, max_price: int, *,
                        deadline_s: int = DEFAULT_DEADLINE_S, **kwargs) -> httpx.Client:
    """An httpx.Client for `openai.OpenAI(http_client=...)` that signs each completion request."""
    kwargs.setdefault("timeout", 120.0)
    return httpx.Client(event_hooks={"request": [signer(private_key, domain, max_price, deadline_s)]},
                        **kwargs)


def signing_async_http_client(private_key: str | bytes, domain: Domain, max_price: int, *,
                              deadline_s: int = DEFAULT_DEADLINE_S, **kwargs) -> httpx.AsyncClient:
    """The same for `openai.AsyncOpenAI`."""
    sign = signer(private_key, domain, max_price, deadline_s)

    async def hook(request: httpx.Request) -> None:
        sign(request)

    kwargs.setdefault("timeout", 120.0)
    return httpx.AsyncClient(event_hooks={"request": [hook]}, **kwargs)
