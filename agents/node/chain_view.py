"""The chain reads the roles make, typed, over the contracts of an `agents.chain.client.ChainClient`.

`ChainView`'s calls are synchronous; async handlers run them with `asyncio.to_thread`. Reads use a
Web3 of their own without the default middleware: its validation layer asks the node for the chain
id twice per call, which triples the round trips of every view. The reads every finished inference
costs the validators and the keeper (its status, events and assignment) are posted as raw JSON-RPC
through that Web3's provider and decoded with eth-abi: a web3 contract call or log query costs 2.5
to 3.5 ms of CPU, the same request posted raw under 1 ms, and three nodes make about ten per
inference on the cores that serve requests. A finished batch never changes, so the last few read are
kept: the validators and the keeper read each of its inferences. `HotReads` makes the reads that requests wait on (the
head, the served model with its members and their records, a gateway's admission) as JSON-RPC
posted from the event loop (agents.chain.rpc says why). Nothing here signs or sends, and the
ChainClient checked the chain id when it connected.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from eth_abi import decode
from eth_utils import keccak, to_checksum_address
from web3 import Web3

from agents.chain import batches, rpc
from agents.chain.batches import Batch, Record
from agents.chain.rpc import AsyncRpc, Call, ContractCalls, EventDecoder

ZERO_ADDRESS = "0x" + "00" * 20
# a status without its Started log is read again this many times, this far apart
LOG_ATTEMPTS, LOG_RETRY_S = 3, 0.05
# block hashes kept by number; the draw only ever uses the last 256 blocks
BLOCKHASH_CACHE = 512
# Ledger statuses (docs/protocol.md section 2)
NONE, STARTED, FINISHED, VALIDATED, INVALIDATED, DISPUTED, EXPIRED = range(7)
FINISHED_BATCHES_KEPT = 64
# Ledger account flags of a participant's epoch
INELIGIBLE, FORFEITED, CLAIMED = 1, 2, 4


def draw_seed(inference_id: bytes, seed_blockhash: bytes) -> bytes:
    """The executor draw's seed: keccak(inference_id ‖ blockhash(seed_block)), as the Ledger checks."""
    return keccak(inference_id + seed_blockhash)


@dataclass(frozen=True)
class Model:
    name: str
    spec_hash: bytes
    price: int
    active: bool


@dataclass(frozen=True)
class ParticipantInfo:
    stake: int
    reputation: int
    model_id: bytes
    url: str
    active: bool


def participant_info(record) -> ParticipantInfo:
    """From `Registry.participant`'s (stake, reputation, model_id, url, active, exit_block)."""
    stake, reputation, model_id, url, active, _exit_block = record
    return ParticipantInfo(stake, reputation, bytes(model_id), url, active)


@dataclass(frozen=True)
class InferenceInfo:
    status: int
    client: str
    executor: str
    model_id: bytes
    request_hash: bytes
    lock: int
    cost: int
    finish_block: int
    response_hash: bytes
    artifact_digest: bytes
    completion_tokens: int
    batch: Batch | None = None
    record: Record | None = None  # once finished: what the Ledger's calls after a finish take back
    proof: tuple[bytes, ...] = ()  # and the record's Merkle proof in its batch


@dataclass(frozen=True)
class InferenceState:
    status: int
    voted_mask: int  # bit k: validator k submitted a verdict
    passed_mask: int  # bit k: validator k passed the answer


@dataclass(frozen=True)
class DisputeInfo:
    executor: str
    accuser: str
    opened_block: int
    epoch: int
    voted_mask: int  # bit k: juror k of `jury_of` voted
    open: bool


@dataclass(frozen=True)
class Account:
    fees: int
    weight: int
    validations: int
    flags: int  # INELIGIBLE | FORFEITED | CLAIMED


@dataclass(frozen=True)
class Epoch:
    pool: int
    eligible_weight: int
    open_disputes: int


@dataclass(frozen=True)
class Members:
    """A model's active participants in draw order, with their stakes, read in one batch."""
    addresses: tuple[str, ...]
    stakes: tuple[int, ...]

    def draw(self, seed: bytes) -> str:
        """`Registry.drawExecutor(model, seed)` over these stakes: r = seed mod their total, then
        walk the members in order subtracting stakes until r falls inside one."""
        total = sum(self.stakes)
        if total == 0:
            return ZERO_ADDRESS
        r = int.from_bytes(seed, "big") % total
        for address, stake in zip(self.addresses, self.stakes):
            if r < stake:
                return address
            r -= stake
        raise AssertionError("unreachable: r < total")


