"""Progress reports (issue 12): a running task's worker reports its steps and each stored output,
rate-limited; a waiting client (the ``ReplyRouter`` under ``Client`` and ``uploader enqueue
--wait``) hears them as typed :class:`Progress` events, never as results; a quick task under the
default rate limit reports nothing (SQLite and RabbitMQ: the reports travel through the blob
store, the results through the transport)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from brokers import open_transport
from consumers.pipelines import resolve
from consumers.pipelines.base import Limits, PipelineOutput
from consumers.pipelines.progress import report_progress
from consumers.pool import PipelinePool
from consumers.progress import ProgressReporter
from consumers.worker import Worker, WorkerSettings
from pixfleet.blobs.file import FileBlobStore
from pixfleet.blobs.memory import MemoryBlobStore
from pixfleet.envelope import WorkerInfo
from pixfleet.progress import Progress, decode_progress, read_progress
from producer import replies
from producer.inspect import vet
from producer.replies import ReplyRouter
from producer.submission import Submission, SubmitOptions
from tests.conftest import BrokerUnderTest
from tests.helpers import images, pipelines
from tests.helpers.cli import REPO
from tests.helpers.tasks import make_task, unique


@pytest.fixture(params=["sqlite", "amqp"])
def two_brokers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerUnderTest]:
    if request.param == "sqlite":
        yield BrokerUnderTest("sqlite", f"sqlite:///{tmp_path / 'b.db'}?poll=0.05", 3)
    else:
        url = request.getfixturevalue("amqp_session_url")
        yield BrokerUnderTest("amqp", f"{url}?delivery_limit=3", 3)


async def _run(
    url: str, store: FileBlobStore, *, delay: float, every: float
) -> tuple[list[Progress], int, str, str]:
    """One task through a worker while a Submission waits; (progress heard, results, id, group)."""
    group = unique("thumbs")
    options = SubmitOptions(groups=(group,), params={"delay": delay}, wait=True)
    heard: list[Progress] = []
    async with (
        open_transport(url) as transport,
        Submission(queue=transport, replies=transport, store=store, options=options) as sub,
        PipelinePool(1) as pool,
    ):
        task = await sub.submit(vet(images.jpeg_bytes(64, 48), "photo.jpg"))
        settings = WorkerSettings(group=group, concurrency=1, burst=True, progress_every=every)
        worker = Worker(
            tasks=transport,
            replies=transport,
            blobs=store,
            pipeline=pipelines.slow,
            pool=pool,
            settings=settings,
        )
        working = asyncio.create_task(worker.run())
        router = ReplyRouter(sub, store=store)
        router.on_progress = heard.append
        try:
            results = [r async for r in router.stream(timeout=30)]
        finally:
            await router.stop()
        assert (await working).ok == 1
    return heard, len(results), task.id, group


async def test_the_waiter_hears_progress_of_a_running_task(
    two_brokers: BrokerUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replies, "PROGRESS_POLL", 0.2)  # look at the reports often
    store = FileBlobStore(tmp_path / "blobs")
    heard, results, task_id, group = await _run(two_brokers.url, store, delay=1.0, every=0.0)
    assert results == 1  # progress never counts as a result
    assert heard, "no progress heard while the pipeline ran"
    assert all(p.task_id == task_id and p.group == group for p in heard)
    assert "process" in [p.step for p in heard]  # reported as the pipeline started
    last = await read_progress(store, task_id, group)
    assert last is not None and (last.step, last.done, last.total) == ("store", 4, 4)
    assert decode_progress(last.model_dump_json()) == last


async def test_a_quick_task_under_the_rate_limit_reports_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replies, "PROGRESS_POLL", 0.2)
    store = FileBlobStore(tmp_path / "blobs")
    url = f"sqlite:///{tmp_path / 'b.db'}?poll=0.05"
    heard, results, task_id, group = await _run(url, store, delay=0.0, every=1.0)
    assert (heard, results) == ([], 1)
    assert await read_progress(store, task_id, group) is None  # not even a blob written


def test_enqueue_wait_shows_the_progress_of_a_running_task(tmp_path: Path) -> None:
    """A real worker process (``--progress-every 0``) and ``uploader enqueue --wait``: the
    reports appear on stderr, stdout has one line per result only."""
    group, photo = unique("slow"), tmp_path / "photo.jpg"
    photo.write_bytes(images.jpeg_bytes(64, 48))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PIXFLEET_HOME": str(tmp_path / "home")}
    env["PIXFLEET_BROKER"] = f"sqlite:///{tmp_path / 'b.db'}?poll=0.05"
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "consumers", "run", "-g", group, "-c", "1"),
            *("--pipeline", "tests.helpers.pipelines:slow", "--progress-every", "0"),
        ],
        cwd=REPO,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "producer", "enqueue", str(photo), "-g", group),
                *("--wait", "-p", "delay=3", "--timeout", "60"),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"photo.jpg [{group}]: process" in done.stderr, done.stderr
    assert len(done.stdout.strip().splitlines()) == 1, done.stdout  # the result, nothing else


def reporting(data: bytes, params: Mapping[str, Any], limits: Limits) -> PipelineOutput:
    """A pipeline that reports three steps, a little apart (module level: it must pickle)."""
    for i in range(1, 4):
        time.sleep(0.15)
        report_progress(i, 3, f"step {i}")
    return PipelineOutput(renditions=())


async def test_a_pipeline_reports_progress_from_its_pool_process() -> None:
    heard: list[tuple[int, int | None, str]] = []
    async with PipelinePool(1) as pool:
        await pool.process(reporting, b"", {}, Limits(), on_progress=lambda *r: heard.append(r))
        await pool.process(reporting, b"", {}, Limits())  # nobody listens: nothing heard
        thumbs: list[tuple[int, int | None, str]] = []
        await pool.process(
            resolve("thumbs", None), images.jpeg_bytes(), {}, Limits(), lambda *r: thumbs.append(r)
        )
    assert heard == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
    assert thumbs[-1] == (4, 4, "256.webp")  # one per rendition, rate-limited, the last always
    report_progress(1, 2, "outside a pool")  # a no-op, not an error


async def test_the_wait_for_a_slot_does_not_count_towards_the_rate_limit() -> None:
    store, task = MemoryBlobStore(), make_task("g")
    worker = WorkerInfo(id="w", host="h", pid=1)
    waited = ProgressReporter(store, task, "g", worker, every=0.2)
    await asyncio.sleep(0.25)  # waiting its turn for a slot
    waited.begin()
    waited.report("fetch")  # and done a moment later: nothing worth a write
    await waited.aclose()
    assert await read_progress(store, task.id, "g") is None
    ran = ProgressReporter(store, task, "g", worker, every=0.2)
    ran.begin()
    await asyncio.sleep(0.25)  # running
    ran.report("process")
    await ran.aclose()
    written = await read_progress(store, task.id, "g")
    assert written is not None and written.step == "process"
