"""``uploader dlq`` and ``uploader purge`` as a user runs them (issue 14).

The acceptance test runs on every transport: a task fails until its cause is fixed and is
dead-lettered by a worker with a small delivery limit; ``uploader dlq list`` shows it with its
reason; the cause is fixed; ``uploader dlq replay`` re-publishes it; a worker gives an ok result
for it; the dead letters are then empty. Workers run in-process (real transport, blob store and
process pool); the uploader commands run as real processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections.abc import Callable, Iterator
from contextlib import aclosing
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from brokers import DeadLetter, Transport, open_transport
from consumers.events import WorkerStats
from consumers.pipelines import resolve
from consumers.pool import PipelinePool
from consumers.worker import Worker, WorkerSettings
from pixfleet.blobs import open_blobstore, store_upload
from pixfleet.blobs.memory import MemoryBlobStore
from pixfleet.envelope import Task, encode
from pixfleet.records import forget_error, read_result, record_result, result_key
from producer import deadletters
from producer.cli import app
from tests.conftest import BrokerUnderTest
from tests.helpers import images
from tests.helpers.cli import run_cli
from tests.helpers.tasks import make_result, make_task, unique

PIPELINE = "tests.helpers.pipelines:broken_until_fixed"


def uploader(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("producer", *args, home=home)


async def work(transport: Transport, blobs: str, group: str, pool: PipelinePool) -> WorkerStats:
    """One burst worker of ``group`` with a delivery limit of 2 and quick retries."""
    settings = WorkerSettings(
        group=group,
        concurrency=1,
        burst=True,
        delivery_limit=2,
        retry_backoff=0.05,
        reply_grace=0.2,
    )
    worker = Worker(
        tasks=transport,
        replies=transport,
        blobs=open_blobstore(blobs),
        pipeline=resolve(group, PIPELINE),
        pool=pool,
        settings=settings,
    )
    async with asyncio.timeout(60):
        return await worker.run()


async def replies_for(transport: Transport, task_id: str) -> list[str]:
    """The statuses of the results of ``task_id`` on the default results channel."""
    statuses: list[str] = []
    async with asyncio.timeout(30):
        async with aclosing(transport.replies("results", until_empty=True)) as it:
            async for delivery in it:
                if delivery.message.task_id == task_id:
                    statuses.append(delivery.message.status)
                await delivery.ack()
    return statuses


async def test_a_dead_task_is_listed_replayed_after_the_fix_and_succeeds(
    broker: BrokerUnderTest, tmp_path: Path
) -> None:
    group, fixed = unique("dlq"), tmp_path / "fixed"
    blobs = f"file://{tmp_path / 'blobs'}"
    common = ("--broker", broker.url, "--blobs", blobs)
    async with open_transport(broker.url) as transport, PipelinePool(1) as pool:
        ref = await store_upload(open_blobstore(blobs), images.jpeg_bytes(64, 48), "image/jpeg")
        task = Task.new(ref, groups=(group,), filename="cat.jpg", params={"fixed": str(fixed)})
        await transport.publish(task)
        assert (await work(transport, blobs, group, pool)).failed == 1

        listed = uploader("dlq", "list", "--group", group, "--json", *common, home=tmp_path)
        assert listed.returncode == 0, listed.stderr
        [row] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert (row["task_id"], row["file"], row["attempts"]) == (task.id, "cat.jpg", 2)
        assert row["reason"].startswith("error[blob.unavailable]: simulated outage")
        assert row["dead_at"] is not None

        fixed.touch()  # the cause is fixed
        replayed = uploader(
            "dlq", "replay", "--group", group, "--task", task.id, *common, home=tmp_path
        )
        assert replayed.returncode == 0, replayed.stderr
        assert replayed.stdout.strip() == f"replayed 1 dead task(s) of group {group}"

        assert (await work(transport, blobs, group, pool)).ok == 1
        recorded = await read_result(open_blobstore(blobs), task.id, group)
        assert recorded is not None and recorded.status == "ok" and recorded.attempt == 1
        assert await replies_for(transport, task.id) == ["error", "ok"]
        assert await transport.dead_letters(group) == []
        assert (await transport.stats(group)).dead == 0


@pytest.fixture
def cli() -> Iterator[Callable[..., Result]]:
    """The uploader in-process (quicker than a process; the acceptance test runs real ones),
    with the logger levels it sets put back afterwards."""
    loggers = [logging.getLogger(n) for n in ("aiokafka", "aiormq", "aio_pika", "asyncio")]
    levels = [lg.level for lg in loggers]
    runner = CliRunner()
    yield lambda *args: runner.invoke(app, list(args))
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)


async def _fill(url: str, group: str, other: str) -> None:
    """Two tasks for both groups (one of them a delayed retry in ``group``) and one dead
    letter in ``group``."""
    async with open_transport(url) as transport:
        for _ in range(2):
            await transport.publish(make_task(group, other))
        dead = make_task(group)
        await transport.publish(dead)
        async with asyncio.timeout(15), aclosing(transport.consume(group)) as it:
            for _ in range(3):
                delivery = await anext(it)
                if delivery.message.id == dead.id:
                    await delivery.nack(requeue=False, reason="error[image.invalid]: bad")
                else:
                    await delivery.nack(requeue=True, delay=60.0)  # a delayed retry


async def _counts(url: str, *groups: str) -> list[tuple[int, int]]:
    async with open_transport(url) as transport:
        return [((s := await transport.stats(g)).ready, s.dead) for g in groups]


def test_purges_need_a_yes_when_nobody_can_be_asked(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    group, other = unique("p"), unique("q")
    asyncio.run(_fill(url, group, other))
    refused = cli("purge", "--group", group, "--broker", url)
    assert refused.exit_code == 1
    assert refused.stderr.startswith("error[config.invalid]: not a terminal: pass --yes")
    assert asyncio.run(_counts(url, group)) == [(2, 1)]
    done = cli("purge", "--group", group, "--yes", "--broker", url)
    assert done.stdout.strip() == f"purged 2 waiting task(s) of group {group}", done.stderr
    done = cli("dlq", "purge", "--group", group, "--yes", "--broker", url)
    assert done.stdout.strip() == f"purged 1 dead letter(s) of group {group}", done.stderr
    assert asyncio.run(_counts(url, group, other)) == [(0, 0), (2, 0)]  # other keeps its copies


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("dlq", "replay"), "error[config.invalid]: name the tasks to replay"),
        (("dlq", "replay", "--all", "--task", "x"), "error[config.invalid]: name the tasks"),
        (("dlq", "replay", "--group", "g", "--task", "nope"), "error[dlq.not_found]: not among"),
    ],
)
def test_replay_refuses_what_it_cannot_do(
    cli: Callable[..., Result], args: tuple[str, ...], line: str, tmp_path: Path
) -> None:
    done = cli(*args, "--broker", f"sqlite:///{tmp_path / 'b.db'}")
    assert done.exit_code == 1
    assert done.stderr.startswith(line), done.stderr
    assert len(done.stderr.splitlines()) == 1


async def test_replay_forgets_error_records_never_ok_ones() -> None:
    store = MemoryBlobStore()
    failed, done = make_task("g"), make_task("g")
    await record_result(store, make_result(failed, "g", ok=False))
    await record_result(store, make_result(done, "g", ok=True))
    assert await forget_error(store, failed.id, "g") is True
    assert await read_result(store, failed.id, "g") is None
    assert await forget_error(store, done.id, "g") is False
    recorded = await read_result(store, done.id, "g")
    assert recorded is not None and recorded.status == "ok"


async def test_listing_survives_an_unreadable_error_record() -> None:
    store, task = MemoryBlobStore(), make_task("g")
    await store.put(result_key(task.id, "g"), b"{not a record")  # forged, or unsigned
    letter = DeadLetter(encode(task), "error[image.invalid]: bad", task_id=task.id)
    row = await deadletters._describe(store, "g", letter)  # attempts unknown: records read
    assert (row.task_id, row.attempts, row.last_error) == (task.id, None, "")
    await store.delete(result_key(task.id, "g"))
    await record_result(store, make_result(task, "g", ok=False))
    row = await deadletters._describe(store, "g", letter)
    assert (row.attempts, row.last_error) == (1, "error[image.invalid]: x")
