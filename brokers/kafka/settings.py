"""Settings of the Kafka transport, parsed from ``kafka://host:port[,host:port]`` URLs.

    kafka://broker1:9092,broker2:9092?partitions=12&idempotence=true

Options (all optional; unknown ones are refused):

    partitions=6           partitions of the task topic when pixfleet creates it
    replication=1          replication factor of topics pixfleet creates
    idempotence=true       idempotent producer (turn off for brokers without it, e.g. tansu)
    session_timeout=10     seconds before a silent consumer is dropped from its group
    max_poll_interval=300  seconds between polls before a member is evicted (pixfleet keeps
                           polling with paused partitions while every slot is busy)
    namespace=             prefix of every topic and group id (isolates tests / tenants)
    delivery_limit=10      deliveries (counted through retries) before a task is dead-lettered
    op_timeout=15          seconds for one broker round trip
    security_protocol=     PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL
    sasl_mechanism=        PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
    cafile=                CA bundle for SSL

SASL credentials come from ``$PIXFLEET_KAFKA_USER`` / ``$PIXFLEET_KAFKA_PASSWORD`` (never from the
URL, never logged).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pixfleet.errors import InvalidURL

ENV_USER = "PIXFLEET_KAFKA_USER"
ENV_PASSWORD = "PIXFLEET_KAFKA_PASSWORD"  # noqa: S105 - the name of a variable, not a secret

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str
    partitions: int = 6
    replication: int = 1
    idempotence: bool = True
    session_timeout: float = 10.0
    max_poll_interval: float = 300.0
    namespace: str = ""
    delivery_limit: int = 10
    op_timeout: float = 15.0
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    cafile: str = ""

    @property
    def safe_url(self) -> str:
        suffix = f"?namespace={self.namespace}" if self.namespace else ""
        return f"kafka://{self.bootstrap}{suffix}"

    def name(self, base: str) -> str:
        """A topic or group id inside this namespace."""
        return f"{self.namespace}{base}"

    def client_options(self) -> dict[str, Any]:
        """Connection options shared by producers, consumers and the admin client."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "request_timeout_ms": int(self.op_timeout * 1000),
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            import ssl  # noqa: PLC0415

            options["ssl_context"] = ssl.create_default_context(cafile=self.cafile or None)
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = os.environ.get(ENV_USER, "")
            options["sasl_plain_password"] = os.environ.get(ENV_PASSWORD, "")
        return options

    @classmethod
    def from_url(cls, url: str) -> KafkaSettings:
        parts = urlsplit(url)
        if parts.scheme != "kafka" or not parts.netloc or "@" in parts.netloc:
            raise InvalidURL(
                f"expected kafka://host:port[,host:port] (credentials via environment), got {url!r}"
            )
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        known = {
            "partitions",
            "replication",
            "idempotence",
            "session_timeout",
            "max_poll_interval",
            "namespace",
            "delivery_limit",
            "op_timeout",
            "security_protocol",
            "sasl_mechanism",
            "cafile",
        }
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidURL(f"unknown kafka URL option(s) {unknown}; known: {sorted(known)}")
        try:
            settings = cls(
                bootstrap=parts.netloc,
                partitions=int(options.get("partitions", cls.partitions)),
                replication=int(options.get("replication", cls.replication)),
                idempotence=_flag(options.get("idempotence", "true")),
                session_timeout=float(options.get("session_timeout", cls.session_timeout)),
                max_poll_interval=float(options.get("max_poll_interval", cls.max_poll_interval)),
                namespace=options.get("namespace", ""),
                delivery_limit=int(options.get("delivery_limit", cls.delivery_limit)),
                op_timeout=float(options.get("op_timeout", cls.op_timeout)),
                security_protocol=options.get("security_protocol", "PLAINTEXT").upper(),
                sasl_mechanism=options.get("sasl_mechanism", "").upper(),
                cafile=options.get("cafile", ""),
            )
        except ValueError as exc:
            raise InvalidURL(f"bad kafka URL option in {url!r}: {exc}") from exc
        if not re.fullmatch(r"[A-Za-z0-9._-]*", settings.namespace):
            raise InvalidURL("kafka namespace may use letters, digits, '.', '_' and '-'")
        if min(settings.partitions, settings.replication, settings.delivery_limit) < 1:
            raise InvalidURL("kafka options partitions, replication, delivery_limit must be >= 1")
        return settings


def _flag(value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {value!r}")
