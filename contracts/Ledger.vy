# pragma version ~=0.4.3
# pragma optimize codesize
"""
@title Ledger
@notice Client escrow, the inference ledger, verdicts, disputes, epochs and rewards of Nullius.

        One inference: a client deposits tokens and signs an EIP-712 `Inference` whose digest is
        the inference id. Anyone (the gateway) calls `startBatch` with inferences drawn to one
        executor: the Ledger checks each signature and nonce, recomputes the stake-weighted
        executor draw with seed keccak(id ‖ blockhash(seed_block)) and locks max_tokens × price,
        plus a validator fee per extra validator the client signed for (`quorum`: it is then
        always validated, by 1 + quorum validators). The executor calls `finishBatch` for the
        whole batch: each cost is credited to its account for the current epoch, the rest of each
        lock returns to escrow. A later block's hash
        decides whether and by whom the inference is validated (`validatorsOf`). A passed verdict
        moves a fee share to the validator's account; a failed one opens a dispute that a jury,
        drawn with fresh randomness, decides by stake-weighted vote. Accounts are claimed once the
        epoch's settlement delay is over, together with a share of the epoch's reward pool for the
        eligible. A batch never finished can be `expireBatch`ed by anyone.

        Storage (docs/gas.md): one slot per batch, not per inference. A started batch holds the
        hash of its terms and items; a finished one the Merkle root of its records
        (keccak(abi_encode(Record))). Every call after `finishBatch` passes a Record back with its
        Merkle proof (Python rebuilds both from the batch's events: agents/chain/batches.py), and
        an inference gets a slot of its own only when a verdict comes (its status and verdict
        flags). The replay guard is a bitmap of each client's nonces.

        Roles: none of its own. Executors, validators and jurors are fixed by the draws; the
        Registry's gov wires this contract there.

        Token conservation:
        token.balanceOf(self) == totalEscrow + totalLocked + totalFees + totalPool, where
        totalLocked sums the locks of started inferences, totalFees the unclaimed epoch accounts
        and totalPool the unclaimed reward pools (funded by anyone, by forfeits and by slashes).
"""

# ---------------------------------------------------------------- imports

from ethereum.ercs import IERC20
from .interfaces import IRegistry

from snekmate.utils import block_hash
from snekmate.utils import merkle_proof_verification
from snekmate.utils import eip712_domain_separator
from snekmate.utils import ecdsa

initializes: eip712_domain_separator

exports: eip712_domain_separator.eip712Domain


# ---------------------------------------------------------------- constants

BPS: constant(uint256) = 10_000
# Validation probability at full reputation, in basis points (1%).
MIN_VALIDATION_BPS: constant(uint256) = 100
MAX_BATCH: constant(uint256) = 32
# The depth of a Merkle tree of MAX_BATCH leaves: a proof's bound.
MAX_PROOF: constant(uint256) = 5
# Extra validators a client may buy for one inference; validator slots are 1 + quorum.
MAX_QUORUM: constant(uint256) = 3
MAX_JURY: constant(uint256) = 5
# The Registry's `drawDistinct` bound: validator slots and jurors.
MAX_DRAWN: constant(uint256) = 5

INFERENCE_TYPEHASH: constant(bytes32) = keccak256(
    "Inference(address client,bytes32 modelId,bytes32 requestHash,uint256 maxTokens,uint256 maxPrice,uint256 nonce,uint256 deadline,uint256 quorum)"
)

# Inference status, bits 0-3 of its verdict slot; 0 is none. A batch's status is STARTED,
# FINISHED or EXPIRED, in the low BATCH_BITS of its slot.
STARTED: constant(uint256) = 1
FINISHED: constant(uint256) = 2
VALIDATED: constant(uint256) = 3
INVALIDATED: constant(uint256) = 4
DISPUTED: constant(uint256) = 5
EXPIRED: constant(uint256) = 6
STATUS_MASK: constant(uint256) = 15
# Bits 4-7: which validator slots submitted a verdict; bits 8-11: which of them passed.
VOTED_SHIFT: constant(uint256) = 4
PASSED_SHIFT: constant(uint256) = 8
# Bit 12: a dispute was resolved; the inference is decided for good.
JUDGED: constant(uint256) = 4096
BATCH_BITS: constant(uint256) = 8
BATCH_STATUS_MASK: constant(uint256) = 255

# Account flags.
INELIGIBLE: constant(uint256) = 1
FORFEITED: constant(uint256) = 2
CLAIMED: constant(uint256) = 4

# Reasons in `Ineligible`.
REASON_INVALIDATED: constant(uint256) = 1
REASON_LAZY: constant(uint256) = 2
REASON_EXPIRED: constant(uint256) = 3


# ---------------------------------------------------------------- immutables

# The payment ERC-20.
token: public(immutable(IERC20))
# The Registry: models, prices, stake, draws and reputation.
registry: public(immutable(IRegistry))
# Blocks after a finish during which the assigned validators may submit verdicts; also the
# seconds after a deadline before an unfinished start may be expired.
validation_window: public(immutable(uint256))
# Blocks after the jury is drawn during which jurors may vote.
jury_window: public(immutable(uint256))
# Jurors drawn per dispute (fewer when the model has fewer other participants).
jury_size: public(immutable(uint256))
# Blocks per epoch; epoch 0 starts at `genesis_block`.
epoch_length: public(immutable(uint256))
# Blocks after an epoch's end before its accounts may be claimed.
settlement_delay: public(immutable(uint256))
# Reputation at which the validation probability reaches its floor of 1%.
max_reputation: public(immutable(uint256))
# Share of an invalidated executor's stake slashed, in basis points.
slash_bps: public(immutable(uint256))
# Share of the cost paid to each validator, in basis points.
validator_fee_bps: public(immutable(uint256))
# Share of a wrong accuser's stake slashed, in basis points.
accuser_penalty_bps: public(immutable(uint256))
# The block this contract was deployed in: the start of epoch 0.
genesis_block: public(immutable(uint256))


