# pragma version ~=0.4.3
"""
@title BatchLedgerSketch
@notice A design sketch, not part of Nullius: the start and finish of docs/gas.md's
        "per-executor batches, finished and expired whole", built far enough to measure their gas
        (`python -m benchmarks.gas_design`). A start batch holds one executor's inferences; it
        stores one slot, a root over their records (executor, model and price once); the executor
        finishes the whole batch, the Ledger rebuilding the root from the records it is given,
        and the slot is rewritten with the root of the finished records. The replay guard is a
        per-client nonce bitmap, so clients number their nonces densely.

        Left out, as they do not change the gas of start + finish: tokens (escrow is `credit`ed),
        expiry, verdicts, disputes and claims, whose calls would prove a finished record against
        its batch's root; quorum and max_tokens limits and the other checks of Ledger.vy.
"""

from interfaces import IRegistry
from snekmate.utils import eip712_domain_separator
from snekmate.utils import signature_checker

initializes: eip712_domain_separator

BPS: constant(uint256) = 10_000
MIN_VALIDATION_BPS: constant(uint256) = 100
MAX_BATCH: constant(uint256) = 32
INFERENCE_TYPEHASH: constant(bytes32) = keccak256(
    "Inference(address client,bytes32 modelId,bytes32 requestHash,uint256 maxTokens,uint256 maxPrice,uint256 nonce,uint256 deadline,uint256 quorum)"
)
STARTED: constant(uint256) = 1
FINISHED: constant(uint256) = 2
STATE_MASK: constant(uint256) = 255

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

struct FinishItem:
    inference_id: bytes32
    client: address
    max_tokens: uint32
    deadline: uint64
    quorum: uint256
    response_hash: bytes32
    artifact_digest: bytes32
    completion_tokens: uint32

struct Account:
    fees: uint256
    weight: uint256
    validations: uint256
    flags: uint256

registry: public(immutable(IRegistry))
validator_fee_bps: public(immutable(uint256))
max_reputation: public(immutable(uint256))
genesis_block: public(immutable(uint256))
epoch_length: public(immutable(uint256))

batches: public(HashMap[uint256, uint256])
batchCount: public(uint256)
nonceBits: public(HashMap[address, HashMap[uint256, uint256]])
escrowOf: public(HashMap[address, uint256])
totalEscrow: public(uint256)
totalLocked: public(uint256)
totalFees: public(uint256)
accounts: public(HashMap[address, HashMap[uint256, Account]])
eligibleWeight: public(HashMap[uint256, uint256])
served: public(HashMap[address, uint256])
spent: public(HashMap[address, uint256])

event Started:
    inference_id: indexed(bytes32)
    client: indexed(address)
    request_hash: bytes32
    max_tokens: uint256
    deadline: uint256
    quorum: uint256

event BatchStarted:
    batch: indexed(uint256)
    executor: indexed(address)
    model_id: bytes32
    price: uint256
    count: uint256

event Finished:
    inference_id: indexed(bytes32)
    response_hash: bytes32
    artifact_digest: bytes32
    completion_tokens: uint256

event BatchFinished:
    batch: indexed(uint256)
    p_bps: uint256


@deploy
def __init__(registry_: IRegistry):
    eip712_domain_separator.__init__("Nullius", "1")
    registry = registry_
    validator_fee_bps = 1000
    max_reputation = 10
    genesis_block = block.number
    epoch_length = 100


@external
def credit(client: address, amount: uint256):
    # the sketch's stand-in for a token deposit, which is not part of start + finish
    self.escrowOf[client] += amount
    self.totalEscrow += amount


