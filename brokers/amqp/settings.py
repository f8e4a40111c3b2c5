"""Settings of the RabbitMQ transport, parsed from ``amqp://`` / ``amqps://`` URLs.

    amqp://user:password@host:5672/vhost?heartbeat=30&delivery_limit=10
    amqps://host:5671/vhost?cafile=/etc/ca.pem&certfile=client.pem&keyfile=client.key

pixfleet's own options (removed before the URL reaches aio-pika):

    delivery_limit=10      deliveries before a task is dead-lettered (quorum x-delivery-limit)
    connect_timeout=10     seconds to keep trying the first connection
    reconnect_timeout=60   seconds a publish/reply keeps retrying after a connection loss
                           (a subscription keeps retrying for as long as it takes)
    op_timeout=15          seconds for one broker round trip (declare, publish confirm, ...)
    reply_ttl=900          seconds an unused private reply queue lives (x-expires)
    max_length=0           ready tasks a group queue may hold (x-max-length); a publish to a
                           full queue is refused with ``broker.full``. 0: unbounded
    overflow=reject-publish  what a full queue does: only ``reject-publish`` (dropping the
                           oldest task would lose it silently)
    message_ttl=0          seconds a task may wait in its group queue (x-message-ttl); an
                           expired task is dead-lettered (reason ``expired``). 0: forever

``max_length`` and ``message_ttl`` are queue arguments, fixed when a group queue is first
declared: every process must pass the same values (or RabbitMQ refuses the declaration), and
an existing queue keeps its own (use a RabbitMQ policy to change them; docs/rabbitmq.md).

Options aiormq understands are passed through: ``heartbeat`` (default 30), ``name``,
``cafile``, ``capath``, ``cadata``, ``keyfile``, ``certfile``, ``no_verify_ssl``,
``frame_max``, ``channel_max``. Without credentials in the URL, ``$PIXFLEET_AMQP_USER`` and
``$PIXFLEET_AMQP_PASSWORD`` are used (prefer them: a URL on the command line shows in ``ps``).
Credentials never appear in logs or errors (:attr:`AmqpSettings.safe_url`). One warning line is
logged when ``no_verify_ssl`` disables TLS verification, or when a password would travel in
cleartext (``amqp://`` to a host other than loopback).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from urllib.parse import SplitResult, quote, urlencode, urlsplit, urlunsplit

from brokers.urls import UrlOptions
from pixfleet.errors import InvalidURL
from pixfleet.settings import is_loopback, redact

log = logging.getLogger(__name__)

ENV_USER = "PIXFLEET_AMQP_USER"
ENV_PASSWORD = "PIXFLEET_AMQP_PASSWORD"  # noqa: S105 - the name of a variable, not a secret

_OURS = {
    "delivery_limit",
    "connect_timeout",
    "reconnect_timeout",
    "op_timeout",
    "reply_ttl",
    "max_length",
    "overflow",
    "message_ttl",
}
_AIORMQ = {
    "heartbeat",
    "name",
    "cafile",
    "capath",
    "cadata",
    "keyfile",
    "certfile",
    "no_verify_ssl",
    "frame_max",
    "channel_max",
}


@dataclass(frozen=True)
class AmqpSettings:
    url: str  # what aio-pika connects to (may hold credentials: never log it)
    delivery_limit: int = 10
    connect_timeout: float = 10.0
    reconnect_timeout: float = 60.0
    op_timeout: float = 15.0
    reply_ttl: float = 900.0
    max_length: int = 0  # ready tasks per group queue; 0: unbounded
    message_ttl: float = 0.0  # seconds a task may wait; 0: forever

    @property
    def safe_url(self) -> str:
        return redact(self.url)

    @classmethod
    def from_url(cls, url: str) -> AmqpSettings:
        """Settings of ``url``; raises :class:`InvalidURL` for another scheme, a missing host,
        an unknown option or a bad value."""
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise InvalidURL(f"expected amqp://host[:port][/vhost], got {redact(url)!r}")
        opts = UrlOptions.parse(url, known=_OURS | _AIORMQ, scheme="amqp")
        passed = {k: v for k, v in opts.values.items() if k in _AIORMQ}
        passed.setdefault("heartbeat", "30")
        netloc = _netloc_with_credentials(parts)
        _warn_if_insecure(parts, netloc, opts)
        return cls(
            url=urlunsplit((parts.scheme, netloc, parts.path, urlencode(passed), "")),
            delivery_limit=opts.integer("delivery_limit", cls.delivery_limit, minimum=1),
            connect_timeout=opts.number("connect_timeout", cls.connect_timeout),
            reconnect_timeout=opts.number("reconnect_timeout", cls.reconnect_timeout),
            op_timeout=opts.number("op_timeout", cls.op_timeout, minimum=0.0),
            reply_ttl=opts.number("reply_ttl", cls.reply_ttl, minimum=0.0),
            max_length=opts.integer("max_length", cls.max_length, minimum=0),
            message_ttl=_message_ttl(opts),
        )


def _message_ttl(opts: UrlOptions) -> float:
    """``message_ttl`` (seconds, 0 for none), after checking ``overflow``."""
    if opts.text("overflow", "reject-publish") != "reject-publish":
        raise InvalidURL(
            "amqp option overflow supports only reject-publish (drop-head would lose tasks "
            "silently; quorum queues dead-letter at-least-once only with reject-publish)"
        )
    ttl = opts.number("message_ttl", 0.0)
    if ttl < 0:
        raise InvalidURL(f"amqp option message_ttl must be >= 0, got {ttl:g}")
    return ttl


def _warn_if_insecure(parts: SplitResult, netloc: str, opts: UrlOptions) -> None:
    """One warning line for a configuration that exposes the connection (never the secret)."""
    if opts.flag("no_verify_ssl", default=False):
        log.warning(
            "TLS certificate verification is disabled (no_verify_ssl) for %s: anyone on the "
            "network path can pose as the broker and read the credentials",
            opts.safe_url,
        )
    has_password = ":" in netloc.rpartition("@")[0]
    if parts.scheme == "amqp" and has_password and not is_loopback(parts.hostname):
        log.warning(
            "the password for %s is sent in cleartext (amqp:// to a non-loopback host); "
            "use amqps://",
            opts.safe_url,
        )


def _netloc_with_credentials(parts: SplitResult) -> str:
    """The URL's host part, with the credentials from the environment if it has none."""
    if parts.username is not None or not os.environ.get(ENV_USER):
        return parts.netloc
    user = quote(os.environ[ENV_USER], safe="")
    password = quote(os.environ.get(ENV_PASSWORD, ""), safe="")
    return f"{user}:{password}@{parts.netloc}"
