"""The pool renews its children by a pool started and warmed first, not in the tasks' way."""

from __future__ import annotations

import asyncio
from pathlib import Path

from consumers.pool import PipelinePool
from pixfleet.images import Limits
from tests.helpers import pipelines


async def _pid(pool: PipelinePool) -> int:
    out = await pool.process(pipelines.pid, b"", {}, Limits())
    return int(out.meta["pid"])


async def test_children_are_replaced_by_a_warmed_pool_while_the_old_one_goes_on() -> None:
    async with asyncio.timeout(60), PipelinePool(1, max_tasks_per_child=3, min_child_age=0) as pool:
        first = [await _pid(pool) for _ in range(4)]  # the 3rd starts the renewal
        while pool.renewed == 0:
            await asyncio.sleep(0.02)
        after = await _pid(pool)
        old = Path(f"/proc/{first[0]}")
        while old.exists():  # the old child finishes and exits (reaped by its pool)
            await asyncio.sleep(0.05)
    # the 4th task did not wait for the fresh pool's start: the old child ran it
    assert len(set(first)) == 1
    assert after != first[0]
    assert pool.recycled == 0  # a renewal is no recycle (no event, no warning)


async def test_a_child_is_not_replaced_before_its_minimum_age() -> None:
    async with PipelinePool(1, max_tasks_per_child=1, min_child_age=3600) as pool:
        pids = {await _pid(pool) for _ in range(5)}
    assert len(pids) == 1
    assert pool.renewed == 0
