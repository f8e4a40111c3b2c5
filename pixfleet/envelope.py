"""The wire envelopes: :class:`Task` and :class:`Result`, JSON only, schema version ``v``.

Both models are frozen and validated strictly. :func:`decode_task` / :func:`decode_result` are the
only way bytes from a broker become envelopes; they raise :class:`~pixfleet.errors.EnvelopeError`
(bad JSON, schema violation), :class:`~pixfleet.errors.EnvelopeVersionError` (a ``v`` this code
does not know) or, with a signing key set, ``EnvelopeUnsigned`` / ``EnvelopeBadSignature``
(:mod:`pixfleet.signing`), and never anything else, so a consumer can dead-letter the message
and go on.

The JSON Schemas in ``pixfleet/schema/`` are generated from these models (``python -m
pixfleet.schema``) and a test keeps them in sync, so producers in other languages can write tasks.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    model_validator,
)

from pixfleet.errors import EnvelopeError, EnvelopeVersionError
from pixfleet.signing import SIG_FIELD, keyring, sign, verify

SCHEMA_VERSION: Final = 1
#: The reply channel of a task that names none (``brokers.names.DEFAULT_RESULTS`` is this).
DEFAULT_REPLY_TO: Final = "results"

#: Group names become queue names and Kafka group ids: keep them boring.
GROUP_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
GroupName = Annotated[str, StringConstraints(pattern=GROUP_PATTERN)]
#: Identifiers (task ids, correlation ids, reply channel names).
Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")]
#: One to sixteen ``/``-separated segments, each starting with a letter or digit: a blob key
#: relative to the store, never absolute, never ``..``, never a scheme.
KEY_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}"
KEY_PATTERN = rf"^{KEY_SEGMENT}(?:/{KEY_SEGMENT}){{0,15}}$"
BlobKey = Annotated[str, StringConstraints(pattern=KEY_PATTERN)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
ContentType = Annotated[str, StringConstraints(pattern=r"^image/[a-z0-9.+-]{1,64}$")]
TraceParent = Annotated[
    str, StringConstraints(pattern=r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class BlobRef(_Frozen):
    """Claim check: where the bytes are and what they must hash to.

    ``uri`` is a key relative to the blob store (``uploads/ab/cd/<sha256>``), resolved against
    the store URL each machine is configured with, so stores may be mounted anywhere."""

    uri: BlobKey
    sha256: Sha256
    size: Annotated[int, Field(ge=0)]
    content_type: ContentType


class Task(_Frozen):
    """One unit of work: process one stored image for the targeted groups."""

    v: Literal[1] = SCHEMA_VERSION
    id: Ident = Field(description="Unique, stable across redeliveries; output keys derive from it")
    created_at: AwareDatetime
    groups: tuple[GroupName, ...] = Field(
        default=(), description="Target groups; empty means every subscribed group"
    )
    blob: BlobRef
    filename: Annotated[str, StringConstraints(max_length=255)] = ""
    params: dict[str, JsonValue] = Field(default_factory=dict)
    reply_to: Ident = DEFAULT_REPLY_TO
    correlation_id: Ident
    attempt: Annotated[int, Field(ge=1)] = 1
    deadline: AwareDatetime | None = None
    trace: TraceParent | None = None

    @classmethod
    def new(
        cls,
        blob: BlobRef,
        *,
        groups: tuple[str, ...] = (),
        filename: str = "",
        params: dict[str, JsonValue] | None = None,
        reply_to: str = DEFAULT_REPLY_TO,
        correlation_id: str | None = None,
        deadline: datetime | None = None,
        task_id: str | None = None,
        trace: str | None = None,
    ) -> Task:
        """Build a task; ``task_id`` (an idempotency key) defaults to a fresh id, the
        correlation id to the task id; ``trace`` is the W3C ``traceparent`` of the span that
        made it."""
        task_id = task_id or uuid.uuid4().hex
        return cls(
            id=task_id,
            created_at=datetime.now(UTC),
            groups=groups,
            blob=blob,
            filename=filename[-255:],
            params=params or {},
            reply_to=reply_to,
            correlation_id=correlation_id or task_id,
            deadline=deadline,
            trace=trace,
        )


class Output(_Frozen):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    uri: BlobKey = Field(description="Key relative to the blob store")
    width: Annotated[int, Field(ge=1)]
    height: Annotated[int, Field(ge=1)]
    format: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]{1,16}$")]
    bytes: Annotated[int, Field(ge=0)]


class ErrorInfo(_Frozen):
    code: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")]
    message: Annotated[str, StringConstraints(max_length=2000)]
    retryable: bool = False


class WorkerInfo(_Frozen):
    id: str
    host: str
    pid: int


class Result(_Frozen):
    """The outcome of one task in one group, sent to the task's ``reply_to`` channel."""

    v: Literal[1] = SCHEMA_VERSION
    task_id: Ident
    correlation_id: Ident
    group: GroupName
    status: Literal["ok", "error"]
    filename: Annotated[str, StringConstraints(max_length=255)] = Field(
        default="", description="The task's filename, so a result can be matched to its file"
    )
    outputs: tuple[Output, ...] = ()
    meta: dict[str, JsonValue] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    worker: WorkerInfo
    attempt: Annotated[int, Field(ge=1)] = 1
    timings_ms: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _status_matches_error(self) -> Result:
        if (self.status == "error") != (self.error is not None):
            raise ValueError("status 'error' requires an error object and 'ok' forbids one")
        return self


