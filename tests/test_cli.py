"""CLI failures are one line with a stable code and a non-zero exit, never a traceback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from brokers import open_transport
from pixfleet.envelope import decode_result
from tests.helpers import images
from tests.helpers.cli import REPO, run_cli
from tests.helpers.tasks import make_result, make_task


def run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, home=home)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ("producer", "status", "--broker", "redis://guest:hunter2@localhost/"),
            "error[config.invalid_url]: unsupported broker URL 'redis://guest:***@localhost/'",
        ),
        (
            (
                "producer",
                "status",
                "--broker",
                "amqp://guest:hunter2@127.0.0.1:1/?connect_timeout=0.5",
            ),
            "error[broker.unavailable]: cannot reach amqp://guest:***@127.0.0.1:1/",
        ),
        (
            ("producer", "status", "--broker", "amqp://127.0.0.1/?prefetch_count=3"),
            "error[config.invalid_url]: unknown amqp URL option(s) ['prefetch_count']",
        ),
        (
            ("producer", "status", "--broker", "sqlite:///x.db?leese=3"),
            "error[config.invalid_url]: unknown sqlite URL option(s) ['leese']",
        ),
        (
            ("producer", "status", "--broker", "sqlite:////proc/forbidden/broker.db"),
            "error[broker.unavailable]: cannot ",
        ),
        (
            ("consumers", "run", "--group", "no-such-pipeline"),
            "error[pipeline.unknown]: no pipeline named 'no-such-pipeline'",
        ),
        (("consumers", "run", "--group", "Bad Name"), "error[config.invalid]: invalid group"),
        (
            ("consumers", "run", "--group", "thumbs", "--pipeline", "nope.mod:fn"),
            "error[pipeline.unknown]: cannot import pipeline module 'nope.mod'",
        ),
    ],
)
def test_errors_are_one_line(args: tuple[str, ...], line: str, tmp_path: Path) -> None:
    done = run(*args, home=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(line)
    assert "hunter2" not in done.stderr + done.stdout


def test_status_lists_groups(tmp_path: Path) -> None:
    samples = run("producer", "samples", str(tmp_path / "s"), "--count", "2", home=tmp_path)
    assert samples.returncode == 0
    queued = run(
        "producer", "enqueue", str(tmp_path / "s"), "-g", "thumbs", "-g", "other", home=tmp_path
    )
    assert queued.returncode == 0, queued.stderr
    assert len(queued.stdout.strip().splitlines()) == 2
    status = run("producer", "status", home=tmp_path)
    rows = {line.split()[0]: line.split()[1:] for line in status.stdout.splitlines()[1:]}
    assert rows["thumbs"][0] == "2" and rows["other"][0] == "2"


def test_wrong_amqp_credentials_are_one_line_without_the_password(
    amqp_session_url: str, tmp_path: Path
) -> None:
    parts = urlsplit(amqp_session_url)
    url = f"amqp://guest:hunter2@{parts.hostname}:{parts.port or 5672}{parts.path}"
    done = run("producer", "status", "--broker", url, home=tmp_path)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error[broker.auth_failed]: amqp://guest:***@")
    assert "hunter2" not in done.stderr + done.stdout


# -- idempotent enqueue and partial success (issue 9) --------------------------------------------


def _env(home: Path) -> dict[str, str]:
    return {"PIXFLEET_HOME": str(home), "PATH": "/usr/bin:/bin"}


def test_task_id_names_exactly_one_file(tmp_path: Path) -> None:
    one, _ = images.write_samples(tmp_path / "s", count=2)
    done = run("producer", "enqueue", str(tmp_path / "s"), "--task-id", "order-1", home=tmp_path)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line == (
        "error[config.invalid]: --task-id names one task: give exactly one file (got 2)"
    )
    bad = run("producer", "enqueue", str(one), "--task-id", "../x", home=tmp_path)
    [line] = bad.stderr.strip().splitlines()
    assert line.startswith("error[config.invalid]: --task-id '../x' is not a task id")


def test_enqueue_twice_with_one_task_id_gives_one_result(tmp_path: Path) -> None:
    [photo] = images.write_samples(tmp_path / "s", count=1)
    for _ in range(2):
        queued = run("producer", "enqueue", str(photo), "--task-id", "order-7", home=tmp_path)
        assert queued.returncode == 0, queued.stderr
        assert queued.stdout.startswith("queued order-7  ")
    worker = run("consumers", "run", "-g", "thumbs", "--burst", "-c", "1", home=tmp_path)
    assert worker.returncode == 0, worker.stderr
    assert "worker stopped: 1 ok, 0 failed, 0 retried, 1 duplicate(s)" in worker.stderr

    shown = run("producer", "results", "--json", home=tmp_path)
    [result] = [decode_result(line) for line in shown.stdout.splitlines()]
    assert (result.task_id, result.status) == ("order-7", "ok")
    # A third submission with --wait is answered from the completion record, without a worker.
    again = run(
        "producer", "enqueue", str(photo), "--task-id", "order-7", "--wait", "--json",
        "--timeout", "20", home=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert [decode_result(line) for line in again.stdout.splitlines()] == [result]


def test_results_shows_each_task_and_group_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    task = make_task("thumbs")
    first, other_group = make_result(task, "thumbs"), make_result(task, "late")

    async def reply_raw() -> None:
        async with open_transport(url) as transport:
            for result in (first, first, other_group, first):  # raw duplicates on the channel
                await transport.reply("results", result)

    asyncio.run(reply_raw())
    shown = run("producer", "results", "--json", "--broker", url, home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert [decode_result(line) for line in shown.stdout.splitlines()] == [first, other_group]
    assert run("producer", "results", "--broker", url, home=tmp_path).stdout == ""  # all read
    assert (
        "each (task id, group) once" in run("producer", "results", "--help", home=tmp_path).stdout
    )


def test_a_publish_failure_mid_batch_lists_the_confirmed_tasks_and_exits_1(
    tmp_path: Path,
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(150):
        (photos / f"p{i:03d}.jpg").write_bytes(images.jpeg_bytes(64, 48, seed=i))
    db = tmp_path / "broker.db"
    url = f"sqlite:///{db}?busy_timeout=1"
    uploader = subprocess.Popen(
        [sys.executable, "-m", "producer", "enqueue", str(photos), "--json", "--broker", url],
        cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert uploader.stdout is not None
    confirmed = [json.loads(uploader.stdout.readline()) for _ in range(3)]
    # Another process takes the database's write lock (a long transaction, a backup...) and
    # keeps it past the uploader's busy_timeout: the broker is unavailable mid-batch.
    lock = sqlite3.connect(db, timeout=30, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    rest, err = uploader.communicate(timeout=60)
    lock.execute("ROLLBACK")
    lock.close()

    assert uploader.returncode == 1
    lines = [json.loads(line) for line in rest.splitlines()]
    confirmed += lines[:-1]
    summary = lines[-1]
    published = [c["task_id"] for c in confirmed]
    assert 3 <= len(published) < 150
    assert summary["error"]["code"] == "broker.unavailable"
    assert summary["published"] == published
    assert len(summary["not_published"]) == 150 - len(published)
    assert summary["not_published"][0] == f"p{len(published):03d}.jpg"
    [line] = err.strip().splitlines()
    assert line.startswith("error[broker.unavailable]: ")
    assert f"{len(published)} of 150 task(s) were published" in line
    assert (
        run("producer", "status", "--json", "--broker", url, home=tmp_path).stdout.count(
            f'"ready": {len(published)}'
        )
        == 1
    )  # exactly the confirmed tasks are queued

    # Re-running a confirmed file with its task id does not make a second task run or result.
    first = confirmed[0]
    again = run(
        "producer", "enqueue", str(photos / first["file"]), "--task-id", first["task_id"],
        "--broker", url, home=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    worker = run_cli(
        "consumers", "run", "-g", "thumbs", "--burst", "-c", "1", "--broker", url,
        home=tmp_path, timeout=120,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    ok = len(published)
    assert f"worker stopped: {ok} ok, 0 failed, 0 retried, 1 duplicate(s)" in worker.stderr
    shown = run("producer", "results", "--json", "--broker", url, home=tmp_path)
    assert sorted(decode_result(line).task_id for line in shown.stdout.splitlines()) == sorted(
        published
    )


@pytest.mark.parametrize("group", [False, True], ids=["worker", "process-group"])
@pytest.mark.parametrize("after", [0.2, 0.4, 0.6, 0.8, 1.2])
def test_sigterm_while_the_worker_starts_stops_it_with_exit_0(
    tmp_path: Path, after: float, group: bool
) -> None:
    """A service manager may stop a worker that is still importing, connecting or spawning its
    pool - to the worker alone or to its whole group, pool processes included: it takes no
    task and exits 0 instead of dying of the signal (or of a pool process that did)."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "consumers", "run", "-g", "thumbs", "-c", "2"],
        cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    time.sleep(after)
    if group:
        os.killpg(worker.pid, signal.SIGTERM)
    else:
        worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert "worker stopped: 0 ok, 0 failed, 0 retried, 0 duplicate(s)" in err
