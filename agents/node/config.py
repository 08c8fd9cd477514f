"""Participant node settings: environment (NULLIUS_*) over a JSON or TOML file over defaults.

Every default fits the devnet on one machine; a config file needs little more than the key.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# The file that `load_settings` reads; a context variable because pydantic-settings builds its
# sources in a classmethod with no per-call arguments.
_config_file: ContextVar[Path | None] = ContextVar("nullius_config_file", default=None)


class NodeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NULLIUS_", extra="forbid")

    private_key: str = Field(pattern=r"^(0x)?[0-9a-fA-F]{64}$", repr=False)
    rpc_url: str = "http://127.0.0.1:8545"
    deployments_file: Path = Path("deployments/31337.json")
    mlnode_url: str = "http://127.0.0.1:8100"
    host: str = "127.0.0.1"
    port: int = Field(default=8200, ge=0, lt=65536)
    # the URL other participants reach this node at; registered on chain
    public_url: str | None = None
    data_dir: Path = Path(".nullius/node")
    # a directory (embedded store) or a kubo RPC URL; default: data_dir/artifacts
    artifact_store: str | None = None
    model: str = "nullius/ref-tiny"
    # The validator's facts of the model. Unset, they come from the model node's /health, which
    # `nullius mlnode` serves and vLLM does not: set both when mlnode_url is a vLLM server.
    model_eos_token_id: int | None = Field(default=None, ge=0)
    model_vocab_size: int | None = Field(default=None, ge=1)
    max_prompt_chars: int = Field(default=16_384, ge=1)
    max_tokens: int = Field(default=1024, ge=1)
    request_timeout: float = Field(default=120.0, gt=0)
    # seconds a registry entry or the head block may be reused on the request path
    chain_cache_ttl: float = Field(default=1.0, ge=0)
    # seconds between background refreshes of the head block, so that requests find it cached
    head_refresh: float = Field(default=0.25, gt=0)
    # seconds between chain polls of the role loops
    poll_interval: float = Field(default=1.0, gt=0)
    # extra artifact sources tried after this node's own store and the executor's /ipfs route
    artifact_gateways: list[str] = []

    @field_validator("private_key")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return v if v.startswith("0x") else "0x" + v

    @property
    def artifact_store_url(self) -> str:
        return self.artifact_store or str(self.data_dir / "artifacts")

    @property
    def url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_file.get()
        if path is None:
            return init_settings, env_settings
        if path.suffix == ".toml":
            file_source = TomlConfigSettingsSource(settings_cls, toml_file=path)
        else:
            file_source = JsonConfigSettingsSource(settings_cls, json_file=path)
        return init_settings, env_settings, file_source


def load_settings(path: Path | str | None = None, **overrides) -> NodeSettings:
    """Settings from `path` (.json or .toml), overridden by NULLIUS_* variables and `overrides`."""
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    token = _config_file.set(Path(path) if path is not None else None)
    try:
        return NodeSettings(**overrides)
    finally:
        _config_file.reset(token)
