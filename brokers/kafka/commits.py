"""Committing a group member's progress: explicit offsets, per partition, never past unfinished
work, and never a bare ``commit()``; coalesced while the member runs, at once when it lets go.

:class:`PartitionCommits` commits, for each assigned partition, the lowest offset still in
flight (:class:`~brokers.kafka.offsets.OffsetTracker`); a ``CommitFailedError`` after a
rebalance is logged, not raised: the new owner re-reads from the last safe offset
(at-least-once). Any other failed commit (the broker or its coordinator unreachable) is logged
once and never raised either: the offsets stay uncommitted in the tracker, so the next commit -
after the next settle, or the subscription's next fetch while :attr:`PartitionCommits.behind` -
carries them. A partition read with no group (a private reply channel) keeps its offsets in a
dict of its transport instead. :class:`RebalanceListener` forwards aiokafka's rebalance callbacks.

**Coalesced** (:meth:`PartitionCommits.settled`): a settled record does not commit by itself -
that was one commit round trip per task. The member commits once :data:`COMMIT_EVERY` records
settled since its last commit, or :data:`COMMIT_WITHIN` seconds after the first of them, and
always at once when partitions are revoked, when it leaves the group, and after a record whose
retry copy or dead letter was published (a redelivery would publish it again; :meth:`commit`). What
is committed is still the tracker's safe offset - the lowest unfinished one - so a crash
commits nothing past a record in flight; it only redelivers up to the records settled since the
last commit (answered from their completion records, not run again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from brokers.kafka.offsets import OffsetTracker

log = logging.getLogger(__name__)

#: A member commits once this many records settled since its last commit ...
COMMIT_EVERY = 128
#: ... or this many seconds after the first of them settled, whichever comes first.
COMMIT_WITHIN = 0.1


class PartitionCommits:
    """The offset bookkeeping and commits of one group member (no commits until
    :meth:`attach`, none after :meth:`detach`)."""

    def __init__(self, group_id: str, store: dict[TopicPartition, int] | None = None) -> None:
        self.group_id = group_id
        self.store = store  # None: commit to the group; else (no group) keep offsets here
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self.behind = False  # the last commit failed for a transient reason
        self._settled = 0  # records settled since the last commit
        self._timer: asyncio.Task[None] | None = None

    def attach(self, consumer: AIOKafkaConsumer) -> None:
        """Commit through ``consumer`` from now on (it is joining its group)."""
        self._consumer = consumer

    def detach(self) -> None:
        """The member is leaving: commit nothing more."""
        self._consumer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def settled(self) -> None:
        """A record is done: commit when :data:`COMMIT_EVERY` records wait, else within
        :data:`COMMIT_WITHIN` seconds (a reader with no group keeps its offsets at once)."""
        self._settled += 1
        if self.store is not None or self._settled >= COMMIT_EVERY:
            await self.commit()
        elif self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._commit_soon())

    async def _commit_soon(self) -> None:
        await asyncio.sleep(COMMIT_WITHIN)
        try:
            await self.commit()
        except Exception:  # a background task: nobody else would see it
            log.exception("background commit of %s failed; retried with the next", self.group_id)

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit every assigned partition (or those in ``only``) up to its safe offset."""
        consumer = self._consumer
        if consumer is None:
            return
        async with self._lock:
            if only is None:
                self._settled = 0
            offsets = {
                tp: off
                for tp, off in self.tracker.to_commit().items()
                if (only is None or tp in only) and tp in consumer.assignment()
            }
            if not offsets:
                return
            if self.store is not None:
                self.store.update(offsets)
                self.tracker.committed(offsets)
                return
            try:
                await consumer.commit(
                    {tp: OffsetAndMetadata(off, "") for tp, off in offsets.items()}
                )
            except (CommitFailedError, IllegalStateError) as exc:
                log.warning(
                    "commit of %s skipped (%s); the new owner re-reads from the last safe offset",
                    self.group_id,
                    exc,
                )
            except KafkaError as exc:
                if not self.behind:
                    log.warning("commit of %s failed (%s); retried later", self.group_id, exc)
                self.behind = True
            else:
                self.tracker.committed(offsets)
                self.behind = False

    async def pin_start(self, assigned: set[TopicPartition]) -> None:
        """Pin a new group's start at offset 0, so the group exists (and is listed) from its
        first join and no task published before it is skipped.

        Offset 0, not the partition's reported beginning: tansu (the test broker) reports as
        "earliest" the batch *stored* first, and with several producers of one partition (the
        workers replying to a private reply channel) that can be offset 10 while 0 - 9 are
        still being stored; pinning 10 loses them. Where the log really starts later (retention
        deleted its head), fetching 0 is out of range and the consumer resets to the earliest
        offset itself (``auto_offset_reset``)."""
        consumer = self._consumer
        if consumer is None:
            return  # a last assignment while leaving the group
        async with self._lock:  # never race (and overwrite) a real commit
            try:
                fresh = {}
                for tp in assigned:
                    if self.tracker.has_committed(tp) or await consumer.committed(tp) is not None:
                        continue
                    fresh[tp] = 0
                if fresh:
                    await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in fresh.items()})
            except KafkaError as exc:  # the group then starts where auto_offset_reset says
                log.debug("initial commit for %s skipped: %s", self.group_id, exc)


class Rebalanced(Protocol):
    async def on_revoked(self, revoked: set[TopicPartition]) -> None: ...

    async def on_assigned(self, assigned: set[TopicPartition]) -> None: ...


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, target: Rebalanced) -> None:
        self.target = target

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.target.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.target.on_assigned(set(assigned))
