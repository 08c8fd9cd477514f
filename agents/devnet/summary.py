"""The devnet's closing report, read from the contracts' views and events alone."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from rich.table import Table

from agents.chain.client import ChainClient

TOKEN = 10**18


@dataclass(frozen=True)
class ParticipantRow:
    name: str
    address: str
    cheater: bool
    served: int
    validations: int
    verdicts_pass: int
    verdicts_fail: int
    invalidated: int
    stake: int
    reputation: int
    fees_earned: int


@dataclass(frozen=True)
class ClientRow:
    address: str
    spent: int
    refunded: int
    escrow: int


def _verdicts(chain: ChainClient, from_block: int) -> Counter:
    """(validator, passed) -> count, from the Ledger's Validated events."""
    logs = chain.ledger.events.Validated().get_logs(from_block=from_block)
    return Counter((log.args.validator, log.args.passed) for log in logs)


def participant_rows(chain: ChainClient, participants, from_block: int) -> list[ParticipantRow]:
    verdicts = _verdicts(chain, from_block)
    rows = []
    for p in participants:
        served, validations, invalidated, fees = chain.ledger.functions.stats(p.address).call()
        stake, reputation, *_ = chain.registry.functions.participant(p.address).call()
        rows.append(ParticipantRow(
            name=f"participant-{p.index}", address=p.address, cheater=p.cheater,
            served=served, validations=validations,
            verdicts_pass=verdicts[(p.address, True)], verdicts_fail=verdicts[(p.address, False)],
            invalidated=invalidated, stake=stake, reputation=reputation, fees_earned=fees,
        ))
    return rows


def client_rows(chain: ChainClient, addresses: list[str]) -> list[ClientRow]:
    rows = []
    for a in addresses:
        spent, refunded = chain.ledger.functions.clientStats(a).call()
        rows.append(ClientRow(a, spent, refunded, chain.ledger.functions.escrowOf(a).call()))
    return rows


def _tokens(amount: int) -> str:
    return f"{amount / TOKEN:,.6f}"


def participant_table(rows: list[ParticipantRow]) -> Table:
    table = Table(title="participants")
    for col in ("participant", "model", "served", "validations", "verdicts pass/fail",
                "invalidated", "stake", "reputation", "fees earned"):
        table.add_column(col, justify="left" if col in ("participant", "model") else "right")
    for r in rows:
        table.add_row(
            f"{r.name} {r.address[:8]}", "[red]substitute (cheater)" if r.cheater else "reference",
            str(r.served), str(r.validations), f"{r.verdicts_pass}/{r.verdicts_fail}",
            f"[red]{r.invalidated}" if r.invalidated else "0", _tokens(r.stake),
            str(r.reputation), _tokens(r.fees_earned),
        )
    return table


def client_table(rows: list[ClientRow]) -> Table:
    table = Table(title="clients")
    for col in ("client", "spent", "refunded", "escrow left"):
        table.add_column(col, justify="left" if col == "client" else "right")
    for r in rows:
        table.add_row(r.address, _tokens(r.spent), _tokens(r.refunded), _tokens(r.escrow))
    return table
