# pragma version ~=0.4.3
# pragma nonreentrancy on
"""
@title Registry
@notice Stake, models, participants and reputation of the Nullius network.

        Roles: `gov` (the deployer) registers models, sets their prices and wires the Ledger once;
        the `ledger` alone slashes stake and sets reputation. Anyone may join as a participant by
        staking at least `min_stake` on one model (one model per participant in v1).

        Executors and validators are drawn by stake from the active participants of a model with
        `drawExecutor` and `drawValidator`, which the Ledger calls to check a start and to assign a
        validation, and which anyone can call to recompute a draw. Leaving is two steps: `exit()`
        leaves the draw at once, `withdrawStake()` returns the stake after `unbonding_blocks` and
        only while the Ledger has no dispute pending that names the participant, so a verdict can
        still slash stake that earned fees just before the exit.

        Slashed stake goes to the Ledger, which pays accusers and the next epoch's rewards with it.
        Token conservation: token.balanceOf(self) == totalStaked.
"""

# ---------------------------------------------------------------- imports

from ethereum.ercs import IERC20
from .interfaces import ILedger


# ---------------------------------------------------------------- constants

# Bounded so that a draw, which walks a model's participants, has a bounded gas cost.
MAX_PARTICIPANTS: constant(uint256) = 64
MAX_MODELS: constant(uint256) = 32
# The Ledger packs the price per token into 96 bits of an inference record.
MAX_PRICE: constant(uint256) = 2**96 - 1
# The most participants one `drawDistinct` returns, and the most addresses a draw leaves out.
MAX_DRAWN: constant(uint256) = 5
MAX_EXCLUDED: constant(uint256) = 7


# ---------------------------------------------------------------- immutables

# The ERC-20 staked here and paid by clients on the Ledger.
token: public(immutable(IERC20))
# The least stake a participant must post to register.
min_stake: public(immutable(uint256))
# Blocks between `exit()` and `withdrawStake()`.
unbonding_blocks: public(immutable(uint256))


# ---------------------------------------------------------------- flags

flag Role:
    GOV
    LEDGER


# ---------------------------------------------------------------- structs

struct Model:
    name: String[64]
    spec_hash: bytes32
    price_per_token: uint256
    active: bool


struct Participant:
    stake: uint256
    reputation: uint256
    model_id: bytes32
    url: String[256]
    active: bool
    exit_block: uint256


# ---------------------------------------------------------------- storage

# Roles held by each address (gov from the constructor, ledger from `setLedger`).
roles: public(HashMap[address, Role])
# The Ledger contract; set once by gov.
ledger: public(address)
# Registered models by id (keccak of the name).
_models: HashMap[bytes32, Model]
# Ids of all registered models, in registration order.
_model_ids: DynArray[bytes32, MAX_MODELS]
# Participants by address; deleted on `withdrawStake`.
_participants: HashMap[address, Participant]
# Active participants of each model, in the order the draw walks them.
_members: HashMap[bytes32, DynArray[address, MAX_PARTICIPANTS]]
# Sum of the stakes of each model's active participants: the draw's modulus.
_model_stake: HashMap[bytes32, uint256]
# Sum of all participants' stakes, active or unbonding.
totalStaked: public(uint256)
# Stake taken by slashing so far (sent to the Ledger).
slashedTotal: public(uint256)


# ---------------------------------------------------------------- events

event LedgerSet:
    ledger: indexed(address)

event ModelRegistered:
    model_id: indexed(bytes32)
    name: String[64]
    spec_hash: bytes32
    price_per_token: uint256

event ModelPriceSet:
    model_id: indexed(bytes32)
    price_per_token: uint256

event ParticipantRegistered:
    participant: indexed(address)
    model_id: indexed(bytes32)
    stake: uint256
    url: String[256]

event StakeAdded:
    participant: indexed(address)
    amount: uint256
    stake: uint256

event UrlSet:
    participant: indexed(address)
    url: String[256]

event ExitStarted:
    participant: indexed(address)
    exit_block: uint256

event StakeWithdrawn:
    participant: indexed(address)
    amount: uint256

event Slashed:
    participant: indexed(address)
    amount: uint256

event ReputationSet:
    participant: indexed(address)
    reputation: uint256


# ---------------------------------------------------------------- constructor