# ---------------------------------------------------------------- structs

struct Params:
    validation_window: uint256
    jury_window: uint256
    jury_size: uint256
    epoch_length: uint256
    settlement_delay: uint256
    max_reputation: uint256
    slash_bps: uint256
    validator_fee_bps: uint256
    accuser_penalty_bps: uint256


# One signed inference of a `startBatch`.
struct StartItem:
    client: address
    request_hash: bytes32
    max_tokens: uint32
    max_price: uint256
    nonce: uint256
    deadline: uint64
    quorum: uint256
    seed_block: uint256
    signature: Bytes[65]


# What a batch's items share.
struct BatchTerms:
    executor: address
    model_id: bytes32
    price: uint256


# A started inference as its batch commits it (and `Started` logs it).
struct Item:
    inference_id: bytes32
    client: address
    max_tokens: uint256
    deadline: uint256
    quorum: uint256


# An executor's answer to one item.
struct Answer:
    response_hash: bytes32
    artifact_digest: bytes32
    completion_tokens: uint256


# A finished inference as the caller passes it back: a leaf of its batch's Merkle root.
struct Record:
    inference_id: bytes32
    batch: uint256
    client: address
    executor: address
    model_id: bytes32
    price: uint256
    max_tokens: uint256
    deadline: uint256
    quorum: uint256
    completion_tokens: uint256
    finish_block: uint256
    p_bps: uint256


struct InferenceState:
    status: uint256
    voted_mask: uint256
    passed_mask: uint256


struct BatchState:
    status: uint256
    commitment: bytes32


# A participant's account for one epoch.
struct Account:
    fees: uint256
    weight: uint256
    validations: uint256
    flags: uint256


struct Epoch:
    pool: uint256
    eligible_weight: uint256
    open_disputes: uint256


struct Dispute:
    executor: address
    accuser: address
    model_id: bytes32
    opened_block: uint256
    epoch: uint256
    votes_valid: uint256
    votes_invalid: uint256
    validators: DynArray[address, MAX_DRAWN]
    jury: DynArray[address, MAX_DRAWN]
    seated: bool
    voted_mask: uint256
    open: bool


struct Stats:
    served: uint256
    validations: uint256
    invalidated: uint256
    fees_earned: uint256


struct ClientStats:
    spent: uint256
    refunded: uint256


# ---------------------------------------------------------------- storage

# Per batch: the top 248 bits of its commitment | its status. Started or expired:
# keccak(abi_encode(BatchTerms, item leaves)), a leaf keccak(abi_encode(Item)); finished: the
# Merkle root (sorted pairs) of its records' keccak(abi_encode(Record)).
_batches: HashMap[uint256, uint256]
# Batches started so far; the next batch's number.
batchCount: public(uint256)
# Per inference with a verdict: its status | voted and passed masks | JUDGED. 0: as its batch.
_verdicts: HashMap[bytes32, uint256]
# Per client, the nonces started: word nonce >> 8, bit nonce & 255.
_nonces: HashMap[address, HashMap[uint256, uint256]]
# Per inference with a dispute opened; the jury is seated by the first vote or the resolution.
disputes: public(HashMap[bytes32, Dispute])
# Tokens each client holds in escrow, free to lock or withdraw.
escrowOf: public(HashMap[address, uint256])
# Each participant's account per epoch; flags: 1 ineligible, 2 forfeited, 4 claimed.
accounts: public(HashMap[address, HashMap[uint256, Account]])
# Each epoch's reward pool, eligible weight and open disputes.
epochs: public(HashMap[uint256, Epoch])
# Open disputes naming a participant as executor or accuser; the Registry holds its stake till 0.
pendingJudgements: public(HashMap[address, uint256])
# Sum of escrowOf.
totalEscrow: public(uint256)
# Sum of the locks (and quorum locks) of started inferences.
totalLocked: public(uint256)
# Sum of the unclaimed accounts' fees.
totalFees: public(uint256)
# Sum of the unclaimed reward pools.
totalPool: public(uint256)
# Per participant counters for dashboards.
_stats: HashMap[address, Stats]
# Per client counters for dashboards.
_client_stats: HashMap[address, ClientStats]


# ---------------------------------------------------------------- events

event Deposited:
    client: indexed(address)
    amount: uint256

event Withdrawn:
    client: indexed(address)
    amount: uint256

event Started:
    inference_id: indexed(bytes32)
    client: indexed(address)
    batch: indexed(uint256)
    nonce: uint256
    request_hash: bytes32
    max_tokens: uint256
    deadline: uint256
    quorum: uint256

event BatchStarted:
    batch: indexed(uint256)
    executor: indexed(address)
    model_id: bytes32
    price: uint256
    size: uint256

event Finished:
    inference_id: indexed(bytes32)
    batch: indexed(uint256)
    response_hash: bytes32
    artifact_digest: bytes32
    completion_tokens: uint256

event BatchFinished:
    batch: indexed(uint256)
    executor: indexed(address)
    root: bytes32
    p_bps: uint256

event BatchExpired:
    batch: indexed(uint256)
    executor: indexed(address)

event Validated:
    inference_id: indexed(bytes32)
    validator: indexed(address)
    passed: bool
    score: uint256

event DisputeOpened:
    inference_id: indexed(bytes32)
    executor: indexed(address)
    accuser: indexed(address)
    deadline: uint256

event Voted:
    inference_id: indexed(bytes32)
    juror: indexed(address)
    valid: bool
    weight: uint256

event DisputeResolved:
    inference_id: indexed(bytes32)
    invalid: bool
    votes_valid: uint256
    votes_invalid: uint256

