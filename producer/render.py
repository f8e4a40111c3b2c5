"""How results and stats look on a terminal (one line each).

Results carry output *keys*; where those are for a user is the blob store's business, so the
caller passes ``locate`` (``store.url_for``) and rendering never knows which store it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from pixfleet.envelope import Result, Task
from pixfleet.errors import PixfleetError
from pixfleet.progress import Progress
from pixfleet.records import TaskState

#: Turns a store-relative key into something a user can open (a URL); see ``BlobStore.url_for``.
Locate = Callable[[str], str]


def _size(n: int) -> str:
    return f"{n / 1024:.1f}kB" if n >= 1024 else f"{n}B"


def result_line(result: Result, filename: str = "", *, locate: Locate | None = None) -> str:
    """``ok    thumbs   photo.jpg  256.jpg 256x192 7.1kB, ...  in file:///dir/  (123 ms)  task
    <id>`` (one line).

    The file is the result's ``filename`` (else ``filename``, else the task id); the location is
    the first output's folder, through ``locate`` (else the bare key)."""
    label = result.filename or filename or result.task_id
    task = f"  task {result.task_id}"
    if result.status == "error" and result.error is not None:
        error = f"error[{result.error.code}]: {' '.join(result.error.message.split())}"
        return f"error {result.group:<8} {label}  {error}{task}"
    outputs = ", ".join(f"{o.name} {o.width}x{o.height} {_size(o.bytes)}" for o in result.outputs)
    folder = result.outputs[0].uri.rpartition("/")[0] if result.outputs else ""
    where = f"  in {locate(folder) if locate else folder}/" if folder else ""
    total = result.timings_ms.get("total")
    took = f"  ({total:.0f} ms)" if total is not None else ""
    return f"ok    {result.group:<8} {label}  {outputs}{where}{took}{task}"


def with_filename(result: Result, filename: str) -> Result:
    """``result`` carrying ``filename`` if it has none (a worker from before results did)."""
    if result.filename or not filename:
        return result
    return result.model_copy(update={"filename": filename[-255:]})


def result_text(result: Result, filename: str, locate: Locate, as_json: bool) -> str:
    """The result as JSON (``--json``; with ``filename`` if the result has none) or as
    :func:`result_line`."""
    if as_json:
        return with_filename(result, filename).model_dump_json()
    return result_line(result, filename, locate=locate)


def queued_line(task: Task, *, as_json: bool = False) -> str:
    """``queued <task id>  <file>`` (or ``{"task_id": ..., "file": ...}``): a confirmed publish."""
    if as_json:
        return json.dumps({"task_id": task.id, "file": task.filename})
    return f"queued {task.id}  {task.filename}"


def partial_line(error: PixfleetError, published: int, total: int, missing: list[str]) -> str:
    """The one error line of a batch that stopped at a failed publish."""
    names = ", ".join(missing[:10]) + (
        f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    )
    return (
        f"{error.one_line()} - {published} of {total} task(s) were published (listed on "
        f"stdout), {len(missing)} were not: {names}"
    )


def partial_json(error: PixfleetError, published: Sequence[Task], missing: list[str]) -> str:
    """The ``--json`` summary of a batch that stopped at a failed publish."""
    return json.dumps(
        {
            "error": {"code": error.code, "message": error.message},
            "published": [t.id for t in published],
            "not_published": missing,
        }
    )


def task_lines(state: TaskState, locate: Locate) -> list[str]:
    """``uploader get``: the task, its state, then per group its result (or ``pending``) and
    one line per output with where it is."""
    task = state.task
    lines = [
        f"task     {task.id}",
        f"file     {task.filename or '-'}",
        f"state    {state.state}",
        f"created  {task.created_at.isoformat()}",
    ]
    for group in task.groups:
        result = state.results.get(group)
        if result is None:
            lines.append(f"{group:<8} pending")
        elif result.error is not None:
            message = " ".join(result.error.message.split())
            lines.append(
                f"{group:<8} error  error[{result.error.code}]: {message}  "
                f"(attempt {result.attempt})"
            )
        else:
            total = result.timings_ms.get("total")
            took = f", {total:.0f} ms" if total is not None else ""
            lines.append(
                f"{group:<8} ok  ({len(result.outputs)} output(s), attempt {result.attempt}{took})"
            )
            lines += [
                f"  {o.name:<14} {o.width}x{o.height:<6} {_size(o.bytes):>8}  {locate(o.uri)}"
                for o in result.outputs
            ]
    return lines


def task_json(state: TaskState, locate: Locate) -> str:
    """``uploader get --json``: one object with the task, its state, the pending groups, every
    recorded result (with the task's filename) and every output with its URL."""
    task = state.task
    results = [
        with_filename(state.results[g], task.filename) for g in task.groups if g in state.results
    ]
    return json.dumps(
        {
            "task_id": task.id,
            "filename": task.filename,
            "state": state.state,
            "groups": list(task.groups),
            "created_at": task.created_at.isoformat(),
            "pending": [g for g in task.groups if g not in state.results],
            "results": [r.model_dump(mode="json") for r in results],
            "outputs": [
                {"group": r.group, **o.model_dump(mode="json"), "url": locate(o.uri)}
                for r in results
                for o in r.outputs
            ],
        }
    )


def pending_line(pending: Sequence[tuple[Task, Sequence[str]]]) -> str:
    """The tasks a timed-out wait still waits for: ``<id> (<file>) [group, ...]; ...``."""
    shown = "; ".join(
        f"{task.id} ({task.filename or '-'}) [{', '.join(groups)}]" for task, groups in pending[:20]
    )
    more = f"; and {len(pending) - 20} more" if len(pending) > 20 else ""
    return f"still pending: {shown}{more}"


def pending_json(error: PixfleetError, pending: Sequence[tuple[Task, Sequence[str]]]) -> str:
    """The ``--json`` summary of a timed-out wait: the error and each pending task."""
    return json.dumps(
        {
            "error": {"code": error.code, "message": error.message},
            "pending": [
                {"task_id": task.id, "file": task.filename, "groups": list(groups)}
                for task, groups in pending
            ],
        }
    )


def progress_line(progress: Progress, filename: str) -> str:
    """``<file> [group]: store 2/4 (256.jpg)`` - one progress report, for stderr."""
    count = f" {progress.done}/{progress.total}" if progress.total else ""
    about = f" ({progress.message})" if progress.message else ""
    return f"{filename or progress.task_id} [{progress.group}]: {progress.step}{count}{about}"
