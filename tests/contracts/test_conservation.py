"""Stateful fuzzing over whole lifecycles: deposits, starts, quorum, finishes, verdicts, votes,
resolutions, expiries, lazy reports, claims and withdrawals.

After every step: token conservation in both contracts, the model's view of the client's escrow,
and "every dispute ends" (any open dispute past its deadline can be resolved by anyone, and the
pending-judgement counters agree with the disputes open). Each sequence starts from an anvil
snapshot and is rolled back after. For speed, the test talks to anvil through web3 alone: raw
`eth_sendTransaction` with a fixed gas limit (anvil's accounts are unlocked), and the invariant
reads in one JSON-RPC batch. NULLIUS_FUZZ_EXAMPLES sets the number of sequences (default 1000).
"""

import itertools
import os
import time
from dataclasses import replace

from eth_utils import keccak
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from eth_abi import decode, encode
from eth_utils import collapse_if_tuple

from agents.chain.build import contract_type
from agents.chain.records import Record
from agents.protocol.eip712 import inference_id, sign_request
from agents.protocol.requests import InferenceRequest
from conftest import FEE_BPS, FUNDS, JURY_SIZE, JURY_WINDOW, MODEL, MODEL_ID, PRICE, WINDOW

EXAMPLES = int(os.environ.get("NULLIUS_FUZZ_EXAMPLES", "1000"))
GAS = hex(3_000_000)


