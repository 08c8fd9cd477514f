# pragma version ~=0.4.3
# pragma nonreentrancy on
"""
@title Ledger
@notice Client escrow and the inference ledger of the Nullius network.

        Flow of one inference: a client deposits tokens in escrow and signs an EIP-712
        `Inference` authorization whose digest is the inference id. Anyone (the gateway) calls
        `start` with it: the Ledger checks the signature and recomputes the stake-weighted
        executor draw with seed keccak(id ‖ blockhash(seed_block)), then moves max_tokens × price
        from escrow to a lock. The executor calls `finish` with the answer's hashes and token
        count: the unused part of the lock returns to escrow and the cost is held pending
        validation. A later block's hash decides whether and by whom the inference is validated
        (`validatorOf`); the assigned validator's verdict pays the executor or refunds the client
        and slashes the executor. Without a verdict, anyone may `settle` after the window. A start
        that is never finished can be `expire`d by anyone, refunding the lock.

        Roles: none of its own. The executor and validator of each inference are fixed by the
        draws; the Registry's gov wires this contract there. Epochs and juries come in a later
        issue and hook in where a verdict is decided (`_decide`).

        Token conservation:
        token.balanceOf(self) == totalEscrow + totalLocked + totalPending + totalEarned, where
        totalLocked sums the locks of started inferences and totalPending the costs of finished
        ones awaiting a verdict or settlement.
"""

# ---------------------------------------------------------------- imports

from ethereum.ercs import IERC20
from .interfaces import IRegistry

from snekmate.utils import block_hash
from snekmate.utils import eip712_domain_separator
from snekmate.utils import signature_checker

initializes: eip712_domain_separator

exports: eip712_domain_separator.eip712Domain


# ---------------------------------------------------------------- constants

BPS: constant(uint256) = 10_000
# Validation probability at full reputation, in basis points (1%).
MIN_VALIDATION_BPS: constant(uint256) = 100
MAX_BATCH: constant(uint256) = 32

INFERENCE_TYPEHASH: constant(bytes32) = keccak256(
    "Inference(address client,bytes32 modelId,bytes32 requestHash,uint256 maxTokens,uint256 maxPrice,uint256 nonce,uint256 deadline)"
)

# Inference status, stored in 8 bits of `_head`; 0 is none.
STARTED: constant(uint256) = 1
FINISHED: constant(uint256) = 2
VALIDATED: constant(uint256) = 3
INVALIDATED: constant(uint256) = 4
SETTLED: constant(uint256) = 5
EXPIRED: constant(uint256) = 6

MASK_8: constant(uint256) = 2**8 - 1
MASK_16: constant(uint256) = 2**16 - 1
MASK_32: constant(uint256) = 2**32 - 1
MASK_64: constant(uint256) = 2**64 - 1
MASK_160: constant(uint256) = 2**160 - 1


# ---------------------------------------------------------------- immutables

# The payment ERC-20.
token: public(immutable(IERC20))
# The Registry: models, prices, stake, draws and reputation.
registry: public(immutable(IRegistry))
# Blocks after a finish during which the assigned validator may submit a verdict; also the
# seconds after a deadline before an unfinished start may be expired.
validation_window: public(immutable(uint256))
# Reputation at which the validation probability reaches its floor of 1%.
max_reputation: public(immutable(uint256))
# Share of the executor's stake slashed by a failed verdict, in basis points.
slash_bps: public(immutable(uint256))
# Share of the cost paid to the validator of a passed verdict, in basis points.
validator_fee_bps: public(immutable(uint256))


# ---------------------------------------------------------------- structs

struct StartArgs:
    client: address
    model_id: bytes32
    request_hash: bytes32
    max_tokens: uint32
    max_price: uint256
    nonce: uint256
    deadline: uint64
    signature: Bytes[65]
    seed_block: uint256
    executor: address


struct FinishArgs:
    inference_id: bytes32
    response_hash: bytes32
    artifact_digest: bytes32
    completion_tokens: uint32


# The decoded packed record, in memory only.
struct Record:
    client: address
    status: uint256
    max_tokens: uint256
    completion_tokens: uint256
    p_bps: uint256
    executor: address
    price: uint256
    deadline: uint256
    finish_block: uint256


struct Inference:
    status: uint256
    client: address
    executor: address
    model_id: bytes32
    request_hash: bytes32
    lock: uint256
    cost: uint256
    finish_block: uint256
    response_hash: bytes32
    artifact_digest: bytes32
    completion_tokens: uint256


