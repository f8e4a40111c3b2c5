"""``uploader enqueue`` and ``worker run`` on separate simulated machines (own PIXFLEET_HOME, own
working directory) that share nothing but a RabbitMQ vhost and an ``s3://`` bucket on a real S3
API server: the outputs are read back from S3 by a third client and decode as images of the
promised size, no node keeps anything on its local disk, and an upload whose bytes were changed
in the store after it was enqueued is a typed ``blob.corrupt`` error result - never thumbnails of
the wrong bytes."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from PIL import Image

from brokers import GroupStats, open_transport
from pixfleet.blobs.s3 import S3BlobStore
from pixfleet.envelope import Result, Task
from pixfleet.errors import BlobIntegrityError
from pixfleet.records import read_result, read_task
from tests.e2e.conftest import parse_results, wait_until
from tests.helpers import images
from tests.topology.nodes import Site

pytestmark = pytest.mark.e2e

T = TypeVar("T")
#: Source sizes and the thumbnails expected at 256 and 1024 px on the long edge (never upscaled).
SOURCES = {
    "landscape.jpg": ((640, 480), {256: (256, 192), 1024: (640, 480)}),
    "large.jpg": ((1280, 960), {256: (256, 192), 1024: (1024, 768)}),
    "portrait.jpg": ((300, 400), {256: (192, 256), 1024: (300, 400)}),
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def group_stats(url: str) -> GroupStats:
    async def read() -> GroupStats:
        async with open_transport(url) as transport:
            return await transport.stats("thumbs")

    return run(read())


def test_enqueue_and_worker_share_only_the_broker_and_s3(
    amqp_site: Site, s3_store: S3BlobStore
) -> None:
    uploader, worker_node = amqp_site.node("uploader"), amqp_site.node("worker")
    photos = uploader.cwd / "photos"
    photos.mkdir()
    for i, (name, ((w, h), _)) in enumerate(SOURCES.items()):
        (photos / name).write_bytes(images.jpeg_bytes(w, h, seed=i))
    worker = amqp_site.worker(worker_node, "--concurrency", "1")
    wait_until(lambda: group_stats(amqp_site.broker_url).consumers == 1, timeout=30, what="worker")

    # A relative path: the uploader's own working directory is where the photos are.
    done = amqp_site.uploader(uploader, "enqueue", "photos", "--wait", "--json", "--timeout", "60")

    assert done.returncode == 0, done.stderr
    results = parse_results(done.stdout)
    assert len(results) == 3 and all(r.status == "ok" for r in results), done.stdout
    names = {r.task_id: _filename(s3_store, r.task_id) for r in results}
    for result in results:
        _, expected = SOURCES[names[result.task_id]]
        assert {o.name for o in result.outputs} == {
            f"{s}.{e}" for s in expected for e in ("jpg", "webp")
        }
        for output in result.outputs:
            # Read back from S3 by a client of its own, not through either node.
            data = run(s3_store.read(output.uri))
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                size = int(output.name.split(".")[0])
                assert im.size == expected[size] == (output.width, output.height)
                assert im.format == {"jpg": "JPEG", "webp": "WEBP"}[output.name.split(".")[1]]
            assert len(data) == output.bytes
        recorded = run(read_result(s3_store, result.task_id, "thumbs"))
        assert recorded == result, "the completion record in S3 is the result replied"
    assert worker.stop() == 0
    assert worker.stopped_ok_count() == 3
    _assert_nothing_local(amqp_site, allowed={"uploader": {"photos"}})


def test_upload_changed_in_the_store_is_a_blob_corrupt_error_result(
    amqp_site: Site, s3_store: S3BlobStore
) -> None:
    uploader, worker_node, reader = (amqp_site.node(n) for n in ("uploader", "worker", "reader"))
    (uploader.cwd / "photo.jpg").write_bytes(images.jpeg_bytes(640, 480, seed=7))
    queued = amqp_site.uploader(uploader, "enqueue", "photo.jpg", "--json")
    assert queued.returncode == 0, queued.stderr
    task_id = json.loads(queued.stdout)["task_id"]
    task = run(read_task(s3_store, task_id))
    assert isinstance(task, Task)
    original = run(s3_store.read(task.blob.uri))
    # Same size, one byte different: only the sha256 can tell.
    middle = len(original) // 2
    tampered = original[:middle] + bytes([original[middle] ^ 0xFF]) + original[middle + 1 :]
    run(s3_store.put(task.blob.uri, tampered))
    with pytest.raises(BlobIntegrityError) as caught:
        run(s3_store.get(task.blob))
    assert caught.value.code == "blob.corrupt"

    # Only now a worker starts: it finds the task and fetches the changed bytes.
    worker = amqp_site.worker(worker_node, "--burst", "--concurrency", "1")
    assert worker.proc.wait(timeout=60) == 0, worker.log()

    answered = amqp_site.uploader(reader, "results", "--json")
    assert answered.returncode == 0, answered.stderr
    [result] = parse_results(answered.stdout)
    assert (result.task_id, result.status) == (task_id, "error")
    assert result.error is not None and result.error.code == "blob.corrupt"
    assert not result.error.retryable and result.attempt == 1 and not result.outputs
    recorded = run(read_result(s3_store, task_id, "thumbs"))
    assert isinstance(recorded, Result) and recorded.error == result.error
    stats = group_stats(amqp_site.broker_url)
    assert (stats.ready, stats.dead) == (0, 1), "dead-lettered at once, not retried"
    _assert_nothing_local(amqp_site, allowed={"uploader": {"photo.jpg"}})


def _filename(store: S3BlobStore, task_id: str) -> str:
    task = run(read_task(store, task_id))
    assert task is not None
    return task.filename


def _assert_nothing_local(site: Site, allowed: dict[str, set[str]]) -> None:
    """No node wrote anything to its home or working directory (the test's own input files
    aside): no file blob store, no SQLite broker, no records - everything went to S3 and the
    broker."""
    for name, node in site.nodes.items():
        assert node.kept_nothing() == [], f"{name} wrote to its PIXFLEET_HOME"
        left = {p.name for p in node.cwd.iterdir()} - allowed.get(name, set())
        assert not left, f"{name} wrote to its working directory: {sorted(left)}"
