"""The JSON the API answers with: response models (they are the OpenAPI schema too) and the
conversions from envelopes and records.

URLs in responses are root-relative (``/v1/...``, under the app's root path): they are right
for whatever host and scheme the client reached, behind any proxy.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, JsonValue

from pixfleet.envelope import Result, Task
from pixfleet.records import TaskState


class _View(BaseModel):
    model_config = ConfigDict(frozen=True)


class ErrorDetail(_View):
    code: str
    message: str


class ErrorResponse(_View):
    """Every error: a stable ``code`` and a one-line message. ``tasks`` lists the tasks that
    were published all the same when a batch failed half-way (else it is absent)."""

    error: ErrorDetail
    tasks: list[AcceptedTask] | None = None


class AcceptedTask(_View):
    task_id: str
    filename: str
    groups: list[str]
    status_url: str
    events_url: str


class UploadResponse(_View):
    tasks: list[AcceptedTask]


class OutputView(_View):
    name: str
    url: str
    key: str
    width: int
    height: int
    format: str
    bytes: int


class ResultError(_View):
    code: str
    message: str
    retryable: bool


class ResultView(_View):
    group: str
    filename: str
    status: Literal["ok", "error"]
    outputs: list[OutputView]
    error: ResultError | None
    attempt: int
    timings_ms: dict[str, float]
    meta: dict[str, JsonValue]


class TaskView(_View):
    task_id: str
    state: Literal["queued", "done", "error"]
    filename: str
    groups: list[str]
    created_at: datetime
    results: list[ResultView]


class Health(_View):
    status: str


ErrorResponse.model_rebuild()


def accepted(task: Task, root: str) -> AcceptedTask:
    base = f"{root}/v1/tasks/{task.id}"
    return AcceptedTask(
        task_id=task.id,
        filename=task.filename,
        groups=list(task.groups),
        status_url=base,
        events_url=f"{base}/events",
    )


def output_url(root: str, key: str) -> str:
    return f"{root}/v1/outputs/{key}"


def result_view(result: Result, root: str, filename: str = "") -> ResultView:
    """``filename`` stands in for a result recorded before results carried one."""
    error = result.error
    return ResultView(
        group=result.group,
        filename=result.filename or filename,
        status=result.status,
        outputs=[
            OutputView(
                name=o.name,
                url=output_url(root, o.uri),
                key=o.uri,
                width=o.width,
                height=o.height,
                format=o.format,
                bytes=o.bytes,
            )
            for o in result.outputs
        ],
        error=None if error is None else ResultError(**error.model_dump()),
        attempt=result.attempt,
        timings_ms=dict(result.timings_ms),
        meta=dict(result.meta),
    )


def task_view(state: TaskState, root: str) -> TaskView:
    task = state.task
    return TaskView(
        task_id=task.id,
        state=_state(state.state),
        filename=task.filename,
        groups=list(task.groups),
        created_at=task.created_at,
        results=[
            result_view(state.results[g], root, task.filename)
            for g in task.groups
            if g in state.results
        ],
    )


def _state(value: str) -> Literal["queued", "done", "error"]:
    if value == "done":
        return "done"
    return "error" if value == "error" else "queued"
