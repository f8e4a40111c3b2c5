"""pixfleet's transport layer: the role contract and the pluggable brokers.

Build a transport from a URL with :func:`open_transport`. The scheme table maps each URL scheme
to ``module:Class``; modules are imported lazily, so a process that uses SQLite never imports
aio-pika or aiokafka, and a new transport costs one line here plus its package::

    async with open_transport("sqlite:///var/lib/pixfleet/broker.db") as transport:
        await transport.publish(task)
"""

from __future__ import annotations

import importlib
from typing import Protocol, cast
from urllib.parse import urlsplit

from brokers.contract import (
    Admin,
    DeadLetter,
    Delivery,
    GroupStats,
    Inspector,
    ReplyChannels,
    Subscription,
    TaskQueue,
    Transport,
)
from pixfleet import signing
from pixfleet.errors import InvalidURL
from pixfleet.settings import redact

__all__ = [
    "TRANSPORTS",
    "Admin",
    "DeadLetter",
    "Delivery",
    "GroupStats",
    "Inspector",
    "ReplyChannels",
    "Subscription",
    "TaskQueue",
    "Transport",
    "open_transport",
]

#: URL scheme -> ``module:Class``; the class has ``from_url(url) -> Transport``.
TRANSPORTS: dict[str, str] = {
    "sqlite": "brokers.sqlite:SqliteTransport",
    "amqp": "brokers.amqp:AmqpTransport",
    "amqps": "brokers.amqp:AmqpTransport",
    "kafka": "brokers.kafka:KafkaTransport",
}


class _FromUrl(Protocol):
    def from_url(self, url: str) -> Transport: ...


def open_transport(url: str) -> Transport:
    """The transport for ``url`` (not yet connected: use it with ``async with``).

    Raises :class:`~pixfleet.errors.InvalidURL` for an unknown scheme or bad options, and
    :class:`~pixfleet.errors.ConfigError` for an unreadable signing key (checked here, so a
    misconfigured process stops at once instead of dead-lettering every message).
    """
    signing.keyring()
    scheme = urlsplit(url).scheme
    target = TRANSPORTS.get(scheme)
    if target is None:
        raise InvalidURL(
            f"unsupported broker URL {redact(url)!r}: scheme {scheme!r} is not one of "
            f"{', '.join(TRANSPORTS)}"
        )
    module_name, _, class_name = target.partition(":")
    cls = cast(_FromUrl, getattr(importlib.import_module(module_name), class_name))
    return cls.from_url(url)
