"""The worker loop: consume a group's tasks, run its pipeline, reply, then ack.

Per delivery, in this order (at-least-once with idempotent effects):

1. fetch the blob and verify its size and sha256;
2. run the pipeline in the process pool (at most ``concurrency`` at a time);
3. write outputs under keys derived from ``task id + group + name`` (a redelivery overwrites);
4. publish the :class:`Result` to ``task.reply_to`` - durable before it returns;
5. only then ack. A crash anywhere before 5 means redelivery, never loss.

Failures: a retryable error (blob store hiccup, crashed pool process) is nacked for a delayed
retry until ``max_attempts``; a permanent one (corrupt image, bomb, bad params, timeout) gets an
error Result and is dead-lettered with its reason at once. One ``except Exception`` guards each
delivery so that nothing stops the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime

from brokers.contract import Delivery, Transport
from consumers.pipelines.base import Limits, Pipeline
from consumers.pool import PipelinePool
from pixfleet.blobs import FileBlobStore
from pixfleet.envelope import ErrorInfo, Output, Result, Task, WorkerInfo
from pixfleet.errors import PixfleetError, TaskExpired
from pixfleet.images import ImageTooLarge

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    group: str
    concurrency: int = 2
    prefetch: int = 0  # 0: same as concurrency
    limits: Limits = field(default_factory=Limits)
    max_attempts: int = 5
    retry_backoff: float = 1.0  # seconds; doubles per attempt, capped at 60
    drain_timeout: float = 60.0
    burst: bool = False

    @property
    def effective_prefetch(self) -> int:
        return self.prefetch or self.concurrency


@dataclass
class WorkerStats:
    ok: int = 0
    failed: int = 0
    retried: int = 0

    @property
    def handled(self) -> int:
        return self.ok + self.failed


class Worker:
    """One consumer of one group. Build it with open resources; call :meth:`run`."""

    def __init__(
        self,
        transport: Transport,
        blobs: FileBlobStore,
        pipeline: Pipeline,
        pool: PipelinePool,
        settings: WorkerSettings,
    ) -> None:
        self.transport = transport
        self.blobs = blobs
        self.pipeline = pipeline
        self.pool = pool
        self.settings = settings
        self.info = WorkerInfo(
            id=f"{socket.gethostname()}:{os.getpid()}", host=socket.gethostname(), pid=os.getpid()
        )
        self.stats = WorkerStats()
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._stop = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()

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
        """Serve until stopped (or, with ``burst``, until the group has no backlog)."""
        s = self.settings
        log.info(
            "worker %s serving group %r on %s (concurrency %d, prefetch %d%s)",
            self.info.id,
            s.group,
            self.transport.url,
            s.concurrency,
            s.effective_prefetch,
            ", burst" if s.burst else "",
        )
        while True:
            await self._consume_until_stopped()
            await self._drain()
            if self._stop.is_set() or not s.burst:
                break
            if (await self.transport.stats(s.group)).ready == 0:
                break
        return self.stats

    async def _consume_until_stopped(self) -> None:
        s = self.settings
        stream = self.transport.consume(s.group, prefetch=s.effective_prefetch, until_empty=s.burst)
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
        try:
            await delivery.nack(requeue=True, delay=self._backoff(delivery.attempt))
        except Exception:
            log.exception(
                "task %s: nack failed too; the lease expiry will redeliver it", delivery.message.id
            )

    async def _process_and_settle(self, delivery: Delivery[Task]) -> None:
        task, attempt = delivery.message, delivery.attempt
        try:
            result = await self._execute(task, attempt)
        except PixfleetError as err:
            if err.retryable and attempt < self.settings.max_attempts:
                delay = self._backoff(attempt)
                log.warning(
                    "task %s attempt %d: %s; retrying in %.1fs",
                    task.id,
                    attempt,
                    err.one_line(),
                    delay,
                )
                self.stats.retried += 1
                await delivery.nack(requeue=True, delay=delay, reason=err.one_line())
                return
            log.warning("task %s attempt %d failed: %s", task.id, attempt, err.one_line())
            await self.transport.reply(task.reply_to, self._error_result(task, err, attempt))
            await delivery.nack(requeue=False, reason=err.one_line())
            self.stats.failed += 1
            return
        await self.transport.reply(task.reply_to, result)
        await delivery.ack()
        self.stats.ok += 1
        log.info(
            "task %s [%s] ok: %d output(s) in %.0f ms",
            task.id,
            self.settings.group,
            len(result.outputs),
            result.timings_ms.get("total", 0.0),
        )

    async def _execute(self, task: Task, attempt: int) -> Result:
        s = self.settings
        started = time.perf_counter()
        if task.deadline is not None and datetime.now(UTC) > task.deadline:
            raise TaskExpired(f"deadline {task.deadline.isoformat()} passed before processing")
        if task.blob.size > s.limits.max_bytes:
            raise ImageTooLarge(
                f"blob has {task.blob.size} bytes, the limit is {s.limits.max_bytes}"
            )
        data = await self.blobs.get(task.blob)
        fetched = time.perf_counter()
        async with self._slots:
            queued = time.perf_counter()
            out = await self.pool.run(self.pipeline, data, task.params, s.limits)
        processed = time.perf_counter()
        outputs = []
        for r in out.renditions:
            uri = await self.blobs.put_output(task.id, s.group, r.name, r.data)
            outputs.append(
                Output(
                    name=r.name,
                    uri=uri,
                    width=r.width,
                    height=r.height,
                    format=r.format,
                    bytes=len(r.data),
                )
            )
        stored = time.perf_counter()
        return Result(
            task_id=task.id,
            correlation_id=task.correlation_id,
            group=s.group,
            status="ok",
            outputs=tuple(outputs),
            meta=out.meta,
            worker=self.info,
            attempt=attempt,
            timings_ms={
                "fetch": _ms(fetched - started),
                "queue": _ms(queued - fetched),
                "process": _ms(processed - queued),
                "store": _ms(stored - processed),
                "total": _ms(stored - started),
            },
        )

    def _error_result(self, task: Task, err: PixfleetError, attempt: int) -> Result:
        return Result(
            task_id=task.id,
            correlation_id=task.correlation_id,
            group=self.settings.group,
            status="error",
            error=ErrorInfo(code=err.code, message=err.message[:2000], retryable=err.retryable),
            worker=self.info,
            attempt=attempt,
        )

    def _backoff(self, attempt: int) -> float:
        return float(min(self.settings.retry_backoff * 2 ** (attempt - 1), 60.0))


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)
