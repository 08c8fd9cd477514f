"""Prometheus metrics of one node, in a registry of its own so several apps can share a process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


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
        self.phase_seconds = Histogram(
            "nullius_phase_seconds", "Time spent in each phase of a request, by role and phase",
            ["role", "phase"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.outbox = Gauge("nullius_outbox", "Outbox entries by state",
                            ["state"], registry=self.registry)
        self.admissions = Counter(
            "nullius_admissions", "Gateway admission reads, by source: the head follower's book, "
            "or a chain read (a client new to the book, or a book behind the head)",
            ["source"], registry=self.registry)

    def render(self, outbox_counts: dict[str, int]) -> bytes:
        for state, n in outbox_counts.items():
            self.outbox.labels(state).set(n)
        return generate_latest(self.registry)
