"""What every transport's dead-letter views and replays share (:class:`~brokers.contract.Admin`).

A dead letter is whatever body a group could not handle - usually a task, sometimes a hostile
body that never was one. :func:`dead_letter` builds the :class:`~brokers.contract.DeadLetter`
view of one the same way everywhere; :func:`replayable` decides, the same way everywhere, which
dead letters a replay re-publishes: valid tasks, of the selected ids.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from brokers.contract import DeadLetter
from brokers.policy import parse_delivery_limit_reason
from pixfleet.envelope import Task, decode_task
from pixfleet.errors import EnvelopeError


def task_of(body: bytes) -> Task | None:
    """The task a dead body holds, or None if it is no valid task."""
    try:
        return decode_task(body)
    except EnvelopeError:
        return None


def dead_letter(
    body: bytes,
    reason: str,
    *,
    key: str | None = None,
    attempts: int | None = None,
    dead_at: datetime | None = None,
) -> DeadLetter:
    """The view of one dead letter: the task id from the body (else the broker's ``key``), the
    attempts (else, for the delivery limit, the limit the reason names) and the last error."""
    task = task_of(body)
    limit = parse_delivery_limit_reason(reason)
    if attempts is None and limit is not None:
        attempts = limit[0]
    return DeadLetter(
        body=body,
        reason=reason,
        task_id=task.id if task is not None else key or None,
        attempts=attempts,
        last_error=limit[1] if limit is not None else reason,
        dead_at=dead_at,
    )


def replayable(body: bytes, task_ids: Collection[str] | None) -> Task | None:
    """The task to re-publish for a dead ``body``: a valid task whose id is selected (every id
    when ``task_ids`` is None); None if the body stays where it is."""
    task = task_of(body)
    if task is None or (task_ids is not None and task.id not in task_ids):
        return None
    return task
