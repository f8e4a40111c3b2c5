"""Settings of the SQLite transport, parsed from ``sqlite:///relative/path.db`` or
``sqlite:////absolute/path.db`` URLs. Options (all optional)::

    lease=30            seconds a delivery stays leased without a heartbeat
    delivery_limit=10   deliveries before a message is dead-lettered (poison guard)
    synchronous=full    or ``normal`` (faster; survives process crashes, not power loss)
    poll=0.25           longest sleep between claims of an idle consumer, in seconds
    watch=0.001         seconds between two looks of an idle consumer at ``PRAGMA
                        data_version``, which wakes it when another connection committed
                        (:mod:`brokers.sqlite.watch`); 0: no looks, claims every ``poll``
    busy_timeout=10     seconds to wait for the write lock before ``broker.unavailable``
    max_length=0        ready tasks a group may hold; a publish that would pass it is refused
                        with ``broker.full`` (nothing stored); 0: unbounded

Unknown options and bad values raise :class:`~pixfleet.errors.InvalidURL`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from brokers.urls import UrlOptions
from pixfleet.errors import InvalidURL
from pixfleet.settings import redact

_OPTIONS = (
    "lease",
    "delivery_limit",
    "synchronous",
    "poll",
    "watch",
    "busy_timeout",
    "max_length",
)
_SYNCHRONOUS = ("FULL", "NORMAL")


@dataclass(frozen=True)
class SqliteSettings:
    path: Path  # absolute, user directory expanded
    lease: float = 30.0
    delivery_limit: int = 10
    synchronous: str = "FULL"  # the PRAGMA value: FULL or NORMAL
    poll: float = 0.25
    watch: float = 0.001  # 0: no data_version watch
    busy_timeout: float = 10.0
    max_length: int = 0  # ready tasks per group; 0: unbounded

    @classmethod
    def from_url(cls, url: str) -> SqliteSettings:
        """Settings of ``url``; raises :class:`InvalidURL` for a bad path or option."""
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/"):
            raise InvalidURL(f"expected sqlite:///path, got {redact(url)!r}")
        raw_path = unquote(parts.path[1:])
        if not raw_path:
            raise InvalidURL(f"sqlite URL has no file path: {redact(url)!r}")
        opts = UrlOptions.parse(url, known=_OPTIONS, scheme="sqlite")
        synchronous = opts.text("synchronous", cls.synchronous).upper()
        if synchronous not in _SYNCHRONOUS:
            raise InvalidURL("sqlite option synchronous must be 'full' or 'normal'")
        return cls(
            path=Path(raw_path).expanduser().resolve(),
            lease=opts.number("lease", cls.lease, minimum=0.0),
            delivery_limit=opts.integer("delivery_limit", cls.delivery_limit, minimum=1),
            synchronous=synchronous,
            poll=opts.number("poll", cls.poll, minimum=0.0),
            watch=opts.number("watch", cls.watch),
            busy_timeout=opts.number("busy_timeout", cls.busy_timeout),
            max_length=opts.integer("max_length", cls.max_length, minimum=0),
        )
