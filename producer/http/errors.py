"""HTTP errors: the ingress's own error codes and the status every code is answered with.

Every error response is JSON ``{"error": {"code", "message"}}`` with the same stable codes the
CLI prints (``docs/errors.md``), so a client branches on ``code``, never on the message. A bug
is a ``500`` with code ``internal.error`` and no traceback (that goes to the log).
"""

from __future__ import annotations

from pixfleet.errors import (
    BlobError,
    BlobKeyError,
    BlobNotFound,
    BrokerBlocked,
    BrokerError,
    ConfigError,
    InputError,
    InputNotImage,
    InputTooLarge,
    ParamsInvalid,
    PixfleetError,
    ResultTimeout,
)
from pixfleet.images import ImageError, ImageTooLarge
from producer.outputs import TaskNotFound


class RequestInvalid(PixfleetError):
    """A malformed request: bad multipart body, missing file part, bad form field."""

    code = "request.invalid"


class NotMultipart(PixfleetError):
    code = "request.not_multipart"


class RequestTooLarge(PixfleetError):
    code = "request.too_large"


class TooManyFiles(PixfleetError):
    code = "request.too_many_files"


class RequestTimedOut(PixfleetError):
    code = "request.timeout"


class Unauthorized(PixfleetError):
    code = "auth.required"


class NotFound(PixfleetError):
    """No such route, task or output."""

    code = "http.not_found"


class MethodNotAllowed(PixfleetError):
    code = "http.method_not_allowed"


#: No such task: the same error (and code) as ``uploader get`` and ``Client.get`` raise.
TaskUnknown = TaskNotFound


class Conflict(PixfleetError):
    """An Idempotency-Key reused for a different upload."""

    code = "request.conflict"


class IngressBusy(PixfleetError):
    """This instance handles as many uploads as it may; another instance (or later) will do."""

    code = "ingress.busy"
    retryable = True


class Draining(PixfleetError):
    """The instance is shutting down: it finishes what it has and takes nothing new."""

    code = "ingress.draining"
    retryable = True


class Unready(PixfleetError):
    """The broker or the blob store does not answer (``/readyz``)."""

    code = "ingress.unready"
    retryable = True


#: Most specific first: the first class an error is an instance of gives its status.
_STATUS: tuple[tuple[type[PixfleetError], int], ...] = (
    (Unauthorized, 401),
    (TaskUnknown, 404),
    (NotFound, 404),
    (BlobNotFound, 404),
    (BlobKeyError, 404),
    (MethodNotAllowed, 405),
    (Conflict, 409),
    (RequestTimedOut, 408),
    (RequestTooLarge, 413),
    (TooManyFiles, 413),
    (InputTooLarge, 413),
    (ImageTooLarge, 413),
    (NotMultipart, 415),
    (InputNotImage, 415),
    (IngressBusy, 429),
    (BrokerBlocked, 429),
    (Draining, 503),
    (Unready, 503),
    (BrokerError, 503),
    (BlobError, 503),
    (ResultTimeout, 504),
    (RequestInvalid, 400),
    (ParamsInvalid, 400),
    (ConfigError, 400),
    (InputError, 400),
    (ImageError, 400),
)


def status_of(exc: PixfleetError) -> int:
    """The HTTP status ``exc`` is answered with (500 for an error no rule covers)."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def retry_after(exc: PixfleetError) -> int | None:
    """Seconds a client should wait before retrying, for retryable refusals."""
    if status_of(exc) in (429, 503):
        return 1 if isinstance(exc, IngressBusy) else 5
    return None


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON error body: ``{"error": {"code", "message"}}`` (message on one line)."""
    return {"error": {"code": code, "message": " ".join(message.split())}}
