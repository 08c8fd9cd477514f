"""`nullius devnet`: bring up a local network, send demo traffic, print who earned and who was caught."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from rich.console import Console

from agents.chain.client import ChainClient
from agents.client.sdk import NulliusClient
from agents.devnet import network, summary, traffic

console = Console()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nullius devnet", description=__doc__)
    parser.add_argument("--participants", type=int, default=3)
    parser.add_argument("--cheaters", type=int, default=1,
                        help="participants that serve the smaller substitute model")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--data-dir", type=Path, default=network.REPO / "devnet-data")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave the network up and print the gateway's OpenAI-compatible URL")
    parser.add_argument("--port-base", type=int, default=0,
                        help="first port to use (anvil, then node/mlnode pairs); 0 picks free ports")
    args = parser.parse_args(argv)
    if not 0 <= args.cheaters < args.participants:
        parser.error("--cheaters must be at least 0 and below --participants")
    if args.participants < 3 and args.cheaters:
        parser.error("catching a cheater needs at least 3 participants (executor, validator, juror)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = network.DevnetConfig(participants=args.participants, cheaters=args.cheaters,
                                  data_dir=args.data_dir, port_base=args.port_base)
    with console.status("starting the devnet"):
        net = network.start(config, log=lambda m: console.log(m))
    try:
        client = NulliusClient(net.gateway_url, net.rpc_url, net.client_keys[0], net.deployments)
        deposit = config.client_funds // 2
        client.deposit(deposit)
        console.log(f"client {client.address} deposited {deposit / summary.TOKEN:g} tokens")

        ids = traffic.send([client], args.requests, args.max_tokens)
        window_s = config.deploy.validation_window * config.block_time
        pending = traffic.wait_resolved(client, ids, timeout=window_s + 90)

        chain = ChainClient(net.rpc_url, net.client_keys[0], net.deployments)
        rows = summary.participant_rows(chain, net.participants, net.deployments.start_block)
        console.print(summary.participant_table(rows))
        console.print(summary.client_table(summary.client_rows(chain, [client.address])))
        caught = all(r.invalidated > 0 for r in rows if r.cheater and r.served)
        honest_clean = all(r.invalidated == 0 for r in rows if not r.cheater)
        if pending:
            console.print(f"[yellow]{pending} inferences still unresolved")
        console.print("[green]cheater caught, its inferences invalidated, the client refunded"
                      if caught else "[red]a cheater went undetected")
        if not honest_clean:
            console.print("[red]an honest participant was invalidated")

        if args.keep_running:
            console.print(f"gateway (OpenAI-compatible): [bold]{net.gateway_url}/v1[/]  "
                          f"chain: {net.rpc_url}  deployments: {args.data_dir}/deployments  "
                          "(Ctrl-C to stop)")
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass
        return 0 if caught and honest_clean and not pending else 1
    finally:
        net.stop()
