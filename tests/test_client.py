"""The Python API (``from producer import Client``) on the embedded SQLite broker.

A stand-in worker (the test, through a second real transport) answers where the test needs to
choose the order of replies; the README's example runs as a user would run it, against a real
``worker run`` process.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from contextlib import aclosing
from pathlib import Path

import pytest

from brokers import Transport, open_transport
from pixfleet.blobs import store_output
from pixfleet.envelope import Output, Task
from pixfleet.errors import ConfigError, InputNotImage, ResultTimeout
from pixfleet.records import record_result
from producer import Client, TaskNotFound
from tests.helpers import images
from tests.helpers.cli import REPO
from tests.helpers.tasks import make_result, unique

README = REPO / "README.md"


def _urls(tmp_path: Path) -> tuple[str, str]:
    return f"sqlite:///{tmp_path / 'broker.db'}?poll=0.05", (tmp_path / "blobs").as_uri()


async def _take(transport: Transport, group: str, count: int) -> list[Task]:
    tasks: list[Task] = []
    async with aclosing(transport.consume(group, prefetch=count)) as deliveries:
        async for delivery in deliveries:
            tasks.append(delivery.message)
            await delivery.ack()
            if len(tasks) == count:
                break
    return tasks


async def test_waits_run_concurrently_and_each_result_reaches_its_waiter(tmp_path: Path) -> None:
    broker, blobs = _urls(tmp_path)
    group = unique("cl")
    photo = tmp_path / "b.png"
    photo.write_bytes(images.png_bytes(64, 40))
    async with (
        Client(broker=broker, blobs=blobs, groups=[group]) as client,
        open_transport(broker) as worker,
    ):
        first = await client.enqueue(images.jpeg_bytes(64, 48, seed=1), filename="a.jpg")
        waiting = asyncio.create_task(first.result(timeout=10))
        await asyncio.sleep(0.2)  # the reader runs for `first` when `second` is published
        second = await client.enqueue(photo)
        assert (first.filename, second.filename) == ("a.jpg", "b.png")
        t1, t2 = await _take(worker, group, 2)
        await worker.reply(t2.reply_to, make_result(t2, group))
        # The reply of a task enqueued while the reader ran is delivered, not dropped.
        assert (await second.result(timeout=5)).task_id == second.id
        assert not waiting.done()
        assert client.pending == {(first.id, group)}
        await worker.reply(t1.reply_to, make_result(t1, group))
        assert (await waiting).task_id == first.id
        arrived = [r.task_id async for r in client.results(timeout=5)]
        assert arrived == [second.id, first.id]  # arrival order, each once
        assert client.pending == frozenset()
        assert [t.id for t in client.tasks] == [first.id, second.id]


async def test_timeouts_bad_input_and_bad_groups_are_typed_errors(tmp_path: Path) -> None:
    broker, blobs = _urls(tmp_path)
    with pytest.raises(ConfigError):
        Client(broker=broker, blobs=blobs, groups=["Bad Name"])
    async with Client(broker=broker, blobs=blobs, groups=[unique("cl")]) as client:
        with pytest.raises(InputNotImage):
            await client.enqueue(b"hello", filename="notes.txt")
        handles = await client.enqueue_many(
            [images.jpeg_bytes(32, 32, seed=i) for i in range(2)], params={"sizes": [16]}
        )
        assert [h.task.params for h in handles] == [{"sizes": [16]}] * 2
        with pytest.raises(ResultTimeout):
            await handles[0].result(timeout=0.3)
        with pytest.raises(ResultTimeout, match="2 of 2 result"):
            async with aclosing(client.results(timeout=0.3)) as results:
                async for _ in results:
                    pass
        assert {task_id for task_id, _ in client.pending} == {h.id for h in handles}
        with pytest.raises(TaskNotFound):
            await client.get("no-such-task")


async def test_a_client_that_does_not_wait_reads_the_records(tmp_path: Path) -> None:
    broker, blobs = _urls(tmp_path)
    group = unique("cl")
    async with Client(broker=broker, blobs=blobs, groups=[group], wait=False) as client:
        handle = await client.enqueue(images.jpeg_bytes(64, 48), filename="c.jpg")
        assert handle.task.reply_to == "results"  # for `uploader results`, not a private one
        state = await client.get(handle.id)
        assert state.state == "queued"
        data = images.jpeg_bytes(16, 12)
        key = await store_output(
            client.store, handle.id, group, "16.jpg", data, source_sha256=handle.task.blob.sha256
        )
        output = Output(name="16.jpg", uri=key, width=16, height=12, format="jpeg", bytes=len(data))
        result = make_result(handle.task, group).model_copy(update={"outputs": (output,)})
        await record_result(client.store, result)
        assert await handle.result(timeout=5) == result
        assert (await client.get(handle.id)).state == "done"
        [path] = await client.fetch(handle.id, tmp_path / "out")
        assert path == (tmp_path / "out" / group / "16.jpg").resolve()
        assert path.read_bytes() == data


def _readme_example() -> str:
    text = README.read_text()
    marker = text.index("<!-- tests/test_client.py runs this example")
    found = re.search(r"```python\n(.*?)```", text[marker:], re.DOTALL)
    assert found is not None
    return found.group(1)


def test_the_readme_example_runs_against_sqlite_and_a_worker(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(images.jpeg_bytes(640, 480))
    env = {
        "PIXFLEET_HOME": str(tmp_path / "home"),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "consumers", "run", "-g", "thumbs", "-c", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        done = subprocess.run(
            [sys.executable, "-c", _readme_example()],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
    finally:
        worker.terminate()
        _, worker_log = worker.communicate(timeout=30)
    assert done.returncode == 0, done.stderr + worker_log
    assert done.stdout.splitlines() == ["a.jpg ok ['128.jpg', '128.webp']", "done"]
