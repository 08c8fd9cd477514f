"""`ape run deploy [--network ...]`: deploy the contracts with the one deploy routine.

The deployer key comes from NULLIUS_DEPLOYER_KEY; on the local network it defaults to ape's first
test account (anvil's account 0), which then is the Registry's gov.
"""

import os

import click
from ape import accounts
from ape.cli import ConnectedProviderCommand

from agents.chain.build import ensure_compiled
from agents.chain.deploy import DeployParams, deploy


@click.command(cls=ConnectedProviderCommand)
@click.option("--token", default=None, help="an existing ERC-20 to use instead of deploying MockToken")
@click.option("--out-dir", default="deployments", show_default=True, help="where <chain_id>.json goes")
def cli(provider, token, out_dir):
    key = os.environ.get("NULLIUS_DEPLOYER_KEY")
    if not key:
        if provider.network.name != "local":
            raise click.UsageError("set NULLIUS_DEPLOYER_KEY to deploy outside the local network")
        key = accounts.test_accounts[0].private_key
    ensure_compiled()
    deployments = deploy(provider.web3, key, DeployParams(), token=token, out_dir=out_dir)
    click.echo(deployments.model_dump_json(indent=2))
