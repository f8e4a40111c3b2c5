"""Reading every record of a partition: a fetch that skips an offset is read again.

Kafka hands out a partition's records at consecutive offsets; the only gaps are records a
compacted topic dropped and the control markers of transactions. A broker may also answer a
fetch with a record *before* an earlier one is readable, and then the consumer's position moves
past the earlier one for good: tansu 0.6 (the test broker) gives a produce its offset (advances
the high watermark) before it stores the batch, so a fetch that races two producers of one
partition can return offset N+1 while N is still being written. Measured on a one-partition
reply topic with several workers replying: about one reply in 10,000 was never read, and once in
a CI run one of the fault suite's 1,000 (issue 9).

:class:`GapGuard` holds each partition's records to the offset it expects next (the one after the
last record handed on; after an assignment, the committed offset). At a gap it keeps the records
before it, seeks back to the missing offset and lets the next fetch read it there. A gap that is
still there after :data:`RECHECKS` reads over :data:`PATIENCE` seconds is a real one (compaction,
a transaction marker) and is accepted: a real gap delays its partition by a quarter of a second,
a broker's early answer costs no record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from brokers.kafka.records import Record

log = logging.getLogger(__name__)

#: A gap is real once it was read this many times, over at least :data:`PATIENCE` seconds.
RECHECKS = 3
PATIENCE = 0.25
#: Pause before a gap is read again (the missing batch is being written: microseconds).
REREAD_PAUSE = 0.02


class Seeker(Protocol):
    """What the guard needs from the consumer (an ``AIOKafkaConsumer``)."""

    async def committed(self, tp: TopicPartition) -> int | None: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    def assignment(self) -> set[TopicPartition]: ...


class GapGuard:
    """The offset each partition of one consumer should hand on next (see the module)."""

    def __init__(self, group_id: str) -> None:
        self.group_id = group_id
        self._next: dict[TopicPartition, int] = {}
        self._gap: dict[TopicPartition, tuple[int, int, float]] = {}  # start, reads, since
        self.rereads = 0  # gaps read again (a broker that showed a later record too early)

    async def admit(
        self, consumer: Seeker, batch: dict[TopicPartition, list[Record]]
    ) -> dict[TopicPartition, list[Record]]:
        """The records of ``batch`` up to each partition's first unexplained gap; the consumer
        is moved back to that gap, so that its next fetch reads from there. Never raises: a
        partition whose start cannot be learnt now is read again from its first record."""
        out, held = {}, False
        for tp, records in batch.items():
            if tp not in self._next:
                try:
                    self._next[tp] = await self._start(consumer, tp)
                except (KafkaError, OSError, TimeoutError) as exc:
                    log.debug("%s: start of %s unknown (%s); read again", self.group_id, tp, exc)
                    _rewind(consumer, tp, records[0].offset)
                    continue
            kept = self.cut(tp, records)
            if len(kept) < len(records):
                _rewind(consumer, tp, self._next[tp])
                held = True
            if kept:
                out[tp] = kept
        if held and not out:
            await asyncio.sleep(REREAD_PAUSE)
        return out

    def start_at(self, tp: TopicPartition, offset: int) -> None:
        """Expect ``offset`` first on ``tp`` (a partition read with no group: no commits)."""
        self._next[tp] = offset
        self._gap.pop(tp, None)

    @staticmethod
    async def _start(consumer: Seeker, tp: TopicPartition) -> int:
        """Where a newly assigned partition's reading starts: its committed offset, or 0 for a
        new group (not the broker's "earliest", which tansu may report too high - see
        :meth:`~brokers.kafka.commits.PartitionCommits.pin_start`; a log that really starts
        later shows as a real gap, accepted after :data:`PATIENCE`)."""
        committed = await consumer.committed(tp)
        return 0 if committed is None else committed

    def cut(self, tp: TopicPartition, records: Sequence[Record]) -> list[Record]:
        """``records`` up to the first gap not yet read :data:`RECHECKS` times; moves the
        partition's expected offset past the records kept."""
        expected = self._next.get(tp)
        for i, record in enumerate(records):
            if expected is not None and record.offset > expected and not self._real(tp, expected):
                self.rereads += 1
                log.info(
                    "%s: %s fetched offset %d before %d; reading from %d again",
                    self.group_id, tp, record.offset, expected, expected,
                )  # fmt: skip
                return list(records[:i])
            expected = max(expected or 0, record.offset + 1)
            self._next[tp] = expected
        return list(records)

    def _real(self, tp: TopicPartition, start: int) -> bool:
        """Count one more read of the gap at ``start``; True once it was read often and long
        enough."""
        now = time.monotonic()
        seen_at, reads, since = self._gap.get(tp, (start, 0, now))
        if seen_at != start:
            reads, since = 0, now
        if reads >= RECHECKS and now - since >= PATIENCE:
            del self._gap[tp]
            log.debug("%s: %s has no record at %d (a real gap)", self.group_id, tp, start)
            return True
        self._gap[tp] = (start, reads + 1, since)
        return False

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions this consumer no longer owns: the next owner starts from the commit."""
        for tp in partitions:
            self._next.pop(tp, None)
            self._gap.pop(tp, None)


def _rewind(consumer: Seeker, tp: TopicPartition, offset: int) -> None:
    """Fetch ``tp`` from ``offset`` next (if it is still assigned: else its next owner reads it
    from the last commit)."""
    if tp in consumer.assignment():
        consumer.seek(tp, offset)