@dataclass(frozen=True)
class ModelSnapshot:
    """A model's registry record, its members in draw order with their stakes, and the members'
    participant records, all at one block."""
    model: Model
    members: Members
    participants: tuple[ParticipantInfo, ...]  # in the order of members.addresses


@dataclass(frozen=True)
class AdmissionReads:
    """What a gateway must know before it accepts a request."""
    started: bool  # the inference was started already (through any gateway)
    escrow: int  # the client's free escrow
    block: int | None  # the block both are as of; None: the latest, read for this request


@dataclass(frozen=True)
class StartedLog:
    """One `Started` event, as the gateway's index of started inferences keeps it."""
    inference_id: bytes
    block: int
    deadline: int
    client: str
    nonce: int


@dataclass(frozen=True)
class Head:
    number: int
    hash: bytes


class ChainView:
    def __init__(self, client):
        self.client = client
        self.w3 = Web3(Web3.HTTPProvider(client.w3.provider.endpoint_uri,
                                         request_kwargs={"timeout": 10}), middleware=[])
        self.registry = self.w3.eth.contract(address=client.registry.address, abi=client.registry.abi)
        self.ledger = self.w3.eth.contract(address=client.ledger.address, abi=client.ledger.abi)
        self.start_block = client.deployments.start_block  # where event scans begin
        self.ledger_calls = ContractCalls(self.ledger.address, self.ledger.abi)
        self.events = {e["name"]: EventDecoder(e) for e in self.ledger.abi if e.get("type") == "event"}
        self._epochs: tuple[int, int, int] | None = None  # genesis block, epoch length, delay
        self._hashes: dict[int, bytes] = {}
        self._hashes_lock = threading.Lock()  # roles read from several threads
        self._finished: dict[int, tuple[Batch, dict[bytes, dict]]] = {}  # batch -> (it, Finished args)

    # raw JSON-RPC ------------------------------------------------------------------------------

    def _call(self, call: Call, block: int | str = "latest") -> tuple:
        tag = block if isinstance(block, str) else hex(block)
        data = rpc.request(self.w3, "eth_call", [{"to": call.to, "data": call.data}, tag])
        return decode(call.output_types, bytes.fromhex(data[2:]))

    def _logs(self, event: str, topics: list[bytes | None], from_block: int, to_block: int) -> list[dict]:
        """The Ledger's `event` logs whose indexed arguments match `topics` (None: any), decoded,
        each with its block number under "blockNumber", in log order."""
        decoder = self.events[event]
        logs = rpc.request(self.w3, "eth_getLogs", [{
            "address": self.ledger.address,
            "topics": [decoder.topic, *(t and "0x" + t.hex() for t in topics)],
            "fromBlock": hex(from_block), "toBlock": hex(to_block)}])
        return [{"args": decoder(log), "blockNumber": int(log["blockNumber"], 16)} for log in logs]

    # reads ---------------------------------------------------------------------------------------

    def block_number(self) -> int:
        return int(rpc.request(self.w3, "eth_blockNumber", []), 16)

    def blockhash(self, number: int) -> bytes:
        """Hashes of past blocks do not change (anvil and an L2's settled blocks do not reorganize)."""
        cached = self._hashes.get(number)
        if cached is None:
            cached = bytes(self.w3.eth.get_block(number)["hash"])
            self.remember(number, cached)
        return cached

    def known_blockhash(self, number: int) -> bytes | None:
        """The hash of block `number` if a head or hash read has seen it; never a chain read."""
        return self._hashes.get(number)

    def remember(self, number: int, block_hash: bytes) -> None:
        with self._hashes_lock:
            self._hashes[number] = block_hash
            if len(self._hashes) > BLOCKHASH_CACHE:
                del self._hashes[min(self._hashes)]

    def timestamp(self) -> int:
        return self.w3.eth.get_block("latest")["timestamp"]

    def model(self, model_id: bytes) -> Model:
        return Model(*self.registry.functions.model(model_id).call())

    def participant(self, address: str) -> ParticipantInfo:
        return participant_info(self.registry.functions.participant(to_checksum_address(address)).call())

    def escrow_of(self, client: str) -> int:
        return self.ledger.functions.escrowOf(to_checksum_address(client)).call()

    def draw_executor(self, model_id: bytes, inference_id: bytes, seed_block: int) -> str:
        seed = draw_seed(inference_id, self.blockhash(seed_block))
        return self.registry.functions.drawExecutor(model_id, seed).call()

    def state(self, batch: int, inference_id: bytes, block: int | str = "latest") -> InferenceState:
        ((status, voted, passed),) = self._call(self.ledger_calls("stateOf", batch, inference_id), block)
        return InferenceState(status, voted, passed)

    def inference(self, inference_id: bytes) -> InferenceInfo:
        """Status from `stateOf`; terms, answer, record and proof rebuilt from the events of the
        inference's batch (the Ledger stores only a hash per batch), checked against that hash.
        State and events are read at one block, so a finish landing between the reads cannot
        split them."""
        block = self.block_number()
        for _ in range(LOG_ATTEMPTS):
            logs = self._logs("Started", [inference_id], self.start_block, block)
            if logs:
                break
            # anvil, mining while it answers, has served a state read at its newest block
            # before that block's logs
            time.sleep(LOG_RETRY_S)
        else:
            return InferenceInfo(NONE, ZERO_ADDRESS, ZERO_ADDRESS, b"\0" * 32, b"\0" * 32, 0, 0, 0,
                                 b"\0" * 32, b"\0" * 32, 0)
        started = logs[0]
        number = started["args"]["batch"]
        batch, answers = self.batch(number, started["blockNumber"], block)
        state = self.state(number, inference_id, block)
        item = batch.items[batch.index(inference_id)]
        record, proof, answer = None, (), answers.get(inference_id, {})
        if batch.finished:
            record, proof = batch.proven(inference_id)
        tokens = answer.get("completion_tokens", 0)
        return InferenceInfo(
            status=state.status, client=item.client, executor=batch.terms.executor,
            model_id=batch.terms.model_id, request_hash=bytes(started["args"]["request_hash"]),
            lock=item.max_tokens * batch.terms.price, cost=tokens * batch.terms.price,
            finish_block=batch.finish_block or 0,
            response_hash=bytes(answer.get("response_hash", b"\0" * 32)),
            artifact_digest=bytes(answer.get("artifact_digest", b"\0" * 32)),
            completion_tokens=tokens, batch=batch, record=record, proof=tuple(proof))

    def batch(self, number: int, from_block: int, block: int) -> tuple[Batch, dict[bytes, dict]]:
        """A batch as of `block`, from its events from `from_block` (its start's block or earlier),
        checked against `batchOf`, with its `Finished` args by inference id once finished."""
        if number in self._finished:
            return self._finished[number]
        topic = [number.to_bytes(32, "big")]
        ((status, on_chain),) = self._call(self.ledger_calls("batchOf", number), block)
        begun = self._logs("BatchStarted", topic, from_block, block)
        if not begun:
            raise LookupError(f"no BatchStarted event of batch {number} from block {from_block}")
        items = [log["args"] for log in self._logs("Started", [None, None, *topic], from_block, block)]
        answers: dict[bytes, dict] = {}
        if status in (STARTED, EXPIRED):
            batch = batches.assemble(number, begun[0]["args"], items, expired=status == EXPIRED)
            digest = batches.commitment(batch.terms, list(batch.items))
        else:
            (ended,) = self._logs("BatchFinished", topic, from_block, block)
            done = [log["args"] for log in self._logs("Finished", [None, *topic], from_block, block)]
            answers = {bytes(a["inference_id"]): a for a in done}
            batch = batches.assemble(number, begun[0]["args"], items, ended["args"], ended["blockNumber"], done)
            digest = batch.root()
        if batches.packed(digest) != bytes(on_chain):
            raise LookupError(f"the events of batch {number} do not rebuild its commitment")
        if batch.finished:
            with self._hashes_lock:
                self._finished[number] = (batch, answers)
                if len(self._finished) > FINISHED_BATCHES_KEPT:
                    del self._finished[min(self._finished)]
        return batch, answers

    def finished_in(self, number: int, block: int) -> list[bytes]:
        """The inferences a batch finished in `block` holds, from that block's `Finished` logs."""
        logs = self._logs("Finished", [None, number.to_bytes(32, "big")], block, block)
        return [bytes(log["args"]["inference_id"]) for log in logs]

    def validators_of(self, record: Record, proof: tuple[bytes, ...]) -> list[str]:
        """The validators assigned to a finished inference (empty: not validated)."""
        (validators,) = self._call(self.ledger_calls("validatorsOf", record.as_tuple(), list(proof)))
        return [to_checksum_address(v) for v in validators]

    def dispute(self, inference_id: bytes) -> DisputeInfo:
        (executor, accuser, _model, opened_block, epoch, _valid, _invalid, _validators, _jury, _seated,
         voted_mask, is_open) = self.ledger.functions.disputes(inference_id).call()
        return DisputeInfo(executor, accuser, opened_block, epoch, voted_mask, is_open)

    def jury_of(self, inference_id: bytes) -> list[str]:
        """A dispute's jury: as seated by the first vote, else drawn as the Ledger will draw it,
        from keccak(id ‖ blockhash(opened_block + 1)); that block must exist."""
        (executor, accuser, model_id, opened_block, _epoch, _valid, _invalid, _validators, jury, seated,
         _voted, _open) = self.ledger.functions.disputes(inference_id).call()
        if seated:
            return list(jury)
        rand = keccak(inference_id + self.blockhash(opened_block + 1))
        size = self.ledger.functions.jury_size().call()
        return list(self.registry.functions.drawDistinct(model_id, rand, [executor, accuser], size).call())

    def account(self, participant: str, epoch: int) -> Account:
        return Account(*self.ledger.functions.accounts(to_checksum_address(participant), epoch).call())

    def epoch(self, epoch: int) -> Epoch:
        return Epoch(*self.ledger.functions.epochs(epoch).call())

    def epoch_of(self, block: int) -> int:
        """The Ledger's `epochOf`, from its immutables: the keeper asks every tick."""
        genesis, length, _delay = self._epoch_params()
        return (block - genesis) // length

    def claim_block(self, epoch: int) -> int:
        """The Ledger's `claimBlock`, from its immutables."""
        genesis, length, delay = self._epoch_params()
        return genesis + (epoch + 1) * length + delay

    def _epoch_params(self) -> tuple[int, int, int]:
        if self._epochs is None:
            self._epochs = tuple(self._call(self.ledger_calls(name))[0] for name in (
                "genesis_block", "epoch_length", "settlement_delay"))
        return self._epochs

    def validation_window(self) -> int:
        return self.ledger.functions.validation_window().call()

    def jury_window(self) -> int:
        return self.ledger.functions.jury_window().call()


