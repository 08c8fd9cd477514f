"""What every role of a node shares: its key, chain view, state, outbox, store, HTTP clients,
metrics, and the cached chain reads of the request path (made by `reads`,
agents.node.chain_view.HotReads)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, TypeVar

import httpx
from eth_account.signers.local import LocalAccount

from agents.node.admission import AdmissionBook
from agents.node.cache import TtlCache
from agents.node.chain_view import ChainView, Head, Members, Model, ParticipantInfo
from agents.node.config import NodeSettings
from agents.node.metrics import NodeMetrics
from agents.node.peers import Peers
from agents.node.state import NodeState
from agents.protocol.eip712 import Domain, model_id

T = TypeVar("T")
log = logging.getLogger("nullius.node")
# blocks per eth_getLogs while the index of starts catches up (providers cap the range)
MAX_LOG_BLOCKS = 2000


@dataclass
class NodeContext:
    settings: NodeSettings
    account: LocalAccount
    chain: ChainView
    reads: Any  # agents.node.chain_view.HotReads
    state: NodeState
    outbox: Any  # agents.chain.outbox.Outbox
    store: Any  # agents.artifacts.store.ArtifactStore
    http: httpx.AsyncClient
    metrics: NodeMetrics
    domain: Domain
    # where a validation's parse and checks run: the judging process (agents.node.judging) in a
    # node; None, the event loop's default thread pool, where a test builds a context
    judging: Executor | None = None
    cache: TtlCache = field(init=False)
    # the calls along an answer's path (agents.node.peers); `http` serves the rest
    peers: Peers = field(init=False)
    # the gateway's admission reads, kept by the head follower
    admission: AdmissionBook = field(init=False, default_factory=AdmissionBook)
    # work detached from a request (see `spawn`), awaited at shutdown
    background: set[asyncio.Task] = field(init=False, default_factory=set)
    # monotonic time of the head follower's last successful read (None before the first)
    head_read_at: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.cache = TtlCache(self.settings.chain_cache_ttl)
        self.peers = Peers(self.settings.request_timeout)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` apart from the request that started it: a client hanging up cancels its
        request, not this. The node's shutdown waits for it."""
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    @property
    def address(self) -> str:
        return self.account.address

    @property
    def model_id(self) -> bytes:
        return model_id(self.settings.model)

    async def read(self, fn: Callable[..., T], *args) -> T:
        """A blocking call (a chain read, a disk write), off the event loop."""
        return await asyncio.to_thread(fn, *args)

    # cached reads (agents.node.cache says why each is safe to cache) ------------------------

    async def model(self, mid: bytes) -> Model:
        return await self.cache.get(("model", mid), lambda: self.reads.model(mid))

    async def participant(self, address: str) -> ParticipantInfo:
        return await self.cache.get(("participant", address.lower()),
                                    lambda: self.reads.participant(address))

    async def head(self, at_least: int = 0) -> Head:
        """A recent head, at most `chain_cache_ttl` old and at least block `at_least`."""
        return await self.cache.get("head", self.reads.head, lambda head: head.number >= at_least)

    async def members(self, at_least: int = 0) -> Members:
        """The served model's members and stakes, read at block `at_least` or later."""
        _block, members = await self.cache.get(("members", self.model_id),
                                               lambda: self._read_members(at_least),
                                               lambda entry: entry[0] >= at_least)
        return members

    async def _read_members(self, at_least: int) -> tuple[int, Members]:
        """The members, with the served model and the members' records cached alongside: the
        follower's refresh then keeps every registry read of the request path cached."""
        head = await self.head(at_least)
        snapshot = await self.reads.snapshot(self.model_id, head.number)
        self.cache.put(("model", self.model_id), snapshot.model)
        for address, info in zip(snapshot.members.addresses, snapshot.participants):
            self.cache.put(("participant", address.lower()), info)
        return head.number, snapshot.members

    async def _read_admission(self, block: int) -> None:
        """The index of started inferences brought up to `block`, then the followed clients'
        escrow at `block` (agents.node.admission says why a gateway admits against them)."""
        through = self.state.indexed_through(self.chain.start_block - 1)
        while through < block:
            to = min(block, through + MAX_LOG_BLOCKS)
            self.state.index_started(await self.reads.started(through + 1, to), to, int(time.time()))
            through = to
        clients = self.admission.clients()
        if block == self.admission.block:  # the escrows at this block are known: read newcomers only
            known = self.admission.escrows
            escrows = {c: known[c] for c in clients if c in known}
            clients = [c for c in clients if c not in known]
        else:
            escrows = {}
        if clients:
            escrows |= await self.reads.escrows(clients, block)
        self.admission.update(block, escrows)

    async def follow_head(self, stop: asyncio.Event) -> None:
        """Reload the head every `head_refresh` seconds, and, when it moved or half their TTL has
        passed, the members (with the served model and their records) and the admission book, so
        the request path finds them (and the hash that seeds the draw) cached, never expired."""
        members_at = (-1, -math.inf)  # (head block, monotonic time) of the last members load
        while not stop.is_set():
            try:
                head = await self.cache.get("head", self.reads.head, lambda _: False)
                self.head_read_at = time.monotonic()
                if (head.number != members_at[0]
                        or time.monotonic() - members_at[1] > self.settings.chain_cache_ttl / 2):
                    await self.cache.get(("members", self.model_id),
                                         lambda: self._read_members(head.number), lambda _: False)
                    members_at = (head.number, time.monotonic())
                    try:
                        await self._read_admission(head.number)
                    except Exception as exc:  # the book ages out: admissions read the chain
                        log.warning("admission book refresh failed: %r", exc)
            except Exception as exc:  # the request path falls back to reading them itself
                log.warning("head refresh failed: %r", exc)
            try:
                await asyncio.wait_for(stop.wait(), self.settings.head_refresh)
            except TimeoutError:
                pass
