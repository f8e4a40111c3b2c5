"""The records pixfleet reads and writes on Kafka, and the headers they carry.

Pure helpers over the parts of aiokafka's ``ConsumerRecord`` pixfleet uses; the header names are
in :mod:`brokers.names`.

**Headers are untrusted input**: anyone who can produce to a topic can set them. Each pixfleet
header is read strictly - once, ASCII digits for numbers, UTF-8 for group lists - and a header
that breaks a rule raises :class:`~pixfleet.errors.EnvelopeError` naming it, so the record is
dead-lettered with that reason. A bad attempt count is never read as a reset. Values are clamped:
the attempt is at least 1, a retry delay at most :data:`MAX_RETRY_DELAY` seconds.

**Retry delays are differences of one clock**: a retry copy carries its not-before time and, as
the record's own timestamp, the time it was made - both read from the nacking worker's clock in
one go - so the delay is their difference, whatever that clock's offset. The consumer waits that
long on its own monotonic clock from the moment it fetched the copy: a wall clock off by minutes
on either side can neither release a retry early nor hold it for minutes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from brokers import names
from pixfleet.errors import EnvelopeError, PixfleetError

Headers = list[tuple[str, bytes]]

#: The longest retry delay pixfleet honours, in seconds (a later not-before is clamped to it).
MAX_RETRY_DELAY = 3600.0
_COUNT = re.compile(rb"[0-9]{1,9}")
_MILLIS = re.compile(rb"-?[0-9]{1,18}")
_REASON_MAX = 2000


class Record(Protocol):
    """The parts of aiokafka's ConsumerRecord this transport uses."""

    offset: int
    timestamp: int  # milliseconds; the producer's clock (CreateTime)
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]]


@dataclass(frozen=True)
class RetryInfo:
    """What a record's headers say about its deliveries: ``attempt`` (>= 1) and the seconds it
    waits after being fetched (``delay``, 0 for anything but a delayed retry copy)."""

    attempt: int
    delay: float


def header(record: Record, key: str) -> bytes | None:
    """The value of header ``key``; raises EnvelopeError if it is repeated or has no value."""
    found = [value for name, value in record.headers or () if name == key]
    if not found:
        return None
    if len(found) > 1:
        raise EnvelopeError(f"bad header {key}: given {len(found)} times")
    if found[0] is None:
        raise EnvelopeError(f"bad header {key}: no value")
    return bytes(found[0])


def targets_of(record: Record) -> tuple[str, ...]:
    """The groups a task record is meant for (empty: every group); raises EnvelopeError for a
    header that is not UTF-8 (or is repeated, or empty-valued)."""
    raw = header(record, names.KAFKA_HEADER_GROUPS) or b""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise EnvelopeError(f"bad header {names.KAFKA_HEADER_GROUPS}: not UTF-8") from None
    return tuple(t for t in text.split(",") if t)


def is_targeted(record: Record, group: str) -> bool:
    """Whether a task record is meant for ``group``. A record whose targets cannot be read is
    (every group dead-letters it with the reason rather than dropping it unseen)."""
    try:
        targets = targets_of(record)
    except EnvelopeError:
        return True
    return not targets or group in targets


def retry_info(record: Record) -> RetryInfo:
    """The attempt and retry delay of a record; raises EnvelopeError for a bad header.

    ``pixfleet-attempt`` counts the deliveries before this copy was made (attempt = that + 1); a
    value that is not a plain non-negative count is bad - the worst case for the delivery limit
    is to dead-letter, never to start counting again."""
    raw_attempt = header(record, names.KAFKA_HEADER_ATTEMPT)
    if raw_attempt is not None and not _COUNT.fullmatch(raw_attempt):
        raise EnvelopeError(f"bad header {names.KAFKA_HEADER_ATTEMPT}: {raw_attempt[:40]!r}")
    attempt = int(raw_attempt or b"0") + 1
    raw_not_before = header(record, names.KAFKA_HEADER_NOT_BEFORE)
    if raw_not_before is None:
        return RetryInfo(attempt, 0.0)
    if not _MILLIS.fullmatch(raw_not_before):
        raise EnvelopeError(f"bad header {names.KAFKA_HEADER_NOT_BEFORE}: {raw_not_before[:40]!r}")
    delay = (int(raw_not_before) - record.timestamp) / 1000
    return RetryInfo(attempt, min(max(delay, 0.0), MAX_RETRY_DELAY))


def retry_delay(record: Record) -> float:
    """:func:`retry_info`'s delay; 0 for a bad header (the record is then handed on at once,
    to be dead-lettered with the reason)."""
    try:
        return retry_info(record).delay
    except EnvelopeError:
        return 0.0


def dead_reason(exc: Exception) -> str:
    """The dead-letter reason of a record that could not be read (``error[code]: ...``)."""
    one_line = exc.one_line() if isinstance(exc, PixfleetError) else None
    return one_line or f"error[envelope.invalid]: {type(exc).__name__}: {str(exc)[:500]}"


def reason_of(record: Record) -> str:
    """The reason a dead letter carries (empty if none or unreadable)."""
    for name, value in record.headers or ():
        if name == names.KAFKA_HEADER_REASON and value is not None:
            return bytes(value).decode(errors="replace")
    return ""


def task_headers(groups: tuple[str, ...]) -> Headers:
    return [(names.KAFKA_HEADER_GROUPS, ",".join(groups).encode())]


def result_headers(correlation_id: str) -> Headers:
    return [(names.KAFKA_HEADER_CORRELATION, correlation_id.encode())]


def retry_headers(group: str, attempt: int, delay: float) -> tuple[Headers, int]:
    """A retry copy for ``group`` made after ``attempt`` deliveries, due ``delay`` s (clamped to
    ``[0, MAX_RETRY_DELAY]``) after it is made: its headers, and the timestamp (ms) the record
    must carry so that the delay reads as not-before minus timestamp."""
    now_ms = int(time.time() * 1000)
    not_before = now_ms + int(min(max(delay, 0.0), MAX_RETRY_DELAY) * 1000)
    headers = [
        (names.KAFKA_HEADER_GROUPS, group.encode()),
        (names.KAFKA_HEADER_ATTEMPT, str(max(attempt, 0)).encode()),
        (names.KAFKA_HEADER_NOT_BEFORE, str(not_before).encode()),
    ]
    return headers, now_ms


def dead_headers(reason: str) -> Headers:
    return [(names.KAFKA_HEADER_REASON, reason[:_REASON_MAX].encode())]