event Refunded:
    inference_id: indexed(bytes32)
    client: indexed(address)
    amount: uint256

event Ineligible:
    participant: indexed(address)
    epoch: indexed(uint256)
    reason: uint256

event RewardFunded:
    epoch: indexed(uint256)
    funder: indexed(address)
    amount: uint256

event Claimed:
    participant: indexed(address)
    epoch: indexed(uint256)
    fees: uint256
    reward: uint256

event Forfeited:
    participant: indexed(address)
    epoch: uint256
    amount: uint256

event RolledOver:
    from_epoch: uint256
    to_epoch: uint256
    amount: uint256


# ---------------------------------------------------------------- constructor

@deploy
def __init__(token_: IERC20, registry_: IRegistry, p: Params):
    """
    @param token_ The payment ERC-20 (the Registry's token).
    @param registry_ The Registry.
    @param p Windows and epochs in blocks, shares in basis points (docs/protocol.md section 2).
    """
    assert token_.address != empty(address), "ledger: zero token"
    assert registry_.address != empty(address), "ledger: zero registry"
    # The assignment's block hash must stay readable for the whole window.
    assert p.validation_window >= 2 and p.validation_window <= 256, "ledger: window out of range"
    assert p.jury_size >= 1 and p.jury_size <= MAX_JURY and p.jury_window >= 1 and p.jury_window <= 250, (
        "ledger: jury out of range"
    )
    assert p.epoch_length > 0, "ledger: zero epoch length"
    # Every verdict and dispute of an epoch ends before its claims open.
    judged_within: uint256 = p.validation_window + p.jury_window + 2
    assert p.settlement_delay > judged_within, "ledger: settlement too short"
    # Nobody can withdraw stake before a dispute about its last inference could have opened.
    assert staticcall registry_.unbonding_blocks() > judged_within, "ledger: unbonding too short"
    assert p.max_reputation > 0, "ledger: zero max reputation"
    assert p.slash_bps <= BPS and p.validator_fee_bps <= BPS and p.accuser_penalty_bps <= BPS, (
        "ledger: bps above 10000"
    )
    token = token_
    registry = registry_
    validation_window = p.validation_window
    jury_window = p.jury_window
    jury_size = p.jury_size
    epoch_length = p.epoch_length
    settlement_delay = p.settlement_delay
    max_reputation = p.max_reputation
    slash_bps = p.slash_bps
    validator_fee_bps = p.validator_fee_bps
    accuser_penalty_bps = p.accuser_penalty_bps
    genesis_block = block.number
    eip712_domain_separator.__init__("Nullius", "1")


# ---------------------------------------------------------------- escrow and rewards

@external
@nonreentrant
def deposit(amount: uint256):
    """
    @notice Moves `amount` tokens from the caller into its escrow.
    @param amount Token base units; needs an allowance.
    """
    assert amount > 0, "ledger: zero amount"
    self.escrowOf[msg.sender] += amount
    self.totalEscrow += amount
    self._pull(amount)
    log Deposited(client=msg.sender, amount=amount)


@external
@nonreentrant
def withdraw(amount: uint256):
    """
    @notice Returns `amount` of the caller's free escrow.
    @param amount Token base units.
    """
    assert amount > 0, "ledger: zero amount"
    assert self.escrowOf[msg.sender] >= amount, "ledger: insufficient escrow"
    self.escrowOf[msg.sender] -= amount
    self.totalEscrow -= amount
    self._send(msg.sender, amount)
    log Withdrawn(client=msg.sender, amount=amount)


@external
@nonreentrant
def fundRewards(first_epoch: uint256, epochs: uint256, amount_per_epoch: uint256):
    """
    @notice Adds `amount_per_epoch` to the reward pool of each of `epochs` epochs from
            `first_epoch` on, pulling the total from the caller.
    @param first_epoch The first epoch funded: the current one or later.
    @param epochs How many consecutive epochs.
    @param amount_per_epoch Token base units per epoch; needs an allowance for the total.
    """
    assert first_epoch >= self._epoch_of(block.number), "ledger: epoch closed"
    assert epochs > 0 and amount_per_epoch > 0, "ledger: zero amount"
    assert epochs <= 1024, "ledger: too many epochs"
    for i: uint256 in range(epochs, bound=1024):
        self.epochs[first_epoch + i].pool += amount_per_epoch
        log RewardFunded(epoch=first_epoch + i, funder=msg.sender, amount=amount_per_epoch)
    self.totalPool += epochs * amount_per_epoch
    self._pull(epochs * amount_per_epoch)


@external
@nonreentrant
def claim(participant: address, epoch: uint256):
    """
    @notice Settles a participant's account for a settled epoch: its fees and, if it was eligible,
            pool × weight / eligible weight go to it; a forfeited account goes to the next open
            epoch's pool. Anyone may call it. A clean epoch raises reputation by one.
    @param participant The account's owner, who receives the tokens.
    @param epoch The epoch.
    """
    self._check_settled(epoch)
    acct: Account = self.accounts[participant][epoch]
    assert acct.flags & CLAIMED == 0, "ledger: already claimed"
    reward: uint256 = self._reward(acct, epoch)
    assert acct.fees + reward > 0, "ledger: nothing to claim"
    self.accounts[participant][epoch].flags = acct.flags | CLAIMED
    self.accounts[participant][epoch].fees = 0
    self.totalFees -= acct.fees
    self.totalPool -= reward
    paid: uint256 = reward
    if acct.flags & FORFEITED != 0:
        to_epoch: uint256 = self._epoch_of(block.number) + 1
        self.epochs[to_epoch].pool += acct.fees
        self.totalPool += acct.fees
        log Forfeited(participant=participant, epoch=epoch, amount=acct.fees)
        acct.fees = 0
    paid += acct.fees
    self._stats[participant].fees_earned += paid
    if acct.flags & INELIGIBLE == 0 and acct.weight > 0:
        rep: uint256 = staticcall registry.reputationOf(participant)
        if rep < max_reputation:
            extcall registry.setReputation(participant, rep + 1)
    if paid > 0:
        self._send(participant, paid)
    log Claimed(participant=participant, epoch=epoch, fees=acct.fees, reward=reward)


