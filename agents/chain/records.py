"""Inference records, rebuilt from the Ledger's events: the Ledger stores only their hash.

Every Ledger call after `start` takes the record back (finish, submitValidation, resolve, expire,
reportLazy, validatorsOf). Its fields come from two events: `Started` (terms, with the quorum the
client signed for) and `Finished` (tokens, probability, and the finish block, which is the log's
block). The Ledger keeps the top 240 bits of
keccak256(abi_encode(record)) and its flags in the low 16 bits; `Record.record_hash` computes the
same value, so a caller can check a rebuilt record against `stateOf` before sending it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from eth_abi import encode
from eth_utils import keccak, to_checksum_address

FLAGS_BITS = 16
RECORD_ABI = "(bytes32,address,address,bytes32,uint256,uint256,uint256,uint256,uint256,uint256,uint256)"


@dataclass(frozen=True)
class Record:
    inference_id: bytes
    client: str
    executor: str
    model_id: bytes
    price: int
    max_tokens: int
    deadline: int
    quorum: int = 0
    completion_tokens: int = 0
    finish_block: int = 0
    p_bps: int = 0

    def as_tuple(self) -> tuple:
        """The ABI tuple the Ledger's `Record` parameters take."""
        return tuple(getattr(self, f.name) for f in fields(self))

    def record_hash(self) -> bytes:
        """What `stateOf(id).record_hash` holds for this record: the hash with its low 16 bits zero."""
        digest = int.from_bytes(keccak(encode([RECORD_ABI], [self.as_tuple()])), "big")
        return (digest >> FLAGS_BITS << FLAGS_BITS).to_bytes(32, "big")


def from_started(args) -> Record:
    """The record as `start` stored it, from a `Started` event's args (a mapping)."""
    return Record(
        inference_id=bytes(args["inference_id"]),
        client=to_checksum_address(args["client"]),
        executor=to_checksum_address(args["executor"]),
        model_id=bytes(args["model_id"]),
        price=args["price"],
        max_tokens=args["max_tokens"],
        deadline=args["deadline"],
        quorum=args["quorum"],
    )


def finished(record: Record, args, block_number: int) -> Record:
    """The record as `finish` stored it, from a `Finished` event's args and the log's block."""
    return replace(record, completion_tokens=args["completion_tokens"], finish_block=block_number,
                   p_bps=args["p_bps"])


class RecordNotFound(LookupError):
    pass


def load_record(ledger, inference_id: bytes, from_block: int = 0) -> Record:
    """Rebuild an inference's current record from a web3 Ledger contract's events.

    Raises RecordNotFound when no `Started` event exists, and RecordNotFound too when the rebuilt
    record does not match the hash on chain (an event scan that started too late).
    """
    topic = {"inference_id": inference_id}
    # one block for every read, so a transaction landing in between cannot split events and state
    block = ledger.w3.eth.block_number
    started = ledger.events.Started().get_logs(from_block=from_block, to_block=block,
                                               argument_filters=topic)
    if not started:
        raise RecordNotFound(f"no Started event for 0x{inference_id.hex()} from block {from_block}")
    record = from_started(started[0]["args"])
    done = ledger.events.Finished().get_logs(from_block=from_block, to_block=block,
                                             argument_filters=topic)
    if done:
        record = finished(record, done[0]["args"], done[0]["blockNumber"])
    _status, on_chain, _voted, _passed = ledger.functions.stateOf(inference_id).call(
        block_identifier=block)
    if bytes(on_chain) != record.record_hash():
        raise RecordNotFound(f"events from block {from_block} do not rebuild the record of 0x{inference_id.hex()}")
    return record
