"""Settings of the RabbitMQ transport, parsed from ``amqp://`` / ``amqps://`` URLs.

    amqp://user:password@host:5672/vhost?heartbeat=30&delivery_limit=10
    amqps://host:5671/vhost?cafile=/etc/ca.pem&certfile=client.pem&keyfile=client.key

pixfleet's own options (removed before the URL reaches aio-pika):

    delivery_limit=10      deliveries before a task is dead-lettered (quorum x-delivery-limit)
    connect_timeout=10     seconds to keep trying the first connection
    reconnect_timeout=60   seconds an operation keeps retrying after a connection loss
    op_timeout=15          seconds for one broker round trip (declare, publish confirm, ...)
    reply_ttl=900          seconds an unused private reply queue lives (x-expires)

Options aiormq understands are passed through: ``heartbeat`` (default 30), ``name``,
``cafile``, ``capath``, ``cadata``, ``keyfile``, ``certfile``, ``no_verify_ssl``,
``frame_max``, ``channel_max``. Without credentials in the URL, ``$PIXFLEET_AMQP_USER`` and
``$PIXFLEET_AMQP_PASSWORD`` are used. Credentials never appear in logs or errors
(:attr:`AmqpSettings.safe_url`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pixfleet.errors import InvalidURL
from pixfleet.settings import redact

ENV_USER = "PIXFLEET_AMQP_USER"
ENV_PASSWORD = "PIXFLEET_AMQP_PASSWORD"  # noqa: S105 - the name of a variable, not a secret

_OURS = {"delivery_limit", "connect_timeout", "reconnect_timeout", "op_timeout", "reply_ttl"}
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

    @property
    def safe_url(self) -> str:
        return redact(self.url)

    @classmethod
    def from_url(cls, url: str) -> AmqpSettings:
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise InvalidURL(f"expected amqp://host[:port][/vhost], got {redact(url)!r}")
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(options) - _OURS - _AIORMQ)
        if unknown:
            raise InvalidURL(
                f"unknown amqp URL option(s) {unknown}; known: {sorted(_OURS | _AIORMQ)}"
            )
        ours = {k: options.pop(k) for k in list(options) if k in _OURS}
        options.setdefault("heartbeat", "30")
        netloc = parts.netloc
        if parts.username is None and os.environ.get(ENV_USER):
            user = quote(os.environ[ENV_USER], safe="")
            password = quote(os.environ.get(ENV_PASSWORD, ""), safe="")
            netloc = f"{user}:{password}@{netloc}"
        clean = urlunsplit((parts.scheme, netloc, parts.path, urlencode(options), ""))
        try:
            settings = cls(
                url=clean,
                delivery_limit=int(ours.get("delivery_limit", cls.delivery_limit)),
                connect_timeout=float(ours.get("connect_timeout", cls.connect_timeout)),
                reconnect_timeout=float(ours.get("reconnect_timeout", cls.reconnect_timeout)),
                op_timeout=float(ours.get("op_timeout", cls.op_timeout)),
                reply_ttl=float(ours.get("reply_ttl", cls.reply_ttl)),
            )
        except ValueError as exc:
            raise InvalidURL(f"bad amqp URL option in {redact(url)!r}: {exc}") from exc
        if settings.delivery_limit < 1 or min(settings.op_timeout, settings.reply_ttl) <= 0:
            raise InvalidURL("amqp options: delivery_limit >= 1, op_timeout and reply_ttl > 0")
        return settings
