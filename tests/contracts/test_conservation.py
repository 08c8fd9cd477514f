"""Stateful fuzzing over whole lifecycles: deposits, batches started (with signed quorums) and
finished, verdicts, votes, resolutions, expiries, replays, lazy reports, claims and withdrawals.

After every step: token conservation in both contracts, the model's view of the client's escrow
(no lock released twice, no nonce spent twice), and "every dispute ends" (any open dispute past
its deadline can be resolved by anyone, and the pending-judgement counters agree with the
disputes open). Each sequence starts from an anvil snapshot and is rolled back after. For speed,
the test talks to anvil through web3 alone: raw `eth_sendTransaction` with a fixed gas limit
(anvil's accounts are unlocked), and the executor draws and the invariant reads each in one
JSON-RPC batch. Batches are rebuilt from their events by agents.chain.batches, as the nodes do.
NULLIUS_FUZZ_EXAMPLES sets the number of sequences (default 1000).
"""

import itertools
import os
import time
from dataclasses import replace

from eth_abi import decode, encode
from eth_utils import collapse_if_tuple, keccak
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from agents.chain.batches import assemble
from agents.chain.build import contract_type
from agents.protocol.eip712 import inference_id, sign_request
from agents.protocol.requests import InferenceRequest
from conftest import FEE_BPS, FUNDS, JURY_SIZE, JURY_WINDOW, MODEL, MODEL_ID, PRICE, WINDOW

EXAMPLES = int(os.environ.get("NULLIUS_FUZZ_EXAMPLES", "1000"))
GAS = hex(3_000_000)
# requests signed per round of draws while looking for ones drawn to a given executor
CANDIDATES = 6


def fee(amount):
    return amount * FEE_BPS // 10_000


def lock(max_tokens, quorum):
    return max_tokens * PRICE + quorum * fee(max_tokens * PRICE)


class Contract:
    """Calldata and results by name, from the build's ABI with selectors computed once: web3's
    contract objects recompute every signature per call, which would dominate the run."""

    def __init__(self, name, address):
        self.address = address
        self.fns, self.events = {}, {}
        for entry in contract_type(name)["abi"]:
            types = [collapse_if_tuple(i) for i in entry.get("inputs", [])]
            signature = f"{entry.get('name')}({','.join(types)})"
            if entry["type"] == "function":
                outputs = [collapse_if_tuple(o) for o in entry["outputs"]]
                self.fns[entry["name"]] = (keccak(text=signature)[:4], types, outputs)
            elif entry["type"] == "event":
                inputs = [(i["name"], collapse_if_tuple(i), i["indexed"]) for i in entry["inputs"]]
                self.events[keccak(text=signature)] = (entry["name"], inputs)

    def data(self, fn, *args):
        selector, types, _ = self.fns[fn]
        return "0x" + (selector + encode(types, args)).hex()

    def result(self, fn, raw):
        values = decode(self.fns[fn][2], bytes.fromhex(raw[2:]))
        return values[0] if len(values) == 1 else values

    def logs(self, receipt, name):
        """The decoded arguments (indexed ones too: they are all static here) of this contract's
        `name` events in a receipt."""
        out = []
        for log in receipt["logs"]:
            event = self.events.get(bytes.fromhex(log["topics"][0][2:]))
            if log["address"].lower() != self.address.lower() or not event or event[0] != name:
                continue
            topics = iter(log["topics"][1:])
            data = iter(decode([t for _, t, indexed in event[1] if not indexed], bytes.fromhex(log["data"][2:])))
            out.append({n: decode([t], bytes.fromhex(next(topics)[2:]))[0] if indexed else next(data)
                        for n, t, indexed in event[1]})
        return out


