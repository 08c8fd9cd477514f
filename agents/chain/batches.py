"""Batches and their records, rebuilt from the Ledger's events: the Ledger stores one hash per batch.

A `startBatch` holds one executor's inferences. While started (or expired), the batch's slot holds
keccak(abi_encode(BatchTerms, item leaves)), a leaf being keccak(abi_encode(Item)); `finishBatch`
and `expireBatch` take the terms and items back, in order. Once finished, the slot holds the Merkle
root of its records (keccak(abi_encode(Record)), sorted pairs as snekmate's
merkle_proof_verification checks them, a level's last node without a sibling moving up as it
is), and every later call (submitValidation, resolve, reportLazy, validatorsOf) takes one record
and its proof. The events give everything back: `BatchStarted` the terms, `Started` the items in
order, `BatchFinished` the finish block and probability, `Finished` the output tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from eth_abi import encode
from eth_utils import keccak, to_checksum_address

BATCH_BITS = 8
TERMS_ABI = "(address,bytes32,uint256)"
ITEM_ABI = "(bytes32,address,uint256,uint256,uint256)"
RECORD_ABI = "(bytes32,uint256,address,address,bytes32,uint256,uint256,uint256,uint256,uint256,uint256,uint256)"

# Ledger status codes (stateOf, batchOf)
STARTED, FINISHED, VALIDATED, INVALIDATED, DISPUTED, EXPIRED = 1, 2, 3, 4, 5, 6


def _tuple(obj) -> tuple:
    return tuple(getattr(obj, f.name) for f in fields(obj))


@dataclass(frozen=True)
class Terms:
    """What a batch's items share (`BatchTerms`)."""
    executor: str
    model_id: bytes
    price: int

    def as_tuple(self) -> tuple:
        return _tuple(self)


@dataclass(frozen=True)
class Item:
    """A started inference as its batch commits it (`Item`, logged by `Started`)."""
    inference_id: bytes
    client: str
    max_tokens: int
    deadline: int
    quorum: int = 0

    def as_tuple(self) -> tuple:
        return _tuple(self)

    def leaf(self) -> bytes:
        return keccak(encode([ITEM_ABI], [self.as_tuple()]))


@dataclass(frozen=True)
class Record:
    """A finished inference as the Ledger's `Record` parameters take it: a leaf of its batch's root."""
    inference_id: bytes
    batch: int
    client: str
    executor: str
    model_id: bytes
    price: int
    max_tokens: int
    deadline: int
    quorum: int
    completion_tokens: int
    finish_block: int
    p_bps: int

    def as_tuple(self) -> tuple:
        return _tuple(self)

    def leaf(self) -> bytes:
        return keccak(encode([RECORD_ABI], [self.as_tuple()]))


def commitment(terms: Terms, items: list[Item]) -> bytes:
    """A started batch's hash, as `startBatch` computes it."""
    return keccak(encode([TERMS_ABI, "bytes32[]"], [terms.as_tuple(), [i.leaf() for i in items]]))


def packed(digest: bytes) -> bytes:
    """What `batchOf(batch).commitment` holds for a hash: its low BATCH_BITS zeroed."""
    return (int.from_bytes(digest, "big") >> BATCH_BITS << BATCH_BITS).to_bytes(32, "big")


