"""The Kafka transport (aiokafka): ``kafka://host:port[,host:port]``.

Topology (every name prefixed with the URL's ``namespace``; see ``docs/kafka.md``):

* ``pixfleet.tasks`` - the task topic (``partitions`` partitions, key = task id). Target groups
  travel in the ``pixfleet-groups`` header; each consumer group (id = pipeline group name) reads
  every record and skips those not meant for it. External systems may produce tasks here.
* ``pixfleet.retry.<g>`` - retry copies with ``pixfleet-attempt`` and ``pixfleet-not-before``.
* ``pixfleet.dead.<g>`` - dead letters with ``pixfleet-reason``.
* ``pixfleet.reply.<channel>`` - reply topics; ``results`` is the durable default.

Delivery: ``acks=all`` (idempotent producer when the broker supports it), no auto-commit, new
groups start at the earliest offset, explicit per-partition commits of the lowest unfinished
offset (:mod:`brokers.kafka.subscription`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError

from brokers import names
from brokers.contract import DeadLetter, GroupStats
from brokers.kafka.settings import KafkaSettings
from brokers.kafka.subscription import KafkaSubscription, Record, header
from pixfleet.envelope import Result, Task, decode_result, decode_task, encode
from pixfleet.errors import (
    BrokerError,
    BrokerUnavailable,
    PublishFailed,
    TransportClosed,
    Unroutable,
)

log = logging.getLogger(__name__)

_GROUP = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class KafkaTransport:
    """:class:`brokers.contract.Transport` on Kafka."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._topics: set[str] = set()
        self._subs: set[KafkaSubscription[Any]] = set()

    @classmethod
    def from_url(cls, url: str) -> KafkaTransport:
        return cls(KafkaSettings.from_url(url))

    @property
    def url(self) -> str:
        return self.settings.safe_url

    def unavailable(self, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(f"cannot reach {self.url} ({exc or type(exc).__name__})")

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        s = self.settings
        admin = AIOKafkaAdminClient(**s.client_options())
        producer = AIOKafkaProducer(
            acks="all", enable_idempotence=s.idempotence, **s.client_options()
        )
        try:
            async with asyncio.timeout(s.op_timeout):
                await admin.start()
                await producer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            await producer.stop()
            await admin.close()
            raise self.unavailable(exc) from exc
        self._admin, self._producer = admin, producer
        await self.prepare_topics([self._name(names.KAFKA_TASK_TOPIC)], self.settings.partitions)
        await self.prepare_topics([self._reply_topic(names.DEFAULT_RESULTS)], 1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for sub in list(self._subs):
            await sub.force_close()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    def track(self, sub: KafkaSubscription[Any]) -> None:
        self._subs.add(sub)

    def untrack(self, sub: KafkaSubscription[Any]) -> None:
        self._subs.discard(sub)

    def _name(self, base: str) -> str:
        return self.settings.name(base)

    def _reply_topic(self, channel: str) -> str:
        return self._name(names.kafka_reply_topic(channel))

    def _live_admin(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            raise TransportClosed(f"transport {self.url} is not open")
        return self._admin

    async def prepare_topics(self, topics: list[str], partitions: int = 1) -> None:
        """Create missing topics (idempotent)."""
        missing = [t for t in topics if t not in self._topics]
        if not missing:
            return
        admin = self._live_admin()
        new = [NewTopic(t, partitions, self.settings.replication) for t in missing]
        try:
            await admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass
        except KafkaError as exc:
            raise BrokerError(f"cannot create topics {missing} on {self.url}: {exc}") from exc
        self._topics.update(missing)

    async def _send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        what: str,
    ) -> None:
        if self._producer is None:
            raise TransportClosed(f"transport {self.url} is not open")
        try:
            async with asyncio.timeout(self.settings.op_timeout):
                await self._producer.send_and_wait(topic, value, key=key, headers=headers)
        except (KafkaError, TimeoutError) as exc:
            raise PublishFailed(
                f"Kafka did not accept {what}: {exc or type(exc).__name__}"
            ) from exc

    # -- publish ---------------------------------------------------------------------------

    async def publish(self, task: Task) -> None:
        if not task.groups and not await self.groups():
            raise Unroutable(f"task {task.id} is for every group, but no group is subscribed")
        await self._send(
            self._name(names.KAFKA_TASK_TOPIC),
            encode(task),
            key=task.id.encode(),
            headers=[(names.KAFKA_HEADER_GROUPS, ",".join(task.groups).encode())],
            what=f"task {task.id}",
        )

    async def send_raw(self, body: bytes, *, groups: tuple[str, ...]) -> None:
        """Produce bytes onto the task topic as an external system would (for tests/tools)."""
        await self._send(
            self._name(names.KAFKA_TASK_TOPIC),
            body,
            key=None,
            headers=[(names.KAFKA_HEADER_GROUPS, ",".join(groups).encode())],
            what="raw record",
        )

    async def reply(self, reply_to: str, result: Result) -> str:
        channel = reply_to
        if reply_to != names.DEFAULT_RESULTS:
            topics = set(await self._live_admin().list_topics())
            if self._reply_topic(reply_to) not in topics:
                log.info(
                    "reply channel %s is gone; result goes to %s", reply_to, names.DEFAULT_RESULTS
                )
                channel = names.DEFAULT_RESULTS
        await self._send(
            self._reply_topic(channel),
            encode(result),
            key=result.task_id.encode(),
            headers=[("correlation_id", result.correlation_id.encode())],
            what="result",
        )
        return channel

    async def open_reply_channel(self) -> str:
        channel = f"{names.PRIVATE_REPLY_PREFIX}{uuid.uuid4().hex}"
        await self.prepare_topics([self._reply_topic(channel)], 1)
        return channel

    async def close_reply_channel(self, channel: str) -> None:
        if channel == names.DEFAULT_RESULTS:
            raise ValueError("the default results channel cannot be closed")
        topic = self._reply_topic(channel)
        with contextlib.suppress(UnknownTopicOrPartitionError):
            await self._live_admin().delete_topics([topic])
        self._topics.discard(topic)

    async def retry(self, group: str, record: Record, attempt: int, delay: float) -> None:
        not_before = int((time.time() + max(delay, 0.0)) * 1000)
        await self.prepare_topics([self._name(names.kafka_retry_topic(group))])
        await self._send(
            self._name(names.kafka_retry_topic(group)),
            record.value or b"",
            key=record.key,
            headers=[
                (names.KAFKA_HEADER_GROUPS, group.encode()),
                (names.KAFKA_HEADER_ATTEMPT, str(attempt).encode()),
                (names.KAFKA_HEADER_NOT_BEFORE, str(not_before).encode()),
            ],
            what="a retry",
        )

    async def dead_letter(self, group: str, record: Record, reason: str) -> None:
        await self.prepare_topics([self._name(names.kafka_dead_topic(group))])
        await self._send(
            self._name(names.kafka_dead_topic(group)),
            record.value or b"",
            key=record.key,
            headers=[(names.KAFKA_HEADER_REASON, reason[:2000].encode())],
            what="a dead letter",
        )

    # -- consume ---------------------------------------------------------------------------

    def consume(
        self, group: str, *, prefetch: int = 16, until_empty: bool = False
    ) -> KafkaSubscription[Task]:
        return KafkaSubscription(
            self,
            topics=[self._name(names.KAFKA_TASK_TOPIC), self._name(names.kafka_retry_topic(group))],
            group_id=self._name(group),
            group=group,
            decode=decode_task,
            prefetch=prefetch,
            until_empty=until_empty,
        )

    def replies(
        self, channel: str, *, prefetch: int = 64, until_empty: bool = False
    ) -> KafkaSubscription[Result]:
        topic = self._reply_topic(channel)
        return KafkaSubscription(
            self,
            topics=[topic],
            group_id=topic,
            group=None,
            decode=decode_result,
            prefetch=prefetch,
            until_empty=until_empty,
        )

    # -- inspection ------------------------------------------------------------------------

    async def groups(self) -> tuple[str, ...]:
        prefix = self.settings.namespace
        listed = await self._live_admin().list_consumer_groups()
        found = set()
        for entry in listed:
            group_id = entry[0]
            if group_id.startswith(prefix) and _GROUP.fullmatch(group_id[len(prefix) :]):
                found.add(group_id[len(prefix) :])
        return tuple(sorted(found))

    async def stats(self, group: str) -> GroupStats:
        tasks = self._name(names.KAFKA_TASK_TOPIC)
        retry = self._name(names.kafka_retry_topic(group))
        dead = self._name(names.kafka_dead_topic(group))
        consumer = AIOKafkaConsumer(
            group_id=self._name(group), enable_auto_commit=False, **self.settings.client_options()
        )
        await consumer.start()
        try:
            ready = await self._lag(consumer, [tasks, retry], committed=True)
            dead_count = await self._lag(consumer, [dead], committed=False)
        finally:
            await consumer.stop()
        return GroupStats(
            group,
            ready=ready,
            in_flight=None,
            dead=dead_count,
            consumers=await self._members(group),
        )

    async def _lag(self, consumer: AIOKafkaConsumer, topics: list[str], *, committed: bool) -> int:
        """Records after the group's committed offsets (or all records, if not ``committed``)."""
        partitions = []
        for topic in topics:
            for p in consumer.partitions_for_topic(topic) or await self._partitions(
                consumer, topic
            ):
                partitions.append(TopicPartition(topic, p))
        if not partitions:
            return 0
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        total = 0
        for tp in partitions:
            done = (await consumer.committed(tp)) if committed else None
            total += ends[tp] - (done if done is not None else starts[tp])
        return total

    async def _partitions(self, consumer: AIOKafkaConsumer, topic: str) -> set[int]:
        if topic not in set(await self._live_admin().list_topics()):
            return set()
        await consumer._client.force_metadata_update()  # aiokafka: no public refresh
        return consumer.partitions_for_topic(topic) or set()

    async def _members(self, group: str) -> int:
        described = await self._live_admin().describe_consumer_groups([self._name(group)])
        count = 0
        for response in described:
            for entry in response.groups:
                state, members = entry[2], entry[5]
                if state not in ("Dead", "Empty"):
                    count += len(members)
        return count

    async def dead_letters(self, group: str, *, limit: int = 100) -> list[DeadLetter]:
        topic = self._name(names.kafka_dead_topic(group))
        consumer = AIOKafkaConsumer(enable_auto_commit=False, **self.settings.client_options())
        await consumer.start()
        try:
            parts = await self._partitions(consumer, topic)
            tps = [TopicPartition(topic, p) for p in parts]
            if not tps:
                return []
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            out: list[DeadLetter] = []
            while len(out) < limit and await _behind(consumer, tps, ends):
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        reason = (header(record, names.KAFKA_HEADER_REASON) or b"").decode()
                        out.append(DeadLetter(body=record.value or b"", reason=reason))
            return out[:limit]
        finally:
            await consumer.stop()


async def _behind(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], ends: dict[Any, int]
) -> bool:
    for tp in tps:
        if await consumer.position(tp) < ends[tp]:
            return True
    return False