class Anvil:
    """The chain operations the fuzzer needs, as raw JSON-RPC requests."""

    def __init__(self, provider):
        self.provider = provider

    def rpc(self, method, *params):
        response = self.provider.make_request(method, list(params))
        assert "error" not in response, response["error"]
        return response["result"]

    def send(self, contract, fn, args, sender):
        """Mines contract.fn(*args) from sender (anvil's accounts are unlocked); asserts success."""
        tx = self.rpc("eth_sendTransaction", {"from": sender, "to": contract.address, "gas": GAS,
                                              "data": contract.data(fn, *args)})
        receipt = self.rpc("eth_getTransactionReceipt", tx)
        while receipt is None:  # anvil answers before it has mined the block
            time.sleep(0.001)
            receipt = self.rpc("eth_getTransactionReceipt", tx)
        assert receipt["status"] == "0x1", f"{fn} reverted"
        return receipt

    def call(self, contract, fn, *args, sender=None):
        """(True, result) of an eth_call on the pending block, where a `send` would land next, or
        (False, its revert reason)."""
        response = self.provider.make_request("eth_call", [{"from": sender, "to": contract.address,
                                                            "data": contract.data(fn, *args)}, "pending"])
        if "error" in response:
            data = response["error"].get("data") or "0x"
            # Error(string): a 4-byte selector, then the ABI-encoded reason
            return False, decode(["string"], bytes.fromhex(data[10:]))[0] if len(data) > 10 else None
        return True, contract.result(fn, response["result"])

    def view(self, contract, fn, *args):
        return self.views((contract, fn, *args))[0]

    def views(self, *calls):
        """Many (contract, fn, *args) reads in one JSON-RPC batch."""
        responses = self.provider.make_batch_request([
            ("eth_call", [{"to": c.address, "data": c.data(fn, *args)}, "latest"]) for c, fn, *args in calls])
        for (_, fn, *_), r in zip(calls, responses):
            assert "error" not in r, f"{fn} reverted: {r['error']}"
        return [c.result(fn, r["result"]) for (c, fn, *_), r in zip(calls, responses)]

    def head(self):
        return int(self.rpc("eth_blockNumber"), 16)

    def block(self, number="latest"):
        return self.rpc("eth_getBlockByNumber", number if number == "latest" else hex(number), False)

    def mine_to(self, block):
        head = self.head()
        if head < block:
            self.rpc("anvil_mine", hex(block - head))


