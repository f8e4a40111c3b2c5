"""Hostile inputs against one worker (SQLite, real blob store and process pool): costly images
are refused or capped, unclassified failures become typed results, blobs are fetched late."""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from brokers import open_transport
from consumers.pipelines import Pipeline, thumbs
from consumers.pool import PipelinePool
from pixfleet.blobs.file import FileBlobStore
from pixfleet.blobs.memory import MemoryBlobStore
from pixfleet.envelope import BlobRef, Result, Task
from pixfleet.errors import InternalError, MemoryLimitExceeded, PipelineError, TaskConflict
from pixfleet.images import ImageTooCostly, Limits, check_jpeg_scans, jpeg_scans
from producer.inspect import vet
from producer.submission import Submission, SubmitOptions
from tests.helpers import images, jpegs, pipelines
from tests.helpers.pngs import worst_png
from tests.helpers.workrig import WorkRig

#: Enough for an ordinary image, far too little for the 150 MB the worst PNG decodes to.
SMALL_CAP_MB = 300


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[WorkRig]:
    url = f"sqlite:///{tmp_path / 'broker.db'}?lease=1&delivery_limit=3&poll=0.05"
    async with (
        open_transport(url) as transport,
        PipelinePool(1, memory_limit_mb=SMALL_CAP_MB) as pool,
    ):
        yield WorkRig(transport, FileBlobStore(tmp_path / "blobs"), pool)


async def _answers(rig: WorkRig) -> dict[str, list[Result]]:
    by_task: dict[str, list[Result]] = {}
    for result in await rig.replies():
        by_task.setdefault(result.task_id, []).append(result)
    return by_task


async def _dead_reasons(rig: WorkRig) -> list[str]:
    return [dead.reason for dead in await rig.transport.dead_letters(rig.group)]


async def test_the_worst_png_is_refused_under_the_memory_cap_and_the_worker_goes_on(
    rig: WorkRig,
) -> None:
    data = worst_png()
    assert len(data) < 150_000  # 143 KB on disk, 150 MB decoded: within MAX_PIXELS
    bomb = await rig.put(data)
    good = await rig.put(images.jpeg_bytes())
    await rig.work()
    answers = await _answers(rig)
    [refused] = answers[bomb.id]
    assert refused.error is not None and refused.error.code == MemoryLimitExceeded.code
    assert f"{SMALL_CAP_MB} MiB" in refused.error.message and refused.attempt == 1
    assert [r.status for r in answers[good.id]] == ["ok"]  # the worker went on
    assert rig.pool.recycled == 1  # the child that ran out of memory was replaced
    [reason] = await _dead_reasons(rig)
    assert MemoryLimitExceeded.code in reason


async def test_a_jpeg_of_many_scans_is_refused_before_decoding(rig: WorkRig) -> None:
    # 4 megapixels and 5,000 empty scans in 120 KB: over a second of decoding without the limit.
    data = jpegs.many_scans(2000, 2000, 5000)
    started = time.monotonic()
    with pytest.raises(ImageTooCostly):
        await rig.pool.process(thumbs.run, data, {}, Limits())
    assert time.monotonic() - started < 1.0
    hostile = await rig.put(data)
    good = await rig.put(jpegs.progressive())  # an ordinary progressive JPEG still passes
    await rig.work()
    answers = await _answers(rig)
    [refused] = answers[hostile.id]
    assert refused.error is not None and refused.error.code == ImageTooCostly.code
    assert [r.status for r in answers[good.id]] == ["ok"]
    [reason] = await _dead_reasons(rig)
    assert ImageTooCostly.code in reason


def test_scans_are_counted_from_the_markers() -> None:
    baseline, progressive = images.jpeg_bytes(), jpegs.progressive()
    assert jpeg_scans(baseline, stop_after=100) == 1
    assert jpeg_scans(progressive, stop_after=100) == 10
    hostile = jpegs.many_scans(64, 64, 500)
    assert jpeg_scans(hostile, stop_after=100) == 101  # stops counting past the limit
    assert jpeg_scans(hostile, stop_after=1000) == 510
    for ok in (baseline, progressive, b"\xff\xd8", b"\xff\xd8\xff\xda\x00", b"not a jpeg"):
        check_jpeg_scans(ok, Limits())
    with pytest.raises(ImageTooCostly):
        check_jpeg_scans(hostile, Limits())
    check_jpeg_scans(hostile, Limits(max_scans=510))


