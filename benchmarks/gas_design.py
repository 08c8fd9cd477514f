"""Gas of the Ledger design that docs/gas.md proposes for the 40,000 target, measured on a sketch.

    python -m benchmarks.gas_design              # about 30 seconds

`benchmarks/gas_design/BatchLedgerSketch.vy` implements only the start and finish of the
"per-executor batches, finished and expired whole" design, next to the deployed Registry (whose
stake-weighted draw it calls, as the Ledger does). On a fresh anvil with the same participants,
client and signed requests as `benchmarks.gas`, it sends batches of 16 inferences drawn to one
executor: `startBatch` from the gateway, `finishBatch` of the whole batch from the executor. The
client numbers its nonces densely, from one 256-bit word of the replay bitmap. The first batch
writes fresh slots (that word, the batch counter, the totals, the executor's epoch account); the
later ones measure the steady state, in which a client's fresh word recurs once per 256 nonces. Splits the last batch by kind
of gas from anvil's opcode trace, as `benchmarks.gas` does. Writes
benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time

from eth_utils import keccak
from web3 import Web3

from agents.chain.build import ensure_compiled
from agents.devnet.accounts import anvil_account
from agents.devnet.network import MODEL_NAME
from agents.protocol.eip712 import Domain, inference_id, model_id, sign_request
from agents.protocol.requests import InferenceRequest
from benchmarks.common import ROOT, machine, show, write_json
from benchmarks.gas import MAX_TOKENS, PRICE, PROMPT, Chain, breakdown, show_split, traced_chain

SKETCH = ROOT / "benchmarks" / "gas_design" / "BatchLedgerSketch.vy"
BATCH = 16
# a word of the client's replay bitmap: nonce >> 8 picks the word, nonce & 255 the bit
FIRST_NONCE = 1 << 64


def compile_sketch() -> tuple[list, str]:
    out = subprocess.run([sys.executable, "-m", "vyper", "-p", str(ROOT / "contracts"), str(SKETCH),
                          "-f", "abi,bytecode"], capture_output=True, text=True, check=True).stdout.split("\n")
    return json.loads(out[0]), out[1].strip()


def transact(w3: Web3, account, fn) -> tuple[dict, int]:
    """(receipt, calldata bytes) of one mined transaction that must succeed."""
    tx = fn.build_transaction({"from": account.address, "gas": 10_000_000,
                               "nonce": w3.eth.get_transaction_count(account.address)})
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction))
    if receipt["status"] != 1:
        raise RuntimeError(f"{fn.fn_name} reverted")
    return receipt, len(w3.eth.get_transaction(receipt["transactionHash"])["input"])


def deploy_sketch(c: Chain):
    abi, bytecode = compile_sketch()
    gov = anvil_account(0)
    receipt, _ = transact(c.w3, gov, c.w3.eth.contract(abi=abi, bytecode=bytecode).constructor(
        c.gateway.deployments.registry))
    sketch = c.w3.eth.contract(address=receipt["contractAddress"], abi=abi)
    transact(c.w3, gov, sketch.functions.credit(c.client.address, 10**30))
    return sketch


def batch_items(c: Chain, domain: Domain, nonce: int) -> tuple[list, list, int]:
    """(startBatch items, finishBatch items, next nonce) of BATCH requests drawn to the executor,
    each answered with MAX_TOKENS tokens."""
    seed_block, mid = c.w3.eth.block_number, model_id(MODEL_NAME)
    starts, finishes = [], []
    while len(starts) < BATCH:
        request = InferenceRequest(model=MODEL_NAME, prompt=PROMPT, max_tokens=MAX_TOKENS,
                                   temperature=1.0, max_price=PRICE, nonce=nonce,
                                   deadline=int(time.time()) + 3600, client=c.client.address)
        nonce += 1
        iid = inference_id(request, domain)
        if c.view.draw_executor(mid, iid, seed_block) != c.executor.address:
            continue
        signature = sign_request(request, domain, c.client.account.key)
        starts.append([request.client, request.request_hash, request.max_tokens, request.max_price,
                       request.nonce, request.deadline, request.quorum, seed_block, signature])
        finishes.append([iid, request.client, request.max_tokens, request.deadline, request.quorum,
                         keccak(text=f"answer {iid.hex()}"), hashlib.sha256(iid).digest(),
                         MAX_TOKENS])
    return starts, finishes, nonce


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=4, help="batches of 16, the first writing fresh "
                                                       "slots")
    p.add_argument("--participants", type=int, default=3)
    p.add_argument("--name", default="gas_design", help="results file stem")
    args = p.parse_args(argv)

    ensure_compiled(ROOT)
    with traced_chain(args.participants) as c:
        sketch = deploy_sketch(c)
        domain, mid = Domain(c.w3.eth.chain_id, sketch.address), model_id(MODEL_NAME)
        rows, nonce = [], FIRST_NONCE
        for rep in range(args.reps):
            starts, finishes, nonce = batch_items(c, domain, nonce)
            start, start_bytes = transact(c.w3, c.gateway.account, sketch.functions.startBatch(
                c.executor.address, mid, starts))
            batch = sketch.functions.batchCount().call() - 1
            finish, finish_bytes = transact(c.w3, c.executor.account, sketch.functions.finishBatch(
                batch, mid, PRICE, finishes))
            rows.append({"batch": BATCH, "first": rep == 0,
                         "start_gas": start["gasUsed"] / BATCH,
                         "finish_gas": finish["gasUsed"] / BATCH,
                         "total_gas": (start["gasUsed"] + finish["gasUsed"]) / BATCH,
                         "calldata_bytes": (start_bytes + finish_bytes) / BATCH})
        split = {"startBatch": breakdown(c.w3, start["transactionHash"], BATCH),
                 "finishBatch": breakdown(c.w3, finish["transactionHash"], BATCH)}

    steady = rows[-1]
    report = {"benchmark": "gas_design", "machine": machine(),
              "config": {"participants": args.participants, "batch": BATCH, "reps": args.reps,
                         "completion_tokens": MAX_TOKENS, "sketch": str(SKETCH.relative_to(ROOT))},
              "batches": rows, "steady_breakdown": split,
              "summary": {"steady_gas_per_inference": steady["total_gas"],
                          "first_batch_gas_per_inference": rows[0]["total_gas"],
                          "calldata_bytes_per_inference": steady["calldata_bytes"]}}
    path = write_json(args.name, report)
    show("Sketch of the per-executor batch design: gas per inference, batches of 16",
         ["batch", "slots", "start gas", "finish gas", "total gas", "calldata bytes"],
         [[i + 1, "fresh" if r["first"] else "in use", r["start_gas"], r["finish_gas"],
           r["total_gas"], r["calldata_bytes"]] for i, r in enumerate(rows)])
    show_split("Last batch: gas per inference by kind", split)
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
