"""Reading and moving a consumer group's committed position from outside the group.

A :class:`Window` is what lies between a group's committed offsets (or the start of a
partition, when nothing is committed) and the end of each partition, read by a consumer that
takes the group's id but never joins it: partitions are assigned by hand, so reading commits
nothing and moves no member. :meth:`Window.commit` then moves the group's position - which Kafka
accepts only while the group has no live members (a refusal is ``broker.error``: stop the
group's workers first). The dead-letter views and replays (:mod:`brokers.kafka.admin`) use a
window on a group's dead-letter topic; ``purge`` one on its task and retry topics.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from brokers.kafka.client import KafkaClient
from brokers.kafka.failures import translate
from brokers.kafka.gaps import GapGuard
from brokers.kafka.records import Record
from pixfleet.errors import BrokerError

_FETCH_MS = 500


@dataclass
class Window:
    """The records of ``tps`` from ``starts`` (the committed position) up to ``ends``."""

    consumer: AIOKafkaConsumer
    group_id: str
    url: str
    starts: dict[TopicPartition, int]
    ends: dict[TopicPartition, int]

    @property
    def size(self) -> int:
        """How many records the window holds."""
        return sum(max(0, self.ends[tp] - self.starts[tp]) for tp in self.starts)

    async def read(self, limit: int | None = None) -> list[tuple[TopicPartition, Record]]:
        """The window's records in offset order per partition (at most ``limit``), every offset
        read (:class:`~brokers.kafka.gaps.GapGuard`)."""
        out: list[tuple[TopicPartition, Record]] = []
        todo = {tp for tp in self.starts if self.ends[tp] > self.starts[tp]}
        for tp in todo:
            self.consumer.seek(tp, self.starts[tp])
        guard = GapGuard(self.group_id)  # a record fetched before an earlier one: read again
        while todo and (limit is None or len(out) < limit):
            try:
                fetched = await self.consumer.getmany(*todo, timeout_ms=_FETCH_MS)
            except KafkaError as exc:
                raise translate(exc, self.url, f"read for {self.group_id}") from exc
            batch = await guard.admit(self.consumer, fetched)
            for tp, records in batch.items():
                out.extend((tp, r) for r in records if r.offset < self.ends[tp])
            for tp in list(todo):
                if await self.consumer.position(tp) >= self.ends[tp]:
                    todo.discard(tp)
        return out if limit is None else out[:limit]

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Move the group's committed position; raises :class:`BrokerError` when Kafka refuses
        (the group has live members) and ``broker.unavailable`` when it cannot be reached."""
        if not offsets:
            return
        try:
            await self.consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
        except CommitFailedError as exc:
            raise BrokerError(
                f"Kafka refused to move the offsets of consumer group {self.group_id!r}: it has "
                "live members (stop its workers first)"
            ) from exc
        except KafkaError as exc:
            raise translate(exc, self.url, f"commit offsets of {self.group_id}") from exc


@asynccontextmanager
async def window(client: KafkaClient, group_id: str, topics: list[str]) -> AsyncIterator[Window]:
    """A :class:`Window` of consumer group ``group_id`` on the existing ``topics``."""
    s = client.settings
    consumer = AIOKafkaConsumer(group_id=group_id, enable_auto_commit=False, **s.client_options())
    try:
        async with asyncio.timeout(s.op_timeout):
            await consumer.start()
            tps = await _partitions(client, consumer, topics)
            starts, ends = await _bounds(consumer, tps)
    except (KafkaError, OSError, TimeoutError) as exc:
        await consumer.stop()
        raise translate(exc, client.url, f"read the position of {group_id}") from exc
    try:
        yield Window(consumer, group_id, client.url, starts, ends)
    finally:
        await consumer.stop()


async def _partitions(
    client: KafkaClient, consumer: AIOKafkaConsumer, topics: list[str]
) -> list[TopicPartition]:
    existing = [t for t in topics if await client.topic_exists(t)]
    if not existing:
        return []
    await consumer._client.force_metadata_update()  # aiokafka: no public refresh
    tps = [TopicPartition(t, p) for t in existing for p in consumer.partitions_for_topic(t) or ()]
    if tps:
        consumer.assign(tps)
    return tps


async def _bounds(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition]
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """Per partition: the committed offset (at least the first one still kept), and the end."""
    if not tps:
        return {}, {}
    firsts = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    starts = {}
    for tp in tps:
        committed = await consumer.committed(tp)
        starts[tp] = max(committed if committed is not None else 0, firsts[tp])
    return starts, ends
