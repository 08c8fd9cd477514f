"""The latency benchmark's design and statistics: which path goes first, and the p50 ratio's
interval, for one run and for runs pooled."""

import numpy as np
import pytest

from benchmarks.latency import first_path, pooled_ratio_p50_interval, ratio_p50_interval


def test_first_path__every_case_takes_both_orders_and_rounds_alternate():
    # alternating by round alone, with 12 cases, sent every greedy pair through the gateway first
    cases = 12
    orders = [first_path(i, cases) for i in range(2 * cases)]
    for case in range(cases):
        assert {orders[case], orders[case + cases]} == {True, False}
    # within a pass over the cases, one round to the next alternates
    assert all(orders[i] != orders[i + 1] for i in range(cases - 1))
    assert sum(orders) == cases


def test_ratio_interval__an_exact_ratio_has_no_spread():
    direct = np.linspace(0.1, 0.3, 101)
    assert ratio_p50_interval(1.25 * direct, direct) == pytest.approx([1.25, 1.25])


def test_pooled_interval__one_run_is_the_run_interval_and_runs_pooled_narrow_it():
    rng = np.random.default_rng(1)
    runs = []
    for _ in range(2):
        direct = rng.normal(0.2, 0.02, 400)
        runs.append((direct * 1.04 + rng.normal(0, 0.01, 400), direct))
    one = ratio_p50_interval(*runs[0])
    assert pooled_ratio_p50_interval(runs[:1]) == one
    both = pooled_ratio_p50_interval(runs)
    assert both[1] - both[0] < one[1] - one[0]
    assert both[0] < 1.04 < both[1]
