"""Registry: gov setters, participants, unbonding, ledger-only calls and stake-weighted draws."""

import ape
from eth_utils import keccak

from conftest import MIN_STAKE, MODEL, MODEL_ID, PRICE, SPEC_HASH, STAKE, UNBONDING, ZERO


def reference_draw(members, stakes, seed, exclude=None):
    """The draw of docs/protocol.md, in Python; `exclude` is one address or a list."""
    excluded = exclude if isinstance(exclude, list) else [exclude]
    pool = [(m, s) for m, s in zip(members, stakes) if m not in excluded]
    total = sum(s for _, s in pool)
    if total == 0:
        return ZERO
    r = int.from_bytes(seed, "big") % total
    for member, stake in pool:
        if r < stake:
            return member
        r -= stake


# ---------------------------------------------------------------- gov

def test_set_ledger__twice__reverts(registry, ledger, gov):
    assert registry.ledger() == ledger.address
    with ape.reverts("registry: ledger already set"):
        registry.setLedger(gov, sender=gov)


def test_set_ledger__not_gov__reverts(project, gov, token, outsider):
    fresh = gov.deploy(project.Registry, token, MIN_STAKE, UNBONDING)
    with ape.reverts("registry: not gov"):
        fresh.setLedger(outsider, sender=outsider)
    with ape.reverts("registry: zero ledger"):
        fresh.setLedger(ZERO, sender=gov)
    tx = fresh.setLedger(outsider, sender=gov)
    assert tx.events[0].event_name == "LedgerSet"


def test_register_model__gov__listed(registry, ledger, gov):
    name = "nullius/other"
    tx = registry.registerModel(keccak(text=name), name, SPEC_HASH, 5, sender=gov)
    assert tx.events[0].event_name == "ModelRegistered"
    assert list(map(bytes, registry.modelIds())) == [MODEL_ID, keccak(text=name)]
    assert tuple(registry.model(keccak(text=name))) == (name, SPEC_HASH, 5, True)
    assert registry.modelPrice(keccak(text=name)) == (True, 5)


def test_register_model__rejections(registry, ledger, gov, outsider):
    name = "nullius/other"
    with ape.reverts("registry: not gov"):
        registry.registerModel(keccak(text=name), name, SPEC_HASH, 5, sender=outsider)
    with ape.reverts("registry: id is not keccak(name)"):
        registry.registerModel(keccak(text="x"), name, SPEC_HASH, 5, sender=gov)
    with ape.reverts("registry: model exists"):
        registry.registerModel(MODEL_ID, MODEL, SPEC_HASH, 5, sender=gov)
    with ape.reverts("registry: price too high"):
        registry.registerModel(keccak(text=name), name, SPEC_HASH, 2**96, sender=gov)
    registry.registerModel(keccak(text=name), name, SPEC_HASH, 2**96 - 1, sender=gov)


def test_set_model_price__gov__changes_price(registry, ledger, gov, outsider):
    tx = registry.setModelPrice(MODEL_ID, 2 * PRICE, sender=gov)
    assert (tx.events[0].event_name, tx.events[0].price_per_token) == ("ModelPriceSet", 2 * PRICE)
    assert registry.model(MODEL_ID).price_per_token == 2 * PRICE
    with ape.reverts("registry: not gov"):
        registry.setModelPrice(MODEL_ID, PRICE, sender=outsider)
    with ape.reverts("registry: unknown model"):
        registry.setModelPrice(keccak(b"x"), PRICE, sender=gov)
    with ape.reverts("registry: price too high"):
        registry.setModelPrice(MODEL_ID, 2**96, sender=gov)


# ---------------------------------------------------------------- participants

def test_register__staked__active_in_draw(registry, ledger, token, make_participant, hosts):
    host = make_participant(hosts[0], url="http://a")
    assert tuple(registry.participant(host)) == (STAKE, 0, MODEL_ID, "http://a", True, 0)
    assert registry.participantsOf(MODEL_ID) == [host.address]
    assert registry.totalStake(MODEL_ID) == STAKE == registry.totalStaked() == token.balanceOf(registry)


def test_register__rejections(registry, ledger, fund, hosts):
    host = hosts[0]
    fund(host, registry, STAKE)
    with ape.reverts("registry: unknown model"):
        registry.register(STAKE, "http://a", keccak(b"x"), sender=host)
    with ape.reverts("registry: stake below minimum"):
        registry.register(MIN_STAKE - 1, "http://a", MODEL_ID, sender=host)
    with ape.reverts("registry: empty url"):
        registry.register(STAKE, "", MODEL_ID, sender=host)
    registry.register(MIN_STAKE, "http://a", MODEL_ID, sender=host)
    with ape.reverts("registry: already registered"):
        registry.register(MIN_STAKE, "http://a", MODEL_ID, sender=host)