@deploy
def __init__(token_: IERC20, min_stake_: uint256, unbonding_blocks_: uint256):
    """
    @notice The deployer becomes gov.
    @param token_ The staking and payment ERC-20.
    @param min_stake_ The least stake to register, in token base units.
    @param unbonding_blocks_ Blocks between `exit()` and `withdrawStake()`.
    """
    assert token_.address != empty(address), "registry: zero token"
    assert min_stake_ > 0, "registry: zero min stake"
    token = token_
    min_stake = min_stake_
    unbonding_blocks = unbonding_blocks_
    self.roles[msg.sender] = Role.GOV


# ---------------------------------------------------------------- gov

@external
def setLedger(ledger: address):
    """
    @notice Grants the Ledger its role; gov only, once.
    @param ledger The Ledger contract.
    """
    self._check_role(Role.GOV)
    assert self.ledger == empty(address), "registry: ledger already set"
    assert ledger != empty(address), "registry: zero ledger"
    self.ledger = ledger
    self.roles[ledger] = Role.LEDGER
    log LedgerSet(ledger=ledger)


@external
def registerModel(model_id: bytes32, name: String[64], spec_hash: bytes32, price_per_token: uint256):
    """
    @notice Adds a model that participants may serve; gov only.
    @param model_id keccak256 of `name`.
    @param name The registry name, e.g. "nullius/ref-tiny".
    @param spec_hash sha256 of the model folder's manifest.json.
    @param price_per_token Token base units per output token.
    """
    self._check_role(Role.GOV)
    assert model_id == keccak256(name), "registry: id is not keccak(name)"
    assert not self._models[model_id].active, "registry: model exists"
    assert len(self._model_ids) < MAX_MODELS, "registry: too many models"
    assert price_per_token <= MAX_PRICE, "registry: price too high"
    self._models[model_id] = Model(name=name, spec_hash=spec_hash, price_per_token=price_per_token, active=True)
    self._model_ids.append(model_id)
    log ModelRegistered(model_id=model_id, name=name, spec_hash=spec_hash, price_per_token=price_per_token)


@external
def setModelPrice(model_id: bytes32, price_per_token: uint256):
    """
    @notice Changes a model's price for inferences started from now on; gov only.
    @param model_id The model.
    @param price_per_token Token base units per output token.
    """
    self._check_role(Role.GOV)
    assert self._models[model_id].active, "registry: unknown model"
    assert price_per_token <= MAX_PRICE, "registry: price too high"
    self._models[model_id].price_per_token = price_per_token
    log ModelPriceSet(model_id=model_id, price_per_token=price_per_token)


# ---------------------------------------------------------------- participants

@external
def register(stake: uint256, url: String[256], model_id: bytes32):
    """
    @notice Joins the network serving `model_id`, pulling `stake` tokens from the caller.
    @param stake Token base units to stake, at least `min_stake`; needs an allowance.
    @param url The participant node's public base URL.
    @param model_id The one model this participant serves.
    """
    # An unbonding participant (exit_block set) must withdraw before registering again.
    assert not self._participants[msg.sender].active and self._participants[msg.sender].exit_block == 0, (
        "registry: already registered"
    )
    assert self._models[model_id].active, "registry: unknown model"
    assert stake >= min_stake, "registry: stake below minimum"
    assert len(url) > 0, "registry: empty url"
    assert len(self._members[model_id]) < MAX_PARTICIPANTS, "registry: model full"
    self._participants[msg.sender] = Participant(
        stake=stake, reputation=0, model_id=model_id, url=url, active=True, exit_block=0
    )
    self._members[model_id].append(msg.sender)
    self._model_stake[model_id] += stake
    self.totalStaked += stake
    self._pull(stake)
    log ParticipantRegistered(participant=msg.sender, model_id=model_id, stake=stake, url=url)


@external
def addStake(amount: uint256):
    """
    @notice Adds `amount` to the caller's stake, raising its draw weight.
    @param amount Token base units; needs an allowance.
    """
    assert self._participants[msg.sender].active, "registry: not active"
    assert amount > 0, "registry: zero amount"
    stake: uint256 = self._participants[msg.sender].stake + amount
    self._participants[msg.sender].stake = stake
    self._model_stake[self._participants[msg.sender].model_id] += amount
    self.totalStaked += amount
    self._pull(amount)
    log StakeAdded(participant=msg.sender, amount=amount, stake=stake)


