"""What every role of a node shares: its key, chain view, state, outbox, store, HTTP client, metrics."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import httpx
from eth_account.signers.local import LocalAccount

from agents.node.chain_view import ChainView
from agents.node.config import NodeSettings
from agents.node.metrics import NodeMetrics
from agents.node.state import NodeState
from agents.protocol.eip712 import Domain, model_id

T = TypeVar("T")
log = logging.getLogger("nullius.node")


@dataclass
class NodeContext:
    settings: NodeSettings
    account: LocalAccount
    chain: ChainView
    state: NodeState
    outbox: Any  # agents.chain.outbox.Outbox
    store: Any  # agents.artifacts.store.ArtifactStore
    http: httpx.AsyncClient
    metrics: NodeMetrics
    domain: Domain

    @property
    def address(self) -> str:
        return self.account.address

    @property
    def model_id(self) -> bytes:
        return model_id(self.settings.model)

    async def read(self, fn: Callable[..., T], *args) -> T:
        """A blocking chain read, off the event loop."""
        return await asyncio.to_thread(fn, *args)
