"""``POST /v1/uploads``: multipart in, one task per file out, ``202`` with the task ids.

Order of work for one request: admit it (``429`` at the in-flight limit, ``503`` while
draining), refuse a declared ``Content-Length`` over the request limit before reading, then
read the parts in order - each ``file`` part streamed into the blob store and vetted
(:mod:`producer.http.staging`), the ``groups`` and ``params`` fields parsed - and only once the
whole body is in and every file passed, publish the tasks through the shared submission path
(:class:`~producer.submission.Submission`). So a refused request publishes nothing; a broker
failure half-way through a batch answers with the error *and* the tasks already confirmed.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field

from pydantic import JsonValue
from starlette.requests import Request

from pixfleet.envelope import Task
from pixfleet.errors import ParamsInvalid, PixfleetError
from pixfleet.records import read_task
from producer.http.errors import (
    Conflict,
    RequestInvalid,
    RequestTimedOut,
    RequestTooLarge,
    TooManyFiles,
)
from producer.http.multipart import MultipartReader, Part, boundary_of
from producer.http.services import Services
from producer.http.staging import StagedFile, clean_filename, stage_file
from producer.submission import Submission, SubmitOptions

#: Header whose value becomes the task id of a single-file upload.
IDEMPOTENCY_HEADER = "idempotency-key"
#: What a task id (and so an Idempotency-Key) looks like (the envelope's ``Ident``).
IDENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$"
_IDENT = re.compile(IDENT_PATTERN)
#: Longest text form field (groups, params).
FIELD_BYTES = 64 * 1024
#: After a refusal, the rest of the body is read (and dropped) up to this much, so the client
#: gets the answer on an intact connection; a larger remainder closes the connection.
DRAIN_BYTES = 8 * 1024 * 1024
DRAIN_SECONDS = 5.0


@dataclass
class Form:
    files: list[StagedFile] = field(default_factory=list)
    groups: tuple[str, ...] | None = None
    params: dict[str, JsonValue] = field(default_factory=dict)


class BatchIncomplete(Exception):
    """Publishing failed after some tasks of the batch were confirmed: both are answered."""

    def __init__(self, error: PixfleetError, confirmed: list[Task]) -> None:
        super().__init__(error.message)
        self.error = error
        self.confirmed = confirmed


async def receive_upload(request: Request, svc: Services) -> list[Task]:
    """Receive, vet, store and publish one upload request; the tasks published, in order.

    Raises :class:`PixfleetError` (nothing published) or :class:`BatchIncomplete`."""
    limits = svc.settings.limits
    _check_length(request, limits.max_request_bytes)
    key = idempotency_key(request)
    boundary = boundary_of(request.headers.get("content-type", ""))
    reader = MultipartReader(request.stream(), boundary, max_bytes=limits.max_request_bytes)
    with svc.admit_upload():
        try:
            async with asyncio.timeout(limits.request_timeout):
                form = await _read_form(reader, svc)
                if key is not None and len(form.files) != 1:
                    raise RequestInvalid("an Idempotency-Key applies to a single file only")
                return await _publish(form, key, svc)
        except TimeoutError:
            raise RequestTimedOut(
                f"the upload was not received within {limits.request_timeout:g} s"
            ) from None
        except PixfleetError as exc:
            svc.metrics.rejected.labels(exc.code).inc()
            await _drain(reader)
            raise


def valid_ident(value: str) -> bool:
    return _IDENT.fullmatch(value) is not None


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not valid_ident(key):
        raise RequestInvalid(
            "Idempotency-Key must be 1-200 characters of A-Z a-z 0-9 . _ : - "
            "starting with a letter or digit"
        )
    return key


def _check_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")


async def _read_form(reader: MultipartReader, svc: Services) -> Form:
    form = Form()
    limits = svc.settings.limits
    while (part := await reader.next_part()) is not None:
        if part.name == "file":
            if len(form.files) >= limits.max_files:
                raise TooManyFiles(f"more than {limits.max_files} files in one request")
            form.files.append(await _stage(part, svc))
        elif part.name == "groups":
            form.groups = _groups(await part.text(FIELD_BYTES))
        elif part.name == "params":
            form.params = _params(await part.text(FIELD_BYTES))
        else:
            raise RequestInvalid(f"unknown form field {part.name[:64]!r} (file, groups, params)")
    if not form.files:
        raise RequestInvalid("no file part: send the images as form fields named 'file'")
    return form


async def _stage(part: Part, svc: Services) -> StagedFile:
    limits = svc.settings.limits
    filename = clean_filename(part.filename)
    staged = await stage_file(
        part.chunks(),
        filename,
        svc.store,
        max_bytes=limits.max_file_bytes,
        max_pixels=limits.max_pixels,
    )
    return staged


def _groups(text: str) -> tuple[str, ...]:
    groups = tuple(g.strip() for g in text.split(",") if g.strip())
    if not groups:
        raise RequestInvalid("the groups field names no group")
    return groups


def _params(text: str) -> dict[str, JsonValue]:
    try:
        params = json.loads(text) if text.strip() else {}
    except (ValueError, RecursionError) as exc:
        raise ParamsInvalid(f"params is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(params, dict):
        raise ParamsInvalid("params must be a JSON object")
    return params


async def _publish(form: Form, key: str | None, svc: Services) -> list[Task]:
    options = SubmitOptions(form.groups or svc.settings.groups, form.params)
    if key is not None:
        await _check_same_upload(key, form.files[0], svc)
    confirmed: list[Task] = []
    async with Submission(
        queue=svc.queue, replies=svc.replies, store=svc.store, options=options
    ) as sub:
        for staged in form.files:
            started = time.perf_counter()
            try:
                task = await sub.submit_stored(staged.ref, staged.filename, task_id=key)
            except PixfleetError as exc:
                if confirmed:
                    raise BatchIncomplete(exc, confirmed) from exc
                raise
            svc.metrics.publish_seconds.observe(time.perf_counter() - started)
            svc.metrics.uploads.inc()
            svc.metrics.upload_bytes.inc(staged.ref.size)
            confirmed.append(task)
    return confirmed


async def _check_same_upload(key: str, staged: StagedFile, svc: Services) -> None:
    """A retry with an Idempotency-Key must send the same bytes as the first request."""
    earlier = await read_task(svc.store, key)
    if earlier is not None and earlier.blob.sha256 != staged.ref.sha256:
        raise Conflict(f"Idempotency-Key {key!r} was used before for different bytes")


async def _drain(reader: MultipartReader) -> None:
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            await reader.drain(DRAIN_BYTES)
    except (TimeoutError, OSError, RuntimeError):
        pass  # the connection is closed after the answer instead
