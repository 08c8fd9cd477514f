"""The judging process: work runs there, and a worker that died is replaced for the next call."""

from __future__ import annotations

import operator
import os
from concurrent.futures.process import BrokenProcessPool
from types import SimpleNamespace

import pytest

from agents.node.judging import in_judging_process, judging_pool


async def test_in_judging_process__runs_in_another_process():
    ctx = SimpleNamespace(judging=judging_pool())
    try:
        assert await in_judging_process(ctx, operator.add, 2, 3) == 5
        assert await in_judging_process(ctx, os.getpid) != os.getpid()
    finally:
        ctx.judging.shutdown()


async def test_in_judging_process__dead_worker__this_call_raises_the_next_gets_a_new_one():
    ctx = SimpleNamespace(judging=judging_pool())
    broken = ctx.judging
    try:
        with pytest.raises(BrokenProcessPool):
            await in_judging_process(ctx, os._exit, 1)  # the worker dies mid-task
        assert ctx.judging is not broken
        assert await in_judging_process(ctx, operator.mul, 6, 7) == 42
    finally:
        broken.shutdown()
        ctx.judging.shutdown()
