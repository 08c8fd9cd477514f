"""The deploy routine and the build loader, against the same anvil ape runs."""

import pytest
from pydantic import ValidationError

from agents.chain.build import contract_type, ensure_compiled, is_stale
from agents.chain.deploy import DeployParams, Deployments, deploy, register_model
from agents.protocol.eip712 import model_id


def test_deploy__defaults__wired_and_saved(chain, gov, tmp_path):
    w3 = chain.provider.web3
    deployments = deploy(w3, gov.private_key, DeployParams(), out_dir=tmp_path)
    assert Deployments.load(tmp_path / f"{chain.chain_id}.json") == deployments
    registry = w3.eth.contract(address=deployments.registry, abi=contract_type("Registry")["abi"])
    ledger = w3.eth.contract(address=deployments.ledger, abi=contract_type("Ledger")["abi"])
    assert registry.functions.ledger().call() == deployments.ledger
    assert ledger.functions.registry().call() == deployments.registry
    assert ledger.functions.token().call() == registry.functions.token().call() == deployments.token
    assert ledger.functions.validation_window().call() == DeployParams().validation_window
    assert w3.eth.get_block(deployments.start_block)["transactions"]
    mid = register_model(w3, gov.private_key, deployments, "nullius/ref-tiny", b"\x01" * 32, 7)
    assert mid == model_id("nullius/ref-tiny")
    assert registry.functions.model(mid).call() == ("nullius/ref-tiny", b"\x01" * 32, 7, True)


def test_deploy__existing_token__reused(chain, gov, token, tmp_path):
    deployments = deploy(chain.provider.web3, gov.private_key, DeployParams(), token=token.address, out_dir=tmp_path)
    assert deployments.token == token.address


def test_deploy__mock_token__reward_pools_funded(chain, gov, tmp_path):
    w3 = chain.provider.web3
    params = DeployParams(reward_per_epoch=7, reward_epochs=3)
    deployments = deploy(w3, gov.private_key, params, out_dir=tmp_path)
    ledger = w3.eth.contract(address=deployments.ledger, abi=contract_type("Ledger")["abi"])
    assert [ledger.functions.epochs(e).call()[0] for e in range(4)] == [7, 7, 7, 0]
    assert ledger.functions.totalPool().call() == 21
    assert ledger.functions.jury_window().call() == params.jury_window
    assert ledger.functions.epoch_length().call() == params.epoch_length


def test_deploy_params__judgement_longer_than_settlement_or_unbonding__rejected():
    with pytest.raises(ValidationError, match=r"settlement_delay \(18\) must exceed validation_window \+ "
                                              r"jury_window \+ 2 \(18\)"):
        DeployParams(validation_window=8, jury_window=8, settlement_delay=18)
    with pytest.raises(ValidationError, match=r"unbonding_blocks \(18\) must exceed validation_window \+ "
                                              r"jury_window \+ 2 \(18\)"):
        DeployParams(validation_window=8, jury_window=8, unbonding_blocks=18)
    with pytest.raises(ValidationError, match="less than or equal to 256"):
        DeployParams(validation_window=257, unbonding_blocks=600, settlement_delay=600)


def test_ledger_constructor__bad_params__revert(project, gov, token, registry):
    from conftest import PARAMS
    import ape
    cases = [
        ((1,) + PARAMS[1:], "ledger: window out of range"),
        (PARAMS[:2] + (6,) + PARAMS[3:], "ledger: jury out of range"),
        (PARAMS[:3] + (0,) + PARAMS[4:], "ledger: zero epoch length"),
        (PARAMS[:4] + (PARAMS[0] + PARAMS[1] + 2,) + PARAMS[5:], "ledger: settlement too short"),
        (PARAMS[:6] + (10_001,) + PARAMS[7:], "ledger: bps above 10000"),
    ]
    for params, message in cases:
        with ape.reverts(message):
            gov.deploy(project.Ledger, token, registry, params)
    short = gov.deploy(project.Registry, token, 1, PARAMS[0] + PARAMS[1] + 2)
    with ape.reverts("ledger: unbonding too short"):
        gov.deploy(project.Ledger, token, short, PARAMS)


def test_build__compiled_contracts__abi_and_bytecode():
    assert not is_stale()
    assert ensure_compiled().name == "__local__.json"
    ledger = contract_type("Ledger")
    assert ledger["bytecode"].startswith("0x") and any(e.get("name") == "startBatch" for e in ledger["abi"])
    with pytest.raises(KeyError, match="contract 'Nope' not in"):
        contract_type("Nope")


def test_build__missing__clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no compiled build at"):
        contract_type("Ledger", tmp_path)
    assert is_stale(tmp_path)
