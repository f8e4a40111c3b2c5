"""One delivery, from receipt to settle: the answer from the record or a run, then reply, then
ack or dead-letter (the order and its reasons are in :mod:`consumers.worker`).

Nothing is retried silently: a failure no code classified (a pipeline returning garbage, a bug)
becomes a final ``internal.error`` result with the exception's type and text, and a dead letter
with that reason. A task whose id is bound to another blob (``task.conflict``: a forged or
mistaken re-use of a task id) is dead-lettered with its reason and neither run, recorded nor
answered: the first task's outputs, result and reply channel stay untouched.
"""

from __future__ import annotations

import asyncio
import logging

from brokers.contract import Delivery, ReplyChannels
from consumers.completion import Completions, Outcome
from consumers.events import EventFanout
from consumers.health import Health
from consumers.pipelines.base import Pipeline
from consumers.pool import PipelinePool
from consumers.progress import ProgressReporter
from consumers.settings import WorkerSettings
from consumers.steps import check_admissible, error_result, ok_result, store_outputs
from consumers.timing import Steps
from pixfleet import tracing
from pixfleet.blobs import BlobStore
from pixfleet.envelope import Result, Task, WorkerInfo
from pixfleet.errors import BrokerError, InternalError, PixfleetError, TaskConflict

log = logging.getLogger(__name__)


