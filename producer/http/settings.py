"""What one ingress instance is configured with: where the broker and blobs are, and its limits.

Every instance of a deployment is configured alike and keeps no state another instance needs:
the broker and the blob store (tasks, completion records, outputs) are the shared state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from brokers.names import DEFAULT_GROUP
from pixfleet.envelope import is_group_name
from pixfleet.errors import ConfigError
from pixfleet.images import MAX_BYTES, MAX_PIXELS

MIB = 1024 * 1024

#: Environment variable holding the bearer token (``uploader serve --token``).
ENV_TOKEN = "PIXFLEET_TOKEN"  # noqa: S105 - the variable's name, not a secret


@dataclass(frozen=True)
class IngressLimits:
    """Bounds on one request; anything over them is refused before anything is published."""

    max_file_bytes: int = MAX_BYTES  # one file part (413 input.too_large)
    max_request_bytes: int = 256 * MIB  # the whole body (413 request.too_large)
    max_files: int = 16  # file parts per request (413 request.too_many_files)
    max_pixels: int = MAX_PIXELS  # from the image header (413 image.too_large)
    request_timeout: float = 300.0  # seconds to receive, store and publish (408)
    max_in_flight: int = 64  # uploads this instance handles at once (429 ingress.busy)

    def __post_init__(self) -> None:
        numbers = {
            "max_file_bytes": self.max_file_bytes,
            "max_request_bytes": self.max_request_bytes,
            "max_files": self.max_files,
            "max_pixels": self.max_pixels,
            "request_timeout": self.request_timeout,
            "max_in_flight": self.max_in_flight,
        }
        bad = [name for name, value in numbers.items() if value <= 0]
        if bad:
            raise ConfigError(f"limits must be positive: {', '.join(bad)}")


@dataclass(frozen=True)
class ServeSettings:
    """One instance's configuration (``uploader serve`` options). Raises :class:`ConfigError`."""

    broker_url: str
    blobs_url: str
    groups: tuple[str, ...] = (DEFAULT_GROUP,)  # default target groups of an upload
    limits: IngressLimits = field(default_factory=IngressLimits)
    token: str | None = None  # bearer token for /v1/* (None: no auth)
    cors_origins: tuple[str, ...] = ()  # CORS is off unless origins are named
    sse_poll: float = 0.4  # seconds between looks at the completion records
    sse_max: float = 300.0  # seconds one event stream stays open (clients reconnect)
    sse_heartbeat: float = 15.0  # seconds between keep-alive comments

    def __post_init__(self) -> None:
        bad = [g for g in self.groups if not is_group_name(g)]
        if bad or not self.groups:
            raise ConfigError(f"invalid or no default group(s): {bad}")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("the bearer token must be at least 16 characters")
        if min(self.sse_poll, self.sse_max, self.sse_heartbeat) <= 0:
            raise ConfigError("event stream intervals must be positive")
