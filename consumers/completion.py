"""One result per (task id, group): the worker's side of the completion records.

The task id is the idempotency key. Every delivery goes through :class:`Completions`:

0. **First**, :meth:`~Completions.recorded` binds the task id to the task's blob through the
   task record (:func:`~pixfleet.records.bind_task`): a task whose id is bound to another blob
   is refused - neither run nor answered, so a forged task id never reaches the first task's
   record, outputs or reply channel.
1. **Before running** - in the same trip to the blob store - it looks for the completion record
   of (task id, group) (:mod:`pixfleet.records`). If there is one, the task is not run again:
   the delivery is answered with the recorded result.
2. **After running** (or failing for good), :meth:`~Completions.record` writes the result
   create-if-absent. Exactly one writer wins, on every machine and whatever the transport; a
   loser (a concurrent copy of the same task id) adopts the winner's result and stays silent,
   because the winner's delivery is not settled before its reply is confirmed.
3. :meth:`~Completions.answer` publishes the reply, then marks it replied. The delivery that
   recorded the result always replies. A delivery answered from a record whose reply is not
   marked replies itself: at once if it is a *redelivery* (``attempt > 1``: the delivery before
   it died or gave up, most likely between the record and the reply), after ``grace`` seconds
   if it is a *first* delivery - a second copy of the task id, published again, whose recorder
   may be alive and about to mark its reply (a live recorder marks within milliseconds).
   Waiting holds the delivery, so a redelivery must not wait: a worker killed while it waits
   would count one more delivery towards the delivery limit.

A reply still pending when the broker takes its delivery back (``Delivery.held`` turns False:
its connection was lost and the transport is trying the reply again) is given up: the
redelivery answers from the record, and both replies would only make a raw duplicate.

A raw duplicate reply remains possible only when a worker dies between a reply's confirm and its
``replied`` mark (or when a recorder takes longer than ``grace`` to mark, or its lease expired
while it still worked): bounded by crashes, and readers keep each (task id, group) once.
A transport that could not count a crash as a delivery would redeliver with ``attempt == 1``:
its crash recovery would wait ``grace`` once more.

A final error that cannot be recorded (the store is full or gone) is still replied - the client
must hear about it - and dead-lettered unrecorded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from brokers.contract import ReplyChannels
from brokers.policy import RECONNECT
from pixfleet.blobs import BlobStore
from pixfleet.envelope import Result, Task
from pixfleet.errors import BlobError, BrokerBlocked, BrokerUnavailable, PixfleetError
from pixfleet.records import (
    bind_and_read_result,
    mark_dead,
    mark_replied,
    record_result,
    was_dead,
    was_replied,
)

log = logging.getLogger(__name__)


def _held() -> bool:
    return True


#: Seconds a delivery answered from a record waits for the recorder's ``replied`` mark before it
#: publishes the reply itself (the recorder is presumed dead after that).
REPLY_GRACE = 3.0
_POLL = 0.1

_Check = Callable[[BlobStore, str, str], Awaitable[bool]]  # was_replied, was_dead
_Mark = Callable[[BlobStore, str, str], Awaitable[None]]  # mark_replied, mark_dead


@dataclass(frozen=True)
class Outcome:
    """How one delivery ends: with ``result`` - the recorded one whenever there is a record."""

    result: Result
    ran: bool  # this delivery ran the pipeline (or failed trying)
    owner: bool  # this delivery recorded ``result`` (or could not record it): it replies
    error: PixfleetError | None = None  # the final failure this delivery met, if any


class Completions:
    """Reads and writes the completion records of one worker (see the module docstring)."""

    def __init__(
        self, blobs: BlobStore, replies: ReplyChannels, *, grace: float = REPLY_GRACE
    ) -> None:
        self.blobs = blobs
        self.replies = replies
        self.grace = grace

    async def recorded(self, task: Task, group: str) -> Outcome | None:
        """Bind the task id to the task's blob (the task record, recorded now if absent), then
        the recorded answer of (task, group) addressed to this delivery's task, or None - in one
        trip to the blob store (:func:`~pixfleet.records.bind_and_read_result`). Raises
        :class:`~pixfleet.errors.TaskConflict` if the id is bound to another blob, and the
        store's :class:`BlobError` (``blob.unavailable`` is retryable)."""
        result = await bind_and_read_result(self.blobs, task, group)
        if result is None:
            return None
        if result.correlation_id != task.correlation_id:
            result = result.model_copy(update={"correlation_id": task.correlation_id})
        return Outcome(result, ran=False, owner=False)

    async def record(self, result: Result) -> Outcome:
        """Record ``result`` unless another delivery recorded first (then adopt that one).
        Raises the store's :class:`BlobError` (retryable: the task will run again)."""
        winner = await record_result(self.blobs, result)
        # record_result hands back the very object it was given when this call created it.
        return Outcome(winner, ran=True, owner=winner is result)

    async def record_failure(self, result: Result, error: PixfleetError) -> Outcome:
        """Record a final error result; if the store cannot take it, answer unrecorded."""
        try:
            outcome = await self.record(result)
        except BlobError as exc:
            log.warning(
                "task %s [%s]: cannot record its error result (%s); replying unrecorded",
                result.task_id,
                result.group,
                exc.one_line(),
            )
            outcome = Outcome(result, ran=True, owner=True)
        return Outcome(outcome.result, ran=True, owner=outcome.owner, error=error)

    async def answer(
        self, task: Task, outcome: Outcome, *, attempt: int, held: Callable[[], bool] = _held
    ) -> None:
        """Reply for ``outcome`` of delivery number ``attempt`` as the module docstring says,
        then mark the reply. Raises the transport's :class:`~pixfleet.errors.BrokerError` if
        the reply was not confirmed, :class:`BrokerUnavailable` if it was given up because
        ``held()`` turned False (the delivery's ``held``) while it was pending."""
        result = outcome.result
        if outcome.owner:
            await self._reply(task, result, held)
        elif not outcome.ran and not await self._replied_within(result, attempt):
            log.info(
                "task %s [%s]: its recorded result has no confirmed reply; replying now",
                task.id,
                result.group,
            )
            await self._reply(task, result, held)

    async def _reply(self, task: Task, result: Result, held: Callable[[], bool]) -> None:
        await self._reply_while_held(task.reply_to, result, held)
        await self._mark(mark_replied, result, "reply confirmed", "a redelivery may repeat it")

    async def dead_lettered(self, result: Result, *, attempt: int) -> bool:
        """Is the dead letter of this recorded ``error`` result marked - now, or for a first
        delivery (a copy published again) within ``grace`` seconds, like its reply?"""
        return await self._marked_within(was_dead, result, attempt)

    async def mark_dead(self, result: Result) -> None:
        """Note the dead letter of a recorded ``error`` result; a mark that cannot be written
        costs at most one more dead letter of a later copy (logged, not raised)."""
        await self._mark(mark_dead, result, "dead-lettered", "a later copy may repeat it")

    async def _mark(
        self,
        mark: _Mark,
        result: Result,
        done: str,
        risk: str,
    ) -> None:
        """Write a mark of (task id, group); one that cannot be written is logged, not raised."""
        try:
            await mark(self.blobs, result.task_id, result.group)
        except PixfleetError as exc:
            log.warning(
                "task %s [%s]: %s but not marked (%s); %s",
                result.task_id,
                result.group,
                done,
                exc.one_line(),
                risk,
            )

    async def _reply_while_held(
        self, reply_to: str, result: Result, held: Callable[[], bool]
    ) -> None:
        """The reply (:meth:`_reply_when_unblocked`), given up - cancelled, then
        :class:`BrokerUnavailable` - once ``held()`` is False while it is still pending."""
        replying = asyncio.ensure_future(self._reply_when_unblocked(reply_to, result))
        try:
            while not replying.done():
                await asyncio.wait({replying}, timeout=_POLL)
                if not replying.done() and not held():
                    replying.cancel()
                    await asyncio.wait({replying})
        finally:
            replying.cancel()  # only if this wait was cancelled: it is done otherwise
        if replying.cancelled():
            raise BrokerUnavailable(
                f"reply of task {result.task_id} [{result.group}] given up: the broker took "
                "its delivery back (the redelivery answers from the record)"
            )
        replying.result()

    async def _reply_when_unblocked(self, reply_to: str, result: Result) -> None:
        """Publish the reply; while the broker blocks publishers (a memory or disk alarm), hold
        the delivery and try again. Giving the delivery back instead would count a delivery
        towards the limit per blocked try, and a long alarm would dead-letter tasks whose result
        is recorded ``ok``. Other broker errors propagate (the delivery is given back)."""
        tries = 0
        while True:
            try:
                await self.replies.reply(reply_to, result)
                return
            except BrokerBlocked as err:
                tries += 1
                if tries == 1:
                    log.warning(
                        "task %s [%s]: %s; holding it until the broker takes the reply",
                        result.task_id,
                        result.group,
                        err.one_line(),
                    )
                await asyncio.sleep(RECONNECT.delay(tries))

    async def _replied_within(self, result: Result, attempt: int) -> bool:
        """Is the reply marked - now, or for a first delivery within ``grace`` seconds?"""
        return await self._marked_within(was_replied, result, attempt)

    async def _marked_within(self, marked: _Check, result: Result, attempt: int) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.grace if attempt == 1 else 0.0)
        while not await marked(self.blobs, result.task_id, result.group):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_POLL)
        return True
