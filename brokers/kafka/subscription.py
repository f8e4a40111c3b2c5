"""Consuming from Kafka: one consumer group member, several records in flight per partition.

* Records are fetched with ``getmany(max_records=free slots)``; at most ``prefetch`` are buffered
  or unsettled at once. The consumer keeps polling (partitions paused) while every slot is busy,
  so long image tasks never exceed ``max.poll.interval``.
* Offsets are committed explicitly, per partition, up to the lowest unfinished record
  (:class:`~brokers.kafka.offsets.OffsetTracker`) - never a bare ``commit()``.
* On a rebalance, revoked partitions drop their buffered records, wait (bounded) for their
  in-flight records, commit what is safe and forget their bookkeeping; a ``CommitFailedError``
  is logged, not raised: the new owner re-reads from the last safe offset (at-least-once).
* Records not targeted at this group are skipped (marked done at once); retry copies wait until
  their not-before time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from brokers import names
from brokers.kafka.offsets import OffsetTracker
from brokers.policy import apply_delivery_limit
from pixfleet.envelope import Result, Task
from pixfleet.errors import EnvelopeError

if TYPE_CHECKING:
    from brokers.kafka.transport import KafkaTransport

log = logging.getLogger(__name__)

M = TypeVar("M", Task, Result)


class Record(Protocol):
    """The parts of aiokafka's ConsumerRecord this transport uses."""

    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


REVOKE_DRAIN = 10.0  # seconds a revoked partition waits for its in-flight records
FETCH_MAX_WAIT_MS = 50  # an idle fetch returns this often: bounds the latency of a new task


def header(record: Record, key: str) -> bytes | None:
    for name, value in record.headers or ():
        if name == key:
            return bytes(value)
    return None


@dataclass(eq=False)
class KafkaDelivery(Generic[M]):
    message: M
    attempt: int
    _sub: KafkaSubscription[M] = field(repr=False)
    _tp: TopicPartition = field(repr=False)
    _record: Record = field(repr=False)
    _settled: bool = field(default=False, repr=False)

    async def ack(self) -> None:
        if self._settled:
            return
        self._settled = True
        await self._sub.finish(self._tp, self._record.offset)

    async def nack(self, *, requeue: bool, delay: float = 0.0, reason: str = "") -> None:
        if self._settled:
            return
        self._settled = True
        sub, record = self._sub, self._record
        requeue, reason = apply_delivery_limit(
            requeue, self.attempt, sub.transport.settings.delivery_limit, reason
        )
        if sub.group is not None:
            if requeue:
                await sub.transport.retry(sub.group, record, self.attempt, delay)
            else:
                await sub.transport.dead_letter(sub.group, record, reason or "rejected")
        await sub.finish(self._tp, record.offset)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sub: KafkaSubscription[Any]) -> None:
        self.sub = sub

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.sub.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.sub.on_assigned(set(assigned))


