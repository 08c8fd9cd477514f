"""Wire models of the model node: OpenAI's completions and chat API with vLLM's extras.

Requests forbid unknown fields, so a misspelt parameter is an error rather than silently ignored.
Responses are plain dicts built in `serving.py`, in the exact shape OpenAI's and vLLM's clients
parse; only the request side needs validation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agents.protocol.requests import MAX_MESSAGES, MAX_PROMPT_CHARS, ChatMessage
from agents.verification.calibration import VALIDATOR_TOP_K

# vLLM's --max-logprobs, raised from its default of 20 as a validator's vLLM must be
MAX_LOGPROBS = VALIDATOR_TOP_K
MAX_PROMPT_IDS = 4096


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by both endpoints; ranges follow InferenceRequest, which clients sign."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    # vLLM spells "no top-k" as -1, OpenAI-style clients as 0
    top_k: int = Field(default=0, ge=-1, le=1024)
    seed: int | None = Field(default=None, ge=0, lt=2**64)
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    return_tokens_as_token_ids: bool = False


class CompletionRequest(_Sampling):
    prompt: str | list[int] = Field(min_length=1)
    max_tokens: int = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    prompt_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt_size(cls, prompt: str | list[int]) -> str | list[int]:
        if isinstance(prompt, str) and len(prompt) > MAX_PROMPT_CHARS:
            raise ValueError(f"at most {MAX_PROMPT_CHARS} characters")
        if isinstance(prompt, list) and len(prompt) > MAX_PROMPT_IDS:
            raise ValueError(f"at most {MAX_PROMPT_IDS} token ids")
        return prompt


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1)  # None: the rest of the context
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128)
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    messages: list[ChatMessage] | None = Field(default=None, max_length=MAX_MESSAGES)
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of 'prompt' or 'messages' must be set")
        return self


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The one error shape of every Nullius API."""

    error: ErrorInfo
