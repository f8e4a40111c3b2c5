"""Consuming from Kafka: one consumer group member, several records in flight per partition.

* Records are fetched with ``getmany(max_records=free slots)``; at most ``prefetch`` are buffered
  or unsettled at once. The consumer keeps polling (partitions paused) while every slot is busy,
  so long image tasks never exceed ``max.poll.interval``.
* Offsets are committed explicitly, per partition, up to the lowest unfinished record
  (:class:`~brokers.kafka.commits.PartitionCommits`) - never a bare ``commit()``.
* On a rebalance, revoked partitions drop their buffered records, wait (bounded) for their
  in-flight records, commit what is safe and forget their bookkeeping.
* Records not targeted at this group are skipped (marked done at once); retry copies wait until
  their not-before time.

The subscription reaches the broker only through :class:`Host`, the little it needs from its
transport (:class:`~brokers.kafka.client.KafkaClient` is one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Generic, Protocol, Self, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from brokers.kafka.commits import PartitionCommits, RebalanceListener
from brokers.kafka.delivery import KafkaDelivery
from brokers.kafka.records import Record, attempt_of, is_due, is_targeted
from brokers.kafka.settings import KafkaSettings
from pixfleet.envelope import Result, Task
from pixfleet.errors import BrokerUnavailable, EnvelopeError

log = logging.getLogger(__name__)

M = TypeVar("M", Task, Result)

REVOKE_DRAIN = 10.0  # seconds a revoked partition waits for its in-flight records


class Host(Protocol):
    """What a subscription needs from its transport: topics, retry and dead-letter copies, the
    settings, and to be closed with it."""

    @property
    def settings(self) -> KafkaSettings: ...

    def unavailable(self, exc: BaseException) -> BrokerUnavailable: ...

    async def prepare_topics(self, topics: list[str], partitions: int = 1) -> None: ...

    async def retry(self, group: str, record: Record, attempt: int, delay: float) -> None: ...

    async def dead_letter(self, group: str, record: Record, reason: str) -> None: ...

    def track(self, sub: KafkaSubscription[Task] | KafkaSubscription[Result]) -> None: ...

    def untrack(self, sub: KafkaSubscription[Task] | KafkaSubscription[Result]) -> None: ...


class KafkaSubscription(Generic[M]):
    """:class:`brokers.contract.Subscription` of one group member. ``group`` is the pipeline
    group of a task subscription (None for a reply channel: no retries, no dead letters)."""

    def __init__(
        self,
        host: Host,
        *,
        topics: list[str],
        group_id: str,
        group: str | None,
        decode: Callable[[bytes], M],
        prefetch: int,
        until_empty: bool,
    ) -> None:
        self.host = host
        self.topics = topics
        self.group_id = group_id
        self.group = group
        self._decode: Callable[[bytes], M] = decode
        self._prefetch = max(1, prefetch)
        self._until_empty = until_empty
        self._consumer: AIOKafkaConsumer | None = None
        self._commits = PartitionCommits(group_id)
        self._buffer: list[tuple[TopicPartition, Record]] = []
        self._yielded: set[tuple[TopicPartition, int]] = set()
        self._changed = asyncio.Event()
        self._revoking = False
        self._started_at = 0.0
        self._closed = False
        self._stopped = False

    def __aiter__(self) -> Self:
        return self

    # -- iteration -------------------------------------------------------------------------

    async def __anext__(self) -> KafkaDelivery[M]:
        if self._closed:
            raise StopAsyncIteration
        if self._consumer is None:
            await self._start()
        while True:
            delivery = await self._next_due()
            if delivery is not None:
                return delivery
            room = self._prefetch - len(self._yielded) - len(self._buffer)
            if room <= 0:
                await self._wait_without_room()
                continue
            if not await self._fetch(room) and self._until_empty and await self._at_end():
                await self.aclose()
                raise StopAsyncIteration

    async def _next_due(self) -> KafkaDelivery[M] | None:
        now_ms = time.time() * 1000
        for index, (tp, record) in enumerate(self._buffer):
            if not is_due(record, now_ms):
                continue
            del self._buffer[index]
            delivery = await self._wrap(tp, record)
            if delivery is not None:
                self._yielded.add((tp, record.offset))
                return delivery
            return await self._next_due()
        return None

    async def _fetch(self, room: int) -> bool:
        consumer = self._live()
        batch = await consumer.getmany(timeout_ms=200, max_records=room)
        tracker = self._commits.tracker
        skipped = False
        for tp, records in batch.items():
            for record in records:
                tracker.fetched(tp, record.offset)
                if self.group is None or is_targeted(record, self.group):
                    self._buffer.append((tp, record))
                else:
                    tracker.done(tp, record.offset)
                    skipped = True
        if skipped:
            await self._commits.commit()
        return bool(batch)

    async def _wait_without_room(self) -> None:
        """All slots busy: keep polling with partitions paused (stays in the group) until a
        delivery settles or a delayed retry becomes due."""
        consumer = self._live()
        self._changed.clear()
        try:
            async with asyncio.timeout(1.0):
                await self._changed.wait()
        except TimeoutError:
            assigned = consumer.assignment()
            consumer.pause(*assigned)
            try:
                await consumer.getmany(timeout_ms=0)
            finally:
                consumer.resume(*assigned)

    async def _wrap(self, tp: TopicPartition, record: Record) -> KafkaDelivery[M] | None:
        try:
            message = self._decode(record.value or b"")
        except EnvelopeError as exc:
            log.warning("dead-lettering undecodable record %s@%d: %s", tp, record.offset, exc)
            await self.reject(record, exc.one_line())
            self._commits.tracker.done(tp, record.offset)
            await self._commits.commit()
            return None
        return KafkaDelivery(message, attempt_of(record), self, tp, record)

    async def _at_end(self) -> bool:
        consumer = self._live()
        assigned = consumer.assignment()
        if self._buffer:
            return False
        if not assigned:
            # Not assigned yet (joining) - or more members than partitions.
            return time.monotonic() - self._started_at > 3 * self.host.settings.op_timeout
        ends = await consumer.end_offsets(list(assigned))
        for tp in assigned:
            if await consumer.position(tp) < ends[tp]:
                return False
        return True

    # -- settling (the Settler of brokers.kafka.delivery) -----------------------------------

    @property
    def delivery_limit(self) -> int:
        return self.host.settings.delivery_limit

    async def requeue(self, record: Record, attempt: int, delay: float) -> None:
        if self.group is not None:
            await self.host.retry(self.group, record, attempt, delay)

    async def reject(self, record: Record, reason: str) -> None:
        if self.group is not None:
            await self.host.dead_letter(self.group, record, reason)

    async def finish(self, tp: TopicPartition, offset: int) -> None:
        """A yielded record is done: commit as far as is safe."""
        self._yielded.discard((tp, offset))
        self._commits.tracker.done(tp, offset)
        self._changed.set()
        if not self._revoking:
            await self._commits.commit()
        if self._closed and not self._yielded:
            await self._stop()

    # -- rebalancing (the Rebalanced of brokers.kafka.commits) ------------------------------

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Drop buffered records of ``revoked``, wait (at most ``REVOKE_DRAIN`` s) for their
        in-flight ones, commit what is safe and forget their bookkeeping."""
        self._revoking = True
        try:
            self._buffer = [(tp, r) for tp, r in self._buffer if tp not in revoked]
            deadline = time.monotonic() + REVOKE_DRAIN
            while any(tp in revoked for tp, _ in self._yielded) and time.monotonic() < deadline:
                self._changed.clear()
                try:
                    async with asyncio.timeout(0.1):
                        await self._changed.wait()
                except TimeoutError:
                    continue
            await self._commits.commit(only=revoked)
        finally:
            self._commits.tracker.forget(revoked)
            self._revoking = False

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._commits.pin_start(assigned)

    # -- lifecycle -------------------------------------------------------------------------

    def _live(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("subscription not started")
        return self._consumer

    async def _start(self) -> None:
        await self.host.prepare_topics(self.topics)
        options = self.host.settings.member_options(self.group_id, prefetch=self._prefetch)
        consumer = AIOKafkaConsumer(**options)
        consumer.subscribe(self.topics, listener=RebalanceListener(self))
        # The assignment callback may run before start() returns.
        self._consumer = consumer
        self._commits.attach(consumer)
        try:
            await consumer.start()
        except KafkaError as exc:
            self._consumer = None
            self._commits.detach()
            await consumer.stop()
            raise self.host.unavailable(exc) from exc
        self._started_at = time.monotonic()
        self.host.track(self)

    async def aclose(self) -> None:
        """Stop taking records; the member stays in the group (and can commit) until every
        delivery already yielded is settled."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        if not self._yielded:
            await self._stop()

    async def force_close(self) -> None:
        """Leave now (the transport is closing): unsettled deliveries are redelivered."""
        self._closed = True
        self._buffer.clear()
        await self._stop()

    async def _stop(self) -> None:
        if self._stopped or self._consumer is None:
            self._stopped = True
            return
        await self._commits.commit()
        self._stopped = True
        self._commits.detach()
        self.host.untrack(self)
        try:
            await self._consumer.stop()  # leaves the group: partitions move on at once
        except KafkaError as exc:
            log.debug("stopping consumer of %s: %s", self.group_id, exc)
        self._consumer = None
