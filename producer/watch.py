"""Telling a user that nobody will answer: groups that have no consumer.

Two moments: at enqueue time, a targeted group no worker has ever declared while the broker
knows other groups (a typo such as ``-g thumbz``; a fresh broker knows none, so the first
enqueue does not warn);
and while ``--wait`` waits, a group that still has no live consumer a few seconds in. Both only
warn - the tasks stay queued for a worker that starts later - and both go through the broker's
``Inspector`` role.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

from brokers.contract import Inspector
from pixfleet.blobs import BlobStore
from pixfleet.declared import declared_pipeline
from pixfleet.errors import PixfleetError

log = logging.getLogger(__name__)

#: Seconds ``--wait`` gives workers to show up before it says none is there, then between looks.
FIRST_LOOK = 3.0
LOOK_EVERY = 3.0

Warn = Callable[[str], None]


def no_worker_line(group: str) -> str:
    return f"no worker is consuming group '{group}' — start one with: worker run --group {group}"


async def warn_new_groups(
    inspector: Inspector, store: BlobStore, groups: Iterable[str], warn: Warn
) -> None:
    """Before publishing: warn once about each targeted group no worker has ever declared
    (:mod:`pixfleet.declared` - every worker records its groups when it starts) while the
    broker knows other groups. A fresh broker knows none, so a first enqueue does not warn;
    publishing creates the group's subscription, so the declaration - not the broker - tells a
    typo such as ``-g thumbz`` apart on every later enqueue too."""
    targeted = list(dict.fromkeys(groups))
    try:
        known = await inspector.groups()
    except PixfleetError as exc:  # advisory only (a producer may not list groups): publish on
        log.info("cannot list the broker's groups: %s", exc.one_line())
        known = ()
    others = [g for g in known if g not in targeted]
    for group in targeted:
        if (others or (known and group not in known)) and not await _declared(store, group):
            seen = f" (known groups: {', '.join(others)})" if others else ""
            warn(
                f"warning: no worker has ever consumed group '{group}'{seen} — its tasks "
                f"wait for: worker run --group {group}"
            )


async def _declared(store: BlobStore, group: str) -> bool:
    """Whether a worker has ever declared ``group``; True when the store cannot tell."""
    try:
        return await declared_pipeline(store, group) is not None
    except PixfleetError as exc:  # advisory only: the publish reports the store itself
        log.info("cannot read the declaration of %r: %s", group, exc.one_line())
        return True


@asynccontextmanager
async def watching_consumers(
    inspector: Inspector,
    waiting_for: Callable[[], set[str]],
    warn: Warn,
    *,
    first: float = FIRST_LOOK,
    every: float = LOOK_EVERY,
) -> AsyncIterator[None]:
    """For the length of the block: after ``first`` seconds, and every ``every`` seconds after
    that, warn once about each group in ``waiting_for()`` that has no live consumer.

    On exit the look under way is let finish (never cancelled: cancelling a broker client
    mid-call - Kafka's starts a consumer for its stats - can leave it unable to close)."""
    stop = asyncio.Event()
    look = asyncio.create_task(_watch(inspector, waiting_for, warn, stop, first, every))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait([look])
        if not look.cancelled() and (exc := look.exception()) is not None:
            log.warning("the watch for consumers failed: %r", exc)


async def _watch(  # noqa: PLR0917 - the watch's parts, from watching_consumers only
    inspector: Inspector,
    waiting_for: Callable[[], set[str]],
    warn: Warn,
    stop: asyncio.Event,
    first: float,
    every: float,
) -> None:
    warned: set[str] = set()
    pause = first
    while not await _stopped(stop, pause):
        pause = every
        for group in sorted(waiting_for() - warned):
            if stop.is_set():
                return
            try:
                consumers = (await inspector.stats(group)).consumers
            except PixfleetError as exc:  # advisory only: the wait itself reports the broker
                log.info("cannot look at the consumers of %r: %s", group, exc.one_line())
                continue
            if consumers == 0:
                warned.add(group)
                warn(no_worker_line(group))


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Whether ``stop`` was set within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    return True
