"""pixfleet's transport layer: envelopes, errors, blob store and pluggable brokers.

Build a transport from a URL with :func:`open_transport` (imports are lazy, so a process that
uses SQLite never imports aio-pika or aiokafka)::

    async with open_transport("sqlite:///.pixfleet/broker.db") as transport:
        await transport.publish(task)
"""

from __future__ import annotations

from urllib.parse import urlsplit

from brokers.base import DeadLetter, Delivery, GroupStats, Transport
from brokers.config import redact
from brokers.envelope import BlobRef, Result, Task
from brokers.errors import InvalidURL, PixfleetError

__all__ = [
    "BlobRef",
    "DeadLetter",
    "Delivery",
    "GroupStats",
    "PixfleetError",
    "Result",
    "Task",
    "Transport",
    "open_transport",
]

SUPPORTED_SCHEMES = ("sqlite", "amqp", "amqps", "kafka")


def open_transport(url: str) -> Transport:
    """The transport for ``url`` (not yet connected: use it with ``async with``).

    Raises :class:`~brokers.errors.InvalidURL` for an unknown scheme or bad options.
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from brokers.sqlite import SqliteTransport  # noqa: PLC0415 - lazy by design

        return SqliteTransport.from_url(url)
    if scheme in ("amqp", "amqps"):
        from brokers.amqp import AmqpTransport  # noqa: PLC0415 - lazy: imports aio-pika

        return AmqpTransport.from_url(url)
    if scheme == "kafka":
        from brokers.kafka import KafkaTransport  # noqa: PLC0415 - lazy: imports aiokafka

        return KafkaTransport.from_url(url)
    raise InvalidURL(
        f"unsupported broker URL {redact(url)!r}: scheme {scheme!r} is not one of "
        f"{', '.join(SUPPORTED_SCHEMES)}"
    )
