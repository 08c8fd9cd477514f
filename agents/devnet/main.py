"""`nullius devnet`: bring up a local network, send demo traffic, wait for the verdicts, juries and
the epoch's claims, and print who earned and who was caught."""

from __future__ import annotations

import argparse
import signal
import threading
import time
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


def wait_for(done, what: str, timeout: float) -> bool:
    """Poll `done()` once a second until it holds or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    with console.status(f"waiting for {what}"):
        while not done():
            if time.monotonic() > deadline:
                return False
            time.sleep(1.0)
    return True


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
        chain = ChainClient(net.rpc_url, net.client_keys[0], net.deployments)
        p = config.deploy
        addresses = [x.address for x in net.participants]
        judged = wait_for(lambda: summary.undecided(chain, ids) == 0,
                          "verdicts and juries", timeout=(p.validation_window + p.jury_window) * config.block_time + 90)
        claimed = wait_for(lambda: summary.unclaimed(chain, addresses, ids) == 0, "epoch claims",
                           timeout=(p.epoch_length + p.settlement_delay) * config.block_time + 60)

        rows = summary.participant_rows(chain, net.participants, net.deployments.start_block)
        for table in summary.participant_tables(rows):
            console.print(table)
        (client_row,) = summary.client_rows(chain, [client.address])
        console.print(summary.client_table([client_row]))
        verdict = summary.verdict(rows, client_row)
        for line in verdict.problems:
            console.print(f"[red]{line}")
        if verdict.ok:
            console.print("[green]every cheater was caught by the jury, invalidated and slashed, the client "
                          "refunded, and no honest participant was invalidated")
        if not (judged and claimed):
            console.print("[yellow]the network did not finish judging and claiming in time")

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
        return 0 if verdict.ok and judged and claimed else 1
    finally:
        net.stop()