@internal
@pure
def _root(leaves: DynArray[bytes32, MAX_BATCH]) -> bytes32:
    # a Merkle root with sorted pairs (snekmate's merkle_proof_verification checks its proofs);
    # an odd node is carried up as is
    level: DynArray[bytes32, MAX_BATCH] = leaves
    for _: uint256 in range(6):
        if len(level) == 1:
            break
        up: DynArray[bytes32, MAX_BATCH] = []
        for j: uint256 in range(MAX_BATCH // 2):
            i: uint256 = 2 * j
            if i >= len(level):
                break
            if i + 1 == len(level):
                up.append(level[i])
            else:
                a: bytes32 = level[i]
                b: bytes32 = level[i + 1]
                if convert(a, uint256) < convert(b, uint256):
                    up.append(keccak256(concat(a, b)))
                else:
                    up.append(keccak256(concat(b, a)))
        level = up
    return level[0]


@external
def startBatch(executor: address, model_id: bytes32, items: DynArray[StartItem, MAX_BATCH]):
    known: bool = False
    price: uint256 = 0
    known, price = staticcall registry.modelPrice(model_id)
    assert known, "unknown model"
    leaves: DynArray[bytes32, MAX_BATCH] = []
    locked: uint256 = 0
    for a: StartItem in items:
        assert convert(a.deadline, uint256) >= block.timestamp, "expired"
        assert price <= a.max_price, "price above max"
        iid: bytes32 = eip712_domain_separator._hash_typed_data_v4(keccak256(abi_encode(
            INFERENCE_TYPEHASH, a.client, model_id, a.request_hash, a.max_tokens, a.max_price,
            a.nonce, a.deadline, a.quorum)))
        assert signature_checker._is_valid_signature_now(a.client, iid, a.signature), "bad signature"
        word: uint256 = a.nonce >> 8
        bit: uint256 = 1 << (a.nonce & 255)
        bits: uint256 = self.nonceBits[a.client][word]
        assert bits & bit == 0, "nonce used"
        self.nonceBits[a.client][word] = bits | bit
        assert a.seed_block < block.number and a.seed_block + 256 >= block.number, "stale seed"
        seed: bytes32 = keccak256(concat(iid, blockhash(a.seed_block)))
        assert staticcall registry.drawExecutor(model_id, seed) == executor, "executor mismatch"
        lock: uint256 = convert(a.max_tokens, uint256) * price
        lock += a.quorum * (lock * validator_fee_bps // BPS)
        assert self.escrowOf[a.client] >= lock, "insufficient escrow"
        self.escrowOf[a.client] -= lock
        locked += lock
        leaves.append(keccak256(abi_encode(iid, a.client, a.max_tokens, a.deadline, a.quorum)))
        log Started(inference_id=iid, client=a.client, request_hash=a.request_hash,
                    max_tokens=convert(a.max_tokens, uint256), deadline=convert(a.deadline, uint256),
                    quorum=a.quorum)
    self.totalEscrow -= locked
    self.totalLocked += locked
    root: bytes32 = keccak256(abi_encode(executor, model_id, price, self._root(leaves)))
    batch: uint256 = self.batchCount
    self.batchCount = batch + 1
    self.batches[batch] = convert(root, uint256) >> 8 << 8 | STARTED
    log BatchStarted(batch=batch, executor=executor, model_id=model_id, price=price, count=len(items))


@external
def finishBatch(batch: uint256, model_id: bytes32, price: uint256, items: DynArray[FinishItem, MAX_BATCH]):
    leaves: DynArray[bytes32, MAX_BATCH] = []
    done: DynArray[bytes32, MAX_BATCH] = []
    rep: uint256 = min(staticcall registry.reputationOf(msg.sender), max_reputation)
    p_bps: uint256 = BPS - (BPS - MIN_VALIDATION_BPS) * rep // max_reputation
    unlocked: uint256 = 0
    fees: uint256 = 0
    weight: uint256 = 0
    for f: FinishItem in items:
        leaf: bytes32 = keccak256(abi_encode(f.inference_id, f.client, f.max_tokens, f.deadline, f.quorum))
        leaves.append(leaf)
        tokens: uint256 = convert(f.completion_tokens, uint256)
        assert tokens <= convert(f.max_tokens, uint256), "too many tokens"
        lock: uint256 = convert(f.max_tokens, uint256) * price
        cost: uint256 = tokens * price
        quorum_lock: uint256 = f.quorum * (lock * validator_fee_bps // BPS)
        quorum_fee: uint256 = f.quorum * (cost * validator_fee_bps // BPS)
        self.escrowOf[f.client] += lock - cost + quorum_lock - quorum_fee
        unlocked += lock + quorum_lock
        fees += cost + quorum_fee
        weight += cost
        self.spent[f.client] += cost + quorum_fee
        done.append(keccak256(abi_encode(leaf, f.response_hash, f.artifact_digest, tokens)))
        log Finished(inference_id=f.inference_id, response_hash=f.response_hash,
                     artifact_digest=f.artifact_digest, completion_tokens=tokens)
    root: bytes32 = keccak256(abi_encode(msg.sender, model_id, price, self._root(leaves)))
    assert self.batches[batch] == convert(root, uint256) >> 8 << 8 | STARTED, "batch mismatch"
    self.totalLocked -= unlocked
    self.totalEscrow += unlocked - fees
    self.totalFees += fees
    self.served[msg.sender] += len(items)
    e: uint256 = (block.number - genesis_block) // epoch_length
    self.accounts[msg.sender][e].fees += fees
    self.accounts[msg.sender][e].weight += weight
    if self.accounts[msg.sender][e].flags & 1 == 0:
        self.eligibleWeight[e] += weight
    final: bytes32 = keccak256(abi_encode(self._root(done), block.number, p_bps))
    self.batches[batch] = convert(final, uint256) >> 8 << 8 | FINISHED
    log BatchFinished(batch=batch, p_bps=p_bps)
