"""Building envelopes for tests."""

from __future__ import annotations

import hashlib
import uuid

from pixfleet.envelope import BlobRef, Result, Task, WorkerInfo


def fake_blob(data: bytes = b"not-read-by-transport-tests") -> BlobRef:
    return BlobRef(
        uri="file:///nonexistent/blob",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        content_type="image/jpeg",
    )


def make_task(*groups: str, reply_to: str = "results", **params: object) -> Task:
    return Task.new(fake_blob(), groups=groups, reply_to=reply_to, params=dict(params))  # type: ignore[arg-type]


def make_result(task: Task, group: str, *, ok: bool = True) -> Result:
    return Result(
        task_id=task.id,
        correlation_id=task.correlation_id,
        group=group,
        status="ok" if ok else "error",
        error=None if ok else {"code": "image.invalid", "message": "x"},  # type: ignore[arg-type]
        worker=WorkerInfo(id="test", host="localhost", pid=1),
    )


def unique(prefix: str = "g") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