def fee(amount):
    return amount * FEE_BPS // 10_000


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
                data = [(i["name"], collapse_if_tuple(i)) for i in entry["inputs"] if not i["indexed"]]
                self.events[keccak(text=signature)] = (entry["name"], data)

    def data(self, fn, *args):
        selector, types, _ = self.fns[fn]
        return "0x" + (selector + encode(types, args)).hex()

    def result(self, fn, raw):
        values = decode(self.fns[fn][2], bytes.fromhex(raw[2:]))
        return values[0] if len(values) == 1 else values

    def logs(self, receipt, name):
        """The decoded data of this contract's `name` events in a receipt."""
        out = []
        for log in receipt["logs"]:
            event = self.events.get(bytes.fromhex(log["topics"][0][2:]))
            if log["address"].lower() == self.address.lower() and event and event[0] == name:
                values = decode([t for _, t in event[1]], bytes.fromhex(log["data"][2:]))
                out.append(dict(zip([n for n, _ in event[1]], values)))
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
        """(succeeded, result) of an eth_call."""
        response = self.provider.make_request("eth_call", [{"from": sender, "to": contract.address,
                                                            "data": contract.data(fn, *args)}, "latest"])
        if "error" in response:
            return False, None
        return True, contract.result(fn, response["result"])

    def view(self, contract, fn, *args):
        succeeded, result = self.call(contract, fn, *args)
        assert succeeded, f"{fn} reverted"
        return result

    def views(self, *calls):
        """Many (contract, fn, *args) reads in one JSON-RPC batch."""
        responses = self.provider.make_batch_request([
            ("eth_call", [{"to": c.address, "data": c.data(fn, *args)}, "latest"]) for c, fn, *args in calls])
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

    def start_args(max_tokens, quorum):
        block = a.block()
        request = InferenceRequest(model=MODEL, prompt="hi", max_tokens=max_tokens, max_price=PRICE,
                                   nonce=next(nonces), deadline=int(block["timestamp"], 16) + 3600, client=who,
                                   quorum=quorum)
        iid = inference_id(request, domain)
        executor = a.view(R, "drawExecutor", MODEL_ID, keccak(iid + bytes.fromhex(block["hash"][2:])))
        args = (who, MODEL_ID, request.request_hash, max_tokens, PRICE, request.nonce, request.deadline,
                sign_request(request, domain, key), int(block["number"], 16), executor, quorum)
        return args, Record(iid, who, executor, MODEL_ID, PRICE, max_tokens, request.deadline, quorum)

    class Lifecycle(RuleBasedStateMachine):
        @initialize()
        def snapshot(self):
            self.snapshot_id = a.rpc("evm_snapshot")
            self.escrow = FUNDS
            self.started, self.finished, self.disputes = [], [], {}

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

        @rule(max_tokens=st.integers(1, 64), tokens=st.integers(0, 64), quorum=st.integers(0, 2),
              hang=st.booleans(), data=st.data())
        def inference(self, max_tokens, tokens, quorum, hang, data):
            """Start (with a signed quorum), finish unless the executor hangs, then the verdicts."""
            lock = max_tokens * PRICE
            if self.escrow < lock + quorum * fee(lock):
                return
            args, record = start_args(max_tokens, quorum)
            a.send(L, "start", (args,), gov.address)
            self.escrow -= lock + quorum * fee(lock)
            if hang:
                self.started.append(record)
                return
            tokens = min(tokens, max_tokens)
            receipt = a.send(L, "finish", ((record.as_tuple(), keccak(b"r"), keccak(b"a"), tokens),), record.executor)
            [finished] = L.logs(receipt, "Finished")
            self.escrow += lock - tokens * PRICE + quorum * (fee(lock) - fee(tokens * PRICE))
            record = replace(record, completion_tokens=tokens, finish_block=int(receipt["blockNumber"], 16),
                             p_bps=finished["p_bps"])
            self.finished.append(record)
            a.mine_to(record.finish_block + 2)
            for v in a.view(L, "validatorsOf", record.as_tuple()):
                args = (record.as_tuple(), not data.draw(st.booleans(), label="fails"), 0)
                if not data.draw(st.booleans(), label="lazy") and a.call(L, "submitValidation", *args, sender=v)[0]:
                    receipt = a.send(L, "submitValidation", args, v)
                    if L.logs(receipt, "DisputeOpened"):
                        self.disputes[record.inference_id] = (record, int(receipt["blockNumber"], 16))
            if record.inference_id in self.disputes:
                self.jury_votes(record.inference_id, data)

        def jury_votes(self, iid, data):
            """Each juror of an open dispute votes valid or invalid, or stays silent."""
            record, opened = self.disputes[iid]
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
            for iid, (record, opened) in list(self.disputes.items()):
                a.mine_to(opened + JURY_WINDOW + 2)
                [resolved] = L.logs(a.send(L, "resolve", (record.as_tuple(),), gov.address), "DisputeResolved")
                if resolved["invalid"]:
                    cost = record.completion_tokens * PRICE
                    self.escrow += cost + record.quorum * fee(cost)
                del self.disputes[iid]

        @precondition(lambda self: self.started)
        @rule()
        def expire_all(self):
            latest = int(a.block()["timestamp"], 16)
            a.rpc("evm_setNextBlockTimestamp", max(latest + 1, max(r.deadline for r in self.started) + WINDOW + 1))
            a.send(L, "expireBatch", ([r.as_tuple() for r in self.started],), gov.address)
            self.escrow += sum(r.max_tokens * PRICE + r.quorum * fee(r.max_tokens * PRICE) for r in self.started)
            self.started = []

        @precondition(lambda self: self.finished)
        @rule(data=st.data())
        def report_lazy(self, data):
            record = data.draw(st.sampled_from(self.finished))
            a.mine_to(record.finish_block + WINDOW + 1)
            if a.call(L, "reportLazy", record.as_tuple(), sender=who)[0]:
                a.send(L, "reportLazy", (record.as_tuple(),), who)

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
            assert sum(pending) == 2 * len(self.disputes)
            for record, opened in self.disputes.values():
                if head > opened + 1 + JURY_WINDOW:
                    assert a.call(L, "resolve", record.as_tuple(), sender=who)[0], "a dispute past its deadline cannot end"

    run_state_machine_as_test(
        Lifecycle,
        settings=settings(max_examples=EXAMPLES, stateful_step_count=5, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck)),
    )
    assert ledger.escrowOf(client) == FUNDS  # every sequence was rolled back
