"""CIDs, the embedded file store, the kubo store and the choice between them."""

from __future__ import annotations

import hashlib
import os
from email.parser import BytesParser
from email.policy import HTTP

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from multiformats import CID, multihash

from agents.artifacts.cid import CIDError, canonical_cid, cid_from_digest, cid_of, digest_from_cid
from agents.artifacts.kubo import KuboStore
from agents.artifacts.store import (
    ArtifactCorrupt,
    ArtifactNotFound,
    ArtifactStore,
    ArtifactTooLarge,
    FileStore,
    open_store,
)

EMPTY_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
# "hello world": the CID that helia (the IPFS implementation in JS) asserts for this string in its
# own tests (ipfs/helia, packages/strings/test/add.spec.ts), over the well-known sha256 b94d27b9...
HELLO_CID = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
HELLO_SHA256 = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"


# --- CIDs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, cid", [(b"", EMPTY_CID), (b"hello world", HELLO_CID)])
def test_cid_of__known_vectors__match_ipfs(data, cid):
    assert cid_of(data) == cid
    assert digest_from_cid(cid) == hashlib.sha256(data).digest()
    assert cid_from_digest(hashlib.sha256(data).digest()) == cid


@pytest.mark.parametrize("seed", range(50))
def test_cid_from_digest__any_digest__equals_multiformats_and_round_trips(seed):
    digest = hashlib.sha256(seed.to_bytes(4)).digest()
    cid = cid_from_digest(digest)
    assert cid == str(CID("base32", 1, "raw", multihash.wrap(digest, "sha2-256")))
    assert digest_from_cid(cid) == digest


def test_digest_from_cid__canonical_cid__decoded_without_multiformats(monkeypatch):
    # the executor decodes a CID per answer: multiformats' parser took 0.2-0.8 ms of it
    digest = hashlib.sha256(b"answer").digest()
    cid = cid_from_digest(digest)
    monkeypatch.setattr(CID, "decode", lambda *_: pytest.fail("the canonical form was parsed by multiformats"))
    assert digest_from_cid(cid) == digest
    assert canonical_cid(cid) == cid


def test_digest_from_cid__canonical_length_other_codec__rejected():
    dag_pb = str(CID("base32", 1, "dag-pb", multihash.wrap(hashlib.sha256(b"x").digest(), "sha2-256")))
    assert len(dag_pb) == len(HELLO_CID)
    with pytest.raises(CIDError, match="has codec dag-pb, only raw"):
        digest_from_cid(dag_pb)


def test_digest_from_cid__other_multibase__same_digest():
    base16 = "f01551220" + HELLO_SHA256
    assert digest_from_cid(base16).hex() == HELLO_SHA256
    assert canonical_cid(base16) == HELLO_CID


@pytest.mark.parametrize(
    "cid, message",
    [
        ("", "malformed CID '': Empty string is not valid for encoded data."),
        ("x", "malformed CID 'x': 'No known multibase code is a prefix of the given string.'"),
        (HELLO_CID[:-1], f"malformed CID '{HELLO_CID[:-1]}': More pad bits found (5) than bits per character (5)."),
        ("b" + "a" * 96, "malformed CID: 97 characters, at most 96"),
        (
            "QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR",
            "CID 'QmbWqxBEKC3P8tqsKc98xmWNzrzDtRLMiMPL8wBuTGsMnR' is version 0 (dag-pb), "
            "only raw CIDv1 is accepted",
        ),
        (
            "bafyreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e",
            "CID 'bafyreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e' has codec dag-cbor, "
            "only raw (0x55) is accepted",
        ),
        (
            # raw codec, sha1 multihash (0x11, 20 bytes)
            "f015511" + "14" + "00" * 20,
            "CID 'f01551114" + "00" * 20 + "' uses sha1, only sha2-256 is accepted",
        ),
        (
            # raw codec, sha2-256 truncated to 16 bytes
            "f01551210" + "00" * 16,
            "CID 'f01551210" + "00" * 16 + "' has a 16-byte digest, expected 32",
        ),
    ],
)
def test_digest_from_cid__not_raw_sha256_v1__rejected(cid, message):
    with pytest.raises(CIDError) as err:
        digest_from_cid(cid)
    assert str(err.value) == message


def test_cid_from_digest__wrong_length__rejected():
    with pytest.raises(CIDError, match=r"^a sha2-256 digest is 32 bytes, got 20$"):
        cid_from_digest(b"\x00" * 20)


# --- FileStore --------------------------------------------------------------------------------


def test_file_store__put_get_has__round_trip(tmp_path):
    store = FileStore(tmp_path)
    assert isinstance(store, ArtifactStore)
    assert not store.has(HELLO_CID)
    assert store.put(b"hello world") == HELLO_CID
    assert store.put(b"hello world") == HELLO_CID  # idempotent
    assert store.has(HELLO_CID) and store.has("f01551220" + HELLO_SHA256)
    assert store.get(HELLO_CID) == b"hello world"
    assert store.get("f01551220" + HELLO_SHA256) == b"hello world"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert [p.name for p in files] == [HELLO_CID]  # one file, no temp file left behind


def test_file_store__unknown_cid__not_found(tmp_path):
    with pytest.raises(ArtifactNotFound, match=f"^artifact {EMPTY_CID} not found$"):
        FileStore(tmp_path).get(EMPTY_CID)


