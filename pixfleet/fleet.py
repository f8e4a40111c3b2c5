"""The fleet's wire models: worker heartbeats and control messages (JSON only, version ``v``).

* :class:`WorkerStatus` - what a worker announces every ``heartbeat`` seconds through its
  transport; ``id`` is the same ``worker.id`` its results carry (``host:pid``).
* :class:`ControlRequest` - ``ping``/``stats``/``pause``/``resume``/``shutdown`` for one worker,
  the workers of one group, or all; replies go to the requester's inbox (``reply_to``).
* :class:`ControlReply` - one worker's answer to one request.

Bodies come from anyone who can write to the broker, so :func:`decode_status`,
:func:`decode_request` and :func:`decode_reply` check the size before parsing and raise only
:class:`~pixfleet.errors.EnvelopeError` (like :mod:`pixfleet.envelope`): a transport drops such a
body with a log line and goes on. Liveness (:func:`liveness`): a worker whose last heartbeat is
older than :data:`LOST_AFTER` heartbeats is ``lost``; after :data:`DROP_AFTER` it is dropped.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeVar

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

from pixfleet.envelope import ErrorInfo, GroupName, Ident
from pixfleet.errors import EnvelopeError, EnvelopeVersionError

FLEET_VERSION: Final = 1
#: Largest heartbeat or control body accepted (checked before parsing).
MAX_FLEET_BYTES: Final = 64 * 1024
#: Default seconds between two heartbeats of a worker.
HEARTBEAT: Final = 5.0
#: Heartbeats missed before a worker shows as ``lost``, and before it is dropped.
LOST_AFTER: Final = 3
DROP_AFTER: Final = 12
#: Longest heartbeat interval a worker may use, and how far back a roster looks.
MAX_HEARTBEAT: Final = 30.0
ROSTER_WINDOW: Final = DROP_AFTER * MAX_HEARTBEAT

WorkerPhase = Literal["starting", "consuming", "reconnecting", "paused", "draining", "stopped"]
Command = Literal["ping", "stats", "pause", "resume", "shutdown"]
COMMANDS: Final[tuple[Command, ...]] = ("ping", "stats", "pause", "resume", "shutdown")
#: A requester's inbox: 32 hex digits; each transport maps it to its own queue / topic / rows.
InboxAddress = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Text = Annotated[str, StringConstraints(max_length=255)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class WorkerStatus(_Frozen):
    """One heartbeat: who a worker is, what it does and how it is doing."""

    v: Literal[1] = FLEET_VERSION
    id: Ident
    host: Text
    pid: Annotated[int, Field(ge=0)]
    version: Text = ""
    transport: Text = ""
    groups: tuple[GroupName, ...] = ()
    concurrency: Annotated[int, Field(ge=0)] = 0
    in_flight: Annotated[int, Field(ge=0)] = 0
    ok: Annotated[int, Field(ge=0)] = 0
    failed: Annotated[int, Field(ge=0)] = 0
    retried: Annotated[int, Field(ge=0)] = 0
    state: WorkerPhase = "starting"
    heartbeat: Annotated[float, Field(gt=0, le=MAX_HEARTBEAT)] = HEARTBEAT
    started_at: AwareDatetime
    last_seen: AwareDatetime


class ControlTarget(_Frozen):
    """``all``, one ``worker`` by id, or every worker of a ``group``."""

    kind: Literal["all", "worker", "group"]
    name: Ident | None = None

    @model_validator(mode="after")
    def _name_matches_kind(self) -> ControlTarget:
        if (self.kind == "all") != (self.name is None):
            raise ValueError("'all' takes no name; 'worker' and 'group' need one")
        return self

    def reaches(self, worker_id: str, groups: tuple[str, ...]) -> bool:
        if self.kind == "all":
            return True
        return self.name == worker_id if self.kind == "worker" else self.name in groups


class ControlRequest(_Frozen):
    v: Literal[1] = FLEET_VERSION
    id: Ident
    command: Command
    target: ControlTarget
    reply_to: InboxAddress
    sent_at: AwareDatetime

    @classmethod
    def new(cls, command: Command, target: ControlTarget, reply_to: str) -> ControlRequest:
        return cls(
            id=uuid.uuid4().hex,
            command=command,
            target=target,
            reply_to=reply_to,
            sent_at=datetime.now(UTC),
        )


class ControlReply(_Frozen):
    v: Literal[1] = FLEET_VERSION
    request_id: Ident
    worker: Ident
    command: Command
    ok: bool = True
    data: dict[str, JsonValue] = Field(default_factory=dict)
    error: ErrorInfo | None = None


def new_inbox() -> str:
    """A fresh inbox address (128 random bits)."""
    return uuid.uuid4().hex


def liveness(status: WorkerStatus, now: datetime) -> Literal["live", "lost", "gone"]:
    """``live``, ``lost`` (missed :data:`LOST_AFTER` heartbeats) or ``gone`` (missed
    :data:`DROP_AFTER`: no longer listed). A stopped worker that said goodbye is gone."""
    age = (now - status.last_seen).total_seconds()
    if status.state == "stopped" or age > DROP_AFTER * status.heartbeat:
        return "gone"
    return "lost" if age > LOST_AFTER * status.heartbeat else "live"


def encode_fleet(message: WorkerStatus | ControlRequest | ControlReply) -> bytes:
    return message.model_dump_json().encode()


M = TypeVar("M", WorkerStatus, ControlRequest, ControlReply)


def _decode(model: type[M], body: bytes | str) -> M:
    what = model.__name__
    if len(body) > MAX_FLEET_BYTES:
        raise EnvelopeError(f"{what} of {len(body)} bytes exceeds {MAX_FLEET_BYTES}")
    try:
        obj: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError, MemoryError) as exc:
        raise EnvelopeError(f"{what}: not valid JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise EnvelopeError(f"{what}: expected a JSON object, got {type(obj).__name__}")
    if obj.get("v") != FLEET_VERSION:
        raise EnvelopeVersionError(f"{what}: unsupported version v={str(obj.get('v'))[:20]!r}")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise EnvelopeError(f"invalid {what}: {where}: {first['msg']}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise EnvelopeError(f"invalid {what}: {type(exc).__name__}") from None


def decode_status(body: bytes | str) -> WorkerStatus:
    return _decode(WorkerStatus, body)


def decode_request(body: bytes | str) -> ControlRequest:
    return _decode(ControlRequest, body)


def decode_reply(body: bytes | str) -> ControlReply:
    return _decode(ControlReply, body)
