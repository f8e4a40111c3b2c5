"""The Kafka row of a group that changes: workers join, leave and are killed while a
:class:`CommitAudit` watches the group's commits (issue 9: no commit passes an unfinished
offset)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from brokers import names
from brokers.kafka.settings import KafkaSettings
from tests.reliability.harness import Fault, Run
from tests.reliability.transport_faults import progress

#: What happens to the group, one step every few seconds.
MEMBERSHIP = ("join", "kill", "leave", "join", "kill", "leave")


@dataclass
class Membership:
    kills: int = 0
    joins: int = 0
    leaves: int = 0


def membership_changes(counts: Membership, *, every: float = 3.0, seed: int = 9) -> Fault:
    """Workers join (a new one starts), are killed (``kill -9``, replaced) and leave
    (SIGTERM: a drain) in the order of :data:`MEMBERSHIP`."""

    async def fault(run: Run) -> int:
        rng = random.Random(seed)
        for step in MEMBERSHIP:
            if not await progress(run, 0.0) or await _ended(run, every):
                break
            live = run.fleet.alive()
            if step == "join" or len(live) < 2:
                run.fleet.start(1)
                counts.joins += 1
            elif step == "kill":
                run.fleet.kill9(rng.choice(live))
                run.fleet.start(1)
                counts.kills += 1
            else:
                run.fleet.terminate(rng.choice(live))
                counts.leaves += 1
        return counts.kills + counts.joins + counts.leaves

    return fault


async def _ended(run: Run, seconds: float) -> bool:
    try:
        await asyncio.wait_for(run.done.wait(), seconds)
    except TimeoutError:
        return False
    return True


@dataclass
class CommitAudit:
    """Polls the group's committed offsets of the task topic while a row runs; afterwards,
    :meth:`violations` compares every commit seen with when each task's reply was marked
    (``records/results/.../<group>.replied``, written after the reply's confirm, before the
    ack): no commit may pass a task whose reply was not marked yet."""

    settings: KafkaSettings
    group: str
    partitions: int
    seen: list[tuple[float, int, int]] = field(default_factory=list)  # time, partition, offset

    @property
    def topic(self) -> str:
        return self.settings.name(names.KAFKA_TASK_TOPIC)

    async def watch(self, done: asyncio.Event, every: float = 0.25) -> None:
        consumer = AIOKafkaConsumer(
            group_id=self.settings.name(self.group), enable_auto_commit=False,
            **self.settings.client_options(),
        )  # fmt: skip
        await consumer.start()
        try:
            while not done.is_set():
                for p in range(self.partitions):
                    offset = await consumer.committed(TopicPartition(self.topic, p))
                    if offset:
                        self.seen.append((time.time(), p, offset))
                await asyncio.sleep(every)
        finally:
            await consumer.stop()

    async def where(self) -> dict[tuple[int, int], str]:
        """(partition, offset) -> task id of every record of the task topic."""
        consumer = AIOKafkaConsumer(enable_auto_commit=False, **self.settings.client_options())
        await consumer.start()
        out: dict[tuple[int, int], str] = {}
        try:
            tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while batch := await consumer.getmany(timeout_ms=1500):
                for tp, records in batch.items():
                    for r in records:
                        out[(tp.partition, r.offset)] = (r.key or b"").decode()
        finally:
            await consumer.stop()
        return out

    async def violations(self, blobs: Path) -> list[str]:
        where = await self.where()
        marked: dict[str, float] = {}
        for mark in (blobs / "records" / "results").rglob(f"{self.group}.replied"):
            marked[mark.parent.name] = mark.stat().st_mtime
        found: list[str] = []
        first: dict[tuple[int, int], float] = {}
        for t, p, committed in self.seen:
            first.setdefault((p, committed), t)
        print(f"commit audit: {len(first)} distinct commits seen, {len(where)} records")
        for (p, committed), t in first.items():
            for (partition, offset), task_id in where.items():
                if partition == p and offset < committed and marked.get(task_id, 1e18) > t:
                    found.append(f"p{p}@{offset} ({task_id}) committed before its reply")
        return sorted(set(found))
