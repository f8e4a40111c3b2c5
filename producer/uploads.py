"""Enqueueing uploads and waiting for their results (the library behind ``uploader``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import JsonValue

from brokers.contract import Transport
from pixfleet.blobs import FileBlobStore
from pixfleet.envelope import Result, Task
from pixfleet.errors import ResultTimeout
from producer.inspect import Candidate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnqueueOptions:
    groups: tuple[str, ...]
    params: dict[str, JsonValue]
    reply_to: str = "results"
    ttl: float | None = None  # seconds until the task's deadline


async def enqueue(
    transport: Transport,
    blobs: FileBlobStore,
    candidate: Candidate,
    options: EnqueueOptions,
) -> Task:
    """Store the bytes (content-addressed, idempotent), then publish one task (durable)."""
    ref = await blobs.put_upload(candidate.data, candidate.content_type)
    deadline = (
        datetime.now(UTC) + timedelta(seconds=options.ttl) if options.ttl is not None else None
    )
    task = Task.new(
        ref,
        groups=options.groups,
        filename=candidate.path.name,
        params=options.params,
        reply_to=options.reply_to,
        deadline=deadline,
    )
    await transport.publish(task)
    log.debug("enqueued %s as task %s", candidate.path, task.id)
    return task


async def collect_results(
    transport: Transport,
    channel: str,
    tasks: list[Task],
    *,
    timeout: float,
    on_result: Callable[[Result], None],
) -> list[Result]:
    """Read ``channel`` until every (task, group) pair has one result, or raise ResultTimeout.

    Duplicates (a redelivered task answers twice) are acknowledged and dropped: each pair is
    reported once.
    """
    expected = {(t.id, g) for t in tasks for g in t.groups}
    seen: dict[tuple[str, str], Result] = {}
    try:
        async with asyncio.timeout(timeout):
            async for result in _results(transport, channel):
                key = (result.task_id, result.group)
                if key in expected and key not in seen:
                    seen[key] = result
                    on_result(result)
                if len(seen) == len(expected):
                    break
    except TimeoutError:
        missing = len(expected) - len(seen)
        raise ResultTimeout(
            f"{missing} of {len(expected)} result(s) did not arrive within {timeout:g} s "
            "(late results go to the default results channel: `uploader results`)"
        ) from None
    return list(seen.values())


async def _results(transport: Transport, channel: str) -> AsyncIterator[Result]:
    async with aclosing(transport.replies(channel)) as deliveries:
        async for delivery in deliveries:
            await delivery.ack()
            yield delivery.message
