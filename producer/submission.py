"""A submission: store images, publish one task each, and (optionally) wait for their results.

:class:`Submission` is the upload side's one session type, used by the HTTP ingress and the
Python :class:`~producer.client.Client` (``uploader enqueue`` is built on it). It is typed
against the roles it needs - :class:`~brokers.contract.TaskQueue`,
:class:`~brokers.contract.ReplyChannels`, :class:`~pixfleet.blobs.BlobStore`::

    async with Submission(queue=t, replies=t, store=s, options=SubmitOptions(wait=True)) as sub:
        await sub.submit(candidate)
        async with aclosing(sub.results(timeout=60)) as results:
            async for result in results: ...

Guarantees: :meth:`Submission.submit` returns once the bytes are stored (content-addressed, so
the same image is stored once) and the task is durably published. A waiting submission reads a
private reply channel, opened on entry and deleted on exit (with whatever is still in it; results
that arrive after that go to the default ``results`` channel). Each (task, group) result is
reported once; duplicates from redeliveries are acknowledged and dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Self

from pydantic import JsonValue

from brokers.contract import Delivery, ReplyChannels, Subscription, TaskQueue
from brokers.names import DEFAULT_GROUP, DEFAULT_RESULTS
from pixfleet import tracing
from pixfleet.blobs import BlobStore, store_upload
from pixfleet.envelope import BlobRef, Result, Task, is_group_name
from pixfleet.errors import ConfigError, ResultTimeout
from pixfleet.records import read_result, record_task, same_blob
from producer.inspect import Candidate

log = logging.getLogger(__name__)

#: Seconds between looks at the completion records while waiting for replies.
RECORD_POLL = 2.0


@dataclass(frozen=True)
class SubmitOptions:
    """What every task of a submission shares. Raises :class:`ConfigError` when invalid.

    ``groups`` are deduplicated in order; ``ttl`` is seconds from submit until workers skip the
    task (``task.expired``); ``wait`` opens a private reply channel for :meth:`Submission.results`
    (it needs named groups, to know which results to expect).
    """

    groups: tuple[str, ...] = (DEFAULT_GROUP,)
    params: dict[str, JsonValue] = field(default_factory=dict)
    ttl: float | None = None
    wait: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(dict.fromkeys(self.groups)))
        bad = [g for g in self.groups if not is_group_name(g)]
        if bad:
            raise ConfigError(f"invalid group name(s) {bad}")
        if self.wait and not self.groups:
            raise ConfigError("waiting for results needs at least one named group")
        if self.ttl is not None and self.ttl <= 0:
            raise ConfigError(f"ttl must be positive, got {self.ttl:g}")


class Submission:
    """Submit candidates as tasks and wait for their results (see the module docstring)."""

    def __init__(
        self,
        *,
        queue: TaskQueue,
        replies: ReplyChannels,
        store: BlobStore,
        options: SubmitOptions | None = None,
    ) -> None:
        self._queue = queue
        self._replies = replies
        self._store = store
        self.options = options or SubmitOptions()
        self._channel: str | None = None
        self._tasks: list[Task] = []
        self._reported: set[tuple[str, str]] = set()  # (task id, group) already yielded
        self._traces: dict[str, str] = {}  # task id -> traceparent (when tracing)
        self._pending: set[tuple[str, str]] = set()  # (task id, group) submitted, not yielded

    async def __aenter__(self) -> Self:
        if self.options.wait:
            self._channel = await self._replies.open_reply_channel()
        return self

    async def __aexit__(self, *exc: object) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            try:
                await self._hand_over_unread(channel)
            finally:
                await self._replies.close_reply_channel(channel)

    async def _hand_over_unread(self, channel: str) -> None:
        """Results still in the private channel (the waiter timed out or left early) move to
        the default results channel before it is deleted: nothing unread is dropped, and
        ``uploader results`` shows them. Later ones land there by the transports' fallback."""
        moved = 0
        async with aclosing(self._replies.replies(channel, until_empty=True)) as deliveries:
            async for delivery in deliveries:
                result = delivery.message
                if (result.task_id, result.group) not in self._reported:
                    await self._replies.reply(DEFAULT_RESULTS, result)
                    moved += 1
                await delivery.ack()
        if moved:
            log.info("%d unread result(s) moved to the %r channel", moved, DEFAULT_RESULTS)

    @property
    def reply_to(self) -> str:
        """The channel results go to: private while waiting, else the default ``results``."""
        if not self.options.wait:
            return DEFAULT_RESULTS
        if self._channel is None:
            raise RuntimeError("a waiting Submission is used inside `async with` only")
        return self._channel

    @property
    def tasks(self) -> tuple[Task, ...]:
        """Every task submitted so far, in order."""
        return tuple(self._tasks)

    @property
    def pending(self) -> frozenset[tuple[str, str]]:  # (task id, group) not reported yet
        return frozenset(self._pending)

    async def submit(
        self,
        candidate: Candidate,
        *,
        task_id: str | None = None,
        options: SubmitOptions | None = None,
    ) -> Task:
        """Store the bytes (content-addressed, idempotent), then submit them as one task.

        Raises the store's :class:`~pixfleet.errors.BlobError` or the queue's
        :class:`~pixfleet.errors.BrokerError`; nothing is published if storing failed."""
        ref = await store_upload(self._store, candidate.data, candidate.content_type)
        return await self.submit_stored(ref, candidate.filename, task_id=task_id, options=options)

    async def submit_stored(
        self,
        ref: BlobRef,
        filename: str,
        *,
        task_id: str | None = None,
        options: SubmitOptions | None = None,
    ) -> Task:
        """Record and publish one task for bytes already in the store (the HTTP ingress
        streams them in itself). ``options`` (groups, params, ttl) replace the submission's
        for this task; its ``wait`` is the submission's.

        ``task_id`` is an idempotency key: a task id submitted before keeps its first record,
        and the republished task is answered from the completion record instead of running
        twice (workers check it): no second result. Other bytes: ``task.conflict``."""
        with tracing.span("pixfleet.enqueue", attributes={"pixfleet.filename": filename}) as trace:
            task = self._new_task(ref, filename, task_id, options or self.options, trace)
            recorded = same_blob(await record_task(self._store, task), task)
            if recorded.id == task.id and recorded is not task:
                log.info("task %s was submitted before; publishing it again", task.id)
            # Expected before the publish: a fast reply read by a running results() is no stray.
            added = {(task.id, g) for g in task.groups} - self._reported - self._pending
            if self.options.wait:
                self._pending |= added
            try:
                await self._queue.publish(task)
            except BaseException:
                self._pending -= added
                raise
        self._tasks.append(task)
        if task.trace is not None:
            self._traces[task.id] = task.trace
        log.debug("submitted %s as task %s", filename, task.id)
        return task

    def _new_task(
        self,
        ref: BlobRef,
        name: str,
        task_id: str | None,
        options: SubmitOptions,
        trace: str | None,
    ) -> Task:
        if self.options.wait and not options.groups:
            raise ConfigError("waiting for results needs at least one named group")
        ttl = options.ttl
        return Task.new(
            ref,
            groups=options.groups,
            filename=name,
            params=options.params,
            reply_to=self.reply_to,
            deadline=datetime.now(UTC) + timedelta(seconds=ttl) if ttl is not None else None,
            task_id=task_id,
            trace=trace,
        )

    async def results(self, *, timeout: float) -> AsyncGenerator[Result, None]:
        """Yield the results not reported yet, one per (task, group) of the tasks submitted so
        far (and while it runs), as they arrive; a pair reported before is not waited for again.
        Ends once every pair has answered (at once, unsubscribed, if none is pending); raises
        :class:`~pixfleet.errors.ResultTimeout` when ``timeout`` seconds (in all, the caller's
        time between results included) pass first (:attr:`pending` names the missing pairs).
        Hold it with ``contextlib.aclosing`` so the subscription is released on early exit.
        Only a waiting submission has results (else: :class:`RuntimeError`); one reader."""
        if not self.options.wait:
            raise RuntimeError("results() needs a Submission with SubmitOptions(wait=True)")
        pending = self._pending
        if not pending:
            return
        total = len(pending)
        deadline = asyncio.get_running_loop().time() + timeout
        look = True  # at the records: first, then whenever the channel was quiet a while
        async with aclosing(self._replies.replies(self.reply_to)) as deliveries:
            while pending:
                if look:
                    for result in await self._recorded(pending):
                        yield result
                    if not pending:
                        break
                poll = min(deadline, asyncio.get_running_loop().time() + RECORD_POLL)
                delivery = await _next_before(deliveries, poll)
                look = delivery is None
                if delivery is None:
                    if asyncio.get_running_loop().time() < deadline:
                        continue
                    raise ResultTimeout(
                        f"{len(pending)} of {total} result(s) did not arrive within {timeout:g} s"
                        " (late results go to the default results channel: `uploader results`)"
                    )
                await delivery.ack()  # duplicates and strays too: each pair is reported once
                if self._take(delivery.message, pending):
                    yield delivery.message

    async def _recorded(self, pending: set[tuple[str, str]]) -> list[Result]:
        """Results already in the completion records (a task id submitted before, whose reply
        went to an earlier waiter), taken out of ``pending``."""
        found = []
        for task_id, group in sorted(pending):
            result = await read_result(self._store, task_id, group)
            if result is not None and self._take(result, pending):
                found.append(result)
        return found

    def _take(self, result: Result, pending: set[tuple[str, str]]) -> bool:
        key = (result.task_id, result.group)
        if key not in pending:
            return False
        pending.discard(key)
        self._reported.add(key)
        self._trace_arrival(result)
        return True

    def _trace_arrival(self, result: Result) -> None:
        """Close the task's trace with a ``pixfleet.result`` span as its result arrives."""
        trace = self._traces.get(result.task_id)
        if trace is None:
            return
        about = {"pixfleet.task_id": result.task_id, "pixfleet.group": result.group}
        with tracing.span("pixfleet.result", parent=trace, attributes=about):
            pass

    async def collect(
        self, *, timeout: float, on_result: Callable[[Result], None] | None = None
    ) -> list[Result]:
        """Every result of :meth:`results` in arrival order, each passed to ``on_result`` as it
        comes. Raises :class:`~pixfleet.errors.ResultTimeout` like :meth:`results`."""
        collected: list[Result] = []
        async with aclosing(self.results(timeout=timeout)) as results:
            async for result in results:
                collected.append(result)
                if on_result is not None:
                    on_result(result)
        return collected


async def _next_before(
    deliveries: Subscription[Delivery[Result]], deadline: float
) -> Delivery[Result] | None:
    """The next delivery, or None at ``deadline`` (or if the channel ended).

    The timeout covers only this wait, never the caller's code between results, and
    ``__anext__`` is cancellation-safe, so giving up loses nothing."""
    try:
        async with asyncio.timeout_at(deadline):
            return await anext(deliveries)
    except (TimeoutError, StopAsyncIteration):
        return None
