"""How results and stats look on a terminal (one line each).

Results carry output *keys*; where those are for a user is the blob store's business, so the
caller passes ``locate`` (``store.url_for``) and rendering never knows which store it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from pixfleet.envelope import Result, Task
from pixfleet.errors import PixfleetError

#: Turns a store-relative key into something a user can open (a URL); see ``BlobStore.url_for``.
Locate = Callable[[str], str]


def _size(n: int) -> str:
    return f"{n / 1024:.1f}kB" if n >= 1024 else f"{n}B"


def result_line(result: Result, filename: str = "", *, locate: Locate | None = None) -> str:
    """``ok    thumbs  photo.jpg  256.jpg 256x192 7.1kB, ...  in file:///dir/  (123 ms)``.

    The location is the first output's folder, through ``locate`` (else the bare key)."""
    label = filename or result.task_id
    if result.status == "error" and result.error is not None:
        return (
            f"error {result.group:<8} {label}  error[{result.error.code}]: {result.error.message}"
        )
    outputs = ", ".join(f"{o.name} {o.width}x{o.height} {_size(o.bytes)}" for o in result.outputs)
    folder = result.outputs[0].uri.rpartition("/")[0] if result.outputs else ""
    where = f"  in {locate(folder) if locate else folder}/" if folder else ""
    total = result.timings_ms.get("total")
    took = f"  ({total:.0f} ms)" if total is not None else ""
    return f"ok    {result.group:<8} {label}  {outputs}{where}{took}"


def result_text(result: Result, filename: str, locate: Locate, as_json: bool) -> str:
    """The result as JSON (``--json``) or as :func:`result_line`."""
    return result.model_dump_json() if as_json else result_line(result, filename, locate=locate)


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
