"""The worker loop in-process, on the real SQLite transport, blob store and process pool."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from brokers import Delivery, Subscription, Transport, open_transport
from consumers.events import WorkerState
from consumers.pipelines.base import Limits
from consumers.pool import PipelinePool
from pixfleet.blobs import store_upload
from pixfleet.blobs.file import FileBlobStore
from pixfleet.envelope import ErrorInfo, Result, Task, WorkerInfo, decode_result, encode
from pixfleet.errors import BrokerUnavailable, PixfleetError, TaskTimeout
from pixfleet.records import (
    mark_dead,
    mark_replied,
    read_result,
    record_result,
    was_dead,
    was_replied,
)
from tests.conftest import BrokerUnderTest
from tests.helpers import images, pipelines
from tests.helpers.tasks import unique
from tests.helpers.workrig import WorkRig


@dataclass
class Rig(WorkRig):
    tmp: Path = field(kw_only=True)
    group: str = field(default_factory=lambda: unique("thumbs"))

    def recorded_elsewhere(self, task: Task, *, ok: bool = True) -> Result:
        """A result of ``task`` as another worker would have recorded it."""
        return Result(
            task_id=task.id,
            correlation_id=task.correlation_id,
            group=self.group,
            status="ok" if ok else "error",
            error=None if ok else ErrorInfo(code="image.invalid", message="recorded elsewhere"),
            worker=WorkerInfo(id="elsewhere:1", host="elsewhere", pid=1),
        )


@pytest.fixture
async def rig(tmp_path: Path, broker: BrokerUnderTest) -> AsyncIterator[Rig]:
    async with open_transport(broker.url) as transport, PipelinePool(1) as pool:
        yield Rig(transport, FileBlobStore(tmp_path / "blobs"), pool, tmp=tmp_path)


async def test_ok_task_writes_outputs_replies_and_acks(rig: Rig) -> None:
    task = await rig.put(images.jpeg_bytes(800, 600))
    stats = await rig.work()
    assert (stats.ok, stats.failed) == (1, 0)
    result = (await rig.results())[task.id]
    assert result.status == "ok" and result.attempt == 1
    assert {o.name for o in result.outputs} == {"256.jpg", "256.webp", "1024.jpg", "1024.webp"}
    for output in result.outputs:
        with Image.open(rig.blobs.path_for_key(output.uri)) as im:
            assert im.size == (output.width, output.height)
    assert (await rig.transport.stats(rig.group)).ready == 0


async def test_redelivered_task_overwrites_the_same_outputs(rig: Rig) -> None:
    task = await rig.put(images.jpeg_bytes())
    await rig.work()
    await rig.transport.publish(task)  # the same task again, as a redelivery would bring it
    await rig.work()
    out_dir = rig.tmp / "blobs" / "outputs"
    files = sorted(p.name for p in out_dir.rglob("*") if p.is_file() and p.parent.name == rig.group)
    assert files == ["1024.jpg", "1024.webp", "256.jpg", "256.webp"]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (images.jpeg_bytes(800, 600)[:2500], "image.invalid"),
        (images.bomb_png(), "image.too_large"),
        (b"just some text, not an image", "image.invalid"),
    ],
    ids=["truncated", "bomb", "text"],
)
async def test_bad_image_gets_error_result_dead_letter_and_worker_goes_on(
    rig: Rig, data: bytes, code: str
) -> None:
    bad = await rig.put(data)
    good = await rig.put(images.jpeg_bytes())
    stats = await rig.work()
    assert (stats.ok, stats.failed) == (1, 1)
    results = await rig.results()
    assert results[good.id].status == "ok"
    assert results[bad.id].status == "error"
    error = results[bad.id].error
    assert error is not None and error.code == code
    [dead] = await rig.transport.dead_letters(rig.group)
    assert code in dead.reason


async def test_blob_that_does_not_match_its_hash_is_refused(rig: Rig) -> None:
    ref = await store_upload(rig.blobs, images.jpeg_bytes(), "image/jpeg")
    rig.blobs.path_for_key(ref.uri).write_bytes(images.jpeg_bytes(seed=9))  # tampered
    task = await rig.publish(ref)
    await rig.work()
    error = (await rig.results())[task.id].error
    assert error is not None and error.code == "blob.corrupt"


async def test_expired_task_is_not_processed(rig: Rig) -> None:
    ref = await store_upload(rig.blobs, images.jpeg_bytes(), "image/jpeg")
    task = await rig.publish(ref, deadline=datetime.now(UTC) - timedelta(seconds=1))
    await rig.work()
    error = (await rig.results())[task.id].error
    assert error is not None and error.code == "task.expired"


async def test_slow_pipeline_times_out_with_an_error_result(rig: Rig) -> None:
    task = await rig.put(images.jpeg_bytes(), delay=30)
    stats = await rig.work(pipelines.slow, limits=Limits(timeout=0.5))
    assert stats.failed == 1
    error = (await rig.results())[task.id].error
    assert error is not None and error.code == TaskTimeout.code


async def test_stuck_pipeline_is_killed_and_the_pool_replaced(
    tmp_path: Path, broker: BrokerUnderTest
) -> None:
    async with open_transport(broker.url) as transport, PipelinePool(1, hard_grace=0.5) as pool:
        rig = Rig(transport, FileBlobStore(tmp_path / "blobs"), pool, tmp=tmp_path)
        task = await rig.put(images.jpeg_bytes())
        stats = await rig.work(pipelines.stubborn, limits=Limits(timeout=0.5))
        assert stats.failed == 1 and pool.recycled == 1
        error = (await rig.results())[task.id].error
        assert error is not None and error.code == "task.timeout" and "killed" in error.message
        # The fresh pool serves the next task.
        good = await rig.put(images.jpeg_bytes(seed=4))
        await rig.work()
        assert (await rig.results())[good.id].status == "ok"


async def test_transient_failure_is_retried_and_then_succeeds(rig: Rig) -> None:
    task = await rig.put(images.jpeg_bytes(), marker=str(rig.tmp / "marker"))
    stats = await rig.work(pipelines.flaky_once)
    assert (stats.ok, stats.retried, stats.failed) == (1, 1, 0)
    result = (await rig.results())[task.id]
    assert result.status == "ok" and result.attempt == 2


async def test_crashed_pool_process_is_retried_then_fails_and_pool_recovers(rig: Rig) -> None:
    doomed = await rig.put(images.jpeg_bytes())
    fine = await rig.put(images.jpeg_bytes(seed=3), crash=False)
    stats = await rig.work(pipelines.crash, delivery_limit=2)
    assert (stats.ok, stats.failed, stats.retried) == (1, 1, 1)
    results = await rig.results()
    error = results[doomed.id].error
    assert error is not None and error.code == "worker.crashed" and error.retryable
    assert results[doomed.id].attempt == 2
    assert results[fine.id].status == "ok"
    assert rig.pool.recycled >= 1


async def test_always_failing_task_is_dead_lettered_with_its_reason_at_the_last_attempt(
    rig: Rig, broker: BrokerUnderTest
) -> None:
    doomed = await rig.put(images.jpeg_bytes(), marker=str(rig.tmp / "never"))
    fine = await rig.put(images.jpeg_bytes(seed=5))
    stats = await rig.work(pipelines.always_transient, delivery_limit=broker.delivery_limit)
    assert (stats.ok, stats.failed, stats.retried) == (1, 1, broker.delivery_limit - 1)
    results = await rig.results()
    assert results[fine.id].status == "ok"  # the poison task did not block the other one
    error = results[doomed.id].error
    assert error is not None and error.code == "blob.unavailable" and error.retryable
    assert results[doomed.id].attempt == broker.delivery_limit
    [dead] = await rig.transport.dead_letters(rig.group)
    assert "blob.unavailable" in dead.reason


async def test_transport_delivery_limit_stops_a_task_the_worker_would_retry_forever(
    rig: Rig, broker: BrokerUnderTest
) -> None:
    await rig.put(images.jpeg_bytes(), marker=str(rig.tmp / "never"))
    stats = await rig.work(pipelines.always_transient, delivery_limit=100)
    assert stats.retried == broker.delivery_limit and stats.failed == 0
    [dead] = await rig.transport.dead_letters(rig.group)
    assert f"delivery limit {broker.delivery_limit} reached" in dead.reason
    assert "blob.unavailable" in dead.reason


@dataclass
class Recorder:
    """A :class:`WorkerEvents` listener that keeps everything it hears."""

    ok: list[str] = field(default_factory=list)
    retries: list[tuple[str, int, float, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    recycled: list[str] = field(default_factory=list)
    states: list[tuple[WorkerState, WorkerState]] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    steps: list[tuple[str, str]] = field(default_factory=list)
    settle_failures: list[tuple[str, str]] = field(default_factory=list)

    def task_ok(self, task: Task, result: Result) -> None:
        assert result.task_id == task.id and result.status == "ok"
        self.ok.append(task.id)

    def task_retry(self, task: Task, attempt: int, delay: float, error: PixfleetError) -> None:
        self.retries.append((task.id, attempt, delay, error.code))

    def task_failed(self, task: Task, error: PixfleetError) -> None:
        self.failed.append((task.id, error.code))

    def task_duplicate(self, task: Task, result: Result) -> None:
        assert result.task_id == task.id
        self.duplicates.append(task.id)

    def step_timed(self, task: Task, step: str, seconds: float) -> None:
        assert seconds >= 0
        self.steps.append((task.id, step))

    def settle_failed(self, task: Task, error: PixfleetError) -> None:
        self.settle_failures.append((task.id, error.code))

    def pool_recycled(self, reason: str) -> None:
        self.recycled.append(reason)

    def state_changed(self, old: WorkerState, new: WorkerState) -> None:
        self.states.append((old, new))


async def test_events_hear_ok_retry_failed_and_every_state_change(rig: Rig) -> None:
    seen_before = rig.tmp / "seen-before"
    seen_before.write_text("")
    good = await rig.put(images.jpeg_bytes(), marker=str(seen_before))
    flaky = await rig.put(images.jpeg_bytes(seed=2), marker=str(rig.tmp / "first-time"))
    bad = await rig.put(b"just some text, not an image", marker=str(seen_before))
    events = Recorder()
    stats = await rig.work(pipelines.flaky_once, events=events)
    assert sorted(events.ok) == sorted([good.id, flaky.id])
    assert events.retries == [(flaky.id, 1, 0.05, "blob.unavailable")]  # Backoff(first=0.05)
    assert events.failed == [(bad.id, "image.invalid")]
    assert events.recycled == []
    steps = ["queue", "fetch", "process", "store", "reply"]  # the blob is fetched in the slot
    assert [step for task_id, step in events.steps if task_id == good.id] == steps
    assert (stats.ok, stats.retried, stats.failed) == (2, 1, 1)  # counted once, not twice
    assert events.states[0] == ("starting", "consuming")
    assert events.states[-1] == ("draining", "stopped")
    allowed = {("consuming", "draining"), ("draining", "consuming")}
    assert set(events.states[1:-1]) <= allowed, events.states


async def test_events_hear_the_pool_being_recycled(tmp_path: Path, broker: BrokerUnderTest) -> None:
    events = Recorder()
    pool = PipelinePool(1, on_recycle=events.pool_recycled)
    async with open_transport(broker.url) as transport, pool:
        rig = Rig(transport, FileBlobStore(tmp_path / "blobs"), pool, tmp=tmp_path)
        task = await rig.put(images.jpeg_bytes())
        await rig.work(pipelines.crash, delivery_limit=1, events=events)
    assert events.recycled == ["a pool process died"]
    assert events.failed == [(task.id, "worker.crashed")]


# -- one result per task id (issue 9.4) ----------------------------------------------------------


async def test_a_task_published_twice_runs_once_and_answers_once(rig: Rig) -> None:
    task = await rig.put(images.jpeg_bytes())
    await rig.transport.publish(task)  # the same task id again: a client retrying its publish
    events = Recorder()
    stats = await rig.work(events=events)
    assert (stats.ok, stats.duplicates) == (1, 1)
    assert events.duplicates == [task.id]
    assert [r.task_id for r in await rig.replies()] == [task.id]
    recorded = await read_result(rig.blobs, task.id, rig.group)
    assert recorded is not None and recorded.status == "ok"
    assert await was_replied(rig.blobs, task.id, rig.group)
    stats_after = await rig.transport.stats(rig.group)
    assert (stats_after.ready, stats_after.dead) == (0, 0)  # both copies acked


async def test_a_redelivery_whose_recorder_died_before_replying_replies_from_the_record(
    rig: Rig,
) -> None:
    task = await rig.put(images.jpeg_bytes())
    recorded = rig.recorded_elsewhere(task)
    await record_result(rig.blobs, recorded)  # ... and that worker died before its reply
    stats = await rig.work(pipelines.crash)  # running it again would crash the pool
    assert (stats.ok, stats.failed, stats.duplicates) == (0, 0, 1)
    assert rig.pool.recycled == 0
    assert await rig.replies() == [recorded]
    assert await was_replied(rig.blobs, task.id, rig.group)


@pytest.mark.parametrize("ok", [True, False], ids=["ok", "error"])
async def test_a_redelivery_of_an_answered_task_is_settled_without_running_or_replying(
    rig: Rig, ok: bool
) -> None:
    task = await rig.put(images.jpeg_bytes())
    await record_result(rig.blobs, rig.recorded_elsewhere(task, ok=ok))
    await mark_replied(rig.blobs, task.id, rig.group)
    stats = await rig.work(pipelines.crash)
    assert (stats.ok, stats.failed, stats.duplicates) == (0, 0, 1)
    assert rig.pool.recycled == 0
    assert await rig.replies() == []
    group = await rig.transport.stats(rig.group)
    assert group.ready == 0
    # The delivery ends the way its recorded result says: ok is acked, error dead-lettered.
    dead = await rig.transport.dead_letters(rig.group)
    assert [d.reason for d in dead] == ([] if ok else ["error[image.invalid]: recorded elsewhere"])


async def test_a_failed_task_published_twice_is_dead_lettered_once(rig: Rig) -> None:
    # The second copy is answered from the error record; the dead letter is marked, so it is
    # acked instead of dead-lettered again (one dead letter per task id, issue 9's poison row).
    task = await rig.put(b"this is not an image")
    await rig.transport.publish(task)
    stats = await rig.work()
    assert (stats.failed, stats.duplicates) == (1, 1)
    assert [r.task_id for r in await rig.replies()] == [task.id]
    dead = await rig.transport.dead_letters(rig.group)
    assert [d.task_id for d in dead] == [task.id]
    assert await was_dead(rig.blobs, task.id, rig.group)
    assert (await rig.transport.stats(rig.group)).ready == 0


async def test_a_copy_of_a_dead_lettered_task_is_acked_without_a_second_dead_letter(
    rig: Rig,
) -> None:
    task = await rig.put(images.jpeg_bytes())
    await record_result(rig.blobs, rig.recorded_elsewhere(task, ok=False))
    await mark_replied(rig.blobs, task.id, rig.group)
    await mark_dead(rig.blobs, task.id, rig.group)
    stats = await rig.work(pipelines.crash)
    assert (stats.ok, stats.failed, stats.duplicates) == (0, 0, 1)
    assert await rig.replies() == []
    group = await rig.transport.stats(rig.group)
    assert (group.ready, group.dead) == (0, 0)


class RacingStore(FileBlobStore):
    """A blob store in which another worker records every result first (a concurrent copy of
    the same task id that finished a moment earlier)."""

    async def create(self, key: str, data: bytes) -> bool:
        if key.startswith("records/results/") and key.endswith(".json"):
            rival = decode_result(data).model_copy(
                update={"worker": WorkerInfo(id="rival:1", host="rival", pid=1)}
            )
            await super().create(key, encode(rival))
        return await super().create(key, data)


async def test_a_copy_that_loses_the_race_to_record_adopts_the_winner_and_stays_silent(
    rig: Rig, tmp_path: Path
) -> None:
    racing = RacingStore(tmp_path / "blobs")
    task = await rig.put(images.jpeg_bytes())
    stats = await rig.work(blobs=racing)
    assert (stats.ok, stats.duplicates) == (0, 1)
    # The winner's delivery replies (it is not settled before its reply is confirmed).
    assert await rig.replies() == []
    recorded = await read_result(rig.blobs, task.id, rig.group)
    assert recorded is not None and recorded.worker.id == "rival:1"
    assert (await rig.transport.stats(rig.group)).ready == 0


# -- the broker goes away: the worker reconnects, it never stops (issue 9.2) --------------------


@dataclass
class FlakyReplies:
    """Reply channels whose first ``failures`` replies find the broker unavailable."""

    inner: Transport
    failures: int

    async def reply(self, reply_to: str, result: Result) -> str:
        if self.failures > 0:
            self.failures -= 1
            raise BrokerUnavailable("simulated: the broker went away")
        return await self.inner.reply(reply_to, result)

    async def open_reply_channel(self) -> str:
        return await self.inner.open_reply_channel()

    async def close_reply_channel(self, channel: str) -> None:
        await self.inner.close_reply_channel(channel)

    def replies(
        self, channel: str, *, prefetch: int = 64, until_empty: bool = False
    ) -> Subscription[Delivery[Result]]:
        return self.inner.replies(channel, prefetch=prefetch, until_empty=until_empty)


class _Unavailable:
    """A subscription whose broker is gone."""

    def __aiter__(self) -> _Unavailable:
        return self

    async def __anext__(self) -> Delivery[Task]:
        raise BrokerUnavailable("simulated: cannot reach the broker")

    async def aclose(self) -> None:
        return None


@dataclass
class FailingSubscriptions:
    """A task queue whose first ``failures`` subscriptions fail."""

    inner: Transport
    failures: int

    async def publish(self, task: Task) -> None:
        await self.inner.publish(task)

    def consume(
        self, group: str, *, prefetch: int = 16, until_empty: bool = False
    ) -> Subscription[Delivery[Task]]:
        if self.failures > 0:
            self.failures -= 1
            return _Unavailable()
        return self.inner.consume(group, prefetch=prefetch, until_empty=until_empty)


async def test_failed_replies_make_the_worker_reconnect_and_it_goes_on(rig: Rig) -> None:
    task = await rig.put(images.jpeg_bytes())
    events = Recorder()
    await rig.work(replies=FlakyReplies(rig.transport, failures=2), events=events)
    [result] = await rig.replies()
    assert (result.task_id, result.status) == (task.id, "ok")
    # From consuming - or from draining, when the burst subscription saw its queue empty
    # before the reply failed (RabbitMQ does not count an unacked delivery as ready).
    assert {"consuming", "draining"} & {old for old, new in events.states if new == "reconnecting"}
    assert ("reconnecting", "consuming") in events.states, events.states
    assert events.states[-1][1] == "stopped"
    group = await rig.transport.stats(rig.group)
    assert (group.ready, group.dead) == (0, 0)


async def test_a_redelivery_replies_from_an_unmarked_record_without_waiting(rig: Rig) -> None:
    """Delivery 1 ran and recorded, its reply failed; delivery 2 must reply at once - waiting
    for a mark that will never come would hold the delivery (and risk the delivery limit)."""
    task = await rig.put(images.jpeg_bytes())
    began = time.monotonic()
    stats = await rig.work(replies=FlakyReplies(rig.transport, failures=1), reply_grace=60)
    assert time.monotonic() - began < 30
    assert stats.duplicates == 1  # delivery 2, answered from the record of delivery 1
    [result] = await rig.replies()
    assert (result.task_id, result.attempt) == (task.id, 1)


async def test_a_failed_subscription_is_opened_again(rig: Rig) -> None:
    task = await rig.put(images.jpeg_bytes())
    events = Recorder()
    stats = await rig.work(tasks=FailingSubscriptions(rig.transport, failures=2), events=events)
    assert stats.ok == 1
    assert [r.task_id for r in await rig.replies()] == [task.id]
    assert events.states[:3] == [
        ("starting", "consuming"),
        ("consuming", "reconnecting"),
        ("reconnecting", "consuming"),
    ]


# -- a graceful stop: pool children leave SIGTERM to the worker (issue 9.3) ----------------------


async def test_pool_children_ignore_sigterm_and_finish_their_task(tmp_path: Path) -> None:
    started = tmp_path / "started"
    started.mkdir()
    params = {"delay": 1.0, "started": str(started)}
    async with PipelinePool(1) as pool:
        job = asyncio.create_task(
            pool.process(pipelines.slow, images.jpeg_bytes(), params, Limits())
        )
        while not any(started.iterdir()):
            await asyncio.sleep(0.02)
        [marker] = started.iterdir()
        os.kill(int(marker.name.split("-")[0]), signal.SIGTERM)  # as `kill -TERM -<pgid>` would
        out = await job
    assert len(out.renditions) == 4
    assert pool.recycled == 0


async def test_closing_the_pool_is_bounded_by_its_shutdown_timeout() -> None:
    pool = PipelinePool(1, shutdown_timeout=0.5)
    began = time.monotonic()
    async with asyncio.timeout(30):
        async with pool:
            job = asyncio.create_task(
                pool.process(pipelines.stubborn, images.jpeg_bytes(), {}, Limits(timeout=600))
            )
            await asyncio.sleep(1.0)  # the child is stuck in its pipeline now
            job.cancel()
    assert time.monotonic() - began < 10