def test_add_stake__active__raises_weight(registry, ledger, fund, make_participant, hosts):
    host = make_participant(hosts[0])
    fund(host, registry, 5)
    tx = registry.addStake(5, sender=host)
    assert (tx.events[-1].event_name, tx.events[-1].stake) == ("StakeAdded", STAKE + 5)
    assert registry.totalStake(MODEL_ID) == STAKE + 5
    with ape.reverts("registry: zero amount"):
        registry.addStake(0, sender=host)
    with ape.reverts("registry: not active"):
        registry.addStake(5, sender=hosts[1])


def test_set_url__active__changed(registry, ledger, make_participant, hosts):
    host = make_participant(hosts[0])
    registry.setUrl("http://b", sender=host)
    assert registry.participant(host).url == "http://b"
    with ape.reverts("registry: empty url"):
        registry.setUrl("", sender=host)
    with ape.reverts("registry: not active"):
        registry.setUrl("http://c", sender=hosts[1])


def test_exit__then_withdraw_after_unbonding(registry, ledger, token, make_participant, hosts, chain):
    a, b = make_participant(hosts[0]), make_participant(hosts[1])
    tx = registry.exit(sender=a)
    assert tx.events[0].exit_block == tx.block_number
    assert registry.participantsOf(MODEL_ID) == [b.address]
    assert registry.totalStake(MODEL_ID) == STAKE
    with ape.reverts("registry: not active"):
        registry.exit(sender=a)
    with ape.reverts("registry: already registered"):
        registry.register(STAKE, "http://a", MODEL_ID, sender=a)
    chain.mine(tx.block_number + UNBONDING - 2 - chain.blocks.head.number)
    with ape.reverts("registry: unbonding"):  # lands one block before the end
        registry.withdrawStake(sender=a)
    before = token.balanceOf(a)
    registry.withdrawStake(sender=a)
    assert token.balanceOf(a) == before + STAKE
    assert registry.participant(a).stake == 0 and registry.totalStaked() == STAKE
    with ape.reverts("registry: not exited"):
        registry.withdrawStake(sender=a)
    with ape.reverts("registry: not exited"):
        registry.withdrawStake(sender=b)


def test_slash_and_set_reputation__not_ledger__revert(registry, ledger, gov, make_participant, hosts):
    host = make_participant(hosts[0])
    with ape.reverts("registry: not ledger"):
        registry.slash(host, 1, sender=gov)
    with ape.reverts("registry: not ledger"):
        registry.setReputation(host, 1, sender=gov)


# ---------------------------------------------------------------- draws

def test_draw__matches_python_reference(registry, ledger, make_participant, accounts):
    members = [make_participant(accounts[2 + i], stake=MIN_STAKE * (i + 1)) for i in range(4)]
    stakes = [MIN_STAKE * (i + 1) for i in range(4)]
    addresses = [m.address for m in members]
    drawn = set()
    for i in range(24):
        seed = keccak(i.to_bytes(32, "big"))
        executor = registry.drawExecutor(MODEL_ID, seed)
        assert executor == reference_draw(addresses, stakes, seed)
        validator = registry.drawValidator(MODEL_ID, seed, executor)
        assert validator == reference_draw(addresses, stakes, seed, exclude=executor) != executor
        drawn.add(executor)
    assert drawn == set(addresses)


def test_draw__exited_member__never_drawn(registry, ledger, make_participant, hosts):
    a, b = make_participant(hosts[0]), make_participant(hosts[1])
    registry.exit(sender=a)
    for i in range(8):
        assert registry.drawExecutor(MODEL_ID, keccak(bytes([i]))) == b.address


def test_draw__alone__no_validator(registry, ledger, make_participant, hosts):
    host = make_participant(hosts[0])
    assert registry.drawExecutor(MODEL_ID, keccak(b"s")) == host.address
    assert registry.drawValidator(MODEL_ID, keccak(b"s"), host) == ZERO
    assert registry.drawExecutor(keccak(b"unknown"), keccak(b"s")) == ZERO


def test_draw_distinct__matches_python_reference(registry, ledger, make_participant, accounts):
    members = [make_participant(accounts[2 + i], stake=MIN_STAKE * (i + 1)) for i in range(4)]
    stakes = [MIN_STAKE * (i + 1) for i in range(4)]
    addresses = [m.address for m in members]
    for i in range(6):
        rand = keccak(i.to_bytes(32, "big"))
        exclude = addresses[i % 4: i % 4 + 2]
        expected, excluded = [], list(exclude)
        for k in range(3):
            drawn = reference_draw(addresses, stakes, keccak(rand + k.to_bytes(32, "big")), excluded)
            if drawn == ZERO:
                break
            expected.append(drawn)
            excluded.append(drawn)
        assert registry.drawDistinct(MODEL_ID, rand, exclude, 3) == expected
        assert len(expected) == min(3, 4 - len(exclude))  # never more than the others
    assert registry.drawDistinct(MODEL_ID, keccak(b"s"), addresses[:2], 0) == []
