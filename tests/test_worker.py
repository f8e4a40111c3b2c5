"""The worker loop in-process, on the real SQLite transport, blob store and process pool."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from brokers import Transport, open_transport
from consumers.pipelines import Pipeline, resolve
from consumers.pipelines.base import Limits
from consumers.pool import PipelinePool
from consumers.worker import Worker, WorkerSettings, WorkerStats
from pixfleet.blobs import FileBlobStore
from pixfleet.envelope import BlobRef, Result, Task
from pixfleet.errors import TaskTimeout
from tests.conftest import BrokerUnderTest
from tests.helpers import images, pipelines
from tests.helpers.tasks import unique


@dataclass
class Rig:
    transport: Transport
    blobs: FileBlobStore
    pool: PipelinePool
    tmp: Path
    group: str = field(default_factory=lambda: unique("thumbs"))

    async def put(self, data: bytes, **params: object) -> Task:
        ref = await self.blobs.put_upload(data, "image/jpeg")
        return await self.publish(ref, **params)

    async def publish(
        self, ref: BlobRef, *, deadline: datetime | None = None, **params: object
    ) -> Task:
        task = Task.new(ref, groups=(self.group,), params=params, deadline=deadline)  # type: ignore[arg-type]
        await self.transport.publish(task)
        return task

    async def work(self, pipeline: Pipeline | None = None, **overrides: object) -> WorkerStats:
        settings = dataclasses.replace(
            WorkerSettings(group=self.group, concurrency=1, burst=True, retry_backoff=0.05),
            **overrides,  # type: ignore[arg-type]
        )
        pipeline = pipeline or resolve(self.group, "thumbs")
        worker = Worker(self.transport, self.blobs, pipeline, self.pool, settings)
        async with asyncio.timeout(60):
            return await worker.run()

    async def results(self) -> dict[str, Result]:
        out: dict[str, Result] = {}
        async with aclosing(self.transport.replies("results", until_empty=True)) as it:  # type: ignore[type-var]
            async for delivery in it:
                out[delivery.message.task_id] = delivery.message
                await delivery.ack()
        return out


@pytest.fixture
async def rig(tmp_path: Path, broker: BrokerUnderTest) -> AsyncIterator[Rig]:
    async with open_transport(broker.url) as transport, PipelinePool(1) as pool:
        yield Rig(transport, FileBlobStore(tmp_path / "blobs"), pool, tmp_path)


async def test_ok_task_writes_outputs_replies_and_acks(rig: Rig) -> None:
    task = await rig.put(images.jpeg_bytes(800, 600))
    stats = await rig.work()
    assert (stats.ok, stats.failed) == (1, 0)
    result = (await rig.results())[task.id]
    assert result.status == "ok" and result.attempt == 1
    assert {o.name for o in result.outputs} == {"256.jpg", "256.webp", "1024.jpg", "1024.webp"}
    for output in result.outputs:
        with Image.open(rig.blobs.path_for_uri(output.uri)) as im:
            assert im.size == (output.width, output.height)
    assert (await rig.transport.stats(rig.group)).ready == 0


async def test_redelivered_task_overwrites_the_same_outputs(rig: Rig) -> None:
    task = await rig.put(images.jpeg_bytes())
    await rig.work()
    await rig.transport.publish(task)  # the same task again, as a redelivery would bring it
    await rig.work()
    out_dir = rig.tmp / "blobs" / "outputs" / rig.group
    files = sorted(p.name for p in out_dir.rglob("*") if p.is_file())
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
    assert results[bad.id].error is not None and results[bad.id].error.code == code
    [dead] = await rig.transport.dead_letters(rig.group)
    assert code in dead.reason


async def test_blob_that_does_not_match_its_hash_is_refused(rig: Rig) -> None:
    ref = await rig.blobs.put_upload(images.jpeg_bytes(), "image/jpeg")
    rig.blobs.path_for_uri(ref.uri).write_bytes(images.jpeg_bytes(seed=9))  # tampered
    task = await rig.publish(ref)
    await rig.work()
    error = (await rig.results())[task.id].error
    assert error is not None and error.code == "blob.corrupt"


async def test_expired_task_is_not_processed(rig: Rig) -> None:
    ref = await rig.blobs.put_upload(images.jpeg_bytes(), "image/jpeg")
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
        rig = Rig(transport, FileBlobStore(tmp_path / "blobs"), pool, tmp_path)
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
    stats = await rig.work(pipelines.crash, max_attempts=2)
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
    stats = await rig.work(pipelines.always_transient, max_attempts=broker.delivery_limit)
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
    stats = await rig.work(pipelines.always_transient, max_attempts=100)
    assert stats.retried == broker.delivery_limit and stats.failed == 0
    [dead] = await rig.transport.dead_letters(rig.group)
    assert f"delivery limit {broker.delivery_limit} reached" in dead.reason
    assert "blob.unavailable" in dead.reason
