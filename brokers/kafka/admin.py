"""Dead letters and purges on Kafka (:class:`brokers.contract.Admin`), see docs/kafka.md.

A topic cannot lose records one by one, so each group's dead letters are *the records of its
dead-letter topic after the committed offsets of the consumer group*
``pixfleet.dead.<g>`` (:func:`brokers.names.kafka_dead_group`), which never joins: its position
is moved from outside (:mod:`brokers.kafka.window`).

* **list** reads that window and commits nothing;
* **replay** re-publishes each selected task to the group's retry topic ``pixfleet.retry.<g>``
  (read by that group only) with no attempt header - a first delivery, same key and body - and
  waits for ``acks=all``; a dead record *not* selected that lies before a selected one is copied
  to the end of the dead-letter topic (headers and timestamp kept), since the position can only
  move past both; then the position is committed past the last selected record. A crash before
  that commit replays (and copies) again next time: duplicates, never a loss;
* **purge** of dead letters commits the position at the end;
* **purge** of a group's ready tasks commits the group's own offsets at the end of its task and
  retry topics; Kafka allows that only while the group has no live members.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import UTC, datetime

from aiokafka import TopicPartition

from brokers import names
from brokers.contract import DeadLetter
from brokers.deadletters import dead_letter, replayable
from brokers.kafka.client import KafkaClient
from brokers.kafka.records import Headers, Record, is_targeted, reason_of
from brokers.kafka.window import Window, window

log = logging.getLogger(__name__)


class KafkaAdmin:
    """Dead-letter views, replays and purges over a transport's shared client."""

    def __init__(self, client: KafkaClient) -> None:
        self._client = client
        self._settings = client.settings

    def _dead(self, group: str) -> tuple[str, list[str]]:
        s = self._settings
        return s.name(names.kafka_dead_group(group)), [s.name(names.kafka_dead_topic(group))]

    async def dead_letters(self, group: str, *, limit: int = 100) -> list[DeadLetter]:
        async with window(self._client, *self._dead(group)) as dead:
            records = await dead.read(limit)
        return [_view(record) for _, record in records]

    async def dead_count(self, group: str) -> int:
        async with window(self._client, *self._dead(group)) as dead:
            return dead.size

    async def purge_dead_letters(self, group: str) -> int:
        async with window(self._client, *self._dead(group)) as dead:
            await dead.commit(dict(dead.ends))
            return dead.size

    async def purge(self, group: str) -> int:
        s = self._settings
        topics = [s.name(names.KAFKA_TASK_TOPIC), s.name(names.kafka_retry_topic(group))]
        async with window(self._client, s.name(group), topics) as ready:
            records = await ready.read()
            await ready.commit(dict(ready.ends))
        return sum(1 for _, record in records if is_targeted(record, group))

    async def replay_dead_letters(self, group: str, task_ids: Collection[str] | None = None) -> int:
        retry = self._settings.name(names.kafka_retry_topic(group))
        await self._client.prepare_retry_topic(retry)
        async with window(self._client, *self._dead(group)) as dead:
            by_tp: dict[TopicPartition, list[Record]] = {}
            for tp, record in await dead.read():
                by_tp.setdefault(tp, []).append(record)
            moved: dict[TopicPartition, int] = {}
            replayed = 0
            for tp, records in by_tp.items():
                done, count = await self._replay_partition(dead, group, records, task_ids)
                if done is not None:
                    moved[tp] = done
                replayed += count
            await dead.commit(moved)
        log.info("replayed %d dead letter(s) of %s", replayed, group)
        return replayed

    async def _replay_partition(
        self, dead: Window, group: str, records: list[Record], task_ids: Collection[str] | None
    ) -> tuple[int | None, int]:
        """Re-publish the selected tasks of one partition (copying the others before the last
        one forward); the offset to commit (None: nothing selected) and how many."""
        chosen = [r.offset for r in records if replayable(r.value or b"", task_ids) is not None]
        if not chosen:
            return None, 0
        last = chosen[-1]
        for record in records:
            if record.offset > last:
                break
            if record.offset in chosen:
                await self._republish(group, record)
            else:
                await self._copy_forward(dead, record)
        return last + 1, len(chosen)

    async def _republish(self, group: str, record: Record) -> None:
        await self._client.send(
            self._settings.name(names.kafka_retry_topic(group)),
            record.value or b"",
            key=record.key,
            headers=[(names.KAFKA_HEADER_GROUPS, group.encode())],
            what="a replayed task",
        )

    async def _copy_forward(self, dead: Window, record: Record) -> None:
        topic = next(iter(dead.ends)).topic
        headers: Headers = [(k, bytes(v or b"")) for k, v in record.headers or ()]
        await self._client.send(
            topic,
            record.value or b"",
            key=record.key,
            headers=headers,
            what="a dead letter kept",
            timestamp_ms=record.timestamp,
        )


def _view(record: Record) -> DeadLetter:
    key = record.key.decode(errors="replace") if record.key else None
    died = datetime.fromtimestamp(record.timestamp / 1000, UTC) if record.timestamp else None
    return dead_letter(record.value or b"", reason_of(record), key=key, dead_at=died)
