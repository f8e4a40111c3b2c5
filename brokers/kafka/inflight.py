"""Counting deliveries that Kafka does not count: a record redelivered after its worker died.

Kafka keeps offsets, not delivery counts, so a task that kills its worker every time would be
redelivered forever. Each task group keeps a small **in-flight topic**
(``pixfleet.inflight.<g>``, compacted, two partitions per task partition: ``2p`` for the task
topic's partition ``p``, ``2p + 1`` for the retry topic's). Each of its records is the whole
in-flight set of one source partition - ``offset:count`` for every record handed out and not
yet settled, ``count`` being how often it was handed out - so only the *last* record of a
partition matters, and reading it is one fetch, however long the group has run.

* Before a record is handed to a worker its count is raised and the new set written (and
  confirmed): a worker that dies while running it has already counted the delivery.
* When a member is assigned a partition it reads that last record: a record still in flight
  there was delivered and never settled, and its count carries over.
* Settling a record drops it from the set; the next write (soon, in the background) says so.

A record whose count plus its attempt passes the delivery limit is dead-lettered instead of
handed out (:mod:`brokers.kafka.subscription`). The set is written by the partition's owner only;
a member that cannot read it (broker trouble while joining) counts from zero for that partition,
which errs towards one more delivery, never towards dead-lettering a healthy task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from brokers.kafka.records import Headers, Record
from brokers.kafka.settings import KafkaSettings
from pixfleet.errors import BrokerError

log = logging.getLogger(__name__)

_PAIR = re.compile(r"([0-9]{1,19}):([0-9]{1,6})")
_MAX_COUNT = 1_000_000


class LogHost(Protocol):
    """What the in-flight log needs from its transport."""

    @property
    def settings(self) -> KafkaSettings: ...

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None,
        headers: Headers,
        what: str,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None: ...

    async def partitions_of(self, topic: str) -> int: ...

    async def prepare_topics(
        self, topics: list[str], partitions: int = 1, configs: dict[str, str] | None = None
    ) -> None: ...


class InflightLog:
    """The in-flight counts of one group member, kept in ``topic`` for the source topics
    ``sources`` (the task topic, then the retry topic)."""

    def __init__(self, host: LogHost, topic: str, sources: tuple[str, ...]) -> None:
        self._host = host
        self.topic = topic
        self._sources = sources
        self._counts: dict[TopicPartition, dict[int, int]] = {}
        self._dirty: set[TopicPartition] = set()
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self._slots = 0  # partitions of the in-flight topic
        self._loaded: set[TopicPartition] = set()  # assigned, and their counts read

    async def prepare(self) -> None:
        """Create the in-flight topic (two partitions per task partition), compacted."""
        wanted = len(self._sources) * await self._host.partitions_of(self._sources[0])
        await self._host.prepare_topics([self.topic], wanted, {"cleanup.policy": "compact"})
        self._slots = await self._host.partitions_of(self.topic)
        if self._slots < wanted:
            log.warning(
                "%s has %d partitions, %d wanted (the task topic grew?): crash redeliveries of "
                "the partitions beyond are not counted",
                self.topic,
                self._slots,
                wanted,
            )

    def loaded(self, tp: TopicPartition) -> bool:
        """Whether the counts of ``tp`` are known: its records may be handed out. (aiokafka
        may fetch a newly assigned partition before the assignment callback has read them.)"""
        return tp in self._loaded

    def prior(self, tp: TopicPartition, offset: int) -> int:
        """How often the record was handed out before without being settled."""
        return self._counts.get(tp, {}).get(offset, 0)

    def handed_out(self, tp: TopicPartition, offset: int) -> None:
        """Count one more delivery of the record (written by the next :meth:`flush`)."""
        if not self._kept(tp):
            return
        counts = self._counts.setdefault(tp, {})
        counts[offset] = min(counts.get(offset, 0) + 1, _MAX_COUNT)
        self._dirty.add(tp)

    def uncount(self, tp: TopicPartition, offset: int) -> None:
        """Take back one count of the record: counted, then not handed out after all."""
        counts = self._counts.get(tp, {})
        if offset in counts:
            counts[offset] -= 1
            if counts[offset] <= 0:
                del counts[offset]
            self._dirty.add(tp)

    def settled(self, tp: TopicPartition, offset: int) -> None:
        """The record is done (acked, retried or dead-lettered): forget it, soon on the broker
        too."""
        if self._counts.get(tp, {}).pop(offset, None) is not None:
            self._dirty.add(tp)
            self._flush_soon()

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._counts.pop(tp, None)
            self._dirty.discard(tp)
            self._loaded.discard(tp)

    # -- the broker side -------------------------------------------------------------------

    def _slot(self, tp: TopicPartition) -> int:
        return len(self._sources) * int(tp.partition) + self._sources.index(tp.topic)

    def _kept(self, tp: TopicPartition) -> bool:
        return tp.topic in self._sources and self._slot(tp) < self._slots

    async def flush(self) -> None:
        """Write the set of every partition that changed; raises (keeping them to write) if
        the broker does not confirm."""
        async with self._lock:
            dirty = sorted(self._dirty, key=self._slot)
            self._dirty.difference_update(dirty)
            try:
                await asyncio.gather(*(self._write(tp) for tp in dirty))
            except BaseException:
                self._dirty.update(dirty)
                raise

    async def _write(self, tp: TopicPartition) -> None:
        counts = self._counts.get(tp, {})
        value = " ".join(f"{offset}:{n}" for offset, n in sorted(counts.items()))
        await self._host.send(
            self.topic,
            value.encode(),
            key=f"{tp.topic}:{tp.partition}".encode(),
            headers=[],
            what="the in-flight set",
            partition=self._slot(tp),
        )

    def _flush_soon(self) -> None:
        if self._background is None or self._background.done():
            self._background = asyncio.create_task(self._flush_quietly())

    async def _flush_quietly(self) -> None:
        try:
            while self._dirty:
                await self.flush()
        except BrokerError as exc:  # written with the next flush
            log.debug("in-flight set of %s not written now: %s", self.topic, exc)

    async def close(self) -> None:
        """Write what changed (best effort) and stop."""
        with contextlib.suppress(BrokerError):
            await self.flush()
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background

    async def load(self, assigned: set[TopicPartition]) -> None:
        """Read the last in-flight set of each newly assigned partition; then (read or not)
        they are :meth:`loaded`."""
        wanted = {
            TopicPartition(self.topic, self._slot(tp)): tp for tp in assigned if self._kept(tp)
        }
        try:
            last = await self._read_last(list(wanted)) if wanted else {}
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("cannot read %s (%s); counting from zero", self.topic, exc)
            last = {}
        for slot, record in last.items():
            source = wanted[slot]
            if record.key == f"{source.topic}:{source.partition}".encode():
                self._counts[source] = _parse(record.value or b"")
        self._loaded.update(assigned)

    async def _read_last(self, slots: list[TopicPartition]) -> dict[TopicPartition, Record]:
        s = self._host.settings
        consumer = AIOKafkaConsumer(enable_auto_commit=False, **s.client_options())
        await consumer.start()
        try:
            consumer.assign(slots)
            ends = await consumer.end_offsets(slots)
            starts = await consumer.beginning_offsets(slots)
            wanted = {tp: ends[tp] - 1 for tp in slots if ends[tp] > starts[tp]}
            for tp, offset in wanted.items():
                consumer.seek(tp, offset)
            found: dict[TopicPartition, Record] = {}
            async with asyncio.timeout(s.op_timeout):
                while missing := [
                    tp
                    for tp in wanted
                    if tp not in found and await consumer.position(tp) < ends[tp]
                ]:
                    batch = await consumer.getmany(*missing, timeout_ms=200)
                    for tp, records in batch.items():
                        found[tp] = records[-1]
            return found
        finally:
            await consumer.stop()


def _parse(value: bytes) -> dict[int, int]:
    """``offset:count`` pairs; anything else in the value is ignored (it is our own topic)."""
    counts = {}
    for pair in value.decode(errors="replace").split():
        match = _PAIR.fullmatch(pair)
        if match:
            counts[int(match[1])] = min(int(match[2]), _MAX_COUNT)
    return counts