def test_conservation__random_lifecycles__hold(chain, ledger, registry, token, network, client, gov, domain):
    a = Anvil(chain.provider.web3.provider)
    L, R, T = Contract("Ledger", ledger.address), Contract("Registry", registry.address), Contract(
        "MockToken", token.address)
    hosts = [h.address for h in network]
    who, key = client.address, client.private_key
    nonces = itertools.count(10**6)

    def drawn_items(executor, specs):
        """StartItems for (max_tokens, quorum) specs, each signed for a request whose real draw
        from the latest block picks `executor`."""
        block = a.block()
        seed_block, seed_hash = int(block["number"], 16), bytes.fromhex(block["hash"][2:])
        deadline = int(block["timestamp"], 16) + 3600
        items = []
        for max_tokens, quorum in specs:
            hit = None
            while hit is None:
                requests = [InferenceRequest(model=MODEL, prompt="hi", max_tokens=max_tokens, max_price=PRICE,
                                             nonce=next(nonces), deadline=deadline, client=who, quorum=quorum)
                            for _ in range(CANDIDATES)]
                ids = [inference_id(r, domain) for r in requests]
                drawn = a.views(*[(R, "drawExecutor", MODEL_ID, keccak(i + seed_hash)) for i in ids])
                hit = next((r for r, d in zip(requests, drawn) if d.lower() == executor.lower()), None)
            items.append((who, hit.request_hash, max_tokens, PRICE, hit.nonce, deadline, quorum, seed_block,
                          sign_request(hit, domain, key)))
        return items

    class Lifecycle(RuleBasedStateMachine):
        @initialize()
        def snapshot(self):
            self.snapshot_id = a.rpc("evm_snapshot")
            self.escrow = FUNDS
            self.started = []  # batches never finished
            self.settled = []  # batches finished or expired
            self.finished = []  # (record, proof) of finished inferences not yet claimed for
            self.spent = []  # (executor, StartItem) started
            self.disputes = {}  # inference id -> (record, proof, open block)

        def teardown(self):
            self.resolve_all()  # every dispute ends
            assert a.views(*[(L, "pendingJudgements", h) for h in hosts]) == [0] * len(hosts)
            a.rpc("evm_revert", self.snapshot_id)

        @rule(amount=st.integers(1, 10**15))
        def deposit(self, amount):
            a.send(T, "mint", (who, amount), who)
            a.send(T, "approve", (ledger.address, amount), who)
            a.send(L, "deposit", (amount,), who)
            self.escrow += amount

        @rule(share=st.integers(1, 4))
        def withdraw(self, share):
            if self.escrow // share:
                a.send(L, "withdraw", (self.escrow // share,), who)
                self.escrow -= self.escrow // share

        @rule(executor=st.sampled_from(range(3)),
              specs=st.lists(st.tuples(st.integers(1, 64), st.integers(0, 64), st.integers(0, 2)), min_size=1,
                             max_size=3),
              hang=st.booleans(), data=st.data())
        def batch(self, executor, specs, hang, data):
            """Start a batch drawn to one executor (with signed quorums), finish it unless the
            executor hangs, then the verdicts on each of its inferences."""
            executor = hosts[executor]
            locked = sum(lock(max_tokens, quorum) for max_tokens, _, quorum in specs)
            if self.escrow < locked:
                return
            items = drawn_items(executor, [(max_tokens, quorum) for max_tokens, _, quorum in specs])
            receipt = a.send(L, "startBatch", (executor, MODEL_ID, items), gov.address)
            [begun] = L.logs(receipt, "BatchStarted")
            batch = assemble(begun["batch"], begun, L.logs(receipt, "Started"))
            self.escrow -= locked
            self.spent += [(executor, item) for item in items]
            if hang:
                self.started.append(batch)
                return
            tokens = [min(t, max_tokens) for max_tokens, t, _ in specs]
            receipt = a.send(L, "finishBatch", (*batch.args(), [(keccak(b"r"), keccak(b"a"), t) for t in tokens]),
                             executor)
            [done] = L.logs(receipt, "BatchFinished")
            batch = replace(batch, finish_block=int(receipt["blockNumber"], 16), p_bps=done["p_bps"],
                            completion_tokens=tuple(e["completion_tokens"] for e in L.logs(receipt, "Finished")))
            assert batch.root() == done["root"]
            self.settled.append(batch)
            for (max_tokens, _, quorum), t in zip(specs, tokens):
                self.escrow += lock(max_tokens, quorum) - t * PRICE - quorum * fee(t * PRICE)
            a.mine_to(batch.finish_block + 2)
            for item in batch.items:
                record, proof = batch.proven(item.inference_id)
                self.finished.append((record, proof))
                for v in a.view(L, "validatorsOf", record.as_tuple(), proof):
                    args = (record.as_tuple(), proof, not data.draw(st.booleans(), label="fails"), 0)
                    if not data.draw(st.booleans(), label="lazy") and a.call(L, "submitValidation", *args, sender=v)[0]:
                        receipt = a.send(L, "submitValidation", args, v)
                        if L.logs(receipt, "DisputeOpened"):
                            self.disputes[record.inference_id] = (record, proof, int(receipt["blockNumber"], 16))
                if record.inference_id in self.disputes:
                    self.jury_votes(record.inference_id, data)

        def jury_votes(self, iid, data):
            """Each juror of an open dispute votes valid or invalid, or stays silent."""
            record, _, opened = self.disputes[iid]
            a.mine_to(opened + 2)
            rand = keccak(iid + bytes.fromhex(a.block(opened + 1)["hash"][2:]))
            accuser = a.view(L, "disputes", iid)[1]
            for juror in a.view(R, "drawDistinct", MODEL_ID, rand, [record.executor, accuser], JURY_SIZE):
                args = (iid, data.draw(st.booleans(), label="valid"))
                if not data.draw(st.booleans(), label="silent") and a.call(L, "vote", *args, sender=juror)[0]:
                    a.send(L, "vote", args, juror)

        @precondition(lambda self: self.disputes)
        @rule()
        def resolve(self):
            self.resolve_all()

        def resolve_all(self):
            for iid, (record, proof, opened) in list(self.disputes.items()):
                a.mine_to(opened + JURY_WINDOW + 2)
                receipt = a.send(L, "resolve", (record.as_tuple(), proof), gov.address)
                [resolved] = L.logs(receipt, "DisputeResolved")
                if resolved["invalid"]:
                    cost = record.completion_tokens * PRICE
                    self.escrow += cost + record.quorum * fee(cost)
                del self.disputes[iid]

        @precondition(lambda self: self.started)
        @rule()
        def expire_all(self):
            latest = int(a.block()["timestamp"], 16)
            deadline = max(i.deadline for b in self.started for i in b.items)
            a.rpc("evm_setNextBlockTimestamp", max(latest + 1, deadline + WINDOW + 1))
            for batch in self.started:
                a.send(L, "expireBatch", batch.args(), gov.address)
                self.escrow += sum(lock(i.max_tokens, i.quorum) for i in batch.items)
            self.settled += self.started
            self.started = []

        @precondition(lambda self: self.settled)
        @rule(data=st.data())
        def settle_again(self, data):
            """A finished or expired batch is neither finished nor expired again."""
            batch = data.draw(st.sampled_from(self.settled))
            answers = [(keccak(b"r"), keccak(b"a"), 0)] * len(batch.items)
            assert a.call(L, "finishBatch", *batch.args(), answers, sender=batch.terms.executor) == (
                False, "ledger: not started")
            assert a.call(L, "expireBatch", *batch.args(), sender=who) == (False, "ledger: not started")

        @precondition(lambda self: self.spent)
        @rule(data=st.data())
        def replay(self, data):
            """A started authorization does not start again, in a batch of its own or with others."""
            executor, item = data.draw(st.sampled_from(self.spent))
            if item[5] < int(a.block()["timestamp"], 16) + 60:
                return  # past its deadline, "ledger: expired" answers first
            # a fresh item ahead of it must fit the escrow, or "ledger: insufficient escrow" answers first
            with_others = self.escrow >= lock(1, 0) and data.draw(st.booleans(), label="with others")
            others = drawn_items(executor, [(1, 0)]) if with_others else []
            assert a.call(L, "startBatch", executor, MODEL_ID, [*others, item], sender=gov.address) == (
                False, "ledger: nonce used")

        @precondition(lambda self: self.finished)
        @rule(data=st.data())
        def report_lazy(self, data):
            record, proof = data.draw(st.sampled_from(self.finished))
            a.mine_to(record.finish_block + WINDOW + 1)
            if a.call(L, "reportLazy", record.as_tuple(), proof, sender=who)[0]:
                a.send(L, "reportLazy", (record.as_tuple(), proof), who)

        @rule()
        def claim_all(self):
            self.resolve_all()
            e = a.view(L, "epochOf", a.head())
            a.mine_to(a.view(L, "claimBlock", e))
            for epoch, h in itertools.product(range(e + 1), hosts):
                if a.call(L, "claim", h, epoch, sender=who)[0]:
                    a.send(L, "claim", (h, epoch), who)
            self.finished = []

        @invariant()
        def conservation_and_disputes_end(self):
            head = a.head()
            (ledger_balance, escrow, locked, fees, pool, registry_balance, staked, client_escrow, *pending) = a.views(
                (T, "balanceOf", ledger.address), (L, "totalEscrow"), (L, "totalLocked"), (L, "totalFees"),
                (L, "totalPool"), (T, "balanceOf", registry.address), (R, "totalStaked"), (L, "escrowOf", who),
                *[(L, "pendingJudgements", h) for h in hosts])
            assert ledger_balance == escrow + locked + fees + pool
            assert registry_balance == staked
            assert client_escrow == self.escrow
            assert locked == sum(lock(i.max_tokens, i.quorum) for b in self.started for i in b.items)
            assert sum(pending) == 2 * len(self.disputes)
            for record, proof, opened in self.disputes.values():
                if head > opened + 1 + JURY_WINDOW:
                    assert a.call(L, "resolve", record.as_tuple(), proof, sender=who)[0], (
                        "a dispute past its deadline cannot end")

    run_state_machine_as_test(
        Lifecycle,
        settings=settings(max_examples=EXAMPLES, stateful_step_count=5, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck)),
    )
    assert ledger.escrowOf(client) == FUNDS  # every sequence was rolled back
