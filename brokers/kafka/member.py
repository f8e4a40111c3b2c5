"""One consumer-group member: joining, fetching, committing, rebalancing, leaving.

:class:`GroupMember` owns the aiokafka consumer of a subscription and what is bound to its
partitions: the explicit commits (:class:`~brokers.kafka.commits.PartitionCommits`) and, for a
task group, the in-flight counts (:class:`~brokers.kafka.inflight.InflightLog`). What it hands
out is the subscription's business (:mod:`brokers.kafka.subscription`); on a rebalance it asks
the subscription, through :class:`Holder`, to let go of the revoked partitions first.

Kafka errors come out as pixfleet errors (:func:`~brokers.kafka.failures.translate`):
``broker.unavailable`` for what the subscription waits out, the rest for what ends it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from brokers.kafka.commits import PartitionCommits, RebalanceListener
from brokers.kafka.failures import translate
from brokers.kafka.gaps import GapGuard
from brokers.kafka.inflight import InflightLog, LogHost
from brokers.kafka.leadership import Leadership, guard
from brokers.kafka.records import Record

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Pending:
    """A fetched record waiting to be handed out, from monotonic time ``due`` on."""

    tp: TopicPartition
    record: Record
    due: float
    deliveries: int = 0  # known once admitted: attempt + deliveries of this record before
    counted: bool = False  # its delivery is in the in-flight set


class Holder(Protocol):
    """What a member needs from its subscription during a rebalance."""

    async def let_go(self, revoked: set[TopicPartition]) -> None:
        """Drop buffered records of ``revoked`` and wait (bounded) for their in-flight ones."""
        ...


class MemberHost(LogHost, Protocol):
    """What a member needs from its transport."""

    async def prepare_retry_topic(self, topic: str) -> None: ...


class GroupMember:
    """The group membership of one subscription to ``topics`` as ``group_id`` (not joined until
    :meth:`start`). ``inflight`` counts deliveries for a task group (None on reply channels).

    With ``positions`` (a private reply channel: one reader, so no group at all) partition 0 of
    each topic is assigned by hand and read from its offset there, and commits go to that dict:
    nothing to join, to rebalance or to leave - a group here made every hand-over at exit wait
    for the group's previous member to time out."""

    def __init__(
        self,
        host: MemberHost,
        holder: Holder,
        *,
        topics: list[str],
        group_id: str,
        prefetch: int,
        inflight: InflightLog | None,
        positions: dict[TopicPartition, int] | None = None,
    ) -> None:
        self._host = host
        self._holder = holder
        self.topics = topics
        self.group_id = group_id
        self._prefetch = prefetch
        self.inflight = inflight
        self.commits = PartitionCommits(group_id, positions)
        self.gaps = GapGuard(group_id)
        self.leadership = Leadership()
        self._consumer: AIOKafkaConsumer | None = None
        self._revoking = False
        self._started_at = 0.0
        self.stopped = False

    @property
    def joined(self) -> bool:
        return self._consumer is not None

    def owns(self, tp: TopicPartition) -> bool:
        return self._consumer is not None and tp in self._consumer.assignment()

    def _fail(self, exc: BaseException, what: str) -> Exception:
        return translate(exc, self._host.settings.safe_url, f"{what} for {self.group_id}")

    def _live(self) -> AIOKafkaConsumer:
        if self._consumer is None:  # left (the transport closed) while the caller waited
            raise StopAsyncIteration
        return self._consumer

    # -- joining and leaving ---------------------------------------------------------------

    async def start(self) -> None:
        """Create the topics and join the group."""
        if self.inflight is not None:
            await self._host.prepare_retry_topic(self.topics[1])
            await self.inflight.prepare()
        await self._host.prepare_topics(self.topics)
        positions = self.commits.store
        group_id = self.group_id if positions is None else None
        options = self._host.settings.member_options(group_id, prefetch=self._prefetch)
        self.leadership = Leadership()
        consumer = AIOKafkaConsumer(
            **options, partition_assignment_strategy=(self.leadership.assignor(),)
        )
        if positions is None:
            consumer.subscribe(self.topics, listener=RebalanceListener(self))
        else:
            consumer.assign([TopicPartition(topic, 0) for topic in self.topics])
        self.gaps = GapGuard(self.group_id)  # a new consumer: expectations from its commits
        # The assignment callback may run before start() returns.
        self._consumer = consumer
        self.commits.attach(consumer)
        try:
            await consumer.start()
        except (KafkaError, OSError) as exc:
            self._consumer = None
            self.commits.detach()
            await consumer.stop()
            raise self._fail(exc, "join") from exc
        if not self._host.settings.leader_leave:
            guard(consumer, self.leadership, self.group_id)  # no LeaveGroup from the leader
        self._started_at = time.monotonic()
        for tp, start in _starts(consumer, positions).items():
            consumer.seek(tp, start)
            self.gaps.start_at(tp, start)

    async def stop(self) -> None:
        """Commit what is safe, write the in-flight set, leave the group (idempotent)."""
        if self.stopped or self._consumer is None:
            self.stopped = True
            return
        await self.commits.commit()
        if self.inflight is not None:
            await self.inflight.close()
        self.stopped = True
        self.commits.detach()
        try:  # leaves the group: partitions move on at once (the leader's: see leadership)
            await self._consumer.stop()
        except KafkaError as exc:
            log.debug("stopping consumer of %s: %s", self.group_id, exc)
        self._consumer = None

    # -- fetching --------------------------------------------------------------------------

    async def fetch(self, room: int) -> dict[TopicPartition, list[Record]]:
        """Up to ``room`` records (an empty batch after 200 ms), each marked fetched and none
        past an offset not yet read (:mod:`brokers.kafka.gaps`); a commit that failed before is
        tried again."""
        consumer = self._live()
        try:
            fetched = await consumer.getmany(timeout_ms=200, max_records=room)
            batch: dict[TopicPartition, list[Record]] = await self.gaps.admit(consumer, fetched)
        except KafkaError as exc:
            raise self._fail(exc, "fetch") from exc
        for tp, records in batch.items():
            for record in records:
                self.commits.tracker.fetched(tp, record.offset)
        if self.commits.behind:
            await self.commits.commit()
        return batch

    async def poll_paused(self) -> None:
        """Poll with every partition paused: stays in the group while no slot is free."""
        consumer = self._live()
        assigned = consumer.assignment()
        consumer.pause(*assigned)
        try:
            await consumer.getmany(timeout_ms=0)
        except KafkaError as exc:
            raise self._fail(exc, "poll") from exc
        finally:  # a rebalance during the poll may have taken some (new ones are not paused)
            consumer.resume(*(tp for tp in assigned if tp in consumer.assignment()))

    async def at_end(self) -> bool:
        """Whether every assigned partition was read to its end (or, never assigned, whether
        joining took longer than any join should)."""
        consumer = self._live()
        assigned = list(consumer.assignment())
        if not assigned:  # not assigned yet (joining) - or more members than partitions
            return time.monotonic() - self._started_at > 3 * self._host.settings.op_timeout
        try:
            ends = await consumer.end_offsets(assigned)
            positions = [await consumer.position(tp) for tp in assigned]
        except KafkaError as exc:
            raise self._fail(exc, "read end offsets") from exc
        return all(pos >= ends[tp] for tp, pos in zip(assigned, positions, strict=True))

    async def done(self, tp: TopicPartition, offset: int, *, at_once: bool = False) -> None:
        """Record ``offset`` finished (and no longer in flight) and commit as far as is safe,
        coalesced unless ``at_once`` - a record whose retry copy or dead letter was published:
        a redelivery after a crash would publish it again (not during a revocation: that
        commits once, at its end)."""
        self.commits.tracker.done(tp, offset)
        if self.inflight is not None:
            self.inflight.settled(tp, offset)
        if not self._revoking:
            await (self.commits.commit() if at_once else self.commits.settled())

    # -- rebalancing (the Rebalanced of brokers.kafka.commits) ------------------------------

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Let the subscription let go of ``revoked``, commit what is safe, write the in-flight
        set for the next owner and forget the partitions."""
        self._revoking = True
        try:
            await self._holder.let_go(revoked)
            await self.commits.commit(only=revoked)
            if self.inflight is not None:
                await self.inflight.close()
        finally:
            self.commits.tracker.forget(revoked)
            self.gaps.forget(revoked)
            if self.inflight is not None:
                self.inflight.forget(revoked)
            self._revoking = False

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.commits.pin_start(assigned)
        if self.inflight is not None:
            await self.inflight.load(assigned)


def _starts(
    consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int] | None
) -> dict[TopicPartition, int]:
    """Where each partition assigned by hand starts: its kept offset, else 0 (none in a group)."""
    if positions is None:
        return {}
    return {tp: positions.get(tp, 0) for tp in consumer.assignment()}
