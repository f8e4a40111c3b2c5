"""What a worker reports while it runs: the :class:`WorkerEvents` hook.

Metrics, a worker registry or a test recorder plug in here instead of editing the loop. The
worker calls the hook at these points, synchronously, on the event loop thread:

* ``task_ok`` - after the result was replied and the delivery acked;
* ``task_retry`` - after a retryable failure was nacked for another delivery in ``delay`` s;
* ``task_failed`` - after a final failure got its error result and was dead-lettered;
* ``task_duplicate`` - a delivery of a (task id, group) whose result was recorded already (a
  duplicate publish, a redelivery after a crash, a copy that lost the race to record) was
  settled with the recorded result instead of a second one;
* ``step_timed`` - one step of a run took ``seconds``: ``fetch``, ``queue`` (waiting for a free
  pipeline slot), ``process`` (the pipeline), ``store``, then ``reply`` (record and reply);
* ``settle_failed`` - a reply, ack or nack failed (the broker is unavailable): the delivery was
  given back for a redelivery;
* ``pool_recycled`` - the process pool was killed and rebuilt (a stuck or crashed child);
* ``state_changed`` - the worker moved from one :data:`WorkerState` to another.

Hooks should be quick and should not raise: :class:`EventFanout` (what the worker calls) logs
and swallows an exception from one listener so that the others, and the delivery, go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from pixfleet.envelope import Result, Task
from pixfleet.errors import PixfleetError

log = logging.getLogger(__name__)

#: ``starting`` (built, not yet consuming) -> ``consuming`` -> ``draining`` (no new tasks,
#: in-flight ones finish) -> ``consuming`` again (another ``--burst`` round) or ``stopped``.
#: ``paused`` (``uploader control pause``): no new tasks until ``resume``, then ``consuming``.
#: ``reconnecting`` stands in for ``consuming`` or ``draining`` while the broker is unavailable
#: (the subscription failed, or a reply or settle did); the phase comes back once it answers.
WorkerState = Literal["starting", "consuming", "reconnecting", "paused", "draining", "stopped"]


class WorkerEvents(Protocol):
    """Listener of a worker's task outcomes and lifecycle (see the module docstring)."""

    def task_ok(self, task: Task, result: Result) -> None: ...

    def task_retry(self, task: Task, attempt: int, delay: float, error: PixfleetError) -> None:
        """Delivery number ``attempt`` failed with a retryable ``error``; retried in ``delay``."""
        ...

    def task_failed(self, task: Task, error: PixfleetError) -> None: ...

    def task_duplicate(self, task: Task, result: Result) -> None:
        """This delivery of ``task`` was settled with ``result``, recorded by another one."""
        ...

    def step_timed(self, task: Task, step: str, seconds: float) -> None: ...

    def settle_failed(self, task: Task, error: PixfleetError) -> None: ...

    def pool_recycled(self, reason: str) -> None: ...

    def state_changed(self, old: WorkerState, new: WorkerState) -> None: ...


class NoEvents:
    """Listens to nothing. Subclass it to implement only the events you care about."""

    def task_ok(self, task: Task, result: Result) -> None:
        return None

    def task_retry(self, task: Task, attempt: int, delay: float, error: PixfleetError) -> None:
        return None

    def task_failed(self, task: Task, error: PixfleetError) -> None:
        return None

    def task_duplicate(self, task: Task, result: Result) -> None:
        return None

    def step_timed(self, task: Task, step: str, seconds: float) -> None:
        return None

    def settle_failed(self, task: Task, error: PixfleetError) -> None:
        return None

    def pool_recycled(self, reason: str) -> None:
        return None

    def state_changed(self, old: WorkerState, new: WorkerState) -> None:
        return None


#: The default listener of :class:`~consumers.worker.Worker` (stateless, so shareable).
NO_EVENTS = NoEvents()


@dataclass
class WorkerStats(NoEvents):
    """Counts of final outcomes (``ok``, ``failed``), retries and duplicates (deliveries
    answered with a result recorded by another delivery), as events arrive."""

    ok: int = 0
    failed: int = 0
    retried: int = 0
    duplicates: int = 0

    @property
    def handled(self) -> int:
        return self.ok + self.failed

    def task_ok(self, task: Task, result: Result) -> None:
        self.ok += 1

    def task_retry(self, task: Task, attempt: int, delay: float, error: PixfleetError) -> None:
        self.retried += 1

    def task_failed(self, task: Task, error: PixfleetError) -> None:
        self.failed += 1

    def task_duplicate(self, task: Task, result: Result) -> None:
        self.duplicates += 1


class EventFanout:
    """Passes every event to each listener in order; a listener that raises is logged and the
    rest still hear the event (a broken metrics plugin never fails a delivery)."""

    def __init__(self, *listeners: WorkerEvents) -> None:
        self.listeners = listeners

    def task_ok(self, task: Task, result: Result) -> None:
        self._each(lambda listener: listener.task_ok(task, result))

    def task_retry(self, task: Task, attempt: int, delay: float, error: PixfleetError) -> None:
        self._each(lambda listener: listener.task_retry(task, attempt, delay, error))

    def task_failed(self, task: Task, error: PixfleetError) -> None:
        self._each(lambda listener: listener.task_failed(task, error))

    def task_duplicate(self, task: Task, result: Result) -> None:
        self._each(lambda listener: listener.task_duplicate(task, result))

    def step_timed(self, task: Task, step: str, seconds: float) -> None:
        self._each(lambda listener: listener.step_timed(task, step, seconds))

    def settle_failed(self, task: Task, error: PixfleetError) -> None:
        self._each(lambda listener: listener.settle_failed(task, error))

    def pool_recycled(self, reason: str) -> None:
        self._each(lambda listener: listener.pool_recycled(reason))

    def state_changed(self, old: WorkerState, new: WorkerState) -> None:
        self._each(lambda listener: listener.state_changed(old, new))

    def _each(self, call: Callable[[WorkerEvents], None]) -> None:
        for listener in self.listeners:
            try:
                call(listener)
            except Exception:
                log.exception("worker event listener %r failed", listener)
