"""`nullius client deposit|withdraw|escrow|infer|status`: the SDK from a shell.

Connection options also come from the environment: NULLIUS_GATEWAY, NULLIUS_RPC_URL,
NULLIUS_CLIENT_KEY, NULLIUS_DEPLOYMENTS.
"""

from __future__ import annotations

import argparse
import os

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agents.chain.client import ChainError, ChainUnavailable
from agents.client.sdk import DEFAULT_MODEL, NulliusClient, NulliusError
from agents.protocol.requests import MAX_QUORUM

console = Console()
STATUS = ["none", "started", "finished", "validated", "invalidated", "settled", "expired"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nullius client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gateway", default=os.environ.get("NULLIUS_GATEWAY", "http://127.0.0.1:8200"))
    p.add_argument("--rpc-url", default=os.environ.get("NULLIUS_RPC_URL", "http://127.0.0.1:8545"))
    p.add_argument("--key", default=os.environ.get("NULLIUS_CLIENT_KEY"),
                   help="the client's private key (or NULLIUS_CLIENT_KEY)")
    p.add_argument("--deployments",
                   default=os.environ.get("NULLIUS_DEPLOYMENTS", "deployments/31337.json"))
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("deposit", "withdraw"):
        sub.add_parser(name, help=f"{name} escrow (token base units)").add_argument("amount", type=int)
    sub.add_parser("escrow", help="show the escrow balance")
    infer = sub.add_parser("infer", help="sign a request and send it to the gateway")
    group = infer.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt")
    group.add_argument("--message", help="one user message (chat)")
    infer.add_argument("--model", default=DEFAULT_MODEL)
    infer.add_argument("--max-tokens", type=int, default=64)
    infer.add_argument("--temperature", type=float, default=1.0)
    infer.add_argument("--top-p", type=float, default=1.0)
    infer.add_argument("--top-k", type=int, default=0)
    infer.add_argument("--quorum", type=int, default=0, choices=range(MAX_QUORUM + 1),
                       help="extra validators to pay for: the answer is then always checked")
    status = sub.add_parser("status", help="an inference's record on chain")
    status.add_argument("inference_id")
    status.add_argument("--text", help="also check that this answer is the one committed on chain")
    args = p.parse_args(argv)
    if not args.key:
        p.error("a private key is required: --key or NULLIUS_CLIENT_KEY")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        client = NulliusClient(args.gateway, args.rpc_url, args.key, args.deployments)
    except FileNotFoundError:
        return fail(f"no deployments file at {args.deployments}: start a devnet (make demo) or pass "
                    "--deployments / NULLIUS_DEPLOYMENTS", 2)
    except (ChainUnavailable, ValueError) as exc:  # an unreachable RPC, a bad key, another chain
        return fail(str(exc), 2)
    try:
        if args.command == "deposit":
            client.deposit(args.amount)
            console.print(f"deposited {args.amount}; escrow is now {client.escrow()}")
        elif args.command == "withdraw":
            client.withdraw(args.amount)
            console.print(f"withdrew {args.amount}; escrow is now {client.escrow()}")
        elif args.command == "escrow":
            console.print(f"escrow of {client.address}: {client.escrow()}")
        elif args.command == "infer":
            result = client.infer(
                model=args.model, prompt=args.prompt,
                messages=None if args.message is None else [{"role": "user", "content": args.message}],
                max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                top_k=args.top_k, quorum=args.quorum)
            console.print(result.text, markup=False, highlight=False)
            console.print(f"[dim]inference 0x{result.inference_id.hex()} by {result.executor}, "
                          f"artifact {result.receipt.artifact_cid}[/dim]")
        else:
            return show_status(client, args.inference_id, args.text)
    except NulliusError as exc:
        return fail(f"({exc.code or exc.status}) {exc}", 1)
    except ValidationError as exc:  # a request the protocol refuses, before anything is signed
        return fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()), 2)
    except (ChainError, ChainUnavailable) as exc:  # a deposit or withdrawal the chain refused
        return fail(str(exc), 1)
    return 0


def fail(message: str, status: int) -> int:
    console.print("[red]error[/red]: " + escape(message), soft_wrap=True)
    return status


def show_status(client: NulliusClient, raw_id: str, text: str | None) -> int:
    try:
        inference_id = bytes.fromhex(raw_id.removeprefix("0x"))
    except ValueError:
        inference_id = b""
    if len(inference_id) != 32:
        return fail("an inference id is 32 bytes of hex", 2)
    info = client.status(inference_id)
    table = Table(title=f"inference 0x{inference_id.hex()}", show_header=False)
    for name, value in [("status", STATUS[info.status]), ("client", info.client),
                        ("executor", info.executor), ("lock", info.lock), ("cost", info.cost),
                        ("completion tokens", info.completion_tokens),
                        ("response hash", "0x" + info.response_hash.hex()),
                        ("artifact digest", "0x" + info.artifact_digest.hex())]:
        table.add_row(name, str(value))
    console.print(table)
    if text is not None:
        ok = client.verify(inference_id, text)
        console.print("answer matches the chain" if ok else "[red]answer does NOT match the chain[/red]")
        return 0 if ok else 1
    return 0
