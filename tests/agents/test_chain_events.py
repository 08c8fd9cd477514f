"""EventPoller against real Ledger events: ranges, checkpoints that survive a restart, replay on failure."""

from __future__ import annotations

import asyncio

import pytest

from agents.chain.events import EventPoller


@pytest.fixture
def depositor(make_client):
    """A client with nothing deposited yet, and a way to deposit: its Deposited events are its own."""
    client = make_client(escrow=1)

    def deposit(amount: int) -> int:
        client.transact(client.token.functions.mint(client.address, amount))
        client.transact(client.token.functions.approve(client.ledger.address, amount))
        return client.transact(client.ledger.functions.deposit(amount))["blockNumber"]

    client.deposit = deposit
    return client


def poller(client, db, from_block, **options) -> EventPoller:
    return EventPoller(client, client.ledger, "Deposited", db, from_block,
                       argument_filters={"client": client.address}, **options)


class Collector:
    def __init__(self, fail_first: int = 0):
        self.amounts: list[int] = []
        self.fail_first = fail_first

    async def __call__(self, event) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise RuntimeError("handler down")
        self.amounts.append(event["args"]["amount"])


async def test_poller__restart__resumes_after_checkpoint(depositor, tmp_path):
    start = depositor.deposit(10)
    depositor.deposit(20)
    first, seen = poller(depositor, tmp_path / "cp.sqlite", start), Collector()
    while await first.step(seen):
        pass
    assert seen.amounts == [10, 20]
    checkpoint = first.last_block
    assert checkpoint == depositor.w3.eth.block_number
    first.close()

    depositor.deposit(30)
    second, after = poller(depositor, tmp_path / "cp.sqlite", start), Collector()
    assert second.last_block == checkpoint
    while await second.step(after):
        pass
    assert after.amounts == [30]  # nothing replayed, nothing missed


async def test_poller__checkpoints_by_name__independent(depositor, tmp_path):
    start = depositor.deposit(5)
    a, b = Collector(), Collector()
    pa = poller(depositor, tmp_path / "cp.sqlite", start, name="validator")
    pb = poller(depositor, tmp_path / "cp.sqlite", start, name="keeper")
    await pa.step(a)
    assert pb.last_block == start - 1
    await pb.step(b)
    assert a.amounts == b.amounts == [5]


async def test_poller__small_ranges__every_event_once_in_order(depositor, tmp_path):
    start = depositor.deposit(1)
    for amount in (2, 3, 4):
        depositor.deposit(amount)
    p, seen = poller(depositor, tmp_path / "cp.sqlite", start, max_range=2), Collector()
    steps = 0
    while await p.step(seen):
        steps += 1
    assert seen.amounts == [1, 2, 3, 4]
    assert steps >= 5  # each deposit takes 3 transactions, one block each, read 2 blocks at a time


async def test_poller__handler_fails__range_replayed_checkpoint_kept(depositor, tmp_path):
    start = depositor.deposit(7)
    p, flaky = poller(depositor, tmp_path / "cp.sqlite", start), Collector(fail_first=1)
    with pytest.raises(RuntimeError, match="handler down"):
        await p.step(flaky)
    assert p.last_block == start - 1
    assert await p.step(flaky)
    assert flaky.amounts == [7]


async def test_poller__confirmations__waits_for_depth(depositor, tmp_path, anvil):
    start = depositor.deposit(9)
    p, seen = poller(depositor, tmp_path / "cp.sqlite", start, confirmations=3), Collector()
    assert not await p.step(seen)
    assert seen.amounts == []
    anvil.mine(3)
    while await p.step(seen):
        pass
    assert seen.amounts == [9]


async def test_run__handler_error__logged_and_retried(depositor, tmp_path, caplog):
    start = depositor.deposit(11)
    p, flaky = poller(depositor, tmp_path / "cp.sqlite", start), Collector(fail_first=2)
    stop = asyncio.Event()
    task = asyncio.create_task(p.run(flaky, stop, interval=0.01))
    for _ in range(300):
        if flaky.amounts:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert flaky.amounts == [11]
    assert caplog.text.count("handling events failed; retrying") == 2


def test_poller__unknown_event__rejected(depositor, tmp_path):
    with pytest.raises(ValueError) as err:
        EventPoller(depositor, depositor.ledger, "Deposit", tmp_path / "cp.sqlite", 0)
    assert str(err.value).startswith(f"contract {depositor.ledger.address} has no event 'Deposit'; it has ")
    assert "Deposited, Withdrawn, Started, BatchStarted, Finished, BatchFinished" in str(err.value)
    assert not (tmp_path / "cp.sqlite").exists()


def test_poller__filter_on_an_argument_not_indexed__rejected(depositor, tmp_path):
    with pytest.raises(ValueError, match="not indexed arguments of Deposited: amount"):
        EventPoller(depositor, depositor.ledger, "Deposited", tmp_path / "cp.sqlite", 0,
                    argument_filters={"amount": 10})


async def test_poller__filter__only_that_client(depositor, make_client, tmp_path):
    other = make_client(escrow=1)
    start = depositor.deposit(10)
    other.transact(other.token.functions.mint(other.address, 5))
    other.transact(other.token.functions.approve(other.ledger.address, 5))
    other.transact(other.ledger.functions.deposit(5))
    depositor.deposit(20)
    mine, seen = poller(depositor, tmp_path / "cp.sqlite", start), Collector()
    while await mine.step(seen):
        pass
    assert seen.amounts == [10, 20]
