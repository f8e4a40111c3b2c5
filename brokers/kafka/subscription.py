"""Consuming from Kafka: one consumer group member, several records in flight per partition.

* Records are fetched with ``getmany(max_records=free slots)``; at most ``prefetch`` are buffered
  or unsettled at once. The consumer keeps polling (partitions paused) while every slot is busy,
  so long image tasks never exceed ``max.poll.interval``.
* Offsets are committed explicitly, per partition, up to the lowest unfinished record
  (:class:`~brokers.kafka.commits.PartitionCommits`) - never a bare ``commit()``.
* On a rebalance, revoked partitions drop their buffered records, wait (bounded) for their
  in-flight records, commit what is safe and forget their bookkeeping.
* Records not targeted at this group are skipped (marked done at once); retry copies wait for
  their delay on the monotonic clock (:func:`~brokers.kafka.records.retry_info`).
* A task group counts in its in-flight topic (:mod:`brokers.kafka.inflight`) how often each
  record was handed out unsettled: one that would pass the delivery limit - one that kills its
  worker every time - is dead-lettered instead.
* Only closing or a refusal for good (credentials, permissions, configuration) ends it: broker
  trouble means ``reconnecting`` (:attr:`state`) and retries with backoff; a record whose body
  or headers cannot be read is dead-lettered with the reason (reply channels too).

The group membership itself - joining, fetching, commits, rebalances - is
:class:`~brokers.kafka.member.GroupMember`. The subscription reaches the broker only through
:class:`Host`, the little it needs from its transport (:class:`~brokers.kafka.client.KafkaClient`
is one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Generic, Protocol, Self, TypeVar

from aiokafka import TopicPartition

from brokers.kafka.counting import AheadCounts
from brokers.kafka.delivery import KafkaDelivery
from brokers.kafka.inflight import InflightLog
from brokers.kafka.member import GroupMember, MemberHost, Pending
from brokers.kafka.records import (
    Record,
    dead_reason,
    is_targeted,
    retry_delay,
    targets_of,
)
from brokers.outage import Outage, SubscriptionState
from brokers.policy import RECONNECT, delivery_limit_reason
from pixfleet.envelope import Result, Task
from pixfleet.errors import BrokerUnavailable, PublishFailed

log = logging.getLogger(__name__)

M = TypeVar("M", Task, Result)

REVOKE_DRAIN = 10.0  # seconds a revoked partition waits for its in-flight records
_TRANSIENT = BrokerUnavailable  # what a subscription waits out
_UNCONFIRMED = (BrokerUnavailable, PublishFailed)  # ... and what a publish of its own waits out
_CRASHED = "handed out without being settled (did its worker die?)"


class Host(MemberHost, Protocol):
    """What a subscription needs from its transport: topics, retry and dead-letter copies, the
    settings, and to be closed with it."""

    async def retry(self, group: str, record: Record, attempt: int, delay: float) -> None: ...

    async def dead_letter(self, topic: str, record: Record, reason: str) -> None: ...

    def track(self, sub: KafkaSubscription[Task] | KafkaSubscription[Result]) -> None: ...

    def untrack(self, sub: KafkaSubscription[Task] | KafkaSubscription[Result]) -> None: ...


class KafkaSubscription(Generic[M]):
    """:class:`brokers.contract.Subscription` of one group member. ``group`` is the pipeline
    group of a task subscription (None for a reply channel: no retry topic, no counting)."""

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
        dead_topic: str,
        inflight_topic: str | None = None,
        positions: dict[TopicPartition, int] | None = None,
    ) -> None:
        self.host = host
        self.topics = topics
        self.group_id = group_id
        self.group = group
        self.dead_topic = dead_topic
        self._decode: Callable[[bytes], M] = decode
        self._prefetch = max(1, prefetch)
        self._until_empty = until_empty
        inflight = InflightLog(host, inflight_topic, tuple(topics)) if inflight_topic else None
        self._inflight = inflight
        self._counts = AheadCounts(inflight, host.settings.delivery_limit)
        member = partial(GroupMember, host, self, topics=topics, group_id=group_id)
        self._member = member(prefetch=self._prefetch, inflight=inflight, positions=positions)
        self._buffer: list[Pending] = []
        self._yielded: set[tuple[TopicPartition, int]] = set()
        self._changed = asyncio.Event()
        self._outage = Outage(f"kafka consumer of {group_id}")
        self._closed = False

    @property
    def state(self) -> SubscriptionState:
        """``consuming``, or ``reconnecting`` while the broker is unavailable."""
        return self._outage.state

    def __aiter__(self) -> Self:
        return self

    # -- iteration -------------------------------------------------------------------------

    async def __anext__(self) -> KafkaDelivery[M]:
        if not self._member.joined and not self._closed:
            await self._outage.retry(self._start, _TRANSIENT)
        while not self._closed:
            delivery = await self._next_due()
            if delivery is not None:
                return delivery
            room = self._prefetch - len(self._yielded) - len(self._buffer)
            if room <= 0:
                await self._wait_without_room()
                continue
            if not await self._outage.retry(partial(self._fetch, room), _TRANSIENT):
                await self._maybe_at_end()
        raise StopAsyncIteration

    async def _maybe_at_end(self) -> None:
        """Nothing came: with ``until_empty``, close once everything was read."""
        if (
            self._until_empty
            and not self._buffer
            and await self._outage.retry(self._member.at_end, _TRANSIENT)
        ):
            await self.aclose()

    async def _next_due(self) -> KafkaDelivery[M] | None:
        now = time.monotonic()
        due = [e for e in self._buffer if e.due <= now and self._loaded(e)]
        if due:  # one in-flight write for all of them (brokers.kafka.counting)
            await self._outage.retry(partial(self._counts.count, due), _UNCONFIRMED)
        for entry in due:
            if entry in self._buffer:
                delivery = await self._admit(entry)
                if delivery is not None:
                    return delivery
        return None

    def _loaded(self, entry: Pending) -> bool:
        return self._inflight is None or self._inflight.loaded(entry.tp)

    async def _admit(self, entry: Pending) -> KafkaDelivery[M] | None:
        """Hand out a due record - or dead-letter it (bad body or headers, or past the
        delivery limit) and return None."""
        try:
            targets_of(entry.record)
            self._counts.deliveries(entry)
            message = self._decode(entry.record.value or b"")
        except Exception as exc:  # noqa: BLE001 - no record, however hostile, ends a consumer
            await self._discard(entry, dead_reason(exc))
            return None
        if entry.deliveries > self.delivery_limit:
            await self._discard(entry, delivery_limit_reason(self.delivery_limit, _CRASHED))
            return None
        if not self._counts.confirmed(entry):
            await self._outage.retry(partial(self._counts.count, [entry]), _UNCONFIRMED)
        if entry not in self._buffer:
            return None  # its partition was revoked meanwhile
        self._buffer.remove(entry)
        self._yielded.add((entry.tp, entry.record.offset))
        return KafkaDelivery(message, entry.deliveries, self, entry.tp, entry.record)

    async def _discard(self, entry: Pending, reason: str) -> None:
        tp, offset = entry.tp, entry.record.offset
        log.warning("dead-lettering record %s@%d of %s: %s", tp, offset, self.group_id, reason)
        await self._outage.retry(lambda: self.reject(entry.record, reason), _UNCONFIRMED)
        if entry in self._buffer:
            self._buffer.remove(entry)
        await self._member.done(tp, offset, at_once=True)  # the dead letter is out

    async def _fetch(self, room: int) -> bool:
        batch = await self._member.fetch(room)
        now, skipped = time.monotonic(), False
        for tp, records in batch.items():
            for record in records:
                if self.group is None or is_targeted(record, self.group):
                    self._buffer.append(Pending(tp, record, now + retry_delay(record)))
                else:
                    self._member.commits.tracker.done(tp, record.offset)
                    skipped = True
        if skipped:
            await self._member.commits.commit()
        return bool(batch)

    async def _wait_without_room(self) -> None:
        """All slots busy: keep polling with partitions paused (stays in the group) until a
        delivery settles or a delayed retry becomes due."""
        self._changed.clear()
        try:
            async with asyncio.timeout(1.0):
                await self._changed.wait()
        except TimeoutError:
            await self._outage.retry(self._member.poll_paused, _TRANSIENT)

    # -- settling (the Settler of brokers.kafka.delivery) -----------------------------------

    @property
    def delivery_limit(self) -> int:
        return self.host.settings.delivery_limit

    async def requeue(
        self, tp: TopicPartition, record: Record, deliveries: int, delay: float
    ) -> bool:
        if self.group is None:
            self.give_back(tp, record, delay)
            return False
        await self.host.retry(self.group, record, deliveries, delay)
        return True

    async def reject(self, record: Record, reason: str) -> None:
        await self.host.dead_letter(self.dead_topic, record, reason)

    async def finish(self, tp: TopicPartition, offset: int, *, at_once: bool = False) -> None:
        """A yielded record is done: commit as far as is safe (``at_once``: not coalesced)."""
        self._yielded.discard((tp, offset))
        await self._member.done(tp, offset, at_once=at_once)
        self._changed.set()
        if self._closed and not self._yielded:
            await self._stop()

    def owns(self, tp: TopicPartition) -> bool:
        return self._member.owns(tp)

    def give_back(self, tp: TopicPartition, record: Record, delay: float) -> None:
        """A yielded record comes back unsettled: hand it out again after ``delay`` (at least
        the first reconnect backoff). Its offset stays unfinished meanwhile."""
        if (tp, record.offset) not in self._yielded:
            return
        self._yielded.discard((tp, record.offset))
        self._changed.set()
        if self._closed or not self._member.owns(tp):
            return  # the next owner of the partition re-reads it from the last safe offset
        due = time.monotonic() + max(delay, RECONNECT.first)
        self._buffer.append(Pending(tp, record, due))
        log.warning(
            "record %s@%d of %s given back: it comes again", tp, record.offset, self.group_id
        )

    async def let_go(self, revoked: set[TopicPartition]) -> None:
        """A rebalance takes ``revoked``: drop their buffered records and wait (at most
        ``REVOKE_DRAIN`` s) for their in-flight ones (the Holder of the member)."""
        self._counts.drop(e for e in self._buffer if e.tp in revoked)
        self._buffer = [e for e in self._buffer if e.tp not in revoked]
        deadline = time.monotonic() + REVOKE_DRAIN
        while any(tp in revoked for tp, _ in self._yielded) and time.monotonic() < deadline:
            self._changed.clear()
            try:
                async with asyncio.timeout(0.1):
                    await self._changed.wait()
            except TimeoutError:
                continue

    # -- lifecycle -------------------------------------------------------------------------

    async def _start(self) -> None:
        await self._member.start()
        self.host.track(self)

    async def aclose(self) -> None:
        """Stop taking records; the member stays in the group (and can commit) until every
        delivery already yielded is settled."""
        if self._closed:
            return
        self._closed = True
        self._counts.drop(self._buffer)
        self._buffer.clear()
        if not self._yielded:
            await self._stop()

    async def force_close(self) -> None:
        """Leave now (the transport is closing): unsettled deliveries are redelivered."""
        self._closed = True
        self._counts.drop(self._buffer)
        self._buffer.clear()
        await self._stop()

    async def _stop(self) -> None:
        if not self._member.stopped:
            self.host.untrack(self)
        await self._member.stop()