class HotReads:
    """The reads that requests wait on, posted from the event loop (agents.chain.rpc)."""

    def __init__(self, view: ChainView, rpc: AsyncRpc):
        self.view, self.rpc = view, rpc
        self.registry = ContractCalls(view.registry.address, view.registry.abi)
        self.ledger = view.ledger_calls
        self._validator_fee_bps: int | None = None

    async def head(self) -> Head:
        number, block_hash = await self.rpc.latest_block()
        self.view.remember(number, block_hash)  # the executor's draw needs the seed block's hash
        return Head(number, block_hash)

    async def snapshot(self, model_id: bytes, block: int) -> ModelSnapshot:
        """The model, its members and their records, all at `block`: two round trips."""
        (addresses,), (model,) = await self.rpc.calls(
            [self.registry("participantsOf", model_id), self.registry("model", model_id)], block)
        calls = [self.registry("participant", a) for a in addresses]
        infos = tuple(participant_info(r) for (r,) in await self.rpc.calls(calls, block)) if calls else ()
        members = Members(tuple(map(to_checksum_address, addresses)), tuple(i.stake for i in infos))
        return ModelSnapshot(Model(*model), members, infos)

    async def model(self, model_id: bytes) -> Model:
        [(model,)] = await self.rpc.calls([self.registry("model", model_id)])
        return Model(*model)

    async def participant(self, address: str) -> ParticipantInfo:
        [(record,)] = await self.rpc.calls([self.registry("participant", to_checksum_address(address))])
        return participant_info(record)

    async def validator_fee_bps(self) -> int:
        """The Ledger's fee share per validator, immutable: read once."""
        if self._validator_fee_bps is None:
            [(self._validator_fee_bps,)] = await self.rpc.calls([self.ledger("validator_fee_bps")])
        return self._validator_fee_bps

    async def admission(self, client: str, nonce: int) -> AdmissionReads:
        """The gateway's reads in one batch: whether the client's nonce was started, its escrow."""
        (used,), (escrow,) = await self.rpc.calls(
            [self.ledger("nonceUsed", client, nonce), self.ledger("escrowOf", client)])
        return AdmissionReads(used, escrow, None)

    async def escrows(self, clients: list[str], block: int) -> dict[str, int]:
        """Each client's free escrow at `block` (lower-case address keys), in one batch."""
        results = await self.rpc.calls([self.ledger("escrowOf", c) for c in clients], block)
        return {c.lower(): escrow for c, (escrow,) in zip(clients, results)}

    async def started(self, from_block: int, to_block: int) -> list[StartedLog]:
        """The inferences started in blocks `from_block`..`to_block`, from the Ledger's logs."""
        started = self.view.events["Started"]
        [logs] = await self.rpc.batch([("eth_getLogs", [{
            "address": self.view.ledger.address, "topics": [started.topic],
            "fromBlock": hex(from_block), "toBlock": hex(to_block)}])])
        out = []
        for log in logs:
            args = started(log)
            out.append(StartedLog(args["inference_id"], int(log["blockNumber"], 16), args["deadline"],
                                  args["client"], args["nonce"]))
        return out
