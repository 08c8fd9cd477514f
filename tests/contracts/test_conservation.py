"""Stateful fuzzing of token conservation and per-client escrow over the whole lifecycle."""

import ape
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from eth_utils import keccak

from conftest import FUNDS, PRICE, WINDOW, ZERO


def test_conservation__random_lifecycles__hold(chain, ledger, token, network, client, sign, gov, accounts_by_address,
                                               conserved):
    class Lifecycle(RuleBasedStateMachine):
        @initialize()
        def snapshot(self):
            self.snapshot_id = chain.snapshot()
            self.escrow = ledger.escrowOf(client)
            self.started, self.finished = [], []

        def teardown(self):
            chain.restore(self.snapshot_id)

        @rule(amount=st.integers(1, 10**15))
        def deposit(self, amount):
            token.mint(client, amount, sender=client)
            token.approve(ledger, amount, sender=client)
            ledger.deposit(amount, sender=client)
            self.escrow += amount

        @rule(share=st.integers(1, 4))
        def withdraw(self, share):
            amount = self.escrow // share
            if amount:
                ledger.withdraw(amount, sender=client)
                self.escrow -= amount

        @rule(max_tokens=st.integers(1, 64))
        def start(self, max_tokens):
            s = sign(client, max_tokens=max_tokens)
            if self.escrow < max_tokens * PRICE:
                with ape.reverts("ledger: insufficient escrow"):
                    ledger.start(s.args(), sender=gov)
                return
            ledger.start(s.args(), sender=gov)
            self.escrow -= max_tokens * PRICE
            self.started.append((s, max_tokens))

        @rule(data=st.data())
        def finish(self, data):
            if self.started:
                s, max_tokens = self.started.pop(data.draw(st.integers(0, len(self.started) - 1)))
                tokens = data.draw(st.integers(0, max_tokens))
                ledger.finish((s.inference_id, keccak(b"r"), keccak(b"a"), tokens), sender=accounts_by_address(s.executor))
                self.escrow += (max_tokens - tokens) * PRICE
                self.finished.append((s, tokens))

        @rule(passed=st.booleans())
        def verdict(self, passed):
            if self.finished:
                s, tokens = self.finished.pop(0)
                chain.mine(2)
                validator = ledger.validatorOf(s.inference_id)
                if validator == ZERO or chain.blocks.head.number >= ledger.inference(s.inference_id).finish_block + WINDOW:
                    self.finished.append((s, tokens))
                    return
                ledger.submitValidation(s.inference_id, passed, 0, sender=accounts_by_address(validator))
                if not passed:
                    self.escrow += tokens * PRICE

        @rule()
        def settle_all(self):
            if self.finished:
                chain.mine(WINDOW + 1)
                ledger.settleBatch([s.inference_id for s, _ in self.finished], sender=gov)
                self.finished = []

        @rule()
        def expire_all(self):
            if self.started:
                chain.pending_timestamp = max(s.request.deadline for s, _ in self.started) + WINDOW + 1
                chain.mine()
                for s, max_tokens in self.started:
                    ledger.expire(s.inference_id, sender=gov)
                    self.escrow += max_tokens * PRICE
                self.started = []

        @rule(i=st.integers(0, 1))
        def claim(self, i):
            if ledger.earnedOf(network[i]):
                ledger.claim(sender=network[i])

        @invariant()
        def conservation(self):
            conserved()
            assert ledger.escrowOf(client) == self.escrow

    run_state_machine_as_test(
        Lifecycle,
        settings=settings(max_examples=6, stateful_step_count=12, deadline=None,
                          suppress_health_check=list(HealthCheck)),
    )
    assert ledger.escrowOf(client) == FUNDS  # every example was rolled back
