"""RabbitMQ-only end-to-end behaviour: connection loss, and tasks from a non-Python client."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import jsonschema
import pytest

from pixfleet.blobs import store_upload
from pixfleet.blobs.file import FileBlobStore
from pixfleet.schema import SCHEMA_DIR
from tests.conftest import missing_broker
from tests.e2e.conftest import Fleet, parse_results, wait_until
from tests.harness.rabbitmq import PrivateRabbit
from tests.helpers import images

pytestmark = pytest.mark.e2e


def test_workers_and_uploader_ride_out_every_connection_being_dropped(
    private_rabbit: PrivateRabbit, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    images.write_samples(photos, count=16)
    home = tmp_path / "home"
    home.mkdir()
    fleet = Fleet(home, private_rabbit.url + "?reconnect_timeout=60")
    slow = ("--pipeline", "tests.helpers.pipelines:slow", "--concurrency", "1")
    try:
        workers = [fleet.worker(*slow), fleet.worker(*slow)]
        wait_until(lambda: fleet.stats().consumers == 2, timeout=30, what="two consumers")
        waiting = fleet.uploader_in_background(
            "enqueue", str(photos), "--param", "delay=0.3", "--wait", "--json", "--timeout", "180"
        )
        wait_until(lambda: 0 < fleet.stats().ready <= 12, timeout=60, what="work under way")

        for _ in range(2):  # cut everything, twice, while tasks are in flight
            private_rabbit.close_all_connections()
            # The known failure of aio-pika's robust connection is a reconnected client with
            # zero consumers; ours must come back consuming.
            wait_until(
                lambda: fleet.stats().consumers == 2, timeout=60, what="both consumers restored"
            )

        out, err = waiting.communicate(timeout=180)
        assert waiting.returncode == 0, err
        results = parse_results(out)
        assert len(results) == 16 and all(r.status == "ok" for r in results)
        assert len({r.task_id for r in results}) == 16
        assert len(Counter(r.worker.pid for r in results)) == 2
        for worker in workers:
            assert worker.stop() == 0
            assert "re-subscribed" in worker.log()
    finally:
        fleet.stop_all()


@pytest.mark.parametrize("fleet", ["amqp"], indirect=True)
def test_task_published_by_amqp_publish_is_processed_and_answered(fleet: Fleet) -> None:
    if not shutil.which("amqp-publish"):
        missing_broker("amqp-publish (Debian package amqp-tools)")
    worker = fleet.worker("--concurrency", "1")
    wait_until(lambda: fleet.stats().consumers == 1, timeout=30, what="the worker")
    # The foreign producer stores the image in the shared blob store and writes the task in
    # the published JSON Schema - no pixfleet code involved in building it.
    store = FileBlobStore(fleet.home / "blobs")
    ref = asyncio.run(store_upload(store, images.jpeg_bytes(), "image/jpeg"))
    task_id = f"ext-{uuid.uuid4().hex}"
    task = {
        "v": 1,
        "id": task_id,
        "created_at": datetime.now(UTC).isoformat(),
        "groups": ["thumbs"],
        "blob": ref.model_dump(),
        "filename": "from-amqp-publish.jpg",
        "params": {"sizes": [128]},
        "reply_to": "results",
        "correlation_id": task_id,
    }
    jsonschema.validate(task, json.loads((SCHEMA_DIR / "task.v1.json").read_text()))
    parts = urlsplit(fleet.broker_url)
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))

    published = subprocess.run(
        [
            "amqp-publish",
            "--url",
            url,
            "--exchange",
            "pixfleet.tasks",
            "--header",
            "pixfleet-group-thumbs: 1",
            "--persistent",
            "--content-type",
            "application/json",
            "--body",
            json.dumps(task),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert published.returncode == 0, published.stderr
    [result] = fleet.result_of(task_id)
    assert result.status == "ok" and result.correlation_id == task_id
    assert sorted(o.name for o in result.outputs) == ["128.jpg", "128.webp"]
    assert worker.stop() == 0
