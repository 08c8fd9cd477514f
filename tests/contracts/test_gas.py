"""Gas and size figures: regression bounds on what the README quotes (run with -s to print them)."""

import pytest
from eth_utils import keccak

from conftest import FUNDS

EIP170_LIMIT = 24_576


@pytest.fixture
def one_host(ledger, hosts, client, fund, make_participant):
    """One host, so that every draw picks it and a batch of finishes is one transaction."""
    make_participant(hosts[0])
    fund(client, ledger, FUNDS)
    ledger.deposit(FUNDS, sender=client)
    return hosts[0]


def finish_args(s):
    return (s.record().as_tuple(), keccak(b"answer"), keccak(b"artifact"), 32)


def calldata(tx) -> int:
    return len(tx.transaction.data)


def test_gas__single_start_and_finish(ledger, gov, client, sign, one_host):
    warm = sign(client)  # warms the first-time slots (epoch account, counters)
    ledger.start(warm.args(), sender=gov)
    ledger.finish(finish_args(warm), sender=one_host)
    s = sign(client)
    start = ledger.start(s.args(), sender=gov)
    finish = ledger.finish(finish_args(s), sender=one_host)
    total = start.gas_used + finish.gas_used
    print(f"\nsingle: start {start.gas_used} + finish {finish.gas_used} = {total} gas, "
          f"calldata {calldata(start) + calldata(finish)} bytes")
    assert total < 200_000


def test_gas__batch_of_16(ledger, gov, client, sign, one_host):
    warm = sign(client)
    ledger.start(warm.args(), sender=gov)
    ledger.finish(finish_args(warm), sender=one_host)
    signed = [sign(client) for _ in range(16)]
    start = ledger.startBatch([s.args() for s in signed], sender=gov)
    finish = ledger.finishBatch([finish_args(s) for s in signed], sender=one_host)
    per = (start.gas_used + finish.gas_used) / 16
    data = (calldata(start) + calldata(finish)) / 16
    print(f"\nbatch of 16: start {start.gas_used} + finish {finish.gas_used}, "
          f"{per:.0f} gas and {data:.0f} calldata bytes per inference "
          f"(start {start.gas_used / 16:.0f}, finish {finish.gas_used / 16:.0f})")
    assert per < 70_000


@pytest.mark.parametrize("name", ["Registry", "Ledger"])
def test_bytecode__deployed_fits_eip170(chain, registry, ledger, name):
    # Deployed code includes the immutables appended at deploy time, which the build's size omits.
    size = len(chain.provider.get_code({"Registry": registry, "Ledger": ledger}[name].address))
    print(f"\n{name}: {size} bytes of deployed code")
    assert size < EIP170_LIMIT
