"""Wire messages between participants, and the mapping from an OpenAI body to the signed request.

Each message is signed by its sender with EIP-191 over keccak of its canonical JSON without the
signature; the receiver recovers the signer and checks it against the chain. The OpenAI mapping
lives here because both sides need the same one: the client's signing hook builds the request it
signs from the body it sends, and the gateway rebuilds it from the body it receives.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from eth_account.messages import defunct_hash_message
from pydantic import BaseModel, ConfigDict, Field

from agents.protocol import ecdsa
from agents.protocol.hashing import keccak_json
from agents.protocol.requests import InferenceRequest

Address = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$")]
Bytes32 = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{64}$")]
Signature = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{130}$")]

# The headers that carry the client's authorization next to an OpenAI body.
H_CLIENT = "X-Nullius-Client"
H_NONCE = "X-Nullius-Nonce"
H_DEADLINE = "X-Nullius-Deadline"
H_MAX_PRICE = "X-Nullius-Max-Price"
H_QUORUM = "X-Nullius-Quorum"  # optional: absent means 0
H_SIGNATURE = "X-Nullius-Signature"
H_INFERENCE_ID = "X-Nullius-Inference-Id"
H_EXECUTOR = "X-Nullius-Executor"
# W3C Server Timing: the gateway's and the executor's phases of an answer, in ms
H_SERVER_TIMING = "Server-Timing"
# The field of an answer (JSON body or last stream chunk) that carries the ExecutionReceipt.
RECEIPT_FIELD = "nullius_receipt"

# OpenAI body fields that determine the answer (signed) and those that only shape delivery.
_SIGNED_FIELDS = ("model", "prompt", "messages", "max_tokens", "temperature", "top_p", "top_k")
_DELIVERY_FIELDS = ("stream", "stream_options", "n")


def parse_server_timing(header: str) -> dict[str, float]:
    """`Server-Timing` entries that carry a duration, as {name: milliseconds}."""
    out = {}
    for entry in header.split(","):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur" and name:
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
    return out


class RequestMappingError(ValueError):
    """An OpenAI body that cannot become an InferenceRequest; `param` names the field at fault."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def request_from_openai(
    kind: str, body: dict[str, Any], *, client: str, nonce: int, deadline: int, max_price: int,
    quorum: int = 0,
) -> InferenceRequest:
    """The InferenceRequest an OpenAI body stands for; `kind` is "completion" or "chat".

    Fields that change the answer but are not part of the signed request are refused, so the
    signature always covers exactly what is executed. Raises RequestMappingError or pydantic's
    ValidationError.
    """
    if not isinstance(body, dict):
        raise RequestMappingError("request body must be a JSON object")
    data = dict(body)
    # Newer OpenAI SDKs send max_completion_tokens on chat; it means the same here.
    if "max_completion_tokens" in data:
        if "max_tokens" in data:
            raise RequestMappingError(
                "set max_tokens or max_completion_tokens, not both", "max_completion_tokens"
            )
        data["max_tokens"] = data.pop("max_completion_tokens")
    for field in data:
        if field not in _SIGNED_FIELDS + _DELIVERY_FIELDS:
            raise RequestMappingError(f"unsupported parameter '{field}'", field)
    if data.get("n", 1) != 1:
        raise RequestMappingError("only n=1 is supported", "n")
    if "max_tokens" not in data or data["max_tokens"] is None:
        raise RequestMappingError("max_tokens is required: it bounds the escrow lock", "max_tokens")
    wanted, other = ("prompt", "messages") if kind == "completion" else ("messages", "prompt")
    if other in data:
        raise RequestMappingError(f"'{other}' is not accepted on this endpoint", other)
    if wanted not in data:
        raise RequestMappingError(f"'{wanted}' is required", wanted)
    fields = {k: v for k, v in data.items() if k in _SIGNED_FIELDS and v is not None}
    return InferenceRequest(
        **fields, client=client, nonce=nonce, deadline=deadline, max_price=max_price, quorum=quorum
    )


def openai_body(request: InferenceRequest) -> dict[str, Any]:
    """The OpenAI body for a request: what the SDK sends and the gateway maps back."""
    return request.model_dump(mode="json", exclude_none=True, include=set(_SIGNED_FIELDS))


def auth_headers(request: InferenceRequest, signature: bytes) -> dict[str, str]:
    """The X-Nullius-* headers that carry the client's authorization of `request`."""
    return {H_CLIENT: request.client, H_NONCE: str(request.nonce),
            H_DEADLINE: str(request.deadline), H_MAX_PRICE: str(request.max_price),
            H_QUORUM: str(request.quorum), H_SIGNATURE: "0x" + signature.hex()}


class Signed(BaseModel):
    """A message signed by its sender (EIP-191 over keccak of its canonical JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    signature: Signature | None = None

    def canonical(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"signature"}, exclude_none=True)
        # addresses are compared case-insensitively, so they are hashed lower-case
        return {k: v.lower() if isinstance(v, str) and v.startswith("0x") else v for k, v in data.items()}

    def digest(self) -> bytes:
        return keccak_json(self.canonical())

    def sign(self, private_key: bytes | str) -> Self:
        signature = ecdsa.sign(defunct_hash_message(primitive=self.digest()), private_key)
        return self.model_copy(update={"signature": "0x" + signature.hex()})

    def verify(self) -> str:
        """The checksummed signer address; ValueError when unsigned or malformed."""
        if self.signature is None:
            raise ValueError("message is not signed")
        try:
            return ecdsa.recover(defunct_hash_message(primitive=self.digest()),
                                 bytes.fromhex(self.signature[2:]))
        except ValueError as exc:
            raise ValueError(f"malformed signature: {exc}") from None


class ExecuteOrder(Signed):
    """Gateway -> executor: run this request; signed by the gateway."""

    request: InferenceRequest
    client_signature: Signature
    inference_id: Bytes32
    seed_block: int = Field(ge=0)
    gateway: Address
    stream: bool = False

    def canonical(self) -> dict[str, Any]:
        data = super().canonical()
        data["request"] = self.request.canonical()
        return data


class ExecutionReceipt(Signed):
    """Executor -> gateway -> client: what the executor answered; signed by the executor."""

    inference_id: Bytes32
    executor: Address
    response_hash: Bytes32
    artifact_cid: str = Field(min_length=1, max_length=128)
    completion_tokens: int = Field(ge=0)