@external
def setUrl(url: String[256]):
    """
    @notice Changes the caller's public URL.
    @param url The participant node's public base URL.
    """
    assert self._participants[msg.sender].active, "registry: not active"
    assert len(url) > 0, "registry: empty url"
    self._participants[msg.sender].url = url
    log UrlSet(participant=msg.sender, url=url)


@external
def exit():
    """
    @notice Leaves the draw now and starts unbonding; the stake stays slashable until withdrawn.
    """
    assert self._participants[msg.sender].active, "registry: not active"
    model_id: bytes32 = self._participants[msg.sender].model_id
    self._participants[msg.sender].active = False
    self._participants[msg.sender].exit_block = block.number
    self._model_stake[model_id] -= self._participants[msg.sender].stake
    self._remove_member(model_id, msg.sender)
    log ExitStarted(participant=msg.sender, exit_block=block.number)


@external
def withdrawStake():
    """
    @notice Returns the caller's remaining stake once unbonding is over, and forgets the participant.
    """
    p: Participant = self._participants[msg.sender]
    assert not p.active and p.exit_block != 0, "registry: not exited"
    assert block.number >= p.exit_block + unbonding_blocks, "registry: unbonding"
    if self.ledger != empty(address):
        assert staticcall ILedger(self.ledger).pendingJudgements(msg.sender) == 0, "registry: judgement pending"
    self._participants[msg.sender] = empty(Participant)
    self.totalStaked -= p.stake
    assert extcall token.transfer(msg.sender, p.stake, default_return_value=True), "registry: transfer failed"
    log StakeWithdrawn(participant=msg.sender, amount=p.stake)


# ---------------------------------------------------------------- ledger

@external
def slash(participant: address, amount: uint256) -> uint256:
    """
    @notice Takes up to `amount` of a participant's stake and sends it to the Ledger; ledger only.
    @param participant The participant to slash, active or unbonding.
    @param amount The most to take, in token base units.
    @return uint256 The amount actually taken (capped at the stake).
    """
    self._check_role(Role.LEDGER)
    taken: uint256 = min(amount, self._participants[participant].stake)
    self._participants[participant].stake -= taken
    if self._participants[participant].active:
        self._model_stake[self._participants[participant].model_id] -= taken
    self.totalStaked -= taken
    self.slashedTotal += taken
    if taken > 0:
        assert extcall token.transfer(msg.sender, taken, default_return_value=True), "registry: transfer failed"
    log Slashed(participant=participant, amount=taken)
    return taken


@external
def setReputation(participant: address, reputation: uint256):
    """
    @notice Sets a participant's reputation; ledger only (it bounds the value).
    @param participant The participant.
    @param reputation The new reputation.
    """
    self._check_role(Role.LEDGER)
    self._participants[participant].reputation = reputation
    log ReputationSet(participant=participant, reputation=reputation)


# ---------------------------------------------------------------- views

@external
@view
def participant(addr: address) -> Participant:
    """
    @notice A participant's record; all zero when unknown.
    @param addr The participant.
    @return Participant (stake, reputation, model_id, url, active, exit_block).
    """
    return self._participants[addr]


@external
@view
def stakeOf(addr: address) -> uint256:
    """
    @notice A participant's stake, active or unbonding.
    @param addr The participant.
    @return uint256 The stake in token base units.
    """
    return self._participants[addr].stake


@external
@view
def reputationOf(addr: address) -> uint256:
    """
    @notice A participant's reputation.
    @param addr The participant.
    @return uint256 The reputation, from 0 to the Ledger's max.
    """
    return self._participants[addr].reputation


@external
@view
def participantsOf(model_id: bytes32) -> DynArray[address, MAX_PARTICIPANTS]:
    """
    @notice The active participants of a model, in draw order.
    @param model_id The model.
    @return DynArray The participants.
    """
    return self._members[model_id]


@external
@view
def modelIds() -> DynArray[bytes32, MAX_MODELS]:
    """
    @notice All registered model ids, in registration order.
    @return DynArray The ids.
    """
    return self._model_ids


@external
@view
def model(model_id: bytes32) -> Model:
    """
    @notice A model's record; `active` is false for an unknown id.
    @param model_id The model.
    @return Model (name, spec_hash, price_per_token, active).
    """
    return self._models[model_id]


