"""The records pixfleet reads and writes on Kafka, and the headers they carry.

Pure helpers over the parts of aiokafka's ``ConsumerRecord`` pixfleet uses; the header names are
in :mod:`brokers.names`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from brokers import names

Headers = list[tuple[str, bytes]]


class Record(Protocol):
    """The parts of aiokafka's ConsumerRecord this transport uses."""

    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


def header(record: Record, key: str) -> bytes | None:
    for name, value in record.headers or ():
        if name == key:
            return bytes(value)
    return None


def is_targeted(record: Record, group: str) -> bool:
    """Whether a task record is meant for ``group`` (no targets: every group)."""
    targets = (header(record, names.KAFKA_HEADER_GROUPS) or b"").decode()
    return not targets or group in targets.split(",")


def is_due(record: Record, now_ms: float) -> bool:
    """Whether a retry copy's not-before time has come (records without one always are)."""
    not_before = header(record, names.KAFKA_HEADER_NOT_BEFORE)
    return not_before is None or float(not_before) <= now_ms


def attempt_of(record: Record) -> int:
    """The delivery number of this record: deliveries before its retry copy was made, plus one."""
    return int(header(record, names.KAFKA_HEADER_ATTEMPT) or b"0") + 1


def reason_of(record: Record) -> str:
    """The reason a dead letter carries (empty if none)."""
    return (header(record, names.KAFKA_HEADER_REASON) or b"").decode()


def task_headers(groups: tuple[str, ...]) -> Headers:
    return [(names.KAFKA_HEADER_GROUPS, ",".join(groups).encode())]


def result_headers(correlation_id: str) -> Headers:
    return [(names.KAFKA_HEADER_CORRELATION, correlation_id.encode())]


def retry_headers(group: str, attempt: int, delay: float) -> Headers:
    """A retry copy for ``group``: made after ``attempt`` deliveries, due ``delay`` s from now."""
    not_before = int((time.time() + max(delay, 0.0)) * 1000)
    return [
        (names.KAFKA_HEADER_GROUPS, group.encode()),
        (names.KAFKA_HEADER_ATTEMPT, str(attempt).encode()),
        (names.KAFKA_HEADER_NOT_BEFORE, str(not_before).encode()),
    ]


def dead_headers(reason: str) -> Headers:
    return [(names.KAFKA_HEADER_REASON, reason[:2000].encode())]
