"""Where a request's time goes: its phases, sent back in a W3C `Server-Timing` header and counted
in the node's `nullius_phase_seconds` histogram.

The gateway relays the executor's phases under an `executor-` prefix, so one client-side header
splits a request's latency into admission, the executor's checks, the model and the receipt.
"""

from __future__ import annotations

import time

from prometheus_client import Histogram


class PhaseTimer:
    def __init__(self, histogram: Histogram, role: str):
        self._histogram = histogram
        self._role = role
        self._last = time.perf_counter()
        self._phases: list[tuple[str, float]] = []

    def lap(self, phase: str) -> None:
        """Close `phase`: the time since the previous lap (or since the timer began)."""
        now = time.perf_counter()
        self._phases.append((phase, now - self._last))
        self._histogram.labels(self._role, phase).observe(now - self._last)
        self._last = now

    def header(self, upstream: str | None = None, prefix: str = "executor-") -> str:
        """The `Server-Timing` value: these phases in ms, then `upstream`'s entries prefixed."""
        entries = [f"{name};dur={1000 * seconds:.1f}" for name, seconds in self._phases]
        if upstream:
            entries += [prefix + entry.strip() for entry in upstream.split(",") if entry.strip()]
        return ", ".join(entries)

