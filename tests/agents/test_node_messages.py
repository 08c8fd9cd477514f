"""Wire messages: signatures bind every field; the OpenAI mapping refuses what it cannot sign."""

from __future__ import annotations

import pytest
from eth_account import Account
from pydantic import ValidationError

from agents.protocol import ecdsa
from agents.protocol.messages import (
    ExecuteOrder, ExecutionReceipt, RequestMappingError, auth_headers, openai_body,
    parse_server_timing, request_from_openai,
)
from agents.protocol.requests import InferenceRequest

GATEWAY = Account.from_key("0x" + "11" * 32)
OTHER = Account.from_key("0x" + "22" * 32)
CLIENT = "0x" + "ab" * 20


def _request(**kw) -> InferenceRequest:
    fields = dict(model="nullius/ref-tiny", prompt="def f(x):", max_tokens=8, max_price=5,
                  nonce=7, deadline=2_000_000_000, client=CLIENT)
    return InferenceRequest(**(fields | kw))


def _order(**kw) -> ExecuteOrder:
    fields = dict(request=_request(), client_signature="0x" + "00" * 65,
                  inference_id="0x" + "cd" * 32, seed_block=12, gateway=GATEWAY.address)
    return ExecuteOrder(**(fields | kw))


def test_order__signed__verifies_to_sender():
    assert _order().sign(GATEWAY.key).verify() == GATEWAY.address


def test_order__tampered_after_signing__recovers_another_address():
    signed = _order().sign(GATEWAY.key)
    tampered = signed.model_copy(update={"seed_block": 13})
    assert tampered.verify() != GATEWAY.address


def test_order__tampered_request__recovers_another_address():
    signed = _order().sign(GATEWAY.key)
    tampered = signed.model_copy(update={"request": _request(max_tokens=9)})
    assert tampered.verify() != GATEWAY.address


def test_order__address_case__does_not_change_digest():
    assert _order(gateway=GATEWAY.address.lower()).digest() == _order().digest()


def test_order__unsigned__verify_raises():
    with pytest.raises(ValueError, match="message is not signed"):
        _order().verify()


def test_order__malformed_signature__verify_raises():
    bad = _order().model_copy(update={"signature": "0x" + "ff" * 65})
    with pytest.raises(ValueError, match="malformed signature"):
        bad.verify()


def test_order__high_s_twin_of_its_signature__refused_as_malformed():
    signed = _order().sign(GATEWAY.key)
    sig = bytes.fromhex(signed.signature[2:])
    twin = sig[:32] + (ecdsa.SECP256K1_N - int.from_bytes(sig[32:64])).to_bytes(32) + bytes([55 - sig[64]])
    with pytest.raises(ValueError, match=r"malformed signature: signature s must be in the lower half"):
        signed.model_copy(update={"signature": "0x" + twin.hex()}).verify()


def test_order__json_roundtrip__keeps_signature_valid():
    signed = _order(stream=True).sign(GATEWAY.key)
    again = ExecuteOrder.model_validate_json(signed.model_dump_json())
    assert again.verify() == GATEWAY.address


def test_receipt__signed_by_other__verify_names_other():
    receipt = ExecutionReceipt(inference_id="0x" + "cd" * 32, executor=GATEWAY.address,
                               response_hash="0x" + "ee" * 32, artifact_cid="bafkrei",
                               completion_tokens=3).sign(OTHER.key)
    assert receipt.verify() == OTHER.address


def test_receipt__extra_field__rejected():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ExecutionReceipt.model_validate({"inference_id": "0x" + "cd" * 32, "executor": CLIENT,
                                         "response_hash": "0x" + "ee" * 32, "artifact_cid": "b",
                                         "completion_tokens": 1, "bonus": 1})


AUTH = dict(client=CLIENT, nonce=7, deadline=2_000_000_000, max_price=5)


def test_request_from_openai__completion__matches_direct_request():
    body = {"model": "nullius/ref-tiny", "prompt": "def f(x):", "max_tokens": 8, "stream": True}
    assert request_from_openai("completion", body, **AUTH).request_hash == _request().request_hash


def test_request_from_openai__openai_body__roundtrips():
    request = _request(temperature=0.5, top_k=4)
    assert request_from_openai("completion", openai_body(request), **AUTH) == request


def test_request_from_openai__chat_max_completion_tokens__means_max_tokens():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 4}
    assert request_from_openai("chat", body, **AUTH).max_tokens == 4


@pytest.mark.parametrize("kind, body, message, param", [
    ("completion", {"model": "m", "prompt": "x"}, "max_tokens is required: it bounds the escrow lock", "max_tokens"),
    ("completion", {"model": "m", "prompt": "x", "max_tokens": 2, "logit_bias": {}}, "unsupported parameter 'logit_bias'", "logit_bias"),
    ("completion", {"model": "m", "prompt": "x", "max_tokens": 2, "n": 2}, "only n=1 is supported", "n"),
    ("completion", {"model": "m", "messages": [], "max_tokens": 2}, "'messages' is not accepted on this endpoint", "messages"),
    ("chat", {"model": "m", "max_tokens": 2}, "'messages' is required", "messages"),
])
def test_request_from_openai__unsignable_body__names_field(kind, body, message, param):
    with pytest.raises(RequestMappingError) as info:
        request_from_openai(kind, body, **AUTH)
    assert (str(info.value), info.value.param) == (message, param)


def test_auth_headers__carry_the_authorization():
    headers = auth_headers(_request(), b"\x01" * 65)
    assert headers == {"X-Nullius-Client": CLIENT, "X-Nullius-Nonce": "7",
                       "X-Nullius-Deadline": "2000000000", "X-Nullius-Max-Price": "5",
                       "X-Nullius-Quorum": "0", "X-Nullius-Signature": "0x" + "01" * 65}


def test_server_timing__durations_parsed_in_order():
    header = "verify;dur=1.0, chain;desc=\"rpc\";dur=12.5, executor-model;dur=80"
    assert parse_server_timing(header) == {"verify": 1.0, "chain": 12.5, "executor-model": 80.0}


def test_server_timing__entries_without_a_number_left_out():
    assert parse_server_timing("") == {}
    assert parse_server_timing("cache, db;dur=abc, ;dur=3, ok;dur=2") == {"ok": 2.0}
