"""Building envelopes for tests."""

from __future__ import annotations

import hashlib
import uuid
from typing import cast

from pydantic import JsonValue

from pixfleet.envelope import BlobRef, ErrorInfo, Result, Task, WorkerInfo


def fake_blob(data: bytes = b"not-read-by-transport-tests") -> BlobRef:
    return BlobRef(
        uri="uploads/no/ne/nonexistent-blob",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        content_type="image/jpeg",
    )


def make_task(*groups: str, reply_to: str = "results", **params: object) -> Task:
    task_params: dict[str, JsonValue] = {k: cast(JsonValue, v) for k, v in params.items()}
    return Task.new(fake_blob(), groups=groups, reply_to=reply_to, params=task_params)


def make_result(task: Task, group: str, *, ok: bool = True) -> Result:
    return Result(
        task_id=task.id,
        correlation_id=task.correlation_id,
        group=group,
        status="ok" if ok else "error",
        error=None if ok else ErrorInfo(code="image.invalid", message="x"),
        worker=WorkerInfo(id="test", host="localhost", pid=1),
    )


def unique(prefix: str = "g") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
