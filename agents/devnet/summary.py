"""The devnet's closing report, read from the contracts' views and events alone."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from rich import box
from rich.table import Table

from agents.chain.client import ChainClient

TOKEN = 10**18
# Ledger statuses (docs/protocol.md section 2) and account flags
FINISHED, VALIDATED, INVALIDATED, EXPIRED = 2, 3, 4, 6
INELIGIBLE, CLAIMED = 1, 4


@dataclass(frozen=True)
class ParticipantRow:
    name: str
    address: str
    cheater: bool
    served: int
    validations: int
    verdicts_pass: int
    verdicts_fail: int
    disputes_against: int  # opened on its answers
    invalidated: int  # of those, upheld by the jury
    accusations: int  # disputes its failed verdicts opened
    accusations_rejected: int  # of those, the jury found the answer valid
    slashes: int
    slashed: int
    stake: int
    reputation: int
    epochs_claimed: int
    fees_claimed: int
    rewards_claimed: int
    forfeited: int


@dataclass(frozen=True)
class ClientRow:
    address: str
    spent: int
    refunded: int
    escrow: int


def participant_rows(chain: ChainClient, participants, from_block: int) -> list[ParticipantRow]:
    ledger, registry = chain.ledger.events, chain.registry.events
    verdicts = Counter((e.args.validator, e.args.passed) for e in ledger.Validated().get_logs(from_block=from_block))
    opened = ledger.DisputeOpened().get_logs(from_block=from_block)
    invalid = {bytes(e.args.inference_id): e.args.invalid
               for e in ledger.DisputeResolved().get_logs(from_block=from_block)}
    slashes = registry.Slashed().get_logs(from_block=from_block)
    claims = ledger.Claimed().get_logs(from_block=from_block)
    forfeits = ledger.Forfeited().get_logs(from_block=from_block)
    rows = []
    for p in participants:
        served, validations, invalidated, _fees = chain.ledger.functions.stats(p.address).call()
        stake, reputation, *_ = chain.registry.functions.participant(p.address).call()
        against = [bytes(e.args.inference_id) for e in opened if e.args.executor == p.address]
        accused = [bytes(e.args.inference_id) for e in opened if e.args.accuser == p.address]
        mine = [e for e in claims if e.args.participant == p.address]
        rows.append(ParticipantRow(
            name=f"participant-{p.index}", address=p.address, cheater=p.cheater,
            served=served, validations=validations,
            verdicts_pass=verdicts[(p.address, True)], verdicts_fail=verdicts[(p.address, False)],
            disputes_against=len(against), invalidated=invalidated,
            accusations=len(accused), accusations_rejected=sum(invalid.get(i) is False for i in accused),
            slashes=sum(e.args.participant == p.address for e in slashes),
            slashed=sum(e.args.amount for e in slashes if e.args.participant == p.address),
            stake=stake, reputation=reputation, epochs_claimed=len(mine),
            fees_claimed=sum(e.args.fees for e in mine), rewards_claimed=sum(e.args.reward for e in mine),
            forfeited=sum(e.args.amount for e in forfeits if e.args.participant == p.address),
        ))
    return rows


def client_rows(chain: ChainClient, addresses: list[str]) -> list[ClientRow]:
    rows = []
    for a in addresses:
        spent, refunded = chain.ledger.functions.clientStats(a).call()
        rows.append(ClientRow(a, spent, refunded, chain.ledger.functions.escrowOf(a).call()))
    return rows


def undecided(chain: ChainClient, ids: list[bytes]) -> int:
    """Inferences still waiting for the chain: not started, not finished, under dispute, or
    finished with an assigned verdict not yet in and its window still open."""
    head = chain.w3.eth.block_number
    window = chain.ledger.functions.validation_window().call()
    batch_of = {bytes(e.args.inference_id): e.args.batch
                for e in chain.ledger.events.Started().get_logs(from_block=chain.deployments.start_block)}
    waiting = 0
    for inference_id in ids:
        if inference_id not in batch_of:
            waiting += 1
            continue
        status = chain.ledger.functions.stateOf(batch_of[inference_id], inference_id).call()[0]
        if status in (VALIDATED, INVALIDATED, EXPIRED):
            continue
        if status == FINISHED:
            (done,) = chain.ledger.events.Finished().get_logs(
                from_block=chain.deployments.start_block, argument_filters={"inference_id": inference_id})
            # not validated, or validated by nobody in time: nothing more will happen to it
            if head > done.blockNumber + window:
                continue
        waiting += 1
    return waiting


def unclaimed(chain: ChainClient, addresses: list[str], ids: list[bytes]) -> int | None:
    """Accounts with something to claim in the epochs of these inferences' finishes, once those
    epochs are settled and free of disputes; None before that."""
    wanted = set(ids)
    finishes = [e.blockNumber for e in chain.ledger.events.Finished().get_logs(
        from_block=chain.deployments.start_block) if bytes(e.args.inference_id) in wanted]
    if not finishes:
        return 0
    ledger = chain.ledger.functions
    last = ledger.epochOf(max(finishes)).call()
    if chain.w3.eth.block_number < ledger.claimBlock(last).call():
        return None
    count = 0
    for e in range(ledger.epochOf(min(finishes)).call(), last + 1):
        pool, eligible_weight, open_disputes = ledger.epochs(e).call()
        if open_disputes:
            return None
        for a in addresses:
            fees, weight, _validations, flags = ledger.accounts(a, e).call()
            reward = 0 if flags & INELIGIBLE or not eligible_weight else pool * weight // eligible_weight
            count += not flags & CLAIMED and fees + reward > 0
    return count


def _tokens(amount: int) -> str:
    return f"{amount / TOKEN:.4g}"


def _red(value: int, text: str | None = None) -> str:
    text = str(value) if text is None else text
    return f"[red]{text}" if value else text


def participant_tables(rows: list[ParticipantRow]) -> list[Table]:
    """Two tables that fit an 80-column terminal: the work and its judgement, then the money."""
    work = Table(title="participants: work and judgement", box=box.SIMPLE_HEAD, padding=(0, 1),
                 collapse_padding=True)
    for col in ("", "model", "served", "verdicts\npass/fail", "its answers\ndisputed",
                "upheld", "it\naccused", "rejected"):
        work.add_column(col, justify="left" if col in ("", "model") else "right")
    money = Table(title="participants: stake and earnings (tokens)", box=box.SIMPLE_HEAD,
                  padding=(0, 1), collapse_padding=True)
    for col in ("", "stake", "slashed", "reputation", "epochs\nclaimed", "fees", "rewards",
                "forfeited"):
        money.add_column(col, justify="left" if col == "" else "right")
    for r in rows:
        name = r.name.replace("participant-", "p")
        work.add_row(
            name, "[red]substitute" if r.cheater else "reference", str(r.served),
            f"{r.verdicts_pass}/{r.verdicts_fail}", str(r.disputes_against), _red(r.invalidated),
            str(r.accusations), _red(r.accusations_rejected),
        )
        money.add_row(
            name, _tokens(r.stake), _red(r.slashes, f"{_tokens(r.slashed)} ({r.slashes}×)") if r.slashes else "0",
            str(r.reputation), str(r.epochs_claimed), _tokens(r.fees_claimed),
            _tokens(r.rewards_claimed), _red(r.forfeited, _tokens(r.forfeited)),
        )
    return [work, money]


def client_table(rows: list[ClientRow]) -> Table:
    table = Table(title="clients (tokens)", box=box.SIMPLE_HEAD, padding=(0, 1),
                  collapse_padding=True)
    for col in ("client", "spent", "refunded", "escrow left"):
        table.add_column(col, justify="left" if col == "client" else "right")
    for r in rows:
        table.add_row(r.address, _tokens(r.spent), _tokens(r.refunded), _tokens(r.escrow))
    return table


@dataclass(frozen=True)
class Verdict:
    ok: bool
    problems: tuple[str, ...]


def verdict(rows: list[ParticipantRow], client: ClientRow) -> Verdict:
    """What the demo must show: every cheater that served caught, invalidated and slashed, the
    client refunded, and no honest participant invalidated or slashed as an executor."""
    problems = []
    for r in rows:
        if r.cheater and r.served and not (r.invalidated and r.slashes):
            problems.append(f"{r.name} cheated and was not caught")
        if not r.cheater and r.invalidated:
            problems.append(f"{r.name} is honest and was invalidated {r.invalidated} times")
    if any(r.cheater and r.invalidated for r in rows) and not client.refunded:
        problems.append("the client was not refunded")
    return Verdict(not problems, tuple(problems))