class KafkaSubscription(Generic[M]):
    def __init__(
        self,
        transport: KafkaTransport,
        *,
        topics: list[str],
        group_id: str,
        group: str | None,
        decode: Callable[[bytes], M],
        prefetch: int,
        until_empty: bool,
    ) -> None:
        self.transport = transport
        self.topics = topics
        self.group_id = group_id
        self.group = group
        self._decode: Callable[[bytes], M] = decode
        self._prefetch = max(1, prefetch)
        self._until_empty = until_empty
        self._consumer: AIOKafkaConsumer | None = None
        self._tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self._buffer: list[tuple[TopicPartition, Record]] = []
        self._yielded: set[tuple[TopicPartition, int]] = set()
        self._changed = asyncio.Event()
        self._commit_lock = asyncio.Lock()
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
            not_before = header(record, names.KAFKA_HEADER_NOT_BEFORE)
            if not_before is not None and float(not_before) > now_ms:
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
        skipped = False
        for tp, records in batch.items():
            for record in records:
                self._tracker.fetched(tp, record.offset)
                if self._targeted(record):
                    self._buffer.append((tp, record))
                else:
                    self._tracker.done(tp, record.offset)
                    skipped = True
        if skipped:
            await self._commit()
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

    def _targeted(self, record: Record) -> bool:
        if self.group is None:
            return True
        targets = (header(record, names.KAFKA_HEADER_GROUPS) or b"").decode()
        return not targets or self.group in targets.split(",")

    async def _wrap(self, tp: TopicPartition, record: Record) -> KafkaDelivery[M] | None:
        try:
            message = self._decode(record.value or b"")
        except EnvelopeError as exc:
            log.warning("dead-lettering undecodable record %s@%d: %s", tp, record.offset, exc)
            if self.group is not None:
                await self.transport.dead_letter(self.group, record, exc.one_line())
            self._tracker.done(tp, record.offset)
            await self._commit()
            return None
        before = int(header(record, names.KAFKA_HEADER_ATTEMPT) or b"0")
        return KafkaDelivery(message, before + 1, self, tp, record)

    async def _at_end(self) -> bool:
        consumer = self._live()
        assigned = consumer.assignment()
        if self._buffer:
            return False
        if not assigned:
            # Not assigned yet (joining) - or more members than partitions.
            return time.monotonic() - self._started_at > 3 * self.transport.settings.op_timeout
        ends = await consumer.end_offsets(list(assigned))
        for tp in assigned:
            if await consumer.position(tp) < ends[tp]:
                return False
        return True

    # -- settling and committing ------------------------------------------------------------

    async def finish(self, tp: TopicPartition, offset: int) -> None:
        """A yielded record is done: commit as far as is safe."""
        self._yielded.discard((tp, offset))
        self._tracker.done(tp, offset)
        self._changed.set()
        if not self._revoking:
            await self._commit()
        if self._closed and not self._yielded:
            await self._stop()

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        consumer = self._consumer
        if consumer is None or self._stopped:
            return
        async with self._commit_lock:
            offsets = {
                tp: off
                for tp, off in self._tracker.to_commit().items()
                if (only is None or tp in only) and tp in consumer.assignment()
            }
            if not offsets:
                return
            try:
                await consumer.commit(
                    {tp: OffsetAndMetadata(off, "") for tp, off in offsets.items()}
                )
                self._tracker.committed(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                log.warning(
                    "commit of %s skipped (%s); the new owner re-reads from the last safe offset",
                    self.group_id,
                    exc,
                )

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
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
            await self._commit(only=revoked)
        finally:
            self._tracker.forget(revoked)
            self._revoking = False

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Pin a new group's start at the earliest offset, so the group exists (and is listed)
        from its first join and no task published before it is skipped."""
        consumer = self._consumer
        if consumer is None or self._stopped:
            return  # a last assignment while leaving the group
        async with self._commit_lock:  # never race (and overwrite) a real commit
            fresh = {}
            for tp in assigned:
                if self._tracker.has_committed(tp) or await consumer.committed(tp) is not None:
                    continue
                fresh[tp] = (await consumer.beginning_offsets([tp]))[tp]
            if not fresh:
                return
            try:
                await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in fresh.items()})
            except (CommitFailedError, IllegalStateError) as exc:
                log.debug("initial commit for %s skipped: %s", self.group_id, exc)

    # -- lifecycle -------------------------------------------------------------------------

    def _live(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("subscription not started")
        return self._consumer

    async def _start(self) -> None:
        await self.transport.prepare_topics(self.topics)
        s = self.transport.settings
        consumer = AIOKafkaConsumer(
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._prefetch,
            session_timeout_ms=int(s.session_timeout * 1000),
            max_poll_interval_ms=int(s.max_poll_interval * 1000),
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            heartbeat_interval_ms=max(int(s.session_timeout * 1000 / 3), 100),
            **s.client_options(),
        )
        consumer.subscribe(self.topics, listener=_Listener(self))
        self._consumer = consumer  # the assignment callback may run before start() returns
        try:
            await consumer.start()
        except KafkaError as exc:
            self._consumer = None
            await consumer.stop()
            raise self.transport.unavailable(exc) from exc
        self._started_at = time.monotonic()
        self.transport.track(self)

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
        self._closed = True
        self._buffer.clear()
        await self._stop()

    async def _stop(self) -> None:
        if self._stopped or self._consumer is None:
            self._stopped = True
            return
        await self._commit()
        self._stopped = True
        self.transport.untrack(self)
        try:
            await self._consumer.stop()  # leaves the group: partitions move on at once
        except KafkaError as exc:
            log.debug("stopping consumer of %s: %s", self.group_id, exc)
        self._consumer = None