struct Stats:
    served: uint256
    validations: uint256
    invalidated: uint256
    fees_earned: uint256


struct ClientStats:
    spent: uint256
    refunded: uint256


# ---------------------------------------------------------------- storage

# Per inference, packed: client (bits 0-159) | status (160-167) | max_tokens (168-199)
# | completion_tokens (200-231) | validation probability in bps, fixed at finish (232-247).
_head: HashMap[bytes32, uint256]
# Per inference, packed: executor (bits 0-159) | price per token at start (160-255).
_terms: HashMap[bytes32, uint256]
# Per inference, packed: deadline (bits 0-63) | finish block (64-127).
_times: HashMap[bytes32, uint256]
# Per inference: the model it runs.
_model_of: HashMap[bytes32, bytes32]
# Per inference: keccak of the canonical request JSON.
_request_hash: HashMap[bytes32, bytes32]
# Per inference: keccak of the answer text, set at finish.
_response_hash: HashMap[bytes32, bytes32]
# Per inference: sha256 of the artifact bytes, set at finish.
_artifact_digest: HashMap[bytes32, bytes32]

# Tokens each client holds in escrow, free to lock or withdraw.
escrowOf: public(HashMap[address, uint256])
# Tokens each participant has earned and may claim.
earnedOf: public(HashMap[address, uint256])
# Sum of escrowOf.
totalEscrow: public(uint256)
# Sum of the locks of started inferences.
totalLocked: public(uint256)
# Sum of the costs of finished inferences awaiting a verdict or settlement.
totalPending: public(uint256)
# Sum of earnedOf.
totalEarned: public(uint256)
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
    executor: indexed(address)
    model_id: bytes32
    request_hash: bytes32
    lock: uint256

event Finished:
    inference_id: indexed(bytes32)
    executor: indexed(address)
    response_hash: bytes32
    artifact_digest: bytes32
    completion_tokens: uint256
    cost: uint256

event Validated:
    inference_id: indexed(bytes32)
    validator: indexed(address)
    passed: bool
    score: uint256

event Paid:
    inference_id: indexed(bytes32)
    executor: indexed(address)
    validator: indexed(address)
    executor_amount: uint256
    validator_fee: uint256

event Refunded:
    inference_id: indexed(bytes32)
    client: indexed(address)
    amount: uint256

event Claimed:
    participant: indexed(address)
    amount: uint256


# ---------------------------------------------------------------- constructor

@deploy
def __init__(
    token_: IERC20,
    registry_: IRegistry,
    validation_window_: uint256,
    max_reputation_: uint256,
    slash_bps_: uint256,
    validator_fee_bps_: uint256,
):
    """
    @param token_ The payment ERC-20 (the Registry's token).
    @param registry_ The Registry.
    @param validation_window_ Blocks for a verdict after a finish, 2 to 256 so that the
           assignment's block hash stays readable for the whole window.
    @param max_reputation_ Reputation at which validation probability reaches 1%.
    @param slash_bps_ Share of stake slashed by a failed verdict.
    @param validator_fee_bps_ Share of the cost paid to the validator of a passed verdict.
    """
    assert token_.address != empty(address), "ledger: zero token"
    assert registry_.address != empty(address), "ledger: zero registry"
    assert validation_window_ >= 2 and validation_window_ <= 256, "ledger: window out of range"
    assert max_reputation_ > 0, "ledger: zero max reputation"
    assert slash_bps_ <= BPS and validator_fee_bps_ <= BPS, "ledger: bps above 10000"
    token = token_
    registry = registry_
    validation_window = validation_window_
    max_reputation = max_reputation_
    slash_bps = slash_bps_
    validator_fee_bps = validator_fee_bps_
    eip712_domain_separator.__init__("Nullius", "1")


# ---------------------------------------------------------------- escrow

@external
def deposit(amount: uint256):
    """
    @notice Moves `amount` tokens from the caller into its escrow.
    @param amount Token base units; needs an allowance.
    """
    assert amount > 0, "ledger: zero amount"
    self.escrowOf[msg.sender] += amount
    self.totalEscrow += amount
    assert extcall token.transferFrom(msg.sender, self, amount, default_return_value=True), (
        "ledger: transfer failed"
    )
    log Deposited(client=msg.sender, amount=amount)