def is_group_name(name: str) -> bool:
    """Whether ``name`` is a valid group name (it becomes queue names and Kafka group ids)."""
    return re.fullmatch(GROUP_PATTERN, name) is not None


def encode(message: Task | Result) -> bytes:
    """Serialise an envelope to compact UTF-8 JSON, signed (a ``sig`` member) when a signing
    key is configured (:mod:`pixfleet.signing`)."""
    keys = keyring()
    if keys is None:
        return message.model_dump_json().encode()
    signed = sign(message.model_dump(mode="json"), keys)
    text = json.dumps(signed, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


#: Largest envelope body accepted, checked before parsing (a task is a few hundred bytes).
MAX_BODY_BYTES: Final = 256 * 1024


def _check_version(body: bytes | str) -> bytes | str:
    """Parse ``body``, check its version and (with a key set) its signature; returns the JSON
    the model validates: ``body`` itself, or ``body`` without its ``sig`` member."""
    if len(body) > MAX_BODY_BYTES:
        raise EnvelopeError(f"body of {len(body)} bytes exceeds the limit of {MAX_BODY_BYTES}")
    try:
        obj: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError, MemoryError) as exc:
        # RecursionError: deeply nested JSON is hostile, never a crash of the consumer.
        raise EnvelopeError(f"not valid JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise EnvelopeError(f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("v")
    if version != SCHEMA_VERSION:
        raise EnvelopeVersionError(
            f"unsupported schema version v={str(version)[:20]!r} "
            f"(this worker understands v={SCHEMA_VERSION})"
        )
    keys = keyring()
    if keys is not None:
        verify(obj, keys)  # on the raw object, before the model sees anything
    if SIG_FIELD not in obj:
        return body
    return json.dumps({k: v for k, v in obj.items() if k != SIG_FIELD})


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def decode_task(body: bytes | str) -> Task:
    """Parse and validate a task body. Raises only :class:`EnvelopeError` subclasses."""
    checked = _check_version(body)
    try:
        return Task.model_validate_json(checked)
    except ValidationError as exc:
        raise EnvelopeError(f"invalid task: {_describe(exc)}") from exc
    except (ValueError, RecursionError, MemoryError) as exc:
        raise EnvelopeError(f"invalid task: {type(exc).__name__}") from None


def decode_result(body: bytes | str) -> Result:
    """Parse and validate a result body. Raises only :class:`EnvelopeError` subclasses."""
    checked = _check_version(body)
    try:
        return Result.model_validate_json(checked)
    except ValidationError as exc:
        raise EnvelopeError(f"invalid result: {_describe(exc)}") from exc
    except (ValueError, RecursionError, MemoryError) as exc:
        raise EnvelopeError(f"invalid result: {type(exc).__name__}") from None