@pytest.mark.parametrize(
    ("pipeline", "code", "kind"),
    [
        (pipelines.garbage, InternalError.code, "AttributeError"),  # fails in the worker
        (pipelines.raises, PipelineError.code, "KeyError"),  # fails in the pool process
    ],
    ids=["worker", "pipeline"],
)
async def test_an_unclassified_failure_is_a_final_error_result_and_dead_letter_not_a_retry(
    rig: WorkRig, pipeline: Pipeline, code: str, kind: str
) -> None:
    bad = await rig.put(images.jpeg_bytes())
    good = await rig.put(images.jpeg_bytes(seed=2), good=True)
    await rig.work(pipeline)
    answers = await _answers(rig)
    [failed] = answers[bad.id]  # answered once, at the first attempt: no silent retries
    assert failed.error is not None and failed.error.code == code and failed.attempt == 1
    assert kind in failed.error.message and "Traceback" not in failed.error.message
    assert [r.status for r in answers[good.id]] == ["ok"]
    [reason] = await _dead_reasons(rig)
    assert code in reason and kind in reason


class _WatchedStore(FileBlobStore):
    """Notes when each blob is fetched: by the worker (``get``) or by the pool process that runs
    the task (``loader``: a marker file named by the system-wide monotonic clock)."""

    fetched: list[float]
    marks: Path

    async def get(self, ref: BlobRef) -> bytes:
        self.fetched.append(time.monotonic())
        return await super().get(ref)

    def loader(self, ref: BlobRef) -> Callable[[], bytes]:
        return functools.partial(_noted, str(self.marks), super().loader(ref))

    def all_fetched(self) -> list[float]:
        return sorted(self.fetched + [int(p.name) / 1e9 for p in self.marks.iterdir()])


def _noted(marks: str, load: Callable[[], bytes]) -> bytes:
    (Path(marks) / str(time.monotonic_ns())).touch()
    return load()


async def test_blobs_are_fetched_in_the_pool_slot_not_all_at_once(
    rig: WorkRig, tmp_path: Path
) -> None:
    tasks: list[Task] = [await rig.put(images.jpeg_bytes(seed=i), delay=0.3) for i in range(3)]
    watched = _WatchedStore(tmp_path / "blobs")
    watched.fetched, watched.marks = [], tmp_path / "marks"
    watched.marks.mkdir()
    await rig.work(pipelines.slow, blobs=watched, prefetch=3)  # 3 held, 1 slot
    answers = await _answers(rig)
    assert all([r.status for r in answers[t.id]] == ["ok"] for t in tasks)
    fetched = watched.all_fetched()
    gaps = [b - a for a, b in itertools.pairwise(fetched)]
    assert len(fetched) == 3 and min(gaps) > 0.25, gaps  # one blob in memory at a time


async def test_a_task_id_submitted_again_with_other_bytes_is_refused_before_publishing(
    tmp_path: Path,
) -> None:
    store, group = MemoryBlobStore(), "thumbs"
    options = SubmitOptions(groups=(group,))
    async with open_transport(f"sqlite:///{tmp_path / 'broker.db'}") as transport:
        async with Submission(
            queue=transport, replies=transport, store=store, options=options
        ) as s:
            first = await s.submit(vet(images.jpeg_bytes(seed=1), "a.jpg"), task_id="order-1")
            again = await s.submit(vet(images.jpeg_bytes(seed=1), "a.jpg"), task_id="order-1")
            with pytest.raises(TaskConflict):
                await s.submit(vet(images.jpeg_bytes(seed=2), "b.jpg"), task_id="order-1")
        assert again.blob == first.blob
        assert (await transport.stats(group)).ready == 2  # the conflicting one never went out