@external
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
def claim():
    """
    @notice Sends the caller everything it has earned as executor and validator.
    """
    amount: uint256 = self.earnedOf[msg.sender]
    assert amount > 0, "ledger: nothing to claim"
    self.earnedOf[msg.sender] = 0
    self.totalEarned -= amount
    self._send(msg.sender, amount)
    log Claimed(participant=msg.sender, amount=amount)


# ---------------------------------------------------------------- inference lifecycle

@external
def start(a: StartArgs):
    """
    @notice Records a client-signed inference and locks max_tokens × price of its escrow.
    @dev Anyone may submit it; the signature, the executor draw and the escrow decide.
    @param a The signed authorization, the seed block and the drawn executor.
    """
    self._start(a)


@external
def startBatch(args: DynArray[StartArgs, MAX_BATCH]):
    """
    @notice `start` for many inferences in one transaction; all or none.
    @param args The start arguments.
    """
    for a: StartArgs in args:
        self._start(a)


@external
def finish(f: FinishArgs):
    """
    @notice The executor reports its answer: cost = completion_tokens × price is held pending
            validation and the rest of the lock returns to the client's escrow.
    @param f The inference id, the answer's hashes and the output token count.
    """
    self._finish(f)


@external
def finishBatch(args: DynArray[FinishArgs, MAX_BATCH]):
    """
    @notice `finish` for many inferences in one transaction; all or none.
    @param args The finish arguments.
    """
    for f: FinishArgs in args:
        self._finish(f)


@external
def submitValidation(inference_id: bytes32, passed: bool, score: uint256):
    """
    @notice The assigned validator's verdict. Passed: the executor is paid (less the validator's
            fee) and gains reputation. Failed: the client is refunded the cost, the executor's
            reputation drops to 0 and `slash_bps` of its stake is slashed.
    @param inference_id The inference.
    @param passed Whether the artifact passed validation.
    @param score The validator's score, logged for calibration.
    """
    r: Record = self._load(inference_id)
    self._check_decidable(r)
    assert block.number > r.finish_block + 1, "ledger: assignment pending"
    assert block.number <= r.finish_block + validation_window, "ledger: validation window closed"
    assert msg.sender == self._assigned_validator(inference_id, r), "ledger: not assigned validator"
    self._stats[msg.sender].validations += 1
    log Validated(inference_id=inference_id, validator=msg.sender, passed=passed, score=score)
    if passed:
        rep: uint256 = staticcall registry.reputationOf(r.executor)
        if rep < max_reputation:
            extcall registry.setReputation(r.executor, rep + 1)
        self._pay(inference_id, r, VALIDATED, msg.sender)
    else:
        self._reject(inference_id, r)


@external
def settle(inference_id: bytes32):
    """
    @notice Pays the executor for a finished inference that got no verdict within the window.
    @param inference_id The inference.
    """
    self._settle(inference_id)


@external
def settleBatch(ids: DynArray[bytes32, MAX_BATCH]):
    """
    @notice `settle` for many inferences in one transaction; all or none.
    @param ids The inferences.
    """
    for inference_id: bytes32 in ids:
        self._settle(inference_id)


@external
def expire(inference_id: bytes32):
    """
    @notice Refunds the lock of an inference never finished, once `validation_window` seconds
            have passed after its deadline.
    @param inference_id The inference.
    """
    r: Record = self._load(inference_id)
    assert r.status == STARTED, "ledger: not started"
    assert block.timestamp > r.deadline + validation_window, "ledger: not expired"
    lock: uint256 = r.max_tokens * r.price
    r.status = EXPIRED
    self._store_head(inference_id, r)
    self.totalLocked -= lock
    self.escrowOf[r.client] += lock
    self.totalEscrow += lock
    self._client_stats[r.client].refunded += lock
    log Refunded(inference_id=inference_id, client=r.client, amount=lock)


# ---------------------------------------------------------------- views

@external
@view
def validatorOf(inference_id: bytes32) -> address:
    """
    @notice Who must validate a finished inference. rand = keccak(id ‖ blockhash(finish_block + 1));
            validated iff rand % 10000 < p_bps, with p_bps = 10000 - 9900 × reputation /
            max_reputation taken at finish; then drawValidator(model, keccak(rand), executor).
    @param inference_id The inference.
    @return address The validator; empty when the inference is not validated.
    """
    r: Record = self._load(inference_id)
    assert r.status >= FINISHED and r.status != EXPIRED, "ledger: not finished"
    assert block.number > r.finish_block + 1, "ledger: assignment pending"
    return self._assigned_validator(inference_id, r)


