"""The pool's children driven from the event loop (:mod:`consumers.children`): calls queue for a
busy child, a caller that stops waiting never gets another call's answer, a dead child breaks
the pool, what cannot be pickled comes back as an error - one child, spawned once."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures.process import BrokenProcessPool

import pytest

from consumers.children import Children


def _ready() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def echo_after(value: object, delay: float) -> object:
    time.sleep(delay)
    return value


def unpicklable() -> Callable[[], int]:
    return lambda: 0


@pytest.fixture
async def children() -> AsyncIterator[Children]:
    pool = Children(1, multiprocessing.get_context("spawn"), _ready, ())
    await pool.start()
    try:
        yield pool
    finally:
        pool.kill()
        await pool.close()


async def test_calls_queue_for_the_child_and_a_cancelled_caller_gets_nothing_of_the_next(
    children: Children,
) -> None:
    async with asyncio.timeout(30):
        # one child, two calls at once: the second waits for the first, in order
        first, second = await asyncio.gather(
            children.run(echo_after, "a", 0.2), children.run(echo_after, "b", 0.0)
        )
        assert (first, second) == ("a", "b")
        # a caller that stops waiting: the child stays busy with its call until it answers,
        # and the next caller gets its own answer, not the abandoned one
        abandoned = asyncio.ensure_future(children.run(echo_after, "late", 0.3))
        await asyncio.sleep(0.1)
        abandoned.cancel()
        assert await children.run(echo_after, "next", 0.0) == "next"
        # what cannot be pickled comes back as an error; the child goes on
        with pytest.raises(RuntimeError, match="not picklable"):
            await children.run(unpicklable)
        assert await children.run(os.getpid) == children.processes[0].pid


async def test_a_child_that_dies_breaks_its_call_and_every_later_one(children: Children) -> None:
    async with asyncio.timeout(30):
        call = asyncio.ensure_future(children.run(echo_after, "never", 30.0))
        await asyncio.sleep(0.2)
        children.processes[0].kill()
        with pytest.raises(BrokenProcessPool):
            await call
        with pytest.raises(BrokenProcessPool):
            await children.run(os.getpid)
