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
offset (:mod:`brokers.kafka.subscription`, :mod:`brokers.kafka.commits`).

The transport is the contract's face; the connections it shares with its subscriptions live in
:class:`~brokers.kafka.client.KafkaClient`, the read-only views in
:class:`~brokers.kafka.inspection.KafkaInspector`.
"""

from __future__ import annotations

import logging
import uuid
from typing import Self

from aiokafka import TopicPartition

from brokers import names
from brokers.contract import DeadLetter, Delivery, GroupStats, Subscription
from brokers.delegates import AdminDelegate, FleetDelegate
from brokers.kafka.admin import KafkaAdmin
from brokers.kafka.client import KafkaClient
from brokers.kafka.fleet import KafkaFleet
from brokers.kafka.inspection import KafkaInspector
from brokers.kafka.records import result_headers, task_headers
from brokers.kafka.settings import KafkaSettings
from brokers.kafka.subscription import KafkaSubscription
from pixfleet.envelope import Result, Task, decode_result, decode_task, encode
from pixfleet.errors import Unroutable

log = logging.getLogger(__name__)


class KafkaTransport(AdminDelegate, FleetDelegate):
    """:class:`brokers.contract.Transport` on Kafka."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._client = KafkaClient(settings)
        self._inspector = KafkaInspector(self._client)
        self._admin = KafkaAdmin(self._client)
        self._fleet = KafkaFleet(self._client)
        #: Read offsets of the private reply channels (read with no group), by topic.
        self._positions: dict[str, dict[TopicPartition, int]] = {}

    @classmethod
    def from_url(cls, url: str) -> KafkaTransport:
        return cls(KafkaSettings.from_url(url))

    @property
    def url(self) -> str:
        return self.settings.safe_url

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._client.start()
        await self._client.prepare_topics([self._task_topic()], self.settings.partitions)
        await self._client.prepare_topics([self._reply_topic(names.DEFAULT_RESULTS)], 1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every open subscription (unsettled deliveries come again), then the
        connections."""
        await self._client.close()

    def _task_topic(self) -> str:
        return self.settings.name(names.KAFKA_TASK_TOPIC)

    def _reply_topic(self, channel: str) -> str:
        return self.settings.name(names.kafka_reply_topic(channel))

    # -- publish ---------------------------------------------------------------------------

    async def publish(self, task: Task) -> None:
        if not task.groups and not await self.groups():
            raise Unroutable(f"task {task.id} is for every group, but no group is subscribed")
        await self._client.send(
            self._task_topic(),
            encode(task),
            key=task.id.encode(),
            headers=task_headers(task.groups),
            what=f"task {task.id}",
        )

    async def send_raw(self, body: bytes, *, groups: tuple[str, ...]) -> None:
        """Produce bytes onto the task topic as an external system would (for tests/tools)."""
        await self._client.send(
            self._task_topic(), body, key=None, headers=task_headers(groups), what="raw record"
        )

    async def reply(self, reply_to: str, result: Result) -> str:
        """Send ``result`` to ``reply_to``'s topic, or to ``results`` if that topic is gone for
        good (deleted: its reader stopped waiting). A topic merely missing from one metadata
        answer - created a moment ago - is not gone (:meth:`KafkaClient.topic_gone`)."""
        channel = reply_to
        if reply_to != names.DEFAULT_RESULTS and await self._client.topic_gone(
            self._reply_topic(reply_to)
        ):
            log.warning(
                "reply channel %s is gone; result of task %s goes to %s",
                reply_to, result.task_id, names.DEFAULT_RESULTS,
            )  # fmt: skip
            channel = names.DEFAULT_RESULTS
        await self._client.send(
            self._reply_topic(channel),
            encode(result),
            key=result.task_id.encode(),
            headers=result_headers(result.correlation_id),
            what="result",
        )
        return channel

    async def open_reply_channel(self) -> str:
        channel = f"{names.PRIVATE_REPLY_PREFIX}{uuid.uuid4().hex}"
        await self._client.prepare_topics([self._reply_topic(channel)], 1)
        return channel

    async def close_reply_channel(self, channel: str) -> None:
        if channel == names.DEFAULT_RESULTS:
            raise ValueError("the default results channel cannot be closed")
        await self._client.delete_topic(self._reply_topic(channel))
        self._positions.pop(self._reply_topic(channel), None)

    # -- consume ---------------------------------------------------------------------------

    def consume(
        self, group: str, *, prefetch: int = 16, until_empty: bool = False
    ) -> Subscription[Delivery[Task]]:
        return KafkaSubscription(
            self._client,
            topics=[self._task_topic(), self.settings.name(names.kafka_retry_topic(group))],
            group_id=self.settings.name(group),
            group=group,
            decode=decode_task,
            prefetch=prefetch,
            until_empty=until_empty,
            dead_topic=self.settings.name(names.kafka_dead_topic(group)),
            inflight_topic=self.settings.name(names.kafka_inflight_topic(group)),
        )

    def replies(
        self, channel: str, *, prefetch: int = 64, until_empty: bool = False
    ) -> Subscription[Delivery[Result]]:
        topic = self._reply_topic(channel)
        private = channel.startswith(names.PRIVATE_REPLY_PREFIX)  # one reader: no group
        return KafkaSubscription(
            self._client,
            topics=[topic],
            group_id=topic,
            group=None,
            decode=decode_result,
            prefetch=prefetch,
            until_empty=until_empty,
            dead_topic=self.settings.name(names.kafka_reply_dead_topic(channel)),
            positions=self._positions.setdefault(topic, {}) if private else None,
        )

    # -- inspection ------------------------------------------------------------------------

    async def groups(self) -> tuple[str, ...]:
        return await self._inspector.groups()

    async def stats(self, group: str) -> GroupStats:
        return await self._inspector.stats(group)

    async def dead_letters(self, group: str, *, limit: int = 100) -> list[DeadLetter]:
        return await self._inspector.dead_letters(group, limit=limit)