@external
def rollover(epoch: uint256):
    """
    @notice Passes the pool of a settled epoch that nobody was eligible for to the next open epoch.
    @param epoch The settled epoch.
    """
    self._check_settled(epoch)
    amount: uint256 = self.epochs[epoch].pool
    assert amount > 0 and self.epochs[epoch].eligible_weight == 0, "ledger: nothing to roll"
    to_epoch: uint256 = self._epoch_of(block.number) + 1
    self.epochs[epoch].pool = 0
    self.epochs[to_epoch].pool += amount
    log RolledOver(from_epoch=epoch, to_epoch=to_epoch, amount=amount)


# ---------------------------------------------------------------- inference lifecycle

@external
def startBatch(executor: address, model_id: bytes32, items: DynArray[StartItem, MAX_BATCH]) -> uint256:
    """
    @notice Records client-signed inferences drawn to one executor as one batch, and locks each
            one's max_tokens × price of its client's escrow, plus quorum × the validator fee on
            that. All or none.
    @dev Anyone (the gateway) may submit it; the signatures, the executor draws and the escrow
         decide. The batch stores one slot: a hash over its items (`Item`, as `Started` logs them).
    @param executor The executor every item was drawn to.
    @param model_id The model every item was signed for.
    @param items The signed authorizations, each with its seed block.
    @return uint256 The batch's number.
    """
    assert len(items) > 0, "ledger: empty batch"
    known: bool = False
    price: uint256 = 0
    known, price = staticcall registry.modelPrice(model_id)
    assert known, "ledger: unknown model"
    batch: uint256 = self.batchCount
    leaves: DynArray[bytes32, MAX_BATCH] = []
    locked: uint256 = 0
    for a: StartItem in items:
        lock: uint256 = 0
        leaf: bytes32 = empty(bytes32)
        lock, leaf = self._start(a, batch, executor, model_id, price)
        locked += lock
        leaves.append(leaf)
    self.totalEscrow -= locked
    self.totalLocked += locked
    self.batchCount = batch + 1
    terms: BatchTerms = BatchTerms(executor=executor, model_id=model_id, price=price)
    self._batches[batch] = self._pack(self._commitment(terms, leaves), STARTED)
    log BatchStarted(batch=batch, executor=executor, model_id=model_id, price=price, size=len(items))
    return batch


@external
def finishBatch(
    batch: uint256, terms: BatchTerms, items: DynArray[Item, MAX_BATCH], answers: DynArray[Answer, MAX_BATCH]
):
    """
    @notice The executor reports the answers of a whole batch: each cost = completion_tokens ×
            price (plus the quorum's fees) goes to its account for this epoch, the rest of each
            lock to the client's escrow. An item it could not serve is finished with 0 tokens:
            its client gets the whole lock back.
    @dev The Ledger rebuilds the batch's hash from the items, which authenticates them all, and
         stores the Merkle root of the finished records instead; later calls prove a record
         against it.
    @param batch The batch.
    @param terms The batch's executor, model and price, as `BatchStarted` logged them.
    @param items The batch's items in their `Started` order.
    @param answers Each item's answer: response and artifact hashes, output tokens.
    """
    self._check_started(batch, terms, items)
    assert msg.sender == terms.executor, "ledger: not executor"
    assert len(answers) == len(items), "ledger: answers mismatch"
    rep: uint256 = min(staticcall registry.reputationOf(terms.executor), max_reputation)
    # The probability is fixed now so that later reputation changes cannot move the assignment.
    p_bps: uint256 = BPS - (BPS - MIN_VALIDATION_BPS) * rep // max_reputation
    records: DynArray[bytes32, MAX_BATCH] = []
    unlocked: uint256 = 0
    fees: uint256 = 0
    weight: uint256 = 0
    for i: uint256 in range(len(items), bound=MAX_BATCH):
        it: Item = items[i]
        tokens: uint256 = answers[i].completion_tokens
        assert tokens <= it.max_tokens, "ledger: too many tokens"
        lock: uint256 = it.max_tokens * terms.price
        cost: uint256 = tokens * terms.price
        # The client paid for `quorum` more validators: their fees go to the executor's account,
        # from which every validator of this inference is paid as it passes it.
        quorum_lock: uint256 = it.quorum * self._fee(lock)
        quorum_fee: uint256 = it.quorum * self._fee(cost)
        self.escrowOf[it.client] += lock - cost + quorum_lock - quorum_fee
        self._client_stats[it.client].spent += cost + quorum_fee
        unlocked += lock + quorum_lock
        fees += cost + quorum_fee
        weight += cost
        records.append(keccak256(abi_encode(Record(
            inference_id=it.inference_id,
            batch=batch,
            client=it.client,
            executor=terms.executor,
            model_id=terms.model_id,
            price=terms.price,
            max_tokens=it.max_tokens,
            deadline=it.deadline,
            quorum=it.quorum,
            completion_tokens=tokens,
            finish_block=block.number,
            p_bps=p_bps,
        ))))
        log Finished(
            inference_id=it.inference_id,
            batch=batch,
            response_hash=answers[i].response_hash,
            artifact_digest=answers[i].artifact_digest,
            completion_tokens=tokens,
        )
    self.totalLocked -= unlocked
    self.totalEscrow += unlocked - fees
    self.totalFees += fees
    e: uint256 = self._epoch_of(block.number)
    self.accounts[terms.executor][e].fees += fees
    self.accounts[terms.executor][e].weight += weight
    if self.accounts[terms.executor][e].flags & INELIGIBLE == 0:
        self.epochs[e].eligible_weight += weight
    self._stats[terms.executor].served += len(items)
    root: bytes32 = self._merkle_root(records)
    self._batches[batch] = self._pack(root, FINISHED)
    log BatchFinished(batch=batch, executor=terms.executor, root=root, p_bps=p_bps)


