"""Telling a user that nobody will answer: groups that have no consumer.

Two moments: at enqueue time, a targeted group the broker has never seen while it knows others
(a typo such as ``-g thumbz``; a fresh broker knows none, so the first enqueue does not warn);
and while ``--wait`` waits, a group that still has no live consumer a few seconds in. Both only
warn - the tasks stay queued for a worker that starts later - and both go through the broker's
``Inspector`` role.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from typing import Any

from brokers.contract import Inspector
from pixfleet.errors import PixfleetError

log = logging.getLogger(__name__)

#: Seconds ``--wait`` gives workers to show up before it says none is there, then between looks.
FIRST_LOOK = 3.0
LOOK_EVERY = 3.0

Warn = Callable[[str], None]


def no_worker_line(group: str) -> str:
    return f"no worker is consuming group '{group}' — start one with: worker run --group {group}"


async def warn_new_groups(inspector: Inspector, groups: Iterable[str], warn: Warn) -> None:
    """Before publishing: warn about each group the broker has never seen while it knows
    others. (Publishing creates the group's subscription, so a second enqueue to the same
    typo is known: ``--wait`` and ``uploader status`` still show it has no consumer.)"""
    known = await inspector.groups()
    for group in groups:
        if known and group not in known:
            warn(
                f"warning: group '{group}' has never had a consumer (known groups: "
                f"{', '.join(known)}); its tasks wait for: worker run --group {group}"
            )


async def watch_consumers(
    inspector: Inspector,
    waiting_for: Callable[[], set[str]],
    warn: Warn,
    *,
    first: float = FIRST_LOOK,
    every: float = LOOK_EVERY,
) -> None:
    """Until cancelled: after ``first`` seconds, and every ``every`` seconds after that, warn
    once about each group in ``waiting_for()`` that has no live consumer."""
    warned: set[str] = set()
    await asyncio.sleep(first)
    while True:
        for group in sorted(waiting_for() - warned):
            try:
                consumers = (await inspector.stats(group)).consumers
            except PixfleetError as exc:  # advisory only: the wait itself reports the broker
                log.info("cannot look at the consumers of %r: %s", group, exc.one_line())
                continue
            if consumers == 0:
                warned.add(group)
                warn(no_worker_line(group))
        await asyncio.sleep(every)


@asynccontextmanager
async def in_background(coro: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run ``coro`` as a task for the length of the block, then cancel it."""
    task = asyncio.create_task(coro)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait([task])
