"""The steps of one run, each timed, traced and reported: :class:`Steps`.

Each step (``fetch``, ``queue``, ``process``, ``store``, ``reply``) is a child span of the
delivery's ``pixfleet.task`` span (:mod:`pixfleet.tracing`; none is made while nothing would
record it: no OpenTelemetry, or no SDK set), and
its duration goes to the result's ``timings_ms`` and to the listener's
:meth:`~consumers.events.WorkerEvents.step_timed` (the step histogram of ``/metrics``); its
start is a progress report (:class:`~consumers.progress.ProgressReporter`). A step that raises
is still timed and reported; the span records the exception.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from consumers.events import WorkerEvents
from consumers.progress import ProgressReporter
from pixfleet import tracing
from pixfleet.envelope import Task


class Steps:
    """Times the steps of one run of ``task`` (see the module docstring)."""

    def __init__(
        self, task: Task, events: WorkerEvents, progress: ProgressReporter | None = None
    ) -> None:
        self._task = task
        self._events = events
        self._progress = progress
        self._started = time.perf_counter()
        self._ms: dict[str, float] = {}
        self._traced = tracing.recording()  # asked once per run, not per step

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        if self._progress is not None:
            self._progress.report(name)
        try:
            if self._traced:
                with tracing.span(name):
                    yield
            else:
                yield
        finally:
            seconds = time.perf_counter() - started
            self._ms[name] = round(seconds * 1000.0, 2)
            self._events.step_timed(self._task, name, seconds)

    def timings_ms(self) -> dict[str, float]:
        """Every step so far plus ``total`` (from the start to now)."""
        return {**self._ms, "total": round((time.perf_counter() - self._started) * 1000.0, 2)}