@external
def expireBatch(batch: uint256, terms: BatchTerms, items: DynArray[Item, MAX_BATCH]):
    """
    @notice Refunds every lock of a batch never finished, once `validation_window` seconds have
            passed after every item's deadline; its executor loses the current epoch's reward.
            Anyone may call it.
    @param batch The batch.
    @param terms The batch's executor, model and price, as `BatchStarted` logged them.
    @param items The batch's items in their `Started` order.
    """
    self._check_started(batch, terms, items)
    refunds: uint256 = 0
    for it: Item in items:
        assert block.timestamp > it.deadline + validation_window, "ledger: not expired"
        lock: uint256 = it.max_tokens * terms.price
        refund: uint256 = lock + it.quorum * self._fee(lock)
        refunds += refund
        self._refund(it.inference_id, it.client, refund)
    self.totalLocked -= refunds
    self._batches[batch] = self._batches[batch] >> BATCH_BITS << BATCH_BITS | EXPIRED
    self._mark(terms.executor, self._epoch_of(block.number), REASON_EXPIRED)
    log BatchExpired(batch=batch, executor=terms.executor)


@external
def submitValidation(r: Record, proof: DynArray[bytes32, MAX_PROOF], passed: bool, score: uint256):
    """
    @notice An assigned validator's verdict. Passed: the validator fee moves from the executor's
            account to the validator's. Failed: a dispute opens, unless one is open already.
    @param r The inference's record.
    @param proof The record's Merkle proof in its batch.
    @param passed Whether the artifact passed validation.
    @param score The validator's score, logged for calibration.
    """
    flags: uint256 = self._flags(r, proof)
    status: uint256 = flags & STATUS_MASK
    assert flags & JUDGED == 0 and status != INVALIDATED, "ledger: already decided"
    assert block.number > r.finish_block + 1, "ledger: assignment pending"
    assert block.number <= r.finish_block + validation_window, "ledger: validation window closed"
    slot: uint256 = self._slot_of(self._validators(r), msg.sender)
    assert slot <= MAX_QUORUM, "ledger: not assigned validator"
    bit: uint256 = 1 << (VOTED_SHIFT + slot)
    assert flags & bit == 0, "ledger: already submitted"
    flags |= bit
    e: uint256 = self._epoch_of(r.finish_block)
    self.accounts[msg.sender][e].validations += 1
    self._stats[msg.sender].validations += 1
    log Validated(inference_id=r.inference_id, validator=msg.sender, passed=passed, score=score)
    if passed:
        flags |= 1 << (PASSED_SHIFT + slot)
        fee: uint256 = self._fee(r.completion_tokens * r.price)
        self.accounts[r.executor][e].fees -= fee
        self.accounts[msg.sender][e].fees += fee
        if status == FINISHED:
            flags = (flags & ~STATUS_MASK) | VALIDATED
    elif status != DISPUTED:
        flags = (flags & ~STATUS_MASK) | DISPUTED
        self._open_dispute(r, e)
    self._verdicts[r.inference_id] = flags


@external
def vote(inference_id: bytes32, valid: bool):
    """
    @notice A juror's vote on a disputed inference, weighted by its stake.
    @param inference_id The disputed inference.
    @param valid Whether the juror found the executor's answer valid.
    """
    d: Dispute = self.disputes[inference_id]
    assert d.open, "ledger: no dispute"
    assert block.number > d.opened_block + 1, "ledger: jury pending"
    assert block.number <= d.opened_block + 1 + jury_window, "ledger: voting closed"
    jury: DynArray[address, MAX_DRAWN] = self._seat(inference_id, d)
    index: uint256 = MAX_JURY
    for i: uint256 in range(MAX_JURY):
        if i >= len(jury):
            break
        if jury[i] == msg.sender:
            index = i
    assert index < MAX_JURY, "ledger: not juror"
    assert d.voted_mask & (1 << index) == 0, "ledger: already voted"
    weight: uint256 = staticcall registry.stakeOf(msg.sender)
    self.disputes[inference_id].voted_mask = d.voted_mask | (1 << index)
    if valid:
        self.disputes[inference_id].votes_valid = d.votes_valid + weight
    else:
        self.disputes[inference_id].votes_invalid = d.votes_invalid + weight
    log Voted(inference_id=inference_id, juror=msg.sender, valid=valid, weight=weight)


@external
def resolve(r: Record, proof: DynArray[bytes32, MAX_PROOF]):
    """
    @notice Ends a dispute after its deadline, or once every juror voted. Invalid iff the stake
            voting invalid exceeds the stake voting valid; with no votes or a tie the executor is
            presumed valid and the accuser is not penalized. Jurors who did not vote are lazy.
    @param r The disputed inference's record.
    @param proof The record's Merkle proof in its batch.
    """
    flags: uint256 = self._flags(r, proof)
    d: Dispute = self.disputes[r.inference_id]
    assert d.open, "ledger: no dispute"
    jury: DynArray[address, MAX_DRAWN] = empty(DynArray[address, MAX_DRAWN])
    if block.number > d.opened_block + 1:
        jury = self._seat(r.inference_id, d)
    everyone: bool = len(jury) > 0 and d.voted_mask == (1 << len(jury)) - 1
    assert everyone or block.number > d.opened_block + 1 + jury_window, "ledger: voting open"
    for i: uint256 in range(MAX_JURY):
        if i >= len(jury):
            break
        if d.voted_mask & (1 << i) == 0:
            self._mark(jury[i], d.epoch, REASON_LAZY)
    self.disputes[r.inference_id].open = False
    self.epochs[d.epoch].open_disputes -= 1
    self.pendingJudgements[d.executor] -= 1
    self.pendingJudgements[d.accuser] -= 1
    invalid: bool = d.votes_invalid > d.votes_valid
    if invalid:
        self._invalidate(r, flags, d)
        flags = (flags & ~STATUS_MASK) | INVALIDATED
    else:
        if d.votes_valid > d.votes_invalid:
            self._penalize_accuser(d.accuser)
        flags = (flags & ~STATUS_MASK) | VALIDATED
    self._verdicts[r.inference_id] = flags | JUDGED
    log DisputeResolved(
        inference_id=r.inference_id, invalid=invalid, votes_valid=d.votes_valid, votes_invalid=d.votes_invalid
    )


