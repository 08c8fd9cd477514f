"""HTTP along an answer's path: the gateway's order to the drawn executor, and the executor's call
to its model node.

Both calls sit on every answer's path, so they go through aiohttp's client: a round trip took
0.4 ms (to a bare server) to 1 ms (to a model node) less than with httpx's AsyncClient, and on the
devnet an answer's path got about 3.5 ms shorter (docs/latency.md).
Calls off that path (chain reads, artifact fetches, the validator's prefill) keep httpx.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

JSON_HEADERS = {"Content-Type": "application/json"}


class PeerUnreachable(Exception):
    """No connection to the peer, or no answer within the timeout."""


@dataclass(frozen=True)
class PeerResponse:
    status: int
    headers: Mapping[str, str]
    content: bytes

    def text(self, limit: int = 300) -> str:
        return self.content[:limit].decode(errors="replace")


class Peers:
    def __init__(self, timeout: float):
        # As httpx's timeout: it bounds the connect and each read, not a whole streamed answer.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # opened on first use: a session belongs to the event loop that runs it
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def post(self, url: str, body: dict[str, Any]) -> PeerResponse:
        """POST `body` as JSON and read the whole answer."""
        try:
            async with self._client().post(url, data=_encode(body), headers=JSON_HEADERS) as r:
                return PeerResponse(r.status, r.headers, await r.read())
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise PeerUnreachable(repr(exc)) from None

    async def open_stream(self, url: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """POST `body` as JSON and return as soon as the headers are in; the caller reads the
        body (`.content`) and must `release()` the response."""
        try:
            return await self._client().post(url, data=_encode(body), headers=JSON_HEADERS)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise PeerUnreachable(repr(exc)) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _encode(body: dict[str, Any]) -> bytes:
    # the standard library, not orjson: nonces and seeds can exceed 64 bits
    return json.dumps(body, separators=(",", ":")).encode()
