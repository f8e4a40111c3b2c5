"""The fault suite's witnesses: what ran (the ledger) and what was published (the publish log).

* :class:`Ledger` reads the executions that the ``tests.helpers.pipelines:ledger`` pipeline
  logged - one JSON line per execution, appended with one ``os.write`` on an ``O_APPEND``
  descriptor to a file per pool process, so a line is never torn and a ``kill -9`` loses at
  most the execution it interrupted before it was logged (which then never ran its pipeline).
* :class:`PublishLog` records every task id the harness *sent* (tried to publish) and every one
  whose publish was *confirmed* (``publish`` returned: durable on the broker).

Both are plain data for :func:`tests.reliability.checker.check`; any row, on any transport, can
use them (a transport engineer's outage row included).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import JsonValue

from brokers import TaskQueue
from pixfleet.envelope import Task
from pixfleet.errors import PixfleetError


@dataclass(frozen=True)
class Execution:
    """One run of the pipeline: which task, in which pool process of which worker."""

    task_id: str
    pid: int
    worker_pid: int
    host: str
    t: float


class Ledger:
    """The executions logged under ``directory`` (pass :attr:`params` to every task)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def params(self, task_id: str) -> dict[str, JsonValue]:
        """What a task's params need so that the ledger pipeline logs its executions."""
        return {"ledger": str(self.directory), "task": task_id}

    def executions(self) -> list[Execution]:
        out = []
        for path in sorted(self.directory.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                raw = json.loads(line)
                out.append(
                    Execution(
                        task_id=raw["task_id"],
                        pid=raw["pid"],
                        worker_pid=raw["worker_pid"],
                        host=raw["host"],
                        t=raw["t"],
                    )
                )
        return out

    def runs(self) -> Counter[str]:
        """How many times each task id ran."""
        return Counter(e.task_id for e in self.executions())


@dataclass
class PublishLog:
    """Task ids sent and confirmed, in order; failures with their error line."""

    sent: list[str] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    async def publish(self, queue: TaskQueue, task: Task) -> bool:
        """Publish ``task`` and note the outcome; True if the broker confirmed it."""
        self.sent.append(task.id)
        try:
            await queue.publish(task)
        except PixfleetError as exc:
            self.failed[task.id] = exc.one_line()
            return False
        self.confirmed.append(task.id)
        return True