@external
def reportLazy(r: Record, proof: DynArray[bytes32, MAX_PROOF]):
    """
    @notice After the validation window of a finished inference, and before its epoch settles,
            makes every assigned validator that submitted nothing ineligible for that epoch.
    @param r The inference's record.
    @param proof The record's Merkle proof in its batch.
    """
    flags: uint256 = self._flags(r, proof)
    assert block.number > r.finish_block + validation_window, "ledger: window open"
    e: uint256 = self._epoch_of(r.finish_block)
    assert block.number < self._claim_block(e), "ledger: epoch settled"
    validators: DynArray[address, MAX_DRAWN] = self._validators(r)
    lazy: uint256 = 0
    for i: uint256 in range(MAX_QUORUM + 1):
        if i >= len(validators):
            break
        if flags & (1 << (VOTED_SHIFT + i)) == 0 and self._mark(validators[i], e, REASON_LAZY):
            lazy += 1
    assert lazy > 0, "ledger: nobody lazy"


# ---------------------------------------------------------------- views

@external
@view
def batchOf(batch: uint256) -> BatchState:
    """
    @notice A batch's status (0 none, 1 started, 2 finished, 6 expired) and its commitment (low 8
            bits zero): the hash of its terms and items while started or expired, the Merkle root
            of its finished records once finished.
    @param batch The batch.
    @return BatchState (status, commitment).
    """
    s: uint256 = self._batches[batch]
    return BatchState(status=s & BATCH_STATUS_MASK, commitment=convert(s >> BATCH_BITS << BATCH_BITS, bytes32))


@external
@view
def stateOf(batch: uint256, inference_id: bytes32) -> InferenceState:
    """
    @notice An inference's status (0 none, 1 started, 2 finished, 3 validated, 4 invalidated,
            5 disputed, 6 expired) and verdict masks: its batch's status until a verdict came.
    @dev Membership is not checked here (`Started` logs it); every call that changes an
         inference's state proves its record in the batch.
    @param batch The inference's batch.
    @param inference_id The inference.
    @return InferenceState (status, voted_mask, passed_mask).
    """
    status: uint256 = self._batches[batch] & BATCH_STATUS_MASK
    v: uint256 = self._verdicts[inference_id]
    if status == FINISHED and v != 0:
        status = v & STATUS_MASK
    return InferenceState(status=status, voted_mask=(v >> VOTED_SHIFT) & 15, passed_mask=(v >> PASSED_SHIFT) & 15)


@external
@view
def nonceUsed(client: address, nonce: uint256) -> bool:
    """
    @notice Whether a client's signed nonce was started already.
    @param client The client.
    @param nonce The nonce.
    @return bool True once an inference with it was started.
    """
    return self._nonces[client][nonce >> 8] & (1 << (nonce & 255)) != 0


@external
@view
def validatorsOf(r: Record, proof: DynArray[bytes32, MAX_PROOF]) -> DynArray[address, MAX_DRAWN]:
    """
    @notice Who must validate a finished inference. rand = keccak(id ‖ blockhash(finish_block + 1));
            validated iff it has output tokens and quorum > 0 or rand % 10000 < p_bps; then
            1 + quorum validators by
            registry.drawDistinct(model, rand, [executor], 1 + quorum).
    @param r The inference's record.
    @param proof The record's Merkle proof in its batch.
    @return DynArray The validators; empty when the inference is not validated.
    """
    self._flags(r, proof)
    assert block.number > r.finish_block + 1, "ledger: assignment pending"
    return self._validators(r)


@external
@view
def claimBlock(e: uint256) -> uint256:
    """
    @notice The first block at which an epoch's accounts may be claimed.
    @param e The epoch.
    @return uint256 genesis_block + (e + 1) × epoch_length + settlement_delay.
    """
    return self._claim_block(e)


@external
@view
def epochOf(block_number: uint256) -> uint256:
    """
    @notice The epoch a block belongs to.
    @param block_number A block at or after `genesis_block`.
    @return uint256 The epoch.
    """
    return self._epoch_of(block_number)


@external
@view
def stats(participant: address) -> Stats:
    """
    @notice A participant's counters: inferences finished, verdicts submitted, inferences of its
            own invalidated, and tokens claimed.
    @param participant The participant.
    @return Stats (served, validations, invalidated, fees_earned).
    """
    return self._stats[participant]


@external
@view
def clientStats(client: address) -> ClientStats:
    """
    @notice A client's counters: tokens charged at finish and tokens refunded (invalidations and
            expiries).
    @param client The client.
    @return ClientStats (spent, refunded).
    """
    return self._client_stats[client]


# ---------------------------------------------------------------- internal

