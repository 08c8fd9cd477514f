"""The request path's cache of chain reads: reuse within the TTL, reload after it or when the
value is not fresh enough, one load for concurrent callers, and no caching of a failure; and the
node's head follower, which keeps the head and the members cached for requests."""

from __future__ import annotations

import asyncio

from eth_account import Account

from agents.node.cache import TtlCache
from agents.node.chain_view import Head, Members, Model, ModelSnapshot, ParticipantInfo
from agents.node.config import NodeSettings
from agents.node.context import NodeContext
from agents.node.metrics import NodeMetrics


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


class StandInReads:
    """Chain reads stood in for: a head that moves one block per read, a fixed model with one
    member; single registry reads are counted."""

    def __init__(self):
        self.number = 10
        self.member_reads: list[int] = []
        self.single_reads: list[str] = []

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


def _context(reads: StandInReads) -> NodeContext:
    settings = NodeSettings(private_key="0x" + "11" * 32, head_refresh=0.01, chain_cache_ttl=60)
    return NodeContext(settings=settings, account=Account.from_key(settings.private_key),
                       chain=None, reads=reads, state=None, outbox=None, store=None, http=None,
                       metrics=NodeMetrics(), domain=None)


async def _followed(chain: StandInReads, seconds: float) -> NodeContext:
    """A node context whose head follower ran for `seconds`."""
    ctx = _context(chain)
    stop = asyncio.Event()
    follower = asyncio.create_task(ctx.follow_head(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await follower
    return ctx


async def test_follow_head__keeps_head_and_members_fresh_for_requests():
    chain = StandInReads()
    ctx = await _followed(chain, 0.1)
    head = await ctx.head()  # served from the cache: no read
    assert head.number == chain.number > 12  # refreshed many times despite a 60 s TTL
    assert chain.member_reads[-1] == head.number  # members re-read at each new head
    assert (await ctx.members()).addresses == (MEMBER,)
    assert chain.number == head.number  # neither call above read the chain


async def test_follow_head__caches_the_served_model_and_the_members_records():
    chain = StandInReads()
    ctx = await _followed(chain, 0.05)
    assert await ctx.model(ctx.model_id) == SERVED
    assert await ctx.participant(MEMBER.upper().replace("0X", "0x")) == RECORD
    assert chain.single_reads == []  # both from the follower's snapshot
    # a participant outside the model is read on its own, once
    other = "0x" + "bb" * 20
    assert (await ctx.participant(other)).active is False
    assert (await ctx.participant(other)).active is False
    assert chain.single_reads == [other]


async def test_head__older_than_needed__read_again():
    chain = StandInReads()
    ctx = _context(chain)
    assert (await ctx.head()).number == 11
    assert (await ctx.head()).number == 11  # cached
    assert (await ctx.head(at_least=12)).number == 12  # the gateway's seed block is newer
