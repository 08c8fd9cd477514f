"""Client side without a network: the signing hook and the receipt checks."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from eth_account import Account
from eth_utils import keccak

from agents.cli import main as nullius
from agents.client.openai_hook import signing_http_client
from agents.client.sdk import NulliusError, check_receipt
from agents.protocol.eip712 import Domain, recover_client
from agents.protocol.messages import ExecutionReceipt, request_from_openai

CLIENT = Account.from_key("0x" + "31" * 32)
EXECUTOR = Account.from_key("0x" + "32" * 32)
DOMAIN = Domain(31337, "0x" + "44" * 20)
IID = b"\x07" * 32


def _captured():
    """An httpx transport that records each request and answers like a gateway."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={
            "id": "x", "object": "text_completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "text": "ok", "finish_reason": "length", "logprobs": None}]})

    return seen, httpx.MockTransport(handler)


def test_signing_hook__openai_request__signed_for_exactly_its_body():
    seen, transport = _captured()
    http = signing_http_client(CLIENT.key, DOMAIN, 5, transport=transport)
    oa = openai.OpenAI(base_url="http://gateway/v1", api_key="unused", http_client=http)
    oa.completions.create(model="nullius/ref-tiny", prompt="def f():", max_tokens=3, temperature=0)
    (sent,) = seen
    h = sent.headers
    request = request_from_openai("completion", json.loads(sent.content), client=h["X-Nullius-Client"],
                                  nonce=int(h["X-Nullius-Nonce"]), deadline=int(h["X-Nullius-Deadline"]),
                                  max_price=int(h["X-Nullius-Max-Price"]))
    signature = bytes.fromhex(h["X-Nullius-Signature"][2:])
    assert (h["X-Nullius-Client"], request.max_price) == (CLIENT.address, 5)
    assert recover_client(request, DOMAIN, signature) == CLIENT.address


def test_signing_hook__each_request__gets_a_fresh_nonce():
    seen, transport = _captured()
    http = signing_http_client(CLIENT.key, DOMAIN, 5, transport=transport)
    for _ in range(2):
        http.post("http://gateway/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 1})
    assert seen[0].headers["X-Nullius-Nonce"] != seen[1].headers["X-Nullius-Nonce"]


def test_signing_hook__other_routes__left_unsigned():
    seen, transport = _captured()
    signing_http_client(CLIENT.key, DOMAIN, 5, transport=transport).get("http://gateway/v1/models")
    assert "X-Nullius-Signature" not in seen[0].headers


def test_signing_hook__unsignable_body__refused_before_sending():
    seen, transport = _captured()
    http = signing_http_client(CLIENT.key, DOMAIN, 5, transport=transport)
    with pytest.raises(ValueError, match="max_tokens is required"):
        http.post("http://gateway/v1/completions", json={"model": "m", "prompt": "x"})
    assert seen == []


def _receipt(text: str = "hello", signer=EXECUTOR, executor=EXECUTOR.address) -> dict:
    return ExecutionReceipt(inference_id="0x" + IID.hex(), executor=executor,
                            response_hash="0x" + keccak(text=text).hex(), artifact_cid="bafk",
                            completion_tokens=2).sign(signer.key).model_dump(mode="json")


def test_check_receipt__matching__returns_it():
    assert check_receipt(_receipt(), IID, "hello").executor == EXECUTOR.address


@pytest.mark.parametrize("raw, iid, text, message", [
    (None, IID, "hello", "the answer carries no execution receipt"),
    (_receipt(), IID, "hellO", "execution receipt does not match the answer text"),
    (_receipt(), b"\x08" * 32, "hello", "execution receipt is for another inference"),
    (_receipt(signer=CLIENT), IID, "hello",
     f"execution receipt is signed by {CLIENT.address}, not by {EXECUTOR.address}"),
])
def test_check_receipt__mismatch__raises(raw, iid, text, message):
    with pytest.raises(NulliusError) as info:
        check_receipt(raw, iid, text)
    assert str(info.value) == message


def test_cli__no_subcommand__usage_and_status_2(capsys):
    assert nullius([]) == 2
    assert "usage: nullius {node,mlnode,client,devnet}" in capsys.readouterr().err


def test_cli__client_without_key__names_the_option(capsys, monkeypatch):
    monkeypatch.delenv("NULLIUS_CLIENT_KEY", raising=False)
    with pytest.raises(SystemExit) as info:
        nullius(["client", "escrow"])
    assert info.value.code == 2
    assert "a private key is required: --key or NULLIUS_CLIENT_KEY" in capsys.readouterr().err


def test_cli__no_deployments_file__names_it(tmp_path, capsys):
    missing = tmp_path / "none.json"
    assert nullius(["client", "--key", "0x" + "31" * 32, "--deployments", str(missing), "escrow"]) == 2
    assert capsys.readouterr().out == (
        f"error: no deployments file at {missing}: start a devnet (make demo) or pass --deployments / "
        "NULLIUS_DEPLOYMENTS\n")


def test_cli__unreachable_rpc__names_it(tmp_path, capsys):
    deployments = tmp_path / "31337.json"
    deployments.write_text(json.dumps({"chain_id": 31337, "token": "0x" + "01" * 20, "registry": "0x" + "02" * 20,
                                       "ledger": "0x" + "03" * 20, "start_block": 0}))
    rpc = "http://127.0.0.1:9"  # discard: nothing answers
    assert nullius(["client", "--key", "0x" + "31" * 32, "--rpc-url", rpc, "--deployments", str(deployments),
                    "escrow"]) == 2
    assert capsys.readouterr().out.startswith(f"error: RPC {rpc} unreachable: ")


def test_cli__quorum_out_of_range__usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        nullius(["client", "--key", "0x" + "31" * 32, "infer", "--prompt", "x", "--quorum", "4"])
    assert info.value.code == 2
    assert "argument --quorum: invalid choice: 4 (choose from 0, 1, 2, 3)" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model"], "no model at /nonexistent/model: a model folder holds manifest.json"),
    (["--model", "models/ref-tiny", "--threads", "0"], "--threads must be at least 1, got 0"),
])
def test_cli__mlnode_bad_arguments__usage_error(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        nullius(["mlnode", *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