@internal
def _start(
    a: StartItem, batch: uint256, executor: address, model_id: bytes32, price: uint256
) -> (uint256, bytes32):
    # One item of `startBatch`: checks it, takes its lock from escrow, logs it; returns the lock
    # and the item's leaf.
    assert convert(a.deadline, uint256) >= block.timestamp, "ledger: expired"
    assert a.quorum <= MAX_QUORUM, "ledger: quorum too large"
    assert price <= a.max_price, "ledger: price above max"
    inference_id: bytes32 = eip712_domain_separator._hash_typed_data_v4(
        keccak256(
            abi_encode(
                INFERENCE_TYPEHASH,
                a.client,
                model_id,
                a.request_hash,
                a.max_tokens,
                a.max_price,
                a.nonce,
                a.deadline,
                a.quorum,
            )
        )
    )
    # an EOA's signature (ecrecover): the Ledger has no room left for ERC-1271 contract wallets
    signer: address = ecdsa._recover_sig(inference_id, a.signature)
    assert signer != empty(address) and signer == a.client, "ledger: bad signature"
    word: uint256 = a.nonce >> 8
    bit: uint256 = 1 << (a.nonce & 255)
    used: uint256 = self._nonces[a.client][word]
    assert used & bit == 0, "ledger: nonce used"
    self._nonces[a.client][word] = used | bit
    assert a.seed_block < block.number and a.seed_block + 256 >= block.number, "ledger: stale seed block"
    seed: bytes32 = keccak256(concat(inference_id, blockhash(a.seed_block)))
    drawn: address = staticcall registry.drawExecutor(model_id, seed)
    assert drawn != empty(address) and drawn == executor, "ledger: executor mismatch"
    max_tokens: uint256 = convert(a.max_tokens, uint256)
    lock: uint256 = max_tokens * price
    # the signed quorum's validator fees are locked with the answer's worst-case cost
    lock += a.quorum * self._fee(lock)
    assert self.escrowOf[a.client] >= lock, "ledger: insufficient escrow"
    self.escrowOf[a.client] -= lock
    item: Item = Item(
        inference_id=inference_id,
        client=a.client,
        max_tokens=max_tokens,
        deadline=convert(a.deadline, uint256),
        quorum=a.quorum,
    )
    log Started(
        inference_id=inference_id,
        client=a.client,
        batch=batch,
        nonce=a.nonce,
        request_hash=a.request_hash,
        max_tokens=max_tokens,
        deadline=item.deadline,
        quorum=a.quorum,
    )
    return lock, keccak256(abi_encode(item))


@internal
@pure
def _commitment(terms: BatchTerms, leaves: DynArray[bytes32, MAX_BATCH]) -> bytes32:
    # A started batch's hash: its terms and its items' leaves, in order.
    return keccak256(abi_encode(terms, leaves))


@internal
@view
def _check_started(batch: uint256, terms: BatchTerms, items: DynArray[Item, MAX_BATCH]):
    # The batch is started, and `terms` and `items` are what started it.
    s: uint256 = self._batches[batch]
    assert s & BATCH_STATUS_MASK == STARTED, "ledger: not started"
    leaves: DynArray[bytes32, MAX_BATCH] = []
    for it: Item in items:
        leaves.append(keccak256(abi_encode(it)))
    assert self._pack(self._commitment(terms, leaves), STARTED) == s, "ledger: batch mismatch"


