"""The ingress ASGI app: :func:`create_app` wires routes, errors, auth, CORS and the web page.

The app is given an *open* transport and a blob store (``uploader serve`` opens them, tests
pass their own), so nothing is connected at import or construction and the app itself holds no
state another instance would need. Every error leaves as JSON ``{"error": {"code", "message"}}``
with the status of :func:`producer.http.errors.status_of`; an unexpected exception is logged
with its traceback and answered ``500 internal.error`` without one.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles

from brokers.contract import Transport
from pixfleet.blobs import BlobStore
from pixfleet.errors import PixfleetError
from producer.http.errors import (
    MethodNotAllowed,
    NotFound,
    RequestInvalid,
    error_body,
    retry_after,
    status_of,
)
from producer.http.routes import api, plain
from producer.http.services import Services, root_of, services_of
from producer.http.settings import ServeSettings
from producer.http.uploads import BatchIncomplete
from producer.http.views import accepted

log = logging.getLogger(__name__)

#: The web page's files (HTML, CSS, JS; shipped as package data).
WEB_DIR = Path(str(files("producer") / "web"))


def create_app(settings: ServeSettings, *, transport: Transport, store: BlobStore) -> FastAPI:
    """An ingress app over an open ``transport`` and ``store`` (see the module docstring)."""
    app = FastAPI(
        title="pixfleet ingress",
        summary="Upload images; follow their tasks; fetch their outputs.",
        version="1",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.services = Services(settings, transport, store)
    app.include_router(api)
    app.include_router(plain)
    _add_page(app)
    _add_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Idempotency-Key", "Content-Type"],
        )
    return app


def _add_page(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def _add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PixfleetError, _pixfleet_error)  # type: ignore[arg-type]  # reason: Starlette types handlers for Exception; this one takes the subclass it is registered for
    app.add_exception_handler(BatchIncomplete, _batch_incomplete)  # type: ignore[arg-type]  # reason: as above
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]  # reason: as above
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]  # reason: as above
    app.add_exception_handler(Exception, _unexpected)


def error_response(
    request: Request, exc: PixfleetError, extra: dict[str, object] | None = None
) -> JSONResponse:
    """The JSON response for ``exc`` (with ``extra`` keys in the body), counted in the
    metrics."""
    status = status_of(exc)
    services_of(request).metrics.errors.labels(exc.code, str(status)).inc()
    wait = retry_after(exc)
    headers = {"Retry-After": str(wait)} if wait is not None else None
    body: dict[str, object] = {**error_body(exc.code, exc.message), **(extra or {})}
    return JSONResponse(body, status, headers=headers)


async def _pixfleet_error(request: Request, exc: PixfleetError) -> Response:
    if status_of(exc) >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc.one_line())
    return error_response(request, exc)


async def _batch_incomplete(request: Request, exc: BatchIncomplete) -> Response:
    log.warning("batch published in part (%d task(s)): %s", len(exc.confirmed), exc.error)
    root = root_of(request)
    tasks = [accepted(task, root).model_dump() for task in exc.confirmed]
    return error_response(request, exc.error, {"tasks": tasks})


async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 405:
        return error_response(request, MethodNotAllowed(f"{request.method} is not allowed here"))
    if exc.status_code == 404:
        return error_response(request, NotFound(f"no such resource: {request.url.path[:200]}"))
    return error_response(request, RequestInvalid(str(exc.detail)))


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    return error_response(request, RequestInvalid(f"invalid request: {exc.errors()[:3]}"))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    body = error_body("internal.error", "internal error (the server log has the details)")
    services_of(request).metrics.errors.labels("internal.error", "500").inc()
    return JSONResponse(body, 500)
