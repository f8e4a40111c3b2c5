"""The worker loop: consume a group's tasks, run its pipeline, record, reply, then settle.

Per delivery, in this order (at-least-once delivery, exactly one result per task id):

1. look for the completion record of (task id, group) - if the task was answered before, it is
   not run again (:mod:`consumers.completion`);
2. check the task's deadline and size limit, then fetch the blob and verify its size and sha256;
3. run the pipeline in the process pool (at most ``concurrency`` at a time);
4. write outputs under keys derived from ``task id + group + name`` (a redelivery overwrites);
5. record the result create-if-absent (the first recorded result of a task id wins);
6. publish it to ``task.reply_to`` - durable before it returns - and mark it replied;
7. only then settle: ack an ``ok`` result, dead-letter an ``error`` one. A crash anywhere before
   7 means redelivery, never loss; the record makes the redelivery cheap and silent.

Failures: a retryable error (blob store hiccup, crashed pool process) is nacked for a retry after
a :class:`~brokers.policy.Backoff` delay until the ``delivery_limit``-th delivery; a permanent one
(corrupt image, bomb, bad params, timeout) gets an error Result and is dead-lettered with its
reason at once. One ``except Exception`` guards each delivery so that nothing stops the loop; a
broker that is unavailable (a failed subscription, reply or settle) puts the worker in the
``reconnecting`` state until the broker answers again - it never ends the worker.

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
from typing import Any

from brokers.contract import Delivery, ReplyChannels, Subscription, TaskQueue
from brokers.policy import RECONNECT
from consumers.control import Gate
from consumers.events import NO_EVENTS, EventFanout, WorkerEvents, WorkerState, WorkerStats
from consumers.handler import Handler
from consumers.health import Health
from consumers.pipelines.base import Pipeline
from consumers.pool import PipelinePool
from consumers.settings import RETRY_BACKOFF_CAP, WorkerSettings
from pixfleet.blobs import BlobStore
from pixfleet.envelope import Task, WorkerInfo
from pixfleet.errors import BrokerError
from pixfleet.logs import set_worker, task_context

log = logging.getLogger(__name__)

__all__ = ["RETRY_BACKOFF_CAP", "Worker", "WorkerSettings"]

#: A subscription that waited this long without failing is taken to be connected again.
QUIET_IS_CONNECTED = 1.0


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
        self.settings = settings
        self.info = WorkerInfo(
            id=f"{socket.gethostname()}:{os.getpid()}", host=socket.gethostname(), pid=os.getpid()
        )
        self.stats = WorkerStats()
        self.events = EventFanout(self.stats, events)
        self.health = Health(self.events.state_changed)
        self.handler = Handler(
            settings=settings,
            info=self.info,
            blobs=blobs,
            replies=replies,
            pipeline=pipeline,
            pool=pool,
            events=self.events,
            health=self.health,
        )
        self._stop = asyncio.Event()
        self.gate = Gate()  # pause / resume (consumers.control); a stop shuts it for good
        self._in_flight: set[asyncio.Task[None]] = set()

    @property
    def state(self) -> WorkerState:
        return self.health.state

    @property
    def in_flight(self) -> int:
        """Deliveries being handled now (received, not yet settled)."""
        return len(self._in_flight)

    @property
    def free_slots(self) -> int:
        """Pipeline processes not running a task now."""
        return self.settings.concurrency - self.handler.busy

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop taking new tasks; in-flight ones finish (SIGTERM, first Ctrl-C)."""
        if not self._stop.is_set():
            log.info("stopping: finishing %d in-flight task(s)", len(self._in_flight))
        self._stop.set()
        self.gate.stop()

    def abort(self) -> None:
        """Cancel in-flight tasks; the transport gives their deliveries back (second Ctrl-C)."""
        self._stop.set()
        self.gate.stop()
        for task in self._in_flight:
            task.cancel()

    async def run(self) -> WorkerStats:
        """Serve until stopped or, with ``burst``, until the group has no backlog: a round
        consumes until the group is empty and drains; another round follows only if the last
        one gave deliveries back for a retry. Paused (:class:`~consumers.control.Gate`), it
        leaves its subscription - deliveries not yet handed out go back - and waits for a
        resume or a stop while in-flight tasks finish."""
        s = self.settings
        set_worker(self.info.id, s.group)
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
                given_back = self.handler.given_back
                self.health.phase("consuming")
                await self._consume_until_stopped()
                if not self._stop.is_set() and (self.gate.pausing or not s.burst):
                    self.health.phase("paused")  # in-flight tasks finish meanwhile
                    await self.gate.sit_out()
                    continue
                self.health.phase("draining")
                await self._drain()
                if self._stop.is_set() or not s.burst or self.handler.given_back == given_back:
                    break
        finally:
            self.health.phase("stopped")
        return self.stats

    async def _consume_until_stopped(self) -> None:
        """Consume; a subscription that fails while the broker is unavailable is opened again
        after a capped, jittered backoff, for as long as it takes. Broker errors that are not
        retryable (bad credentials, unknown vhost) end the worker."""
        failures = 0
        while not self.gate.halted.is_set():
            try:
                await self._consume_once()
                return
            except BrokerError as err:
                if not err.retryable:
                    raise
                failures += 1
                self.health.trouble("subscription", err)
            try:
                await asyncio.wait_for(self.gate.halted.wait(), RECONNECT.delay(failures))
            except TimeoutError:
                continue

    async def _consume_once(self) -> None:
        s = self.settings
        stream = self.tasks.consume(s.group, prefetch=s.effective_prefetch, until_empty=s.burst)
        stop: asyncio.Future[Any] = asyncio.ensure_future(self.gate.halted.wait())
        try:
            async with aclosing(stream) as deliveries:
                while (delivery := await self._next(deliveries, stop)) is not None:
                    self.health.recovered("subscription")
                    context = task_context(delivery.message.id, s.group, self.info.id)
                    handler = asyncio.create_task(self.handler.handle(delivery), context=context)
                    self._in_flight.add(handler)
                    handler.add_done_callback(self._in_flight.discard)
        finally:
            stop.cancel()

    async def _next(
        self, deliveries: Subscription[Delivery[Task]], stop: asyncio.Future[Any]
    ) -> Delivery[Task] | None:
        """The next delivery, or None once stopped or the subscription ended."""
        nxt: asyncio.Future[Any] = asyncio.ensure_future(anext(deliveries))
        while True:
            await asyncio.wait(
                (nxt, stop), timeout=QUIET_IS_CONNECTED, return_when=asyncio.FIRST_COMPLETED
            )
            if nxt.done():
                break
            if stop.done():
                nxt.cancel()  # transports' __anext__ is cancellation-safe
                return None
            self.health.watch("subscription", deliveries)  # quiet: reachable or reconnecting
        try:
            delivery: Delivery[Task] = nxt.result()
        except StopAsyncIteration:
            return None
        return delivery

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        _, pending = await asyncio.wait(self._in_flight, timeout=self.settings.drain_timeout)
        if pending:
            log.warning("drain timed out; %d task(s) go back to the broker", len(pending))
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)
