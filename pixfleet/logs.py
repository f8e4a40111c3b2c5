"""Log records as JSON lines, and the task context every record of a delivery carries.

``--log-format json`` (or ``PIXFLEET_LOG_FORMAT=json``) makes each line on stderr one JSON
object: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` and, when known, ``task_id``,
``group`` and ``worker_id`` (plus ``exc`` with the traceback of an exception). The worker sets
the context with :func:`task_context` around each delivery - one asyncio task per delivery, each
with its own copy of the context - so every line logged while handling it, in any module, names
its task without that module knowing.
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime
from typing import Final

#: The values a log line may carry, by JSON key.
TASK_ID: Final = contextvars.ContextVar[str | None]("pixfleet_task_id", default=None)
GROUP: Final = contextvars.ContextVar[str | None]("pixfleet_group", default=None)
WORKER_ID: Final = contextvars.ContextVar[str | None]("pixfleet_worker_id", default=None)
_FIELDS: Final = {"task_id": TASK_ID, "group": GROUP, "worker_id": WORKER_ID}

LOG_FORMATS: Final = ("text", "json")


def task_context(
    task_id: str | None, group: str | None, worker_id: str | None
) -> contextvars.Context:
    """A copy of the current context with the task's fields set: run a delivery's asyncio task
    in it (``asyncio.create_task(coro, context=task_context(...))``)."""
    context = contextvars.copy_context()
    context.run(_set, task_id, group, worker_id)
    return context


def set_worker(worker_id: str, group: str) -> None:
    """Name the worker and group for every record logged from here on in this context."""
    WORKER_ID.set(worker_id)
    GROUP.set(group)


def _set(task_id: str | None, group: str | None, worker_id: str | None) -> None:
    TASK_ID.set(task_id)
    if group is not None:
        GROUP.set(group)
    if worker_id is not None:
        WORKER_ID.set(worker_id)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, var in _FIELDS.items():
            value = getattr(record, key, None) or var.get()
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)
