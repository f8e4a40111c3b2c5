"""Dead letters as an operator sees them, and replays that really run the task again.

The transport keeps the dead messages (:class:`brokers.contract.Admin`); the blob store keeps
each task's completion record (:mod:`pixfleet.records`). A task dead-lettered for an error has
an ``error`` record, and a worker answers a delivery from its record without running it - so
:func:`replay` first removes the error record of every (task id, group) it is about to replay
(:func:`pixfleet.records.forget_error`, never an ``ok`` one), then asks the transport to
re-publish exactly those tasks. Interrupted between the two, the dead letters are still there
and a second replay finishes the job; see docs/reliability.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from brokers.contract import DeadLetter, Transport
from pixfleet.blobs import BlobStore
from pixfleet.envelope import decode_task
from pixfleet.errors import BlobError, DeadLetterNotFound, EnvelopeError
from pixfleet.records import forget_error, read_result

#: Dead letters a replay or a purge looks at per group.
SCAN_LIMIT = 100_000


@dataclass(frozen=True)
class DeadTask:
    """One dead letter of one group, with what the completion record adds."""

    group: str
    task_id: str | None
    filename: str
    reason: str
    attempts: int | None
    last_error: str
    dead_at: datetime | None


async def groups_of(transport: Transport, group: str | None) -> list[str]:
    """``[group]``, or every group the broker knows when None."""
    return [group] if group else list(await transport.groups())


async def dead_tasks(
    transport: Transport, store: BlobStore, groups: Sequence[str], *, limit: int
) -> list[DeadTask]:
    """Up to ``limit`` dead letters of each group, oldest first. Attempts and the last error
    come from the dead letter, else from the task's error record."""
    out: list[DeadTask] = []
    for group in groups:
        for letter in await transport.dead_letters(group, limit=limit):
            out.append(await _describe(store, group, letter))
    return out


async def _describe(store: BlobStore, group: str, letter: DeadLetter) -> DeadTask:
    attempts, last_error = letter.attempts, letter.last_error
    if letter.task_id is not None and attempts is None:
        try:
            recorded = await read_result(store, letter.task_id, group)
        except (EnvelopeError, BlobError):  # unreadable or unsigned: the dead letter says enough
            recorded = None
        if recorded is not None and recorded.error is not None:
            attempts = recorded.attempt
            last_error = f"error[{recorded.error.code}]: {recorded.error.message}"
    return DeadTask(
        group=group,
        task_id=letter.task_id,
        filename=_filename(letter.body),
        reason=letter.reason,
        attempts=attempts,
        last_error=last_error,
        dead_at=letter.dead_at,
    )


def _filename(body: bytes) -> str:
    try:
        return decode_task(body).filename
    except EnvelopeError:
        return ""


async def replay(
    transport: Transport, store: BlobStore, groups: Sequence[str], task_ids: Sequence[str] | None
) -> dict[str, int]:
    """Replay the dead tasks of ``task_ids`` (all when None) in each group: their error
    records removed first, then re-published. Returns the count per group. Raises
    :class:`DeadLetterNotFound` - replaying nothing - if a named task is dead in none."""
    chosen: dict[str, list[str]] = {}
    for group in groups:
        dead = {d.task_id for d in await transport.dead_letters(group, limit=SCAN_LIMIT)}
        wanted = [i for i in dead if i is not None and (task_ids is None or i in task_ids)]
        if wanted:
            chosen[group] = sorted(wanted)
    found = {i for ids in chosen.values() for i in ids}
    missing = [i for i in task_ids or () if i not in found]
    if missing:
        where = ", ".join(groups) or "any group"
        raise DeadLetterNotFound(
            f"not among the dead letters of {where}: {', '.join(missing)} (see: uploader dlq list)"
        )
    counts: dict[str, int] = {}
    for group, ids in chosen.items():
        for task_id in ids:
            await forget_error(store, task_id, group)
        counts[group] = await transport.replay_dead_letters(group, ids)
    return counts
