"""The whole network on one machine: real anvil, contracts, node and model node processes.

One participant serves the substitute model under the reference model's name; the network must
invalidate its inferences, refund the client and leave the honest participants untouched.
"""

from __future__ import annotations

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


def test_devnet__cheater__caught_and_client_refunded(devnet):
    client = NulliusClient(devnet.gateway_url, devnet.rpc_url, devnet.client_keys[0],
                           devnet.deployments)
    client.deposit(10 * summary.TOKEN)
    ids = traffic.send([client], requests=12, max_tokens=16)
    window = devnet.config.deploy.validation_window * devnet.config.block_time
    assert traffic.wait_resolved(client, ids, timeout=window + 60) == 0

    chain = ChainClient(devnet.rpc_url, devnet.client_keys[0], devnet.deployments)
    rows = summary.participant_rows(chain, devnet.participants, devnet.deployments.start_block)
    cheater = next(r for r in rows if r.cheater)
    honest = [r for r in rows if not r.cheater]
    assert sum(r.served for r in rows) == 12
    assert cheater.invalidated == cheater.served > 0
    assert cheater.reputation == 0
    assert cheater.stake < devnet.config.stake
    assert all(r.invalidated == 0 for r in honest)
    (client_row,) = summary.client_rows(chain, [client.address])
    assert client_row.refunded > 0