@internal
@pure
def _merkle_root(leaves: DynArray[bytes32, MAX_BATCH]) -> bytes32:
    # The root that snekmate's merkle_proof_verification checks proofs against (sorted pairs); a
    # level's last node without a sibling moves up as it is (agents/chain/batches.py builds the
    # same tree).
    level: DynArray[bytes32, MAX_BATCH] = leaves
    for _: uint256 in range(MAX_PROOF):
        if len(level) == 1:
            break
        up: DynArray[bytes32, MAX_BATCH] = []
        for j: uint256 in range(MAX_BATCH // 2):
            if 2 * j + 1 < len(level):
                up.append(merkle_proof_verification._hash_pair(level[2 * j], level[2 * j + 1]))
            elif 2 * j + 1 == len(level):
                up.append(level[2 * j])
            else:
                break
        level = up
    return level[0]


@internal
@view
def _flags(r: Record, proof: DynArray[bytes32, MAX_PROOF]) -> uint256:
    # A finished record's status and verdict flags, once `proof` shows it is in its batch's root.
    s: uint256 = self._batches[r.batch]
    assert s & BATCH_STATUS_MASK == FINISHED, "ledger: not finished"
    root: bytes32 = merkle_proof_verification._process_proof(proof, keccak256(abi_encode(r)))
    assert self._pack(root, FINISHED) == s, "ledger: record mismatch"
    flags: uint256 = self._verdicts[r.inference_id]
    if flags == 0:
        return FINISHED
    return flags


@internal
@pure
def _pack(commitment: bytes32, status: uint256) -> uint256:
    return convert(commitment, uint256) >> BATCH_BITS << BATCH_BITS | status


@internal
def _open_dispute(r: Record, e: uint256):
    self.disputes[r.inference_id] = Dispute(
        executor=r.executor,
        accuser=msg.sender,
        model_id=r.model_id,
        opened_block=block.number,
        epoch=e,
        votes_valid=0,
        votes_invalid=0,
        validators=self._validators(r),
        jury=[],
        seated=False,
        voted_mask=0,
        open=True,
    )
    self.epochs[e].open_disputes += 1
    self.pendingJudgements[r.executor] += 1
    self.pendingJudgements[msg.sender] += 1
    log DisputeOpened(
        inference_id=r.inference_id, executor=r.executor, accuser=msg.sender, deadline=block.number + 1 + jury_window
    )


@internal
def _seat(inference_id: bytes32, d: Dispute) -> DynArray[address, MAX_DRAWN]:
    # Seats the jury on first use so that it stays known after its block hash is gone.
    if d.seated:
        return d.jury
    jury: DynArray[address, MAX_DRAWN] = self._draw_jury(inference_id, d)
    self.disputes[inference_id].jury = jury
    self.disputes[inference_id].seated = True
    return jury


@internal
@view
def _draw_jury(inference_id: bytes32, d: Dispute) -> DynArray[address, MAX_DRAWN]:
    jury: DynArray[address, MAX_DRAWN] = []
    h: bytes32 = block_hash._block_hash(d.opened_block + 1)
    if h == empty(bytes32):
        # Nobody looked within the block hash's lifetime: an empty jury, and the default outcome.
        return jury
    rand: bytes32 = keccak256(concat(inference_id, h))
    return staticcall registry.drawDistinct(d.model_id, rand, [d.executor, d.accuser], jury_size)


@internal
def _invalidate(r: Record, flags: uint256, d: Dispute):
    e: uint256 = d.epoch
    fee: uint256 = self._fee(r.completion_tokens * r.price)
    # Validators who passed a wrong answer give their fee back.
    for i: uint256 in range(MAX_QUORUM + 1):
        if i >= len(d.validators):
            break
        if flags & (1 << (PASSED_SHIFT + i)) != 0:
            self.accounts[d.validators[i]][e].fees -= fee
            self.accounts[r.executor][e].fees += fee
    refund: uint256 = r.completion_tokens * r.price + r.quorum * fee
    self.accounts[r.executor][e].fees -= refund
    self.totalFees -= refund
    self._refund(r.inference_id, r.client, refund)
    self._mark(r.executor, e, REASON_INVALIDATED)
    self.accounts[r.executor][e].flags |= FORFEITED
    self._stats[r.executor].invalidated += 1
    stake: uint256 = staticcall registry.stakeOf(r.executor)
    taken: uint256 = extcall registry.slash(r.executor, stake * slash_bps // BPS)
    extcall registry.setReputation(r.executor, 0)
    # The slashed stake (now here) pays each validator that failed the answer its fee, the rest
    # funds the next epoch's rewards.
    for i: uint256 in range(MAX_QUORUM + 1):
        if i >= len(d.validators):
            break
        if flags & (1 << (VOTED_SHIFT + i)) != 0 and flags & (1 << (PASSED_SHIFT + i)) == 0:
            bounty: uint256 = min(fee, taken)
            self.accounts[d.validators[i]][e].fees += bounty
            self.totalFees += bounty
            taken -= bounty
    self._fund_next(taken)


@internal
def _penalize_accuser(accuser: address):
    stake: uint256 = staticcall registry.stakeOf(accuser)
    taken: uint256 = extcall registry.slash(accuser, stake * accuser_penalty_bps // BPS)
    extcall registry.setReputation(accuser, 0)
    self._fund_next(taken)


@internal
def _fund_next(amount: uint256):
    if amount > 0:
        self.epochs[self._epoch_of(block.number) + 1].pool += amount
        self.totalPool += amount


@internal
def _mark(participant: address, e: uint256, reason: uint256) -> bool:
    # Makes a participant ineligible for an epoch's reward once; its weight leaves the total.
    flags: uint256 = self.accounts[participant][e].flags
    if flags & INELIGIBLE != 0:
        return False
    self.accounts[participant][e].flags = flags | INELIGIBLE
    self.epochs[e].eligible_weight -= self.accounts[participant][e].weight
    log Ineligible(participant=participant, epoch=e, reason=reason)
    return True


@internal
def _refund(inference_id: bytes32, client: address, amount: uint256):
    self.escrowOf[client] += amount
    self.totalEscrow += amount
    self._client_stats[client].refunded += amount
    log Refunded(inference_id=inference_id, client=client, amount=amount)


@internal
@view
def _validators(r: Record) -> DynArray[address, MAX_DRAWN]:
    # Callers have checked that block finish_block + 1 exists.
    out: DynArray[address, MAX_DRAWN] = []
    h: bytes32 = block_hash._block_hash(r.finish_block + 1)
    assert h != empty(bytes32), "ledger: assignment expired"
    rand: bytes32 = keccak256(concat(r.inference_id, h))
    # an item finished without an answer (0 tokens, nothing paid) has nothing to check
    if r.completion_tokens == 0 or (r.quorum == 0 and convert(rand, uint256) % BPS >= r.p_bps):
        return out
    return staticcall registry.drawDistinct(r.model_id, rand, [r.executor], r.quorum + 1)


@internal
@pure
def _slot_of(validators: DynArray[address, MAX_DRAWN], who: address) -> uint256:
    for i: uint256 in range(MAX_QUORUM + 1):
        if i >= len(validators):
            break
        if validators[i] == who:
            return i
    return MAX_QUORUM + 1


@internal
@view
def _fee(amount: uint256) -> uint256:
    return amount * validator_fee_bps // BPS


@internal
@view
def _reward(a: Account, e: uint256) -> uint256:
    ep: Epoch = self.epochs[e]
    if a.flags & INELIGIBLE != 0 or a.weight == 0 or ep.eligible_weight == 0:
        return 0
    return ep.pool * a.weight // ep.eligible_weight


@internal
@view
def _epoch_of(block_number: uint256) -> uint256:
    return (block_number - genesis_block) // epoch_length


@internal
@view
def _claim_block(e: uint256) -> uint256:
    return genesis_block + (e + 1) * epoch_length + settlement_delay


@internal
@view
def _check_settled(e: uint256):
    assert block.number >= self._claim_block(e), "ledger: epoch not settled"
    assert self.epochs[e].open_disputes == 0, "ledger: dispute pending"


@internal
def _pull(amount: uint256):
    assert extcall token.transferFrom(msg.sender, self, amount, default_return_value=True), (
        "ledger: transfer failed"
    )


@internal
def _send(to: address, amount: uint256):
    assert extcall token.transfer(to, amount, default_return_value=True), "ledger: transfer failed"
