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
    leader_leave=false     whether the group's leader sends LeaveGroup when it stops: off, it
                           lets its session time out (tansu 0.6 strands a group whose leader
                           left mid-rebalance; brokers/kafka/leadership.py); true on Apache
                           Kafka hands the leader's partitions on at once

SASL credentials come from ``$PIXFLEET_KAFKA_USER`` / ``$PIXFLEET_KAFKA_PASSWORD`` (never from the
URL, never logged). SASL PLAIN without TLS logs one warning line (the password travels in clear).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from brokers.urls import UrlOptions
from pixfleet.errors import InvalidURL
from pixfleet.settings import redact

log = logging.getLogger(__name__)

ENV_USER = "PIXFLEET_KAFKA_USER"
ENV_PASSWORD = "PIXFLEET_KAFKA_PASSWORD"  # noqa: S105 - the name of a variable, not a secret

#: An idle fetch returns this often: bounds the latency of a new task. 10 ms (was 50) took the
#: one-in-flight round trip from 28 to 11-12 ms for 1.5 -> 4.5 % of a core in an idle worker;
#: 5 ms measured no lower (11 ms) at 7 % (docs/benchmarks.md).
FETCH_MAX_WAIT_MS = 10

_OPTIONS = (
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
    "leader_leave",
)
_NAMESPACE = re.compile(r"[A-Za-z0-9._-]*")


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
    leader_leave: bool = False

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

    def member_options(self, group_id: str | None, *, prefetch: int) -> dict[str, Any]:
        """Options of a consumer-group member: no auto-commit, new groups start at the earliest
        offset, at most ``prefetch`` records per poll."""
        return {
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_records": prefetch,
            "session_timeout_ms": int(self.session_timeout * 1000),
            "max_poll_interval_ms": int(self.max_poll_interval * 1000),
            "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
            "heartbeat_interval_ms": max(int(self.session_timeout * 1000 / 3), 100),
            **self.client_options(),
        }

    @classmethod
    def from_url(cls, url: str) -> KafkaSettings:
        """Settings of ``url``; raises :class:`InvalidURL` for another scheme, credentials in the
        URL, unknown options, bad numbers or flags, and counts below 1."""
        parts = urlsplit(url)
        if parts.scheme != "kafka" or not parts.netloc or "@" in parts.netloc:
            raise InvalidURL(
                "expected kafka://host:port[,host:port] (credentials via environment), "
                f"got {redact(url)!r}"
            )
        opts = UrlOptions.parse(url, known=_OPTIONS, scheme="kafka")
        namespace = opts.text("namespace")
        if not _NAMESPACE.fullmatch(namespace):
            raise InvalidURL("kafka namespace may use letters, digits, '.', '_' and '-'")
        settings = cls(
            bootstrap=parts.netloc,
            partitions=opts.integer("partitions", cls.partitions, minimum=1),
            replication=opts.integer("replication", cls.replication, minimum=1),
            idempotence=opts.flag("idempotence", cls.idempotence),
            session_timeout=opts.number("session_timeout", cls.session_timeout),
            max_poll_interval=opts.number("max_poll_interval", cls.max_poll_interval),
            namespace=namespace,
            delivery_limit=opts.integer("delivery_limit", cls.delivery_limit, minimum=1),
            op_timeout=opts.number("op_timeout", cls.op_timeout),
            security_protocol=opts.text("security_protocol", cls.security_protocol).upper(),
            sasl_mechanism=opts.text("sasl_mechanism").upper(),
            cafile=opts.text("cafile"),
            leader_leave=opts.flag("leader_leave", cls.leader_leave),
        )
        settings.warn_if_insecure()
        return settings

    def warn_if_insecure(self) -> None:
        """One warning line when SASL PLAIN sends the password in cleartext (no TLS)."""
        if self.sasl_mechanism == "PLAIN" and self.security_protocol != "SASL_SSL":
            log.warning(
                "SASL PLAIN without TLS (security_protocol=%s) sends the password for %s in "
                "cleartext; use security_protocol=SASL_SSL",
                self.security_protocol,
                self.safe_url,
            )
