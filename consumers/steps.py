"""The steps of one task that need no broker: admission, storing outputs, building results.

:class:`~consumers.worker.Worker` strings them together around the blob fetch and the pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from consumers.pipelines.base import PipelineOutput, Rendition
from pixfleet.blobs import BlobStore, store_output
from pixfleet.envelope import ErrorInfo, Output, Result, Task, WorkerInfo
from pixfleet.errors import PixfleetError, TaskExpired
from pixfleet.images import ImageTooLarge, Limits


def check_admissible(task: Task, limits: Limits) -> None:
    """Refuse a task before fetching its blob: :class:`TaskExpired` past its deadline,
    :class:`ImageTooLarge` if its blob is over the byte limit (both final)."""
    if task.deadline is not None and datetime.now(UTC) > task.deadline:
        raise TaskExpired(f"deadline {task.deadline.isoformat()} passed before processing")
    if task.blob.size > limits.max_bytes:
        raise ImageTooLarge(f"blob has {task.blob.size} bytes, the limit is {limits.max_bytes}")


async def store_outputs(
    store: BlobStore,
    task: Task,
    group: str,
    renditions: Iterable[Rendition],
    on_stored: Callable[[int, int, str], None] | None = None,
) -> tuple[Output, ...]:
    """Write each rendition under its key, derived from the task id and its blob's hash (a
    redelivery overwrites the same keys; a task id re-used with other bytes cannot);
    ``on_stored(done, total, name)`` hears each one written."""
    todo = tuple(renditions)
    outputs = []
    for r in todo:
        key = await store_output(
            store, task.id, group, r.name, r.data, source_sha256=task.blob.sha256
        )
        outputs.append(
            Output(
                name=r.name,
                uri=key,
                width=r.width,
                height=r.height,
                format=r.format,
                bytes=len(r.data),
            )
        )
        if on_stored is not None:
            on_stored(len(outputs), len(todo), r.name)
    return tuple(outputs)


def ok_result(
    task: Task,
    out: PipelineOutput,
    outputs: tuple[Output, ...],
    *,
    group: str,
    worker: WorkerInfo,
    attempt: int,
    timings_ms: dict[str, float],
) -> Result:
    """The ``ok`` result of ``task``: the pipeline's meta and the stored outputs."""
    return Result(
        task_id=task.id,
        correlation_id=task.correlation_id,
        group=group,
        status="ok",
        filename=task.filename,
        outputs=outputs,
        meta=out.meta,
        worker=worker,
        attempt=attempt,
        timings_ms=timings_ms,
    )


def error_result(
    task: Task, err: PixfleetError, *, group: str, worker: WorkerInfo, attempt: int
) -> Result:
    """The ``error`` result of ``task``: the error's code, message and ``retryable`` flag."""
    return Result(
        task_id=task.id,
        correlation_id=task.correlation_id,
        group=group,
        status="error",
        filename=task.filename,
        error=ErrorInfo(code=err.code, message=err.message[:2000], retryable=err.retryable),
        worker=worker,
        attempt=attempt,
    )