def test_file_store__malformed_cid__rejected_without_touching_disk(tmp_path):
    store = FileStore(tmp_path)
    with pytest.raises(CIDError, match="has codec dag-cbor"):
        store.get("bafyreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e")
    with pytest.raises(CIDError, match="^malformed CID"):
        store.has("../../etc/passwd")
    assert list(tmp_path.iterdir()) == []


def test_file_store__over_size_limit__rejected(tmp_path):
    store = FileStore(tmp_path, max_bytes=10)
    assert store.put(b"0123456789") == cid_of(b"0123456789")
    with pytest.raises(ArtifactTooLarge, match="^artifact is 11 bytes, the limit is 10$"):
        store.put(b"0123456789a")
    assert not store.has(cid_of(b"0123456789a"))


def test_file_store__tampered_file__corrupt(tmp_path):
    store = FileStore(tmp_path)
    cid = store.put(b"hello world")
    (path,) = [p for p in tmp_path.rglob(cid)]
    path.write_bytes(b"hello w0rld")
    with pytest.raises(ArtifactCorrupt, match=f"^stored artifact {cid} does not match its digest$"):
        store.get(cid)


def test_file_store__not_bytes__rejected(tmp_path):
    with pytest.raises(TypeError, match="^an artifact is bytes, got str$"):
        FileStore(tmp_path).put("hello")


# --- open_store -------------------------------------------------------------------------------


def test_open_store__directory_or_file_url__file_store(tmp_path):
    assert isinstance(open_store(str(tmp_path / "a")), FileStore)
    store = open_store(f"file://{tmp_path / 'b'}")
    assert isinstance(store, FileStore) and store.root == tmp_path / "b"


def test_open_store__http_url__kubo_store():
    store = open_store("http://127.0.0.1:5001/")
    assert isinstance(store, KuboStore) and store.api_url == "http://127.0.0.1:5001"
    store.close()


def test_open_store__unknown_scheme__rejected():
    with pytest.raises(ValueError, match="^unsupported artifact store URL 's3://bucket': use a directory"):
        open_store("s3://bucket")


# --- KuboStore --------------------------------------------------------------------------------


def fake_kubo(lie: bool = False) -> FastAPI:
    """A stand-in for kubo's RPC (no kubo daemon can be installed here): block/put, block/get and
    block/stat with kubo's parameters, answers and error shape. With `lie`, it flips the bytes it
    serves and names blocks wrongly, like a compromised node."""
    app, blocks = FastAPI(), {}

    def missing(cid: str) -> JSONResponse:
        message = f"block was not found locally (offline): ipld: could not find {cid}"
        return JSONResponse({"Message": message, "Code": 0, "Type": "error"}, status_code=500)

    @app.post("/api/v0/block/put")
    async def put(request: Request):
        assert dict(request.query_params) == {"cid-codec": "raw", "mhtype": "sha2-256", "pin": "true"}
        head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
        form = BytesParser(policy=HTTP).parsebytes(head + await request.body())
        data = next(form.iter_parts()).get_payload(decode=True)
        blocks[cid_of(data)] = data
        return {"Key": cid_of(data + b"!" if lie else data), "Size": len(data)}

    @app.post("/api/v0/block/get")
    def get(arg: str, offline: bool):
        assert offline
        if arg not in blocks:
            return missing(arg)
        return Response(blocks[arg][::-1] if lie else blocks[arg])

    @app.post("/api/v0/block/stat")
    def stat(arg: str, offline: bool):
        return {"Key": arg, "Size": len(blocks[arg])} if arg in blocks else missing(arg)

    return app


def test_kubo_store__fake_kubo__round_trip(serve_app):
    store = KuboStore(serve_app(fake_kubo()))
    assert not store.has(HELLO_CID)
    assert store.put(b"hello world") == HELLO_CID
    assert store.has(HELLO_CID)
    assert store.get("f01551220" + HELLO_SHA256) == b"hello world"
    with pytest.raises(ArtifactNotFound, match=f"^artifact {EMPTY_CID} not found in kubo: block was not found"):
        store.get(EMPTY_CID)


def test_kubo_store__lying_kubo__corrupt(serve_app):
    store = KuboStore(serve_app(fake_kubo(lie=True)))
    wrong = cid_of(b"hello world!")
    with pytest.raises(ArtifactCorrupt, match=f"^kubo named the block {wrong}, its content hashes to {HELLO_CID}$"):
        store.put(b"hello world")
    with pytest.raises(ArtifactCorrupt, match=f"^kubo returned bytes that do not match {HELLO_CID}$"):
        store.get(HELLO_CID)


def test_kubo_store__oversized__rejected_before_sending():
    store = KuboStore("http://127.0.0.1:9", max_bytes=4)  # nothing listens: no request is made
    with pytest.raises(ArtifactTooLarge, match="^artifact is 5 bytes, the limit is 4$"):
        store.put(b"hello")


@pytest.mark.skipif(
    not os.environ.get("NULLIUS_KUBO_API"),
    reason="needs a running kubo daemon: set NULLIUS_KUBO_API=http://host:5001 "
    "(none can be installed on the build machines)",
)
def test_kubo_store__real_kubo__same_cid_as_embedded_store():
    store = KuboStore(os.environ["NULLIUS_KUBO_API"])
    data = os.urandom(64)
    assert store.put(data) == cid_of(data)
    assert store.has(cid_of(data))
    assert store.get(cid_of(data)) == data
    assert store.put(b"hello world") == HELLO_CID
