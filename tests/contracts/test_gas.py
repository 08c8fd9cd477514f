"""Gas and size figures: regression bounds on what the README quotes (run with -s to print them)."""

import pytest

from conftest import FUNDS, MODEL_ID, answers, started

EIP170_LIMIT = 24_576
TARGET = 40_000  # issue 4: startBatch + finishBatch per inference at a batch of 16
MAX_TOKENS = 256
# the client's nonces from the start of a word of the Ledger's replay bitmap, as the SDK counts
# them: one fresh word per 256 inferences, none in the batches measured here
NONCE_BASE = 2**72


@pytest.fixture
def one_host(ledger, hosts, client, fund, make_participant):
    """One host, so that every draw picks it."""
    make_participant(hosts[0])
    fund(client, ledger, FUNDS)
    ledger.deposit(FUNDS, sender=client)
    return hosts[0]


@pytest.fixture
def measure(ledger, gov, client, sign, one_host):
    """measure(size) -> (startBatch, finishBatch) receipts of a batch of `size` whose answers are
    MAX_TOKENS long, after a first batch of 16 that writes the fresh slots (the nonce word, the
    batch counter, the totals, the executor's epoch account): the steady state, as
    benchmarks/gas.py measures it."""
    nonces = iter(range(NONCE_BASE, NONCE_BASE + 256))

    def run(size):
        signed = [sign(client, max_tokens=MAX_TOKENS, nonce=next(nonces)) for _ in range(size)]
        start = ledger.startBatch(one_host, MODEL_ID, [s.item() for s in signed], sender=gov)
        finish = ledger.finishBatch(*started(start).args(), answers([MAX_TOKENS] * size), sender=one_host)
        return start, finish

    def measure(size):
        run(16)
        return run(size)

    return measure


def calldata(tx) -> int:
    return len(tx.transaction.data)


def test_gas__batch_of_one(measure):
    start, finish = measure(1)
    total = start.gas_used + finish.gas_used
    print(f"\nbatch of 1: start {start.gas_used} + finish {finish.gas_used} = {total} gas, "
          f"calldata {calldata(start) + calldata(finish)} bytes")
    assert total < 215_000


@pytest.mark.parametrize("size, bound", [(16, TARGET), (32, 32_000)])
def test_gas__batch__per_inference_within_bound(measure, size, bound):
    start, finish = measure(size)
    per = (start.gas_used + finish.gas_used) / size
    data = (calldata(start) + calldata(finish)) / size
    print(f"\nbatch of {size}: start {start.gas_used} + finish {finish.gas_used}, "
          f"{per:.0f} gas and {data:.0f} calldata bytes per inference "
          f"(start {start.gas_used / size:.0f}, finish {finish.gas_used / size:.0f})")
    assert per <= bound


@pytest.mark.parametrize("name", ["Registry", "Ledger"])
def test_bytecode__deployed_fits_eip170(chain, registry, ledger, name):
    # Deployed code includes the immutables appended at deploy time, which the build's size omits.
    size = len(chain.provider.get_code({"Registry": registry, "Ledger": ledger}[name].address))
    print(f"\n{name}: {size} bytes of deployed code")
    assert size <= EIP170_LIMIT
