"""One delivered Kafka record and the means to settle it.

Settling never commits by itself: the subscription marks the record done in its offset
tracker and commits up to the lowest unfinished offset of the partition - after an ack
coalesced, soon after (:class:`~brokers.kafka.commits.PartitionCommits`); after a nack at once:
its retry copy or dead letter must not be made again by a redelivery after a crash. A nack
counts only once its retry copy or dead letter is confirmed: if that publish fails, the record
is given back to its subscription - its offset stays unfinished, so nothing is committed past
it - which hands it out again after a backoff, and the error propagates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from aiokafka import TopicPartition

from brokers.kafka.records import Record
from brokers.policy import apply_delivery_limit
from pixfleet.envelope import Result, Task

M = TypeVar("M", Task, Result)


class Settler(Protocol):
    """What a delivery needs from its subscription."""

    @property
    def delivery_limit(self) -> int: ...

    async def requeue(
        self, tp: TopicPartition, record: Record, deliveries: int, delay: float
    ) -> bool:
        """Publish a retry copy of ``record`` made after ``deliveries`` deliveries and return
        True; or, on a reply channel (no retry topic), give the record back and return False."""
        ...

    async def reject(self, record: Record, reason: str) -> None:
        """Dead-letter ``record``."""
        ...

    async def finish(self, tp: TopicPartition, offset: int, *, at_once: bool = False) -> None:
        """The record is done: commit as far as is safe - coalesced, or ``at_once`` (its copy
        was published). Never raises for a failed commit (the next one covers it)."""
        ...

    def give_back(self, tp: TopicPartition, record: Record, delay: float) -> None:
        """Settling failed: hand the record out again after ``delay`` (or a backoff)."""
        ...

    def owns(self, tp: TopicPartition) -> bool:
        """Whether ``tp`` is still assigned to this member."""
        ...


@dataclass(eq=False)
class KafkaDelivery(Generic[M]):
    """:class:`brokers.contract.Delivery` of one record. ``nack(requeue=True)`` publishes a
    retry copy, ``nack(requeue=False)`` a dead letter, before the original is marked done.

    ``attempt`` counts every delivery: those through retry copies (their
    header) plus the times this very record was handed out before without being settled (its
    worker died, a settle failed; kept in the group's in-flight topic) - the count the delivery
    limit applies to."""

    message: M
    attempt: int
    _settler: Settler = field(repr=False)
    _tp: TopicPartition = field(repr=False)
    _record: Record = field(repr=False)
    _settled: bool = field(default=False, repr=False)

    @property
    def held(self) -> bool:
        """Its partition is still assigned here (once revoked, the next owner reads it)."""
        return self._settler.owns(self._tp)

    async def ack(self) -> None:
        if self._settled:
            return
        self._settled = True
        await self._settler.finish(self._tp, self._record.offset)

    async def nack(self, *, requeue: bool, delay: float = 0.0, reason: str = "") -> None:
        """Retry or dead-letter; if that publish fails, the record is given back to the
        subscription (handed out again later) and the error propagates - a later settle of
        this delivery is then a no-op."""
        if self._settled:
            return
        settler, record = self._settler, self._record
        requeue, reason = apply_delivery_limit(
            requeue, self.attempt, settler.delivery_limit, reason
        )
        try:
            if requeue:
                copied = await settler.requeue(self._tp, record, self.attempt, delay)
            else:
                await settler.reject(record, reason or "rejected")
                copied = True
        except BaseException:
            self._settled = True  # the subscription owns the record again
            settler.give_back(self._tp, record, delay)
            raise
        self._settled = True
        if copied:
            await settler.finish(self._tp, record.offset, at_once=True)