@external
@view
def inference(inference_id: bytes32) -> Inference:
    """
    @notice An inference's record; status 0 none, 1 started, 2 finished, 3 validated,
            4 invalidated, 5 settled, 6 expired.
    @param inference_id The inference.
    @return Inference (status, client, executor, model_id, request_hash, lock, cost,
            finish_block, response_hash, artifact_digest, completion_tokens).
    """
    r: Record = self._load(inference_id)
    return Inference(
        status=r.status,
        client=r.client,
        executor=r.executor,
        model_id=self._model_of[inference_id],
        request_hash=self._request_hash[inference_id],
        lock=r.max_tokens * r.price,
        cost=r.completion_tokens * r.price,
        finish_block=r.finish_block,
        response_hash=self._response_hash[inference_id],
        artifact_digest=self._artifact_digest[inference_id],
        completion_tokens=r.completion_tokens,
    )


@external
@view
def deadlineOf(inference_id: bytes32) -> uint256:
    """
    @notice The signed deadline of a started inference, which keepers need to expire it.
    @param inference_id The inference.
    @return uint256 Unix seconds; 0 when unknown.
    """
    return self._times[inference_id] & MASK_64


@external
@view
def stats(participant: address) -> Stats:
    """
    @notice A participant's counters: inferences served (finished), verdicts submitted,
            inferences of its own invalidated, and tokens earned.
    @param participant The participant.
    @return Stats (served, validations, invalidated, fees_earned).
    """
    return self._stats[participant]


@external
@view
def clientStats(client: address) -> ClientStats:
    """
    @notice A client's counters: tokens paid for inferences and tokens refunded (failed verdicts
            and expiries).
    @param client The client.
    @return ClientStats (spent, refunded).
    """
    return self._client_stats[client]


# ---------------------------------------------------------------- internal

@internal
def _start(a: StartArgs):
    assert convert(a.deadline, uint256) >= block.timestamp, "ledger: expired"
    known: bool = False
    price: uint256 = 0
    known, price = staticcall registry.modelPrice(a.model_id)
    assert known, "ledger: unknown model"
    assert price <= a.max_price, "ledger: price above max"
    inference_id: bytes32 = eip712_domain_separator._hash_typed_data_v4(
        keccak256(
            abi_encode(
                INFERENCE_TYPEHASH,
                a.client,
                a.model_id,
                a.request_hash,
                a.max_tokens,
                a.max_price,
                a.nonce,
                a.deadline,
            )
        )
    )
    assert signature_checker._is_valid_signature_now(a.client, inference_id, a.signature), (
        "ledger: bad signature"
    )
    assert self._head[inference_id] == 0, "ledger: already started"
    assert a.seed_block < block.number and a.seed_block + 256 >= block.number, "ledger: stale seed block"
    seed: bytes32 = keccak256(concat(inference_id, blockhash(a.seed_block)))
    drawn: address = staticcall registry.drawExecutor(a.model_id, seed)
    assert drawn != empty(address) and drawn == a.executor, "ledger: executor mismatch"
    lock: uint256 = convert(a.max_tokens, uint256) * price
    assert self.escrowOf[a.client] >= lock, "ledger: insufficient escrow"

    self.escrowOf[a.client] -= lock
    self.totalEscrow -= lock
    self.totalLocked += lock
    r: Record = empty(Record)
    r.client = a.client
    r.status = STARTED
    r.max_tokens = convert(a.max_tokens, uint256)
    self._store_head(inference_id, r)
    self._terms[inference_id] = convert(a.executor, uint256) | (price << 160)
    self._times[inference_id] = convert(a.deadline, uint256)
    self._model_of[inference_id] = a.model_id
    self._request_hash[inference_id] = a.request_hash
    log Started(
        inference_id=inference_id,
        client=a.client,
        executor=a.executor,
        model_id=a.model_id,
        request_hash=a.request_hash,
        lock=lock,
    )