class Handler:
    """Handles the deliveries of one worker; ``given_back`` counts requeued ones."""

    def __init__(
        self,
        *,
        settings: WorkerSettings,
        info: WorkerInfo,
        blobs: BlobStore,
        replies: ReplyChannels,
        pipeline: Pipeline,
        pool: PipelinePool,
        events: EventFanout,
        health: Health,
    ) -> None:
        self.settings = settings
        self.info = info
        self.blobs = blobs
        self.pipeline = pipeline
        self.pool = pool
        self.events = events
        self.health = health
        self.completions = Completions(blobs, replies, grace=settings.reply_grace)
        self._backoff = settings.backoff
        self._slots = asyncio.Semaphore(settings.concurrency)
        self.given_back = 0  # deliveries nacked with requeue=True
        self.busy = 0  # pipeline slots in use (of settings.concurrency)

    async def handle(self, delivery: Delivery[Task]) -> None:
        task = delivery.message
        try:
            with tracing.span("pixfleet.task", parent=task.trace, attributes=self._about(task)):
                await self._process_and_settle(delivery)
        except asyncio.CancelledError:
            raise
        except BrokerError as err:
            # Reply or settle failed (broker gone?). Not acked: the task will come back.
            self.health.trouble("settle", err)
            self.events.settle_failed(task, err)
            log.warning(
                "task %s [%s]: could not finish (%s); it will be redelivered",
                task.id,
                self.settings.group,
                err.one_line(),
            )
            await self._nack_quietly(delivery, err.one_line())
        except Exception as exc:
            log.exception(
                "task %s [%s]: could not finish; it will be redelivered",
                task.id,
                self.settings.group,
            )
            await self._nack_quietly(delivery, InternalError.wrap(exc).one_line())

    def _about(self, task: Task) -> dict[str, str]:
        return {"pixfleet.task_id": task.id, "pixfleet.group": self.settings.group}

    async def _nack_quietly(self, delivery: Delivery[Task], reason: str = "") -> None:
        if not delivery.held:  # the broker took it back: it comes again as it was
            return
        self.given_back += 1
        delay = self._backoff.delay(delivery.attempt)
        try:
            await delivery.nack(requeue=True, delay=delay, reason=reason)
        except PixfleetError as exc:
            log.warning(
                "task %s: nack failed too (%s); the broker will redeliver it",
                delivery.message.id,
                exc.one_line(),
            )
        except Exception:
            log.exception(
                "task %s: nack failed too; the broker will redeliver it", delivery.message.id
            )

    async def _process_and_settle(self, delivery: Delivery[Task]) -> None:
        try:
            outcome = await self._classified(delivery)
        except TaskConflict as err:
            await self._refuse(delivery, err)
            return
        except PixfleetError as err:
            if err.retryable and delivery.attempt < self.settings.delivery_limit:
                await self._retry(delivery, err)
                return
            outcome = await self._failure(delivery, err)
        with Steps(delivery.message, self.events).step("reply"):
            await self.completions.answer(
                delivery.message, outcome, attempt=delivery.attempt, held=lambda: delivery.held
            )
        await self._settle(delivery, outcome)
        self.health.recovered("settle")
        self._report(delivery.message, outcome)

    async def _classified(self, delivery: Delivery[Task]) -> Outcome:
        """:meth:`_run_once`, raising only :class:`PixfleetError`: anything else becomes an
        :class:`InternalError` carrying the exception's type and text."""
        try:
            return await self._run_once(delivery)
        except PixfleetError:
            raise
        except Exception as exc:
            err = InternalError.wrap(exc)
            log.error("task %s [%s]: %s", delivery.message.id, self.settings.group, err.one_line())
            log.debug("the traceback of %s", err.message, exc_info=True)
            raise err from exc

    async def _run_once(self, delivery: Delivery[Task]) -> Outcome:
        """The recorded answer of the task if there is one, else run it and record. Raises
        :class:`TaskConflict` if the task id is bound to another blob."""
        task = delivery.message
        answered = await self.completions.recorded(task, self.settings.group)
        if answered is not None:
            return answered
        result = await self._execute(task, delivery.attempt)
        return await self.completions.record(result)

    async def _failure(self, delivery: Delivery[Task], err: PixfleetError) -> Outcome:
        task, attempt = delivery.message, delivery.attempt
        log.warning("task %s attempt %d failed: %s", task.id, attempt, err.one_line())
        result = error_result(
            task, err, group=self.settings.group, worker=self.info, attempt=attempt
        )
        return await self.completions.record_failure(result, err)

    async def _refuse(self, delivery: Delivery[Task], err: TaskConflict) -> None:
        """Dead-letter a conflicting task with its reason: no run, no record, no reply."""
        task = delivery.message
        log.warning("task %s [%s] refused: %s", task.id, self.settings.group, err.one_line())
        await delivery.nack(requeue=False, reason=err.one_line())
        self.health.recovered("settle")
        self.events.task_failed(task, err)

    async def _settle(self, delivery: Delivery[Task], outcome: Outcome) -> None:
        """Ack an ``ok`` result; dead-letter an ``error`` one with its reason, once per task id:
        a copy that lost the race to record stays silent (the winner's delivery dead-letters,
        or its redelivery does), and a copy answered from a record whose dead letter is marked
        is acked - a task published again, or a second retry chain started by a settle that
        was lost (a Kafka commit refused by a rebalance), adds no second dead letter."""
        result = outcome.result
        if result.status == "ok" or (outcome.ran and not outcome.owner):
            await delivery.ack()
            return
        if not outcome.ran and await self.completions.dead_lettered(
            result, attempt=delivery.attempt
        ):
            log.info(
                "task %s [%s]: dead-lettered before; settled without a second dead letter",
                result.task_id,
                result.group,
            )
            await delivery.ack()
            return
        error = result.error
        reason = f"error[{error.code}]: {error.message}" if error else "error result"
        await delivery.nack(requeue=False, reason=reason)
        await self.completions.mark_dead(result)

    def _report(self, task: Task, outcome: Outcome) -> None:
        result, group = outcome.result, self.settings.group
        if not outcome.owner:
            log.info(
                "task %s [%s]: answered before; settled without a second result", task.id, group
            )
            self.events.task_duplicate(task, result)
        elif outcome.error is not None:
            self.events.task_failed(task, outcome.error)
        else:
            log.info(
                "task %s [%s] ok: %d output(s) in %.0f ms",
                task.id,
                group,
                len(result.outputs),
                result.timings_ms.get("total", 0.0),
            )
            self.events.task_ok(task, result)

    async def _retry(self, delivery: Delivery[Task], err: PixfleetError) -> None:
        task, attempt = delivery.message, delivery.attempt
        delay = self._backoff.delay(attempt)
        log.warning(
            "task %s attempt %d: %s; retrying in %.1fs", task.id, attempt, err.one_line(), delay
        )
        self.given_back += 1
        await delivery.nack(requeue=True, delay=delay, reason=err.one_line())
        self.health.recovered("settle")
        self.events.task_retry(task, attempt, delay, err)

    async def _execute(self, task: Task, attempt: int) -> Result:
        """Check, fetch, process, store; the ``ok`` result. Raises :class:`PixfleetError`."""
        s = self.settings
        progress = ProgressReporter(self.blobs, task, s.group, self.info, every=s.progress_every)
        try:
            return await self._run(task, attempt, progress)
        finally:
            await progress.aclose()

    async def _run(self, task: Task, attempt: int, progress: ProgressReporter) -> Result:
        s = self.settings
        steps = Steps(task, self.events, progress)
        check_admissible(task, s.limits)
        with steps.step("queue"):
            await self._slots.acquire()
        self.busy += 1
        progress.begin()
        try:
            with steps.step("fetch"):  # in the slot: at most `concurrency` blobs held at once
                # a store the pool process can read itself (file://) is read there, in `process`
                data = self.blobs.loader(task.blob) or await self.blobs.get(task.blob)
            with steps.step("process"):
                out = await self.pool.process(
                    self.pipeline, data, task.params, s.limits, on_progress=progress.processed
                )
        finally:
            self.busy -= 1
            self._slots.release()
        with steps.step("store"):
            outputs = await store_outputs(
                self.blobs, task, s.group, out.renditions, on_stored=progress.stored
            )
        return ok_result(
            task,
            out,
            outputs,
            group=s.group,
            worker=self.info,
            attempt=attempt,
            timings_ms=steps.timings_ms(),
        )