def _pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        level = levels[-1]
        levels.append([_pair(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                       for i in range(0, len(level), 2)])
    return levels


def merkle_root(leaves: list[bytes]) -> bytes:
    return _levels(leaves)[-1][0]


def merkle_proof(leaves: list[bytes], index: int) -> list[bytes]:
    """The siblings from leaf `index` up to the root; a level where it has none adds nothing."""
    proof = []
    for level in _levels(leaves)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        index //= 2
    return proof


@dataclass(frozen=True)
class Batch:
    """One batch as its events give it back: terms, items in order, and its finish if any."""
    number: int
    terms: Terms
    items: tuple[Item, ...]
    finish_block: int | None = None
    p_bps: int | None = None
    completion_tokens: tuple[int, ...] | None = None
    expired: bool = False

    @property
    def finished(self) -> bool:
        return self.finish_block is not None

    def args(self) -> tuple[int, tuple, list[tuple]]:
        """(batch, terms, items): the arguments `finishBatch` and `expireBatch` start with."""
        return self.number, self.terms.as_tuple(), [i.as_tuple() for i in self.items]

    def index(self, inference_id: bytes) -> int:
        for i, item in enumerate(self.items):
            if item.inference_id == inference_id:
                return i
        raise KeyError(f"0x{inference_id.hex()} is not in batch {self.number}")

    def records(self) -> list[Record]:
        if not self.finished:
            raise ValueError(f"batch {self.number} is not finished")
        return [Record(inference_id=i.inference_id, batch=self.number, client=i.client,
                       executor=self.terms.executor, model_id=self.terms.model_id,
                       price=self.terms.price, max_tokens=i.max_tokens, deadline=i.deadline,
                       quorum=i.quorum, completion_tokens=tokens, finish_block=self.finish_block,
                       p_bps=self.p_bps)
                for i, tokens in zip(self.items, self.completion_tokens)]

    def root(self) -> bytes:
        return merkle_root([r.leaf() for r in self.records()])

    def proven(self, inference_id: bytes) -> tuple[Record, list[bytes]]:
        """A finished inference's record and Merkle proof, as the calls after a finish take them."""
        records = self.records()
        index = self.index(inference_id)
        return records[index], merkle_proof([r.leaf() for r in records], index)


def terms_from(args) -> Terms:
    """A batch's terms from its `BatchStarted` event's args (a mapping)."""
    return Terms(executor=to_checksum_address(args["executor"]), model_id=bytes(args["model_id"]),
                 price=args["price"])


def item_from(args) -> Item:
    """An item from its `Started` event's args (a mapping)."""
    return Item(inference_id=bytes(args["inference_id"]), client=to_checksum_address(args["client"]),
                max_tokens=args["max_tokens"], deadline=args["deadline"], quorum=args["quorum"])


def assemble(number: int, started: dict, items: list, finished: dict | None = None,
             finish_block: int | None = None, answers: list | None = None,
             expired: bool = False) -> Batch:
    """A Batch from its decoded events' args: `BatchStarted`, the `Started` list in log order,
    and, once finished, `BatchFinished` with its block and the `Finished` list in log order."""
    batch = Batch(number, terms_from(started), tuple(item_from(a) for a in items), expired=expired)
    if len(batch.items) != started["size"]:
        raise ValueError(f"batch {number}: {len(batch.items)} Started events, BatchStarted says {started['size']}")
    if finished is None:
        return batch
    tokens = {bytes(a["inference_id"]): a["completion_tokens"] for a in answers or []}
    if set(tokens) != {i.inference_id for i in batch.items}:
        raise ValueError(f"batch {number}: the Finished events do not match its items")
    return Batch(number, batch.terms, batch.items, finish_block=finish_block, p_bps=finished["p_bps"],
                 completion_tokens=tuple(tokens[i.inference_id] for i in batch.items))


class BatchNotFound(LookupError):
    pass


def load_batch(ledger, number: int, from_block: int = 0) -> Batch:
    """Rebuild a batch from a web3 Ledger contract's events, checked against `batchOf`.

    Raises BatchNotFound when no `BatchStarted` event exists from `from_block`, or when the rebuilt
    batch does not match the commitment on chain (an event scan that started too late).
    """
    topic = {"batch": number}
    # one block for every read, so a transaction landing in between cannot split events and state
    block = ledger.w3.eth.block_number

    def logs(event):
        return getattr(ledger.events, event)().get_logs(from_block=from_block, to_block=block,
                                                      argument_filters=topic)

    begun = logs("BatchStarted")
    if not begun:
        raise BatchNotFound(f"no BatchStarted event for batch {number} from block {from_block}")
    items = [log["args"] for log in logs("Started")]
    ended = logs("BatchFinished")
    status, on_chain = ledger.functions.batchOf(number).call(block_identifier=block)
    if ended:
        batch = assemble(number, begun[0]["args"], items, ended[0]["args"], ended[0]["blockNumber"],
                         [log["args"] for log in logs("Finished")])
        digest = batch.root()
    else:
        batch = assemble(number, begun[0]["args"], items, expired=status == EXPIRED)
        digest = commitment(batch.terms, list(batch.items))
    if bytes(on_chain) != packed(digest):
        raise BatchNotFound(f"events from block {from_block} do not rebuild batch {number}")
    return batch