@internal
def _finish(f: FinishArgs):
    r: Record = self._load(f.inference_id)
    assert r.status == STARTED, "ledger: not started"
    assert msg.sender == r.executor, "ledger: not executor"
    assert convert(f.completion_tokens, uint256) <= r.max_tokens, "ledger: too many tokens"
    lock: uint256 = r.max_tokens * r.price
    cost: uint256 = convert(f.completion_tokens, uint256) * r.price
    self.totalLocked -= lock
    self.totalPending += cost
    self.escrowOf[r.client] += lock - cost
    self.totalEscrow += lock - cost
    # The probability is fixed now so that later reputation changes cannot move the assignment.
    rep: uint256 = min(staticcall registry.reputationOf(r.executor), max_reputation)
    r.status = FINISHED
    r.completion_tokens = convert(f.completion_tokens, uint256)
    r.p_bps = BPS - (BPS - MIN_VALIDATION_BPS) * rep // max_reputation
    self._store_head(f.inference_id, r)
    self._times[f.inference_id] = r.deadline | (block.number << 64)
    self._response_hash[f.inference_id] = f.response_hash
    self._artifact_digest[f.inference_id] = f.artifact_digest
    self._stats[r.executor].served += 1
    log Finished(
        inference_id=f.inference_id,
        executor=r.executor,
        response_hash=f.response_hash,
        artifact_digest=f.artifact_digest,
        completion_tokens=r.completion_tokens,
        cost=cost,
    )


@internal
def _settle(inference_id: bytes32):
    r: Record = self._load(inference_id)
    self._check_decidable(r)
    assert block.number > r.finish_block + validation_window, "ledger: window open"
    self._pay(inference_id, r, SETTLED, empty(address))


@internal
@view
def _check_decidable(r: Record):
    assert r.status >= FINISHED and r.status != EXPIRED, "ledger: not finished"
    assert r.status == FINISHED, "ledger: already decided"


@internal
def _pay(inference_id: bytes32, r: Record, status: uint256, validator: address):
    # Verdicts and settlements are where epochs and juries will hook in.
    cost: uint256 = r.completion_tokens * r.price
    fee: uint256 = 0
    if validator != empty(address):
        fee = cost * validator_fee_bps // BPS
        self.earnedOf[validator] += fee
        self._stats[validator].fees_earned += fee
    self.earnedOf[r.executor] += cost - fee
    self._stats[r.executor].fees_earned += cost - fee
    self.totalPending -= cost
    self.totalEarned += cost
    self._client_stats[r.client].spent += cost
    r.status = status
    self._store_head(inference_id, r)
    log Paid(
        inference_id=inference_id,
        executor=r.executor,
        validator=validator,
        executor_amount=cost - fee,
        validator_fee=fee,
    )


@internal
def _reject(inference_id: bytes32, r: Record):
    cost: uint256 = r.completion_tokens * r.price
    self.totalPending -= cost
    self.escrowOf[r.client] += cost
    self.totalEscrow += cost
    self._client_stats[r.client].refunded += cost
    self._stats[r.executor].invalidated += 1
    r.status = INVALIDATED
    self._store_head(inference_id, r)
    stake: uint256 = staticcall registry.stakeOf(r.executor)
    extcall registry.slash(r.executor, stake * slash_bps // BPS)
    extcall registry.setReputation(r.executor, 0)
    log Refunded(inference_id=inference_id, client=r.client, amount=cost)


@internal
@view
def _assigned_validator(inference_id: bytes32, r: Record) -> address:
    # Callers have checked that block finish_block + 1 exists.
    h: bytes32 = block_hash._block_hash(r.finish_block + 1)
    assert h != empty(bytes32), "ledger: assignment expired"
    rand: bytes32 = keccak256(concat(inference_id, h))
    if convert(rand, uint256) % BPS >= r.p_bps:
        return empty(address)
    return staticcall registry.drawValidator(self._model_of[inference_id], keccak256(rand), r.executor)


@internal
def _send(to: address, amount: uint256):
    assert extcall token.transfer(to, amount, default_return_value=True), "ledger: transfer failed"


@internal
@view
def _load(inference_id: bytes32) -> Record:
    head: uint256 = self._head[inference_id]
    terms: uint256 = self._terms[inference_id]
    times: uint256 = self._times[inference_id]
    return Record(
        client=convert(head & MASK_160, address),
        status=(head >> 160) & MASK_8,
        max_tokens=(head >> 168) & MASK_32,
        completion_tokens=(head >> 200) & MASK_32,
        p_bps=(head >> 232) & MASK_16,
        executor=convert(terms & MASK_160, address),
        price=terms >> 160,
        deadline=times & MASK_64,
        finish_block=times >> 64,
    )


@internal
def _store_head(inference_id: bytes32, r: Record):
    self._head[inference_id] = (
        convert(r.client, uint256)
        | (r.status << 160)
        | (r.max_tokens << 168)
        | (r.completion_tokens << 200)
        | (r.p_bps << 232)
    )
