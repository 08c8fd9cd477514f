"""The /ipfs/{cid} route every node serves, and fetching from sources that may lie."""

from __future__ import annotations

import socket

import httpx
import pytest
from fastapi import FastAPI, Response

from agents.artifacts.cid import CIDError, cid_of
from agents.artifacts.fetch import RAW_BLOCK, fetch_artifact, ipfs_router
from agents.artifacts.store import ArtifactNotFound, FileStore

DATA = b"an artifact: request, output tokens, top-k logprobs"
CID = cid_of(DATA)


def node_app(store) -> FastAPI:
    app = FastAPI()
    app.include_router(ipfs_router(store))
    return app


def liar_app(body: bytes) -> FastAPI:
    """A source that answers every CID with `body`, 200 and the right content type."""
    app = FastAPI()

    @app.get("/ipfs/{cid}")
    def lie(cid: str):
        return Response(body, media_type=RAW_BLOCK)

    return app


@pytest.fixture
def honest(serve_app, tmp_path) -> str:
    store = FileStore(tmp_path / "honest")
    store.put(DATA)
    return serve_app(node_app(store))


@pytest.fixture
def dead_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}"


# --- the route --------------------------------------------------------------------------------


def test_route__known_cid__raw_block(honest):
    r = httpx.get(f"{honest}/ipfs/{CID}", params={"format": "raw"}, headers={"Accept": RAW_BLOCK})
    assert r.status_code == 200
    assert r.content == DATA
    assert r.headers["content-type"] == RAW_BLOCK
    assert r.headers["etag"] == f'"{CID}.raw"'
    assert r.headers["cache-control"] == "public, max-age=29030400, immutable"


def test_route__unknown_cid__404(honest):
    other = cid_of(b"other")
    r = httpx.get(f"{honest}/ipfs/{other}")
    assert r.status_code == 404
    assert r.json() == {"error": {"message": f"artifact {other} not found", "type": "invalid_request_error",
                                  "param": "cid", "code": "not_found"}}


def test_route__malformed_cid__400(honest):
    r = httpx.get(f"{honest}/ipfs/bafyreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e")
    assert r.status_code == 400
    assert r.json()["error"] == {
        "message": "CID 'bafyreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e' has codec dag-cbor, "
        "only raw (0x55) is accepted",
        "type": "invalid_request_error", "param": "cid", "code": "invalid_cid",
    }
    r = httpx.get(f"{honest}/ipfs/not-a-cid")
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("malformed CID 'not-a-cid'")


def test_route__car_format__400(honest):
    r = httpx.get(f"{honest}/ipfs/{CID}", params={"format": "car"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "unsupported format 'car': only raw blocks are served"


# --- fetch_artifact ---------------------------------------------------------------------------


async def test_fetch__honest_source__verified_bytes(honest):
    assert await fetch_artifact(CID, [honest]) == DATA


async def test_fetch__lying_and_dead_sources_first__skipped(honest, serve_app, dead_url, caplog):
    liar = serve_app(liar_app(b"a forged artifact"))
    assert await fetch_artifact(CID, [liar, dead_url, honest]) == DATA
    assert f"source {liar} served bytes that do not match {CID}" in caplog.text


async def test_fetch__only_liars__not_found_naming_each(serve_app, tmp_path, dead_url):
    liar = serve_app(liar_app(b"a forged artifact"))
    empty = serve_app(node_app(FileStore(tmp_path / "empty")))
    with pytest.raises(ArtifactNotFound) as err:
        await fetch_artifact(CID, [liar, empty])
    assert str(err.value) == (f"artifact {CID} not available: {liar}: content does not match the CID; "
                              f"{empty}: HTTP 404")


async def test_fetch__oversized_source__skipped(honest, serve_app):
    flood = serve_app(liar_app(b"x" * 4096))
    with pytest.raises(ArtifactNotFound, match=f"{flood}: more than 1000 bytes$"):
        await fetch_artifact(CID, [flood], max_bytes=1000)
    assert await fetch_artifact(CID, [flood, honest], max_bytes=1000) == DATA


async def test_fetch__malformed_cid__rejected_before_any_request(dead_url):
    with pytest.raises(CIDError, match="^CID 'QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR' is version 0"):
        await fetch_artifact("QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR", [dead_url])


async def test_fetch__no_sources__not_found():
    with pytest.raises(ArtifactNotFound, match=f"^artifact {CID} not available: no sources given$"):
        await fetch_artifact(CID, [])
