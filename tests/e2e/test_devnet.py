"""The whole network on one machine: real anvil, contracts, node and model node processes.

One participant serves the substitute model under the reference model's name. Its answers must fail
validation, the disputes they open must be upheld by the jury (the one other participant), the
client refunded and the cheater slashed. Its failed verdicts on honest answers must be rejected by
the jury and cost it the accuser's penalty, and no honest participant may be invalidated. Then the
epoch settles and the keepers claim: the honest executors earn fees and rewards, the cheater's
account is forfeited.
"""

from __future__ import annotations

import time

import pytest

from agents.chain.client import ChainClient
from agents.client.sdk import NulliusClient
from agents.devnet import network, summary, traffic


@pytest.fixture(scope="module")
def devnet(tmp_path_factory):
    config = network.DevnetConfig(data_dir=tmp_path_factory.mktemp("devnet"))
    net = network.start(config, log=lambda _: None)
    yield net
    net.stop()


def poll(done, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)
    return True


def test_devnet__cheater__caught_slashed_and_client_refunded(devnet):
    config, p = devnet.config, devnet.config.deploy
    client = NulliusClient(devnet.gateway_url, devnet.rpc_url, devnet.client_keys[0], devnet.deployments)
    client.deposit(10 * summary.TOKEN)
    ids = traffic.send([client], requests=12, max_tokens=16)
    chain = ChainClient(devnet.rpc_url, devnet.client_keys[0], devnet.deployments)
    addresses = [x.address for x in devnet.participants]
    assert poll(lambda: summary.undecided(chain, ids) == 0,
                timeout=(p.validation_window + p.jury_window) * config.block_time + 60)
    assert poll(lambda: summary.unclaimed(chain, addresses, ids) == 0,
                timeout=(p.epoch_length + p.settlement_delay) * config.block_time + 60)

    rows = summary.participant_rows(chain, devnet.participants, devnet.deployments.start_block)
    (cheater,) = [r for r in rows if r.cheater]
    honest = [r for r in rows if not r.cheater]
    assert sum(r.served for r in rows) == 12
    # at reputation 0 every answer is validated: each of the cheater's fails and the jury upholds it
    assert cheater.served > 0
    assert cheater.invalidated == cheater.disputes_against == cheater.served
    assert cheater.slashes >= cheater.invalidated and cheater.stake < config.stake
    assert cheater.reputation == 0 and cheater.rewards_claimed == 0
    # its failed verdicts on honest answers were rejected by the honest juror
    assert cheater.accusations == cheater.accusations_rejected == cheater.verdicts_fail
    for r in honest:
        assert (r.invalidated, r.accusations_rejected, r.slashes) == (0, 0, 0)
        assert r.stake == config.stake
        if r.served:
            assert r.epochs_claimed >= 1 and r.fees_claimed > 0 and r.rewards_claimed > 0
    (client_row,) = summary.client_rows(chain, [client.address])
    assert client_row.refunded > 0
    assert summary.verdict(rows, client_row).ok
