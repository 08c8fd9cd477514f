"""The request path's cache of chain reads: reuse within the TTL, reload after it or when the
value is not fresh enough, one load for concurrent callers, and no caching of a failure; and the
node's head follower, which keeps the head and the members cached for requests."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from eth_account import Account

from agents.node.cache import TtlCache
from agents.chain.client import ChainUnavailable
from agents.node import gateway
from agents.node.admission import CLIENT_TTL_S, AdmissionBook
from agents.node.chain_view import (
    AdmissionReads, Head, Members, Model, ModelSnapshot, ParticipantInfo, StartedLog,
)
from agents.node.config import NodeSettings
from agents.node.context import NodeContext
from agents.node.metrics import NodeMetrics
from agents.node.state import NodeState


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counting_loader(values):
    calls = []

    async def load():
        calls.append(1)
        await asyncio.sleep(0)
        return values[len(calls) - 1]

    return load, calls


async def test_get__within_ttl__loads_once():
    clock = Clock()
    cache = TtlCache(1.0, clock)
    load, calls = counting_loader(["a", "b"])
    assert await cache.get("k", load) == "a"
    clock.now += 0.9
    assert await cache.get("k", load) == "a"
    assert len(calls) == 1


async def test_get__after_ttl__reloads():
    clock = Clock()
    cache = TtlCache(1.0, clock)
    load, calls = counting_loader(["a", "b"])
    await cache.get("k", load)
    clock.now += 1.0
    assert await cache.get("k", load) == "b"
    assert len(calls) == 2


async def test_get__not_fresh_enough__reloads():
    cache = TtlCache(10.0, Clock())
    load, calls = counting_loader([5, 9])
    assert await cache.get("head", load) == 5
    assert await cache.get("head", load, lambda v: v >= 5) == 5
    assert await cache.get("head", load, lambda v: v >= 7) == 9
    assert len(calls) == 2


async def test_get__concurrent_callers__share_one_load():
    cache = TtlCache(1.0, Clock())
    load, calls = counting_loader(["a", "b"])
    assert await asyncio.gather(*(cache.get("k", load) for _ in range(5))) == ["a"] * 5
    assert len(calls) == 1


async def test_get__load_fails__raises_for_all_and_caches_nothing():
    cache = TtlCache(1.0, Clock())
    attempts = []

    async def failing():
        attempts.append(1)
        await asyncio.sleep(0)
        raise ConnectionError("rpc down")

    results = await asyncio.gather(cache.get("k", failing), cache.get("k", failing),
                                   return_exceptions=True)
    assert [str(r) for r in results] == ["rpc down", "rpc down"]
    assert len(attempts) == 1
    load, _ = counting_loader(["a"])
    assert await cache.get("k", load) == "a"


async def test_get__keys_are_separate():
    cache = TtlCache(1.0, Clock())
    assert await cache.get("x", counting_loader([1])[0]) == 1
    assert await cache.get("y", counting_loader([2])[0]) == 2


async def test_get__zero_ttl__always_reloads():
    cache = TtlCache(0.0, Clock())
    load, calls = counting_loader(["a", "b"])
    await cache.get("k", load)
    assert await cache.get("k", load) == "b"
    assert len(calls) == 2


# ------------------------------------------------------------------ the node's head follower

MEMBER = "0x" + "aa" * 20
SERVED = Model("nullius/ref-tiny", b"\x01" * 32, 7, True)
RECORD = ParticipantInfo(1, 0, b"\x02" * 32, "http://member", True)


CLIENT = "0x" + "cc" * 20
STARTED_ID = b"\x05" * 32


class StandInReads:
    """Chain reads stood in for: a head that moves one block per read, a fixed model with one
    member, one start in block 12, every client holding its block number in escrow; single
    reads are counted."""

    def __init__(self):
        self.number = 10
        self.member_reads: list[int] = []
        self.single_reads: list[str] = []
        self.log_ranges: list[tuple[int, int]] = []
        self.escrow_reads: list[tuple[int, list[str]]] = []

    async def head(self) -> Head:
        self.number += 1
        return Head(self.number, self.number.to_bytes(32, "big"))

    async def snapshot(self, model_id: bytes, block: int) -> ModelSnapshot:
        self.member_reads.append(block)
        return ModelSnapshot(SERVED, Members((MEMBER,), (1,)), (RECORD,))

    async def model(self, model_id: bytes) -> Model:
        self.single_reads.append("model")
        return SERVED

    async def participant(self, address: str) -> ParticipantInfo:
        self.single_reads.append(address)
        return ParticipantInfo(0, 0, b"\0" * 32, "", False)

    async def started(self, from_block: int, to_block: int) -> list[StartedLog]:
        self.log_ranges.append((from_block, to_block))
        return [StartedLog(STARTED_ID, 12, 2**40, CLIENT, 7)] if from_block <= 12 <= to_block else []

    async def escrows(self, clients: list[str], block: int) -> dict[str, int]:
        self.escrow_reads.append((block, list(clients)))
        return {c: block for c in clients}

    async def admission(self, client: str, nonce: int) -> AdmissionReads:
        self.single_reads.append("admission")
        return AdmissionReads(False, 0, None)


def _context(reads: StandInReads, tmp_path) -> NodeContext:
    settings = NodeSettings(private_key="0x" + "11" * 32, head_refresh=0.01, chain_cache_ttl=60)
    return NodeContext(settings=settings, account=Account.from_key(settings.private_key),
                       chain=SimpleNamespace(start_block=5), reads=reads,
                       state=NodeState(tmp_path / "node.sqlite"), outbox=None, store=None,
                       http=None, metrics=NodeMetrics(), domain=None)


async def _followed(chain: StandInReads, seconds: float, tmp_path, clients=()) -> NodeContext:
    """A node context whose head follower ran for `seconds`, its gateway having seen `clients`."""
    ctx = _context(chain, tmp_path)
    for client in clients:
        ctx.admission.saw(client)
    stop = asyncio.Event()
    follower = asyncio.create_task(ctx.follow_head(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await follower
    return ctx


async def test_follow_head__keeps_head_and_members_fresh_for_requests(tmp_path):
    chain = StandInReads()
    ctx = await _followed(chain, 0.1, tmp_path)
    head = await ctx.head()  # served from the cache: no read
    assert head.number == chain.number > 12  # refreshed many times despite a 60 s TTL
    assert chain.member_reads[-1] == head.number  # members re-read at each new head
    assert (await ctx.members()).addresses == (MEMBER,)
    assert chain.number == head.number  # neither call above read the chain


async def test_follow_head__caches_the_served_model_and_the_members_records(tmp_path):
    chain = StandInReads()
    ctx = await _followed(chain, 0.05, tmp_path)
    assert await ctx.model(ctx.model_id) == SERVED
    assert await ctx.participant(MEMBER.upper().replace("0X", "0x")) == RECORD
    assert chain.single_reads == []  # both from the follower's snapshot
    # a participant outside the model is read on its own, once
    other = "0x" + "bb" * 20
    assert (await ctx.participant(other)).active is False
    assert (await ctx.participant(other)).active is False
    assert chain.single_reads == [other]


async def test_head__older_than_needed__read_again(tmp_path):
    chain = StandInReads()
    ctx = _context(chain, tmp_path)
    assert (await ctx.head()).number == 11
    assert (await ctx.head()).number == 11  # cached
    assert (await ctx.head(at_least=12)).number == 12  # the gateway's seed block is newer


async def test_follow_head__keeps_the_admission_reads_for_the_clients_seen(tmp_path):
    chain = StandInReads()
    ctx = await _followed(chain, 0.1, tmp_path, clients=[CLIENT])
    head = await ctx.head()
    # the index of starts covers every block from the deployment on, each block once
    assert chain.log_ranges[0][0] == 5
    assert all(a[1] + 1 == b[0] for a, b in zip(chain.log_ranges, chain.log_ranges[1:]))
    assert ctx.state.indexed_through(0) == ctx.admission.block == head.number
    reads = await gateway.admission_reads(ctx, CLIENT, 7, head)
    assert reads == AdmissionReads(True, head.number, head.number)
    assert (await gateway.admission_reads(ctx, CLIENT, 8, head)).started is False
    assert chain.single_reads == []
    # a client the gateway has not seen, or a book more than a block behind the head: read
    assert (await gateway.admission_reads(ctx, "0x" + "dd" * 20, 7, head)).block is None
    assert (await gateway.admission_reads(ctx, CLIENT, 7, Head(head.number + 2, b""))).block is None
    assert chain.single_reads == ["admission", "admission"]


def test_admission_book__follows_recent_clients_and_expires_with_age():
    clock = Clock()
    book = AdmissionBook(clock)
    book.saw("0x" + "AA" * 20)
    clock.now += 1
    book.saw("0x" + "bb" * 20)
    assert book.clients() == ["0x" + "bb" * 20, "0x" + "aa" * 20]  # newest first, lower case
    assert book.escrow("0x" + "bb" * 20, head=0, max_age=1) is None  # nothing read yet
    book.update(7, {"0x" + "bb" * 20: 42})
    assert book.escrow("0x" + "BB" * 20, head=8, max_age=1) == 42
    assert book.escrow("0x" + "bb" * 20, head=9, max_age=1) is None  # two blocks behind
    clock.now += 1.5
    assert book.escrow("0x" + "bb" * 20, head=8, max_age=1) is None  # read too long ago
    clock.now += CLIENT_TTL_S
    assert book.clients() == []


async def test_read_admission__same_block__reads_only_clients_new_to_the_book(tmp_path):
    chain = StandInReads()
    ctx = _context(chain, tmp_path)
    ctx.admission.saw(CLIENT)
    await ctx._read_admission(20)
    await ctx._read_admission(20)  # the head did not move: nothing to read again
    other = "0x" + "dd" * 20
    ctx.admission.saw(other)
    await ctx._read_admission(20)
    await ctx._read_admission(21)  # a new block: everyone again
    assert chain.escrow_reads == [(20, [CLIENT]), (20, [other]), (21, [other, CLIENT])]
    assert ctx.admission.escrows == {CLIENT: 21, other: 21}
    assert chain.log_ranges == [(5, 20), (21, 21)]


async def test_follow_head__admission_book_fails__members_still_kept_and_book_ages(tmp_path, caplog):
    chain = StandInReads()

    async def no_logs(from_block: int, to_block: int):
        raise ChainUnavailable("eth_getLogs failed: range too large")

    chain.started = no_logs
    ctx = await _followed(chain, 0.05, tmp_path, clients=[CLIENT])
    head = await ctx.head()
    assert chain.member_reads[-1] == head.number  # members refreshed at every head regardless
    assert ctx.admission.block == -1  # never read: every admission reads the chain
    assert (await gateway.admission_reads(ctx, CLIENT, 7, head)).block is None
    assert "admission book refresh failed: ChainUnavailable('eth_getLogs failed: range too large')" \
        in caplog.text
