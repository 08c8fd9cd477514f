"""Prometheus metrics of one node, in a registry of its own so several apps can share a process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class NodeMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("nullius_requests", "Requests handled, by role",
                                ["role"], registry=self.registry)
        self.errors = Counter("nullius_errors", "Requests refused or failed, by role and error code",
                              ["role", "code"], registry=self.registry)
        self.completion_tokens = Counter("nullius_completion_tokens", "Tokens this executor produced",
                                         registry=self.registry)
        self.verdicts = Counter("nullius_verdicts", "Validation verdicts this node gave",
                                ["passed"], registry=self.registry)
        self.outbox = Gauge("nullius_outbox", "Outbox entries by state",
                            ["state"], registry=self.registry)

    def render(self, outbox_counts: dict[str, int]) -> bytes:
        for state, n in outbox_counts.items():
            self.outbox.labels(state).set(n)
        return generate_latest(self.registry)
