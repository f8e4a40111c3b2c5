"""The routes: the ``/v1`` API (behind the optional bearer token), health, metrics, the page.

Handlers are thin: each takes the instance's :class:`~producer.http.services.Services` and hands
the work to the module that owns it (uploads, events, outputs). Response models make the
OpenAPI document at ``/openapi.json`` (browsable at ``/docs``).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from pixfleet.errors import PixfleetError
from pixfleet.records import read_task, task_state
from producer.http.errors import Draining, TaskUnknown, Unauthorized, Unready
from producer.http.events import STREAM_HEADERS, task_events
from producer.http.metrics import CONTENT_TYPE_LATEST
from producer.http.outputs import serve_output
from producer.http.services import Services, root_of, services_of
from producer.http.uploads import IDENT_PATTERN, receive_upload, valid_ident
from producer.http.views import (
    ErrorResponse,
    Health,
    TaskView,
    UploadResponse,
    accepted,
    task_view,
)


async def _services(request: Request) -> Services:
    """The instance's services (an ``async`` dependency: FastAPI runs plain ones in threads)."""
    return services_of(request)


Svc = Annotated[Services, Depends(_services)]
#: Seconds /readyz waits for the broker and the blob store.
READY_TIMEOUT = 2.0
#: A key /readyz looks up (it need not exist: the store must answer).
READY_KEY = "records/readyz"

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 429, 503)
}
_MULTIPART = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "groups": {"type": "string", "description": "comma-separated groups"},
                        "params": {"type": "string", "description": "a JSON object"},
                    },
                }
            }
        },
    },
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "pattern": IDENT_PATTERN},
            "description": "becomes the task id of a single-file upload: a retry is no new task",
        }
    ],
}


async def require_token(request: Request, svc: Svc) -> None:
    """Bearer-token check for ``/v1``: ``Authorization: Bearer <token>``, or the
    ``access_token`` query parameter for what cannot send headers (``EventSource``, ``<img>``)."""
    expected = svc.settings.token
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    given = header[7:] if header[:7].lower() == "bearer " else None
    given = given or request.query_params.get("access_token", "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("a valid bearer token is required (Authorization: Bearer <token>)")


api = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], responses=_ERRORS)
plain = APIRouter()


@api.post("/uploads", status_code=202, openapi_extra=_MULTIPART)
async def upload(request: Request, svc: Svc) -> UploadResponse:
    """Store and publish one task per ``file`` part (multipart/form-data, streamed)."""
    tasks = await receive_upload(request, svc)
    root = root_of(request)
    return UploadResponse(tasks=[accepted(task, root) for task in tasks])


@api.get("/tasks/{task_id}")
async def get_task(task_id: str, request: Request, svc: Svc) -> TaskView:
    """A task's state and the results recorded so far (any instance answers)."""
    state = await task_state(svc.store, _known(task_id))
    if state is None:
        raise TaskUnknown(f"no task {task_id!r}")
    return task_view(state, root_of(request))


@api.get("/tasks/{task_id}/events", response_class=StreamingResponse)
async def task_events_stream(task_id: str, request: Request, svc: Svc) -> StreamingResponse:
    """Server-Sent Events: one ``result`` event per group, then ``done``."""
    task = await read_task(svc.store, _known(task_id))
    if task is None:
        raise TaskUnknown(f"no task {task_id!r}")
    stream = task_events(task, svc, root_of(request))
    return StreamingResponse(stream, media_type="text/event-stream", headers=STREAM_HEADERS)


@api.get("/outputs/{key:path}", response_class=Response)
async def get_output(key: str, request: Request, svc: Svc) -> Response:
    """An output image (or a redirect to the store's presigned URL)."""
    return await serve_output(key, request, svc)


@api.head("/outputs/{key:path}", response_class=Response, include_in_schema=False)
async def head_output(key: str, request: Request, svc: Svc) -> Response:
    return await serve_output(key, request, svc)


@plain.get("/healthz")
async def healthz() -> Health:
    """The process is alive (it checks nothing else)."""
    return Health(status="ok")


@plain.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(svc: Svc) -> Health:
    """The broker and the blob store answer, and the instance is not draining."""
    if svc.draining:
        raise Draining("this instance is shutting down")
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await svc.inspector.groups()
            await svc.store.exists(READY_KEY)
    except TimeoutError:
        raise Unready(f"broker or blob store did not answer within {READY_TIMEOUT:g} s") from None
    except PixfleetError as exc:
        raise Unready(f"not ready: {exc.one_line()}") from exc
    return Health(status="ready")


@plain.get("/metrics", response_class=Response)
async def metrics(svc: Svc) -> Response:
    """Prometheus exposition of this instance's counters and the groups' backlog."""
    await svc.metrics.refresh_backlog(svc.inspector)
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _known(task_id: str) -> str:
    """``task_id`` if it could be a task id at all (else it is simply not found)."""
    if not valid_ident(task_id):
        raise TaskUnknown(f"no task {task_id[:200]!r}")
    return task_id
