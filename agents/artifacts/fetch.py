"""Getting artifacts from other participants, and serving ours: IPFS trustless-gateway style.

Every participant node serves `GET /ipfs/{cid}` raw blocks from its store (`ipfs_router`), and any
IPFS gateway speaks the same request, so a validator can list peers and public gateways alike as
sources. No source is trusted: `fetch_artifact` hashes what it gets and moves on from a source
whose bytes do not match the CID.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import httpx
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from agents.artifacts.cid import CIDError, canonical_cid, digest_from_cid, matches
from agents.artifacts.store import (
    MAX_BLOCK_BYTES,
    ArtifactError,
    ArtifactNotFound,
    ArtifactStore,
    ArtifactTooLarge,
)

log = logging.getLogger(__name__)

RAW_BLOCK = "application/vnd.ipld.raw"


async def _download(http: httpx.AsyncClient, url: str, max_bytes: int) -> bytes:
    async with http.stream("GET", url, params={"format": "raw"}, headers={"Accept": RAW_BLOCK}) as r:
        if r.status_code != 200:
            raise ArtifactError(f"HTTP {r.status_code}")
        chunks, size = [], 0
        # Count while reading: a hostile source must not make us buffer more than a block.
        async for chunk in r.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise ArtifactTooLarge(f"more than {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


async def fetch_artifact(
    cid: str,
    sources: list[str],
    *,
    client: httpx.AsyncClient | None = None,
    timeout: float = 10.0,
    max_bytes: int = MAX_BLOCK_BYTES,
) -> bytes:
    """The block named `cid` from the first source (a base URL) that serves the right bytes.

    Raises CIDError for a CID that is not raw sha2-256, ArtifactNotFound naming every source's
    failure when none served it.
    """
    digest = digest_from_cid(cid)
    name = canonical_cid(cid)
    failures = []
    async with (nullcontext(client) if client else httpx.AsyncClient(timeout=timeout)) as http:
        for base in sources:
            try:
                data = await _download(http, f"{base.rstrip('/')}/ipfs/{name}", max_bytes)
            except (httpx.HTTPError, ArtifactError) as exc:
                failures.append(f"{base}: {exc}")
                continue
            if not matches(data, digest):
                log.warning("source %s served bytes that do not match %s", base, name)
                failures.append(f"{base}: content does not match the CID")
                continue
            return data
    detail = "; ".join(failures) or "no sources given"
    raise ArtifactNotFound(f"artifact {name} not available: {detail}")


def _error(status: int, message: str, code: str, param: str | None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def ipfs_router(store: ArtifactStore) -> APIRouter:
    """`GET /ipfs/{cid}` serving raw blocks from `store`, for every participant node."""
    router = APIRouter()

    # A plain def: FastAPI runs it in a worker thread, so a store doing blocking I/O (files,
    # kubo over HTTP) never stalls the event loop.
    @router.get("/ipfs/{cid}", response_class=Response)
    def get_block(cid: str, format: str | None = None):
        if format not in (None, "raw"):
            return _error(400, f"unsupported format {format!r}: only raw blocks are served", "unsupported_format", "format")
        try:
            data = store.get(cid)
        except CIDError as exc:
            return _error(400, str(exc), "invalid_cid", "cid")
        except ArtifactNotFound as exc:
            return _error(404, str(exc), "not_found", "cid")
        except ArtifactError as exc:
            return _error(503, str(exc), "store_unavailable", None)
        name = canonical_cid(cid)
        headers = {
            "Cache-Control": "public, max-age=29030400, immutable",
            "ETag": f'"{name}.raw"',
            "X-Content-Type-Options": "nosniff",
            "X-Ipfs-Path": f"/ipfs/{name}",
        }
        return Response(content=data, media_type=RAW_BLOCK, headers=headers)

    return router
