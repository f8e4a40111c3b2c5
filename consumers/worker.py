"""The worker loop: consume a group's tasks, run its pipeline, reply, then ack.

Per delivery, in this order (at-least-once with idempotent effects):

1. check the task's deadline and size limit, then fetch the blob and verify its size and sha256;
2. run the pipeline in the process pool (at most ``concurrency`` at a time);
3. write outputs under keys derived from ``task id + group + name`` (a redelivery overwrites);
4. publish the :class:`Result` to ``task.reply_to`` - durable before it returns;
5. only then ack. A crash anywhere before 5 means redelivery, never loss.

Failures: a retryable error (blob store hiccup, crashed pool process) is nacked for a retry after
a :class:`~brokers.policy.Backoff` delay until the ``delivery_limit``-th delivery; a permanent one
(corrupt image, bomb, bad params, timeout) gets an error Result and is dead-lettered with its
reason at once. One ``except Exception`` guards each delivery so that nothing stops the loop.

The worker is typed against the roles it uses - :class:`~brokers.contract.TaskQueue`,
:class:`~brokers.contract.ReplyChannels` and the :class:`~pixfleet.blobs.BlobStore` protocol -
and reports outcomes and state changes to a :class:`~consumers.events.WorkerEvents` listener.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from contextlib import aclosing
from dataclasses import dataclass, field

from brokers.contract import Delivery, ReplyChannels, TaskQueue
from brokers.policy import Backoff
from consumers.events import NO_EVENTS, EventFanout, WorkerEvents, WorkerState, WorkerStats
from consumers.pipelines.base import Pipeline
from consumers.pool import PipelinePool
from consumers.steps import Stopwatch, check_admissible, error_result, ok_result, store_outputs
from pixfleet.blobs import BlobStore
from pixfleet.envelope import Result, Task, WorkerInfo
from pixfleet.errors import PixfleetError
from pixfleet.images import Limits

log = logging.getLogger(__name__)

#: Longest wait before a retry, however many deliveries a task has had.
RETRY_BACKOFF_CAP = 60.0


@dataclass(frozen=True)
class WorkerSettings:
    group: str
    concurrency: int = 2
    prefetch: int = 0  # 0: same as concurrency
    limits: Limits = field(default_factory=Limits)
    delivery_limit: int = 5  # deliveries before a retryable failure becomes final
    retry_backoff: float = 1.0  # seconds; doubles per attempt, capped at RETRY_BACKOFF_CAP
    drain_timeout: float = 60.0
    burst: bool = False

    @property
    def effective_prefetch(self) -> int:
        return self.prefetch or self.concurrency

    @property
    def backoff(self) -> Backoff:
        return Backoff(first=self.retry_backoff, cap=RETRY_BACKOFF_CAP)


class Worker:
    """One consumer of one group. Build it with open resources; call :meth:`run`.

    ``tasks`` and ``replies`` are usually the same transport; ``events`` hears every outcome
    and state change (its counts are also kept in :attr:`stats`)."""

    def __init__(
        self,
        *,
        tasks: TaskQueue,
        replies: ReplyChannels,
        blobs: BlobStore,
        pipeline: Pipeline,
        pool: PipelinePool,
        settings: WorkerSettings,
        events: WorkerEvents = NO_EVENTS,
    ) -> None:
        self.tasks = tasks
        self.replies = replies
        self.blobs = blobs
        self.pipeline = pipeline
        self.pool = pool
        self.settings = settings
        self.info = WorkerInfo(
            id=f"{socket.gethostname()}:{os.getpid()}", host=socket.gethostname(), pid=os.getpid()
        )
        self.stats = WorkerStats()
        self.events = EventFanout(self.stats, events)
        self.state: WorkerState = "starting"
        self._backoff = settings.backoff
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._stop = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._given_back = 0  # deliveries nacked with requeue=True

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop taking new tasks; in-flight ones finish (SIGTERM, first Ctrl-C)."""
        if not self._stop.is_set():
            log.info("stopping: finishing %d in-flight task(s)", len(self._in_flight))
        self._stop.set()

    def abort(self) -> None:
        """Cancel in-flight tasks; the transport gives their deliveries back (second Ctrl-C)."""
        self._stop.set()
        for task in self._in_flight:
            task.cancel()

    async def run(self) -> WorkerStats:
        """Serve until stopped or, with ``burst``, until the group has no backlog: a round
        consumes until the group is empty and drains; another round follows only if the last
        one gave deliveries back for a retry."""
        s = self.settings
        log.info(
            "worker %s serving group %r (concurrency %d, prefetch %d%s)",
            self.info.id,
            s.group,
            s.concurrency,
            s.effective_prefetch,
            ", burst" if s.burst else "",
        )
        try:
            while True:
                given_back = self._given_back
                self._set_state("consuming")
                await self._consume_until_stopped()
                self._set_state("draining")
                await self._drain()
                if self._stop.is_set() or not s.burst or self._given_back == given_back:
                    break
        finally:
            self._set_state("stopped")
        return self.stats

    def _set_state(self, new: WorkerState) -> None:
        old, self.state = self.state, new
        if old != new:
            self.events.state_changed(old, new)

    async def _consume_until_stopped(self) -> None:
        s = self.settings
        stream = self.tasks.consume(s.group, prefetch=s.effective_prefetch, until_empty=s.burst)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            async with aclosing(stream) as deliveries:
                while True:
                    nxt = asyncio.ensure_future(anext(deliveries))
                    await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
                    if not nxt.done():
                        nxt.cancel()  # transports' __anext__ is cancellation-safe
                        break
                    try:
                        delivery = nxt.result()
                    except StopAsyncIteration:
                        break
                    handler = asyncio.create_task(self._handle(delivery))
                    self._in_flight.add(handler)
                    handler.add_done_callback(self._in_flight.discard)
        finally:
            stop.cancel()

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        _, pending = await asyncio.wait(self._in_flight, timeout=self.settings.drain_timeout)
        if pending:
            log.warning("drain timed out; %d task(s) go back to the broker", len(pending))
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)

    # -- one delivery ----------------------------------------------------------------------

    async def _handle(self, delivery: Delivery[Task]) -> None:
        task = delivery.message
        try:
            await self._process_and_settle(delivery)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Reply or settle failed (broker gone?). Do not ack: the task will come back.
            log.exception(
                "task %s [%s]: could not finish; it will be redelivered",
                task.id,
                self.settings.group,
            )
            await self._nack_quietly(delivery)

    async def _nack_quietly(self, delivery: Delivery[Task]) -> None:
        self._given_back += 1
        try:
            await delivery.nack(requeue=True, delay=self._backoff.delay(delivery.attempt))
        except Exception:
            log.exception(
                "task %s: nack failed too; the lease expiry will redeliver it", delivery.message.id
            )

    async def _process_and_settle(self, delivery: Delivery[Task]) -> None:
        try:
            result = await self._execute(delivery.message, delivery.attempt)
        except PixfleetError as err:
            if err.retryable and delivery.attempt < self.settings.delivery_limit:
                await self._retry(delivery, err)
            else:
                await self._fail(delivery, err)
            return
        await self._succeed(delivery, result)

    async def _succeed(self, delivery: Delivery[Task], result: Result) -> None:
        task = delivery.message
        await self.replies.reply(task.reply_to, result)
        await delivery.ack()
        self.events.task_ok(task, result)
        log.info(
            "task %s [%s] ok: %d output(s) in %.0f ms",
            task.id,
            self.settings.group,
            len(result.outputs),
            result.timings_ms.get("total", 0.0),
        )

    async def _retry(self, delivery: Delivery[Task], err: PixfleetError) -> None:
        task, attempt = delivery.message, delivery.attempt
        delay = self._backoff.delay(attempt)
        log.warning(
            "task %s attempt %d: %s; retrying in %.1fs", task.id, attempt, err.one_line(), delay
        )
        self._given_back += 1
        await delivery.nack(requeue=True, delay=delay, reason=err.one_line())
        self.events.task_retry(task, attempt, delay, err)

    async def _fail(self, delivery: Delivery[Task], err: PixfleetError) -> None:
        task, attempt = delivery.message, delivery.attempt
        log.warning("task %s attempt %d failed: %s", task.id, attempt, err.one_line())
        result = error_result(
            task, err, group=self.settings.group, worker=self.info, attempt=attempt
        )
        await self.replies.reply(task.reply_to, result)
        await delivery.nack(requeue=False, reason=err.one_line())
        self.events.task_failed(task, err)

    async def _execute(self, task: Task, attempt: int) -> Result:
        """Check, fetch, process, store; the ``ok`` result. Raises :class:`PixfleetError`."""
        s = self.settings
        clock = Stopwatch()
        check_admissible(task, s.limits)
        data = await self.blobs.get(task.blob)
        clock.lap("fetch")
        async with self._slots:
            clock.lap("queue")
            out = await self.pool.process(self.pipeline, data, task.params, s.limits)
        clock.lap("process")
        outputs = await store_outputs(self.blobs, task.id, s.group, out.renditions)
        clock.lap("store")
        return ok_result(
            task,
            out,
            outputs,
            group=s.group,
            worker=self.info,
            attempt=attempt,
            timings_ms=clock.timings_ms(),
        )
