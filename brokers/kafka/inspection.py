"""Read-only views of a Kafka broker for ``uploader status`` and autoscalers.

``ready`` is a group's lag (records after its committed offsets, retry topic included), which
on Kafka includes records a member holds but has not finished; ``in_flight`` is unknown;
``consumers`` is the member count from DescribeGroups; ``dead`` counts the dead-letter topic
after its committed position (:mod:`brokers.kafka.admin`).
"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from brokers import names
from brokers.contract import DeadLetter, GroupStats
from brokers.kafka.admin import KafkaAdmin
from brokers.kafka.client import KafkaClient
from brokers.kafka.failures import translate
from pixfleet.envelope import is_group_name


class KafkaInspector:
    """:class:`brokers.contract.Inspector` on Kafka, over a transport's shared client."""

    def __init__(self, client: KafkaClient) -> None:
        self._client = client
        self._settings = client.settings
        self._admin = KafkaAdmin(client)

    async def groups(self) -> tuple[str, ...]:
        prefix = self._settings.namespace
        listed = await self._client.admin.list_consumer_groups()
        found = set()
        for entry in listed:
            group_id = entry[0]
            if group_id.startswith(prefix) and is_group_name(group_id[len(prefix) :]):
                found.add(group_id[len(prefix) :])
        return tuple(sorted(found))

    async def stats(self, group: str) -> GroupStats:
        s = self._settings
        tasks = s.name(names.KAFKA_TASK_TOPIC)
        retry = s.name(names.kafka_retry_topic(group))
        consumer = AIOKafkaConsumer(
            group_id=s.name(group), enable_auto_commit=False, **s.client_options()
        )
        try:
            try:
                await consumer.start()
                ready = await self._lag(consumer, [tasks, retry], committed=True)
            finally:
                await consumer.stop()  # also after a failed start: nothing left unclosed
            members = await self._members(group)
        except KafkaError as exc:
            raise translate(exc, self._client.url, f"read the backlog of {group}") from exc
        dead_count = await self._admin.dead_count(group)
        return GroupStats(group, ready=ready, in_flight=None, dead=dead_count, consumers=members)

    async def dead_letters(self, group: str, *, limit: int = 100) -> list[DeadLetter]:
        """The records after the dead-letter position (:mod:`brokers.kafka.admin`)."""
        return await self._admin.dead_letters(group, limit=limit)

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
            # A commit can pass an end offset read a moment earlier (or one a broker reports
            # low): a partition is never behind by less than nothing.
            total += max(0, ends[tp] - (done if done is not None else starts[tp]))
        return total

    async def _partitions(self, consumer: AIOKafkaConsumer, topic: str) -> set[int]:
        if not await self._client.topic_exists(topic):
            return set()
        await consumer._client.force_metadata_update()  # aiokafka: no public refresh
        return consumer.partitions_for_topic(topic) or set()

    async def _members(self, group: str) -> int:
        described = await self._client.admin.describe_consumer_groups([self._settings.name(group)])
        count = 0
        for response in described:
            for entry in response.groups:
                state, members = entry[2], entry[5]
                if state not in ("Dead", "Empty"):
                    count += len(members)
        return count
