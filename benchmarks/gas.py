"""Gas benchmark: what one inference costs on chain, alone and in batches.

    python -m benchmarks.gas                     # about 30 seconds
    python -m benchmarks.gas --sizes 1 4 8 16 32 --reps 2

On a fresh anvil with the deployed contracts, a registered model and registered participants,
it records inferences the way the nodes do: client-signed EIP-712 authorizations
(agents.protocol.eip712) with nonces counted densely, the executor drawn by the Registry from a
real block hash, `startBatch` sent by a gateway and `finishBatch` of the whole batch by the drawn
executor. It measures the gas per inference of `startBatch` + `finishBatch` of each size (a batch
of 1 is the unbatched figure), and the calldata bytes per inference; then it splits one batch of
16 by kind of gas from anvil's opcode trace (docs/gas.md). The batches are one client's requests;
a last one of 16 holds one request of each of 16 clients that have used the Ledger before, whose
escrow, nonce word and counters are cold slots. Writes benchmarks/results/<name>.json and
<name>.png.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from eth_utils import keccak
from web3 import Web3
from web3.logs import DISCARD

from agents.chain import batches
from agents.chain.build import ensure_compiled
from agents.chain.client import ChainClient
from agents.chain.deploy import DeployParams, deploy, register_model
from agents.devnet.accounts import anvil_account
from agents.devnet.network import MODEL_NAME, REFERENCE_MODEL, anvil_binary, free_port
from agents.node.chain_view import ChainView
from agents.node.gateway import start_item
from agents.protocol.eip712 import Domain, inference_id, model_id, sign_request
from agents.protocol.nonces import NonceCounter
from agents.protocol.requests import InferenceRequest
from benchmarks.common import ROOT, machine, pyplot, show, write_json

TOKEN = 10**18
PRICE = 10**12
MAX_TOKENS = 256
PROMPT = "def read_file(path):\n"
TARGET = 40_000  # issue 4: start + finish per inference at a batch of 16


@dataclass
class Chain:
    w3: Web3
    gateway: ChainClient  # sends the starts, as a gateway's outbox does
    executor: ChainClient  # the participant every measured inference is drawn to
    clients: list[ChainClient]  # funded, with escrow; the batches by size are the first one's
    view: ChainView
    domain: Domain


def setup(rpc_url: str, tmp: Path, participants: int, clients: int) -> Chain:
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    gov = anvil_account(0)
    deployments = deploy(w3, gov.key, DeployParams(), out_dir=tmp)
    spec_hash = hashlib.sha256((REFERENCE_MODEL / "manifest.json").read_bytes()).digest()
    register_model(w3, gov.key, deployments, MODEL_NAME, spec_hash, PRICE)
    gov_chain = ChainClient(rpc_url, gov.key, deployments)
    stake = 1_000 * TOKEN
    nodes = []
    for i in range(participants):
        acct = anvil_account(1 + i)
        chain = ChainClient(rpc_url, acct.key, deployments)
        gov_chain.transact(gov_chain.token.functions.mint(acct.address, stake))
        chain.transact(chain.token.functions.approve(deployments.registry, stake))
        chain.transact(chain.registry.functions.register(stake, f"http://node-{i}.invalid",
                                                         model_id(MODEL_NAME)))
        nodes.append(chain)
    funded = []
    for i in range(clients):
        client = ChainClient(rpc_url, anvil_account(1 + participants + i).key, deployments)
        funds = 1_000 * TOKEN
        gov_chain.transact(gov_chain.token.functions.mint(client.address, funds))
        client.transact(client.token.functions.approve(deployments.ledger, funds))
        client.transact(client.ledger.functions.deposit(funds))
        funded.append(client)
    return Chain(w3, nodes[-1], nodes[0], funded, ChainView(gov_chain),
                 Domain(deployments.chain_id, deployments.ledger))


@contextmanager
def traced_chain(participants: int, clients: int) -> Iterator[Chain]:
    """A fresh anvil, set up as `setup` does; with --steps-tracing, debug_traceTransaction
    returns the opcode steps that `breakdown` reads."""
    port = free_port("127.0.0.1")
    accounts = str(1 + participants + clients)  # each with ether for its own transactions
    anvil = subprocess.Popen([anvil_binary(), "--port", str(port), "--silent", "--steps-tracing",
                              "--accounts", accounts], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rpc_url = f"http://127.0.0.1:{port}"
        w3 = Web3(Web3.HTTPProvider(rpc_url))
        for _ in range(100):
            if w3.is_connected():
                break
            time.sleep(0.1)
        with tempfile.TemporaryDirectory(prefix="nullius-gas-") as tmp:
            yield setup(rpc_url, Path(tmp), participants, clients)
    finally:
        anvil.terminate()
        anvil.wait(timeout=10)


# each client's nonces count up from a random base at a word of the Ledger's replay bitmap, as the
# SDK's do: a fresh bitmap word once per 256 inferences
_nonces: dict[str, NonceCounter] = defaultdict(NonceCounter)


def drawn_requests(c: Chain, count: int, clients: int = 1) -> list[tuple[list, bytes]]:
    """`count` (StartItem, inference id) of signed requests whose real draw picks `c.executor`,
    from the first `clients` clients in turn.

    Requests whose draw picks another participant are left out, so that one executor can finish
    the whole batch, as it does with its own outbox."""
    seed_block = c.w3.eth.block_number
    mid = model_id(MODEL_NAME)
    out = []
    while len(out) < count:
        client = c.clients[len(out) % clients]
        request = InferenceRequest(model=MODEL_NAME, prompt=PROMPT, max_tokens=MAX_TOKENS,
                                   temperature=1.0, max_price=PRICE, nonce=_nonces[client.address](),
                                   deadline=int(time.time()) + 3600, client=client.address)
        iid = inference_id(request, c.domain)
        if c.view.draw_executor(mid, iid, seed_block) != c.executor.address:
            continue
        signature = sign_request(request, c.domain, client.account.key)
        out.append((start_item(request, signature, seed_block), iid))
    return out


def start_batch(c: Chain, items: list[tuple[list, bytes]]):
    return c.gateway.ledger.functions.startBatch(c.executor.address, "0x" + model_id(MODEL_NAME).hex(),
                                                 [s for s, _ in items])


def finish_batch(c: Chain, start_receipt: dict):
    """`finishBatch` of the batch the receipt started, every answer MAX_TOKENS tokens long."""
    ledger = c.executor.ledger
    # each event's decoder skips the receipt's other events (DISCARD: without a warning each)
    (begun,) = ledger.events.BatchStarted().process_receipt(start_receipt, errors=DISCARD)
    started = [e["args"] for e in ledger.events.Started().process_receipt(start_receipt, errors=DISCARD)]
    batch = batches.assemble(begun["args"]["batch"], begun["args"], started)
    answers = [(keccak(text=f"answer {i.inference_id.hex()}"), hashlib.sha256(i.inference_id).digest(),
                MAX_TOKENS) for i in batch.items]
    return ledger.functions.finishBatch(*batch.args(), answers)


def _measured(c: Chain, sender: ChainClient, fn) -> tuple[int, int, dict]:
    """(gas used, calldata bytes, receipt) of one mined transaction."""
    receipt = sender.transact(fn)
    tx = c.w3.eth.get_transaction(receipt["transactionHash"])
    return receipt["gasUsed"], len(tx["input"]), receipt


def batch(c: Chain, size: int, reps: int, clients: int = 1) -> dict:
    starts, finishes = [], []
    for _ in range(reps):
        starts.append(_measured(c, c.gateway, start_batch(c, drawn_requests(c, size, clients))))
        finishes.append(_measured(c, c.executor, finish_batch(c, starts[-1][2])))
    return _row(size, starts, finishes, per=size)


# opcode classes of the breakdown; everything else is "execution"
CLASSES = {"SSTORE": "storage writes", "SLOAD": "storage reads", "KECCAK256": "hashing",
           "LOG0": "events", "LOG1": "events", "LOG2": "events", "LOG3": "events", "LOG4": "events"}
CALLS = ("STATICCALL", "CALL", "DELEGATECALL")


def breakdown(w3: Web3, tx_hash, per: int) -> dict:
    """Gas per inference of one transaction by kind: intrinsic (21,000 and calldata) and, from
    anvil's opcode trace, storage writes and reads, calls (their own cost: the ecrecover
    precompile and the Registry views' call overhead), events, hashing and the rest. Opcodes in a
    called contract count in their class too."""
    trace = w3.provider.make_request("debug_traceTransaction", [
        "0x" + bytes(tx_hash).hex(),
        {"disableStorage": True, "disableMemory": True, "disableStack": True}])["result"]
    steps = trace["structLogs"]
    out = dict.fromkeys(["storage writes", "storage reads", "calls", "events", "hashing",
                         "execution"], 0)
    for i, step in enumerate(steps):
        if step["op"] in CALLS:
            # the call's own cost: gas before it minus gas after it, minus what its callee's
            # opcodes spent (counted in their classes)
            j = i + 1
            while j < len(steps) and steps[j]["depth"] > step["depth"]:
                j += 1
            inner = sum(x["gasCost"] for x in steps[i + 1:j] if x["depth"] == step["depth"] + 1)
            out["calls"] += step["gas"] - steps[j]["gas"] - inner if j < len(steps) else 0
        else:
            out[CLASSES.get(step["op"], "execution")] += step["gasCost"]
    receipt = w3.eth.get_transaction_receipt(tx_hash)
    out["intrinsic"] = receipt["gasUsed"] - sum(out.values())
    return {k: v / per for k, v in out.items()}



def show_split(title: str, split: dict) -> None:
    show(title, ["kind", "startBatch", "finishBatch", "both"],
         [[kind, split["startBatch"][kind], split["finishBatch"][kind],
           split["startBatch"][kind] + split["finishBatch"][kind]] for kind in split["startBatch"]])

def _row(size: int, starts: list, finishes: list, per: int) -> dict:
    start_gas = statistics.median(g for g, _, _ in starts) / per
    finish_gas = statistics.median(g for g, _, _ in finishes) / per
    return {"batch": size, "transactions": len(starts) + len(finishes),
            "start_gas": start_gas, "finish_gas": finish_gas, "total_gas": start_gas + finish_gas,
            "start_calldata_bytes": statistics.median(b for _, b, _ in starts) / per,
            "finish_calldata_bytes": statistics.median(b for _, b, _ in finishes) / per}


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    sizes = [r["batch"] for r in rows]
    ax.plot(sizes, [r["total_gas"] for r in rows], "o-", label="startBatch + finishBatch")
    ax.plot(sizes, [r["start_gas"] for r in rows], "s--", label="startBatch")
    ax.plot(sizes, [r["finish_gas"] for r in rows], "^--", label="finishBatch")
    ax.axhline(TARGET, color="grey", linestyle=":", label=f"target ({TARGET:,} at a batch of 16)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("inferences per transaction")
    ax.set_ylabel("gas per inference")
    ax.set_ylim(bottom=0)
    ax.set_title("Ledger gas per inference")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    p.add_argument("--reps", type=int, default=2, help="batches measured per size")
    p.add_argument("--participants", type=int, default=3)
    p.add_argument("--clients", type=int, default=16, help="clients of the many-client batch of 16")
    p.add_argument("--name", default="gas", help="results file stem")
    args = p.parse_args(argv)

    ensure_compiled(ROOT)
    with traced_chain(args.participants, args.clients) as c:
        # the first batch writes fresh storage slots (the client's nonce word, the batch
        # counter, the totals, the executor's epoch account); measure the steady state
        first = batch(c, 16, 1)
        rows = [batch(c, n, args.reps) for n in args.sizes]
        batch(c, 16, 1, args.clients)  # each client's first start writes its fresh slots
        many = batch(c, 16, args.reps, args.clients)
        _, _, start_receipt = _measured(c, c.gateway, start_batch(c, drawn_requests(c, 16)))
        _, _, finish_receipt = _measured(c, c.executor, finish_batch(c, start_receipt))
        split = {"startBatch": breakdown(c.w3, start_receipt["transactionHash"], 16),
                 "finishBatch": breakdown(c.w3, finish_receipt["transactionHash"], 16)}

    by_size = {r["batch"]: r for r in rows}
    headline = by_size.get(16)
    report = {"benchmark": "gas", "machine": machine(),
              "config": {"participants": args.participants, "max_tokens": MAX_TOKENS,
                         "completion_tokens": MAX_TOKENS, "reps": args.reps,
                         "statistic": "median over the measured transactions"},
              "first_batch16": first, "batches": rows, "batch16_breakdown": split,
              f"batch16_clients{args.clients}": many,
              "summary": {"unbatched_gas_per_inference": by_size.get(1, {}).get("total_gas"),
                          "batch16_gas_per_inference": headline and headline["total_gas"],
                          "first_batch16_gas_per_inference": first["total_gas"],
                          f"batch16_clients{args.clients}_gas_per_inference": many["total_gas"],
                          "batch16_calldata_bytes_per_inference": headline and
                          headline["start_calldata_bytes"] + headline["finish_calldata_bytes"]}}
    path = write_json(args.name, report)
    plot(rows, path.with_suffix(".png"))
    show("Ledger gas and calldata per inference (median)",
         ["batch", "start gas", "finish gas", "total gas", "calldata bytes"],
         [[label, r["start_gas"], r["finish_gas"], r["total_gas"],
           r["start_calldata_bytes"] + r["finish_calldata_bytes"]]
          for label, r in [("first of 16", first), *((str(r["batch"]), r) for r in rows),
                           (f"16 of {args.clients} clients", many)]])
    show_split("Batch of 16: gas per inference by kind", split)
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
