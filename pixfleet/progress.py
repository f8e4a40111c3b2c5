"""Progress of a running task: the :class:`Progress` envelope and its record.

A progress report is a separate, small envelope kind (``"kind": "progress"``), never a
:class:`~pixfleet.envelope.Result`: it has its own decoder (:func:`decode_progress`), is never
sent on a reply channel and is never written as a completion record, so nothing that reads
results (waiters, ``uploader results``, the dedupe by (task id, group), the completion records)
can take it for one. The worker keeps the *latest* report of each (task id, group) at
``records/progress/<id[:2]>/<task id>/<group>.json`` in the shared blob store (overwritten,
rate-limited); any waiter or ingress instance reads it from there, as it reads the completion
records. Progress is advisory: a report may be skipped or arrive after the result, and the
result always supersedes it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from pixfleet.blobs import BlobStore, check_key
from pixfleet.envelope import SCHEMA_VERSION, GroupName, Ident, WorkerInfo
from pixfleet.errors import BlobNotFound, EnvelopeError

#: What a worker is doing: ``fetch``, ``process``, ``store`` (one report per stored output).
Step = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
#: Largest progress body read back (a report is a few hundred bytes).
MAX_PROGRESS_BYTES = 16 * 1024


class Progress(BaseModel):
    """How far one (task, group) has come; ``done`` of ``total`` units of ``step``."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1] = SCHEMA_VERSION
    kind: Literal["progress"] = "progress"
    task_id: Ident
    group: GroupName
    step: Step
    done: Annotated[int, Field(ge=0)] = 0
    total: Annotated[int, Field(ge=0)] | None = None
    message: Annotated[str, StringConstraints(max_length=200)] = ""
    worker: WorkerInfo
    at: AwareDatetime


def progress_key(task_id: str, group: str) -> str:
    return check_key(f"records/progress/{task_id[:2]}/{task_id}/{group}.json")


def decode_progress(body: bytes | str) -> Progress:
    """Parse and validate a progress body. Raises only :class:`EnvelopeError`."""
    if len(body) > MAX_PROGRESS_BYTES:
        raise EnvelopeError(f"progress of {len(body)} bytes exceeds {MAX_PROGRESS_BYTES}")
    try:
        return Progress.model_validate_json(body)
    except ValidationError as exc:
        raise EnvelopeError(f"invalid progress: {exc.error_count()} error(s)") from exc
    except (ValueError, RecursionError) as exc:
        raise EnvelopeError(f"invalid progress: {type(exc).__name__}") from None


async def write_progress(store: BlobStore, progress: Progress) -> None:
    """Keep ``progress`` as the latest report of its (task id, group) (overwrites)."""
    key = progress_key(progress.task_id, progress.group)
    await store.put(key, progress.model_dump_json().encode())


async def read_progress(store: BlobStore, task_id: str, group: str) -> Progress | None:
    """The latest report of (task id, group), or None if there is none."""
    try:
        return decode_progress(await store.read(progress_key(task_id, group)))
    except BlobNotFound:
        return None
