"""``GET /v1/tasks/{id}/events``: Server-Sent Events from the shared completion records.

Any instance can serve any task's stream: it reads the task record once, then looks at the
completion record of each group still pending every ``sse_poll`` seconds, and sends one
``result`` event per recorded result (``id:`` is the group), then one ``done`` event with the
task's final state, and closes. Nothing is kept in the instance: a client that reconnects
(``EventSource`` does by itself) to any instance gets every result again, so clients treat
results as keyed by group.

The stream also ends without ``done`` after ``sse_max`` seconds and when the instance starts
draining, so long waits and deploys never pin an instance; comments (``: keep-alive``) every
``sse_heartbeat`` seconds keep proxies from timing the connection out. Responses carry
``X-Accel-Buffering: no`` so nginx passes each event on at once.

While a group is pending, its latest progress report (:mod:`pixfleet.progress`, kept in the
blob store by the worker, rate-limited) is forwarded as a ``progress`` event whenever it
changed since the last look - advisory, never a result: a client that reconnects gets the latest
report again, and a ``result`` event supersedes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from pixfleet.envelope import Result, Task
from pixfleet.errors import EnvelopeError, PixfleetError
from pixfleet.progress import Progress, read_progress
from pixfleet.records import TaskState, read_result
from producer.http.errors import error_body
from producer.http.services import Services
from producer.http.views import result_view

log = logging.getLogger(__name__)

#: Headers of every event stream (no caching, no proxy buffering).
STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}
#: Milliseconds a client waits before reconnecting (the SSE ``retry:`` field).
RECONNECT_MS = 1000


def sse(event: str, data: Any, *, event_id: str | None = None) -> str:
    """One event in the ``text/event-stream`` format (``data`` as one line of JSON)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def task_events(task: Task, svc: Services, root: str) -> AsyncIterator[str]:
    """The event stream of ``task`` (see the module docstring)."""
    svc.metrics.streams.inc()
    try:
        yield f"retry: {RECONNECT_MS}\n\n"
        async for chunk in _events(task, svc, root):
            yield chunk
    finally:
        svc.metrics.streams.dec()


async def _events(task: Task, svc: Services, root: str) -> AsyncIterator[str]:
    settings = svc.settings
    pending = list(task.groups)
    found: dict[str, Result] = {}
    reported: dict[str, datetime] = {}  # group -> time of the last progress report sent
    deadline = _now() + settings.sse_max
    beat = _now() + settings.sse_heartbeat
    while pending:
        try:
            new = await _recorded(svc, task.id, pending)
            progressed = await _progressed(svc, task.id, pending, reported)
        except PixfleetError as exc:
            log.warning("event stream of task %s: %s", task.id, exc.one_line())
            yield sse("stream_error", error_body(exc.code, exc.message))
            return
        for result in new:
            found[result.group] = result
            yield sse("result", _dump(result, root, task.filename), event_id=result.group)
        for progress in progressed:
            yield sse("progress", progress.model_dump(mode="json", exclude={"v", "kind"}))
        now = _now()
        if pending and (svc.draining or now >= deadline):
            return  # the client reconnects, perhaps to another instance
        if pending and now >= beat:
            beat = now + settings.sse_heartbeat
            yield ": keep-alive\n\n"
        if pending:
            await asyncio.sleep(settings.sse_poll)
    state = TaskState(task, found).state
    yield sse("done", {"task_id": task.id, "state": state}, event_id="done")


async def _recorded(svc: Services, task_id: str, pending: list[str]) -> list[Result]:
    """Results recorded for groups in ``pending`` since the last look (removed from it)."""
    new = []
    for group in list(pending):
        result = await read_result(svc.store, task_id, group)
        if result is not None:
            pending.remove(group)
            new.append(result)
    return new


async def _progressed(
    svc: Services, task_id: str, pending: list[str], reported: dict[str, datetime]
) -> list[Progress]:
    """The progress reports of groups in ``pending`` that are newer than the last ones sent."""
    new = []
    for group in pending:
        try:
            progress = await read_progress(svc.store, task_id, group)
        except EnvelopeError as exc:  # a damaged report is not worth ending the stream for
            log.debug("progress of %s [%s] unreadable: %s", task_id, group, exc.one_line())
            continue
        if progress is not None and progress.at != reported.get(group):
            reported[group] = progress.at
            new.append(progress)
    return new


def _now() -> float:
    return asyncio.get_running_loop().time()


def _dump(result: Result, root: str, filename: str) -> dict[str, Any]:
    return result_view(result, root, filename).model_dump(mode="json")
