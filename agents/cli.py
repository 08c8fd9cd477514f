"""The `nullius` command: node, mlnode, client, devnet. Each subcommand imports its module lazily,
so `nullius client` does not load torch and `nullius mlnode` does not load web3."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMANDS = {
    "node": "run a participant node (gateway, executor, validator, keeper)",
    "mlnode": "serve a model over the OpenAI/vLLM API",
    "client": "deposit, infer, check status, withdraw",
    "devnet": "bring up a local network with demo traffic",
}


def _node(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="nullius node")
    p.add_argument("--config", type=Path, help="JSON or TOML settings; NULLIUS_* variables override")
    args = p.parse_args(argv)
    from pydantic import ValidationError

    from agents.node.app import run
    from agents.node.config import load_settings

    try:
        settings = load_settings(args.config)
    except (FileNotFoundError, ValidationError) as exc:
        p.error(str(exc))
    run(settings)
    return 0


def _mlnode(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="nullius mlnode")
    p.add_argument("--model", type=Path, required=True, help="model folder (manifest.json, weights)")
    p.add_argument("--served-name", help="the model name to answer to (default: the manifest's)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = p.parse_args(argv)
    if not (args.model / "manifest.json").is_file():
        p.error(f"no model at {args.model}: a model folder holds manifest.json and the weights "
                "(models/ref-tiny is one)")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    from agents.mlnode.api import main

    main(args.model, args.host, args.port, served_name=args.served_name, threads=args.threads)
    return 0


def _client(argv: list[str]) -> int:
    from agents.client.cli import main

    return main(argv)


def _devnet(argv: list[str]) -> int:
    from agents.devnet.main import main

    return main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        usage = "\n".join(f"  {name:<8} {help}" for name, help in COMMANDS.items())
        print(f"usage: nullius {{{','.join(COMMANDS)}}} ...\n\n{usage}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    handler = {"node": _node, "mlnode": _mlnode, "client": _client, "devnet": _devnet}[argv[0]]
    return handler(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
