"""One delivered Kafka record and the means to settle it.

Settling never commits by itself: the subscription marks the record done in its offset
tracker and commits up to the lowest unfinished offset of the partition.
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

    async def requeue(self, record: Record, attempt: int, delay: float) -> None:
        """Publish a retry copy of ``record`` (nothing on reply channels)."""
        ...

    async def reject(self, record: Record, reason: str) -> None:
        """Dead-letter ``record`` (nothing on reply channels)."""
        ...

    async def finish(self, tp: TopicPartition, offset: int) -> None:
        """The record is done: commit as far as is safe."""
        ...


@dataclass(eq=False)
class KafkaDelivery(Generic[M]):
    """:class:`brokers.contract.Delivery` of one record. ``nack(requeue=True)`` publishes a
    retry copy, ``nack(requeue=False)`` a dead letter, before the original is marked done."""

    message: M
    attempt: int
    _settler: Settler = field(repr=False)
    _tp: TopicPartition = field(repr=False)
    _record: Record = field(repr=False)
    _settled: bool = field(default=False, repr=False)

    async def ack(self) -> None:
        if self._settled:
            return
        self._settled = True
        await self._settler.finish(self._tp, self._record.offset)

    async def nack(self, *, requeue: bool, delay: float = 0.0, reason: str = "") -> None:
        if self._settled:
            return
        self._settled = True
        settler, record = self._settler, self._record
        requeue, reason = apply_delivery_limit(
            requeue, self.attempt, settler.delivery_limit, reason
        )
        if requeue:
            await settler.requeue(record, self.attempt, delay)
        else:
            await settler.reject(record, reason or "rejected")
        await settler.finish(self._tp, record.offset)