@external
@view
def modelPrice(model_id: bytes32) -> (bool, uint256):
    """
    @notice The lean read the Ledger does at start.
    @param model_id The model.
    @return bool Whether the model is registered.
    @return uint256 Its price per output token.
    """
    return self._models[model_id].active, self._models[model_id].price_per_token


@external
@view
def totalStake(model_id: bytes32) -> uint256:
    """
    @notice The stake of a model's active participants: the draw's total weight.
    @param model_id The model.
    @return uint256 The sum of their stakes.
    """
    return self._model_stake[model_id]


@external
@view
def drawExecutor(model_id: bytes32, seed: bytes32) -> address:
    """
    @notice Draws an executor by stake: r = seed % totalStake, then walk `participantsOf` in order,
            subtracting stakes, until r falls inside one.
    @param model_id The model.
    @param seed The draw's randomness (the Ledger uses keccak(inference_id ‖ blockhash(seed_block))).
    @return address The executor; empty when the model has no stake.
    """
    return self._draw(model_id, seed, [])


@external
@view
def drawValidator(model_id: bytes32, seed: bytes32, exclude: address) -> address:
    """
    @notice Draws a validator by stake as `drawExecutor` does, leaving out `exclude`.
    @param model_id The model.
    @param seed The draw's randomness.
    @param exclude The executor, who never validates itself.
    @return address The validator; empty when nobody else has stake.
    """
    return self._draw(model_id, seed, [exclude])


@external
@view
def drawDistinct(model_id: bytes32, rand: bytes32, exclude: DynArray[address, 2], count: uint256) -> DynArray[
    address, MAX_DRAWN
]:
    """
    @notice Draws up to `count` distinct participants by stake: the k-th as `drawExecutor` does with
            seed keccak(rand ‖ uint256(k)), leaving out `exclude` and those drawn before it. The
            Ledger draws an inference's validators and a dispute's jury with it.
    @param model_id The model.
    @param rand The draw's randomness.
    @param exclude Distinct addresses never drawn: the executor, and an accuser for a jury.
    @param count How many to draw, at most 5; fewer when the model has fewer others.
    @return DynArray The participants drawn, in order.
    """
    drawn: DynArray[address, MAX_DRAWN] = []
    excluded: DynArray[address, MAX_EXCLUDED] = []
    for x: address in exclude:
        excluded.append(x)
    for k: uint256 in range(MAX_DRAWN):
        if k >= count:
            break
        member: address = self._draw(model_id, keccak256(concat(rand, convert(k, bytes32))), excluded)
        if member == empty(address):
            break
        drawn.append(member)
        excluded.append(member)
    return drawn


# ---------------------------------------------------------------- internal

@internal
@view
def _check_role(role: Role):
    if role == Role.GOV:
        assert Role.GOV in self.roles[msg.sender], "registry: not gov"
    else:
        assert Role.LEDGER in self.roles[msg.sender], "registry: not ledger"


@internal
def _pull(amount: uint256):
    assert extcall token.transferFrom(msg.sender, self, amount, default_return_value=True), (
        "registry: transfer failed"
    )


@internal
def _remove_member(model_id: bytes32, member: address):
    # Swap with the last and pop: draw order changes, which only affects draws made after it.
    members: DynArray[address, MAX_PARTICIPANTS] = self._members[model_id]
    last: uint256 = len(members) - 1
    for i: uint256 in range(MAX_PARTICIPANTS):
        if i > last:
            break
        if members[i] == member:
            self._members[model_id][i] = members[last]
            self._members[model_id].pop()
            return
    raise "registry: not a member"


@internal
@view
def _draw(model_id: bytes32, seed: bytes32, exclude: DynArray[address, MAX_EXCLUDED]) -> address:
    total: uint256 = self._model_stake[model_id]
    for x: address in exclude:
        # Excluded members are active members of this model, counted once each.
        if x != empty(address) and self._participants[x].active and self._participants[x].model_id == model_id:
            total -= self._participants[x].stake
    if total == 0:
        return empty(address)
    r: uint256 = convert(seed, uint256) % total
    for member: address in self._members[model_id]:
        if member in exclude:
            continue
        stake: uint256 = self._participants[member].stake
        if r < stake:
            return member
        r -= stake
    # Unreachable while `_model_stake` equals the sum of the members' stakes.
    raise "registry: draw out of range"
