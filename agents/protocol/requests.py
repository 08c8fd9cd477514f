"""The inference request R that a client signs, and its canonical hash."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.protocol.hashing import keccak_json
from agents.verification.sampler import SamplingParams

MAX_PROMPT_CHARS = 16_384
MAX_MESSAGES = 64
# Extra validators a client may sign for: the Ledger's MAX_QUORUM.
MAX_QUORUM = 3


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)


class InferenceRequest(BaseModel):
    """Everything that determines the answer. `request_hash` is keccak of its canonical JSON.

    Exactly one of `prompt` (completions) or `messages` (chat) is set. `model` is the
    registry name of a pinned model; its on-chain id is keccak(name) (see agents/protocol/models).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, max_length=128)
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    messages: tuple[ChatMessage, ...] | None = Field(default=None, max_length=MAX_MESSAGES)
    max_tokens: int = Field(ge=1, le=4096)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, le=1024)
    # integer wei of the payment token per output token the client accepts at most
    max_price: int = Field(ge=0, lt=2**256)
    nonce: int = Field(ge=0, lt=2**256)
    deadline: int = Field(ge=0, lt=2**64, description="unix seconds after which no one may start it")
    # extra validators the client pays for: the inference is then always validated, by 1 + quorum
    quorum: int = Field(default=0, ge=0, le=MAX_QUORUM)
    client: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$")

    @model_validator(mode="after")
    def _one_input(self) -> "InferenceRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of 'prompt' or 'messages' must be set")
        return self

    @property
    def kind(self) -> Literal["completion", "chat"]:
        return "completion" if self.prompt is not None else "chat"

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)

    def canonical(self) -> dict:
        data = self.model_dump(mode="json", exclude_none=True)
        data["client"] = self.client.lower()
        return data

    @property
    def request_hash(self) -> bytes:
        return keccak_json(self.canonical())
