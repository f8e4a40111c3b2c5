"""Acceptance of issue 12's fleet part on every transport: real workers, the real CLI.

One scenario per transport (the workers cost seconds to start, so every step reuses them):
two workers are listed with their groups; ``control ping --all`` gets one reply each; a paused
worker takes none of 20 tasks and a resumed one takes tasks again; ``shutdown`` drains a worker
holding a task (exit 0, one result per task); an unknown id is a typed error; a ``kill -9``-ed
worker shows ``lost``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Fleet, fleet, held_tasks, parse_results, wait_until
from tests.helpers import images

__all__ = ["fleet"]  # the fixture, imported from the e2e suite

# One scenario of ~25-65 s per transport (Kafka's rebalances are the slow part): more than the
# suite's default 120 s per test only on a crowded machine.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]

SLOW = ("--pipeline", "tests.helpers.pipelines:slow", "--concurrency", "1", "--heartbeat", "1")


def listed(fleet: Fleet) -> dict[str, dict[str, Any]]:
    done = fleet.uploader("workers", "--json")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {row["id"]: row for row in rows}


def control(fleet: Fleet, *args: str) -> list[dict[str, Any]]:
    done = fleet.uploader("control", *args, "--json", "--timeout", "15")
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def state_of(fleet: Fleet, worker_id: str) -> str | None:
    row = listed(fleet).get(worker_id)
    return None if row is None else str(row["state"])


def small_photos(directory: Path, count: int) -> Path:
    directory.mkdir()
    for i in range(count):
        (directory / f"p{i:02d}.jpg").write_bytes(images.jpeg_bytes(160, 120, seed=i))
    return directory


@pytest.fixture
def uploads() -> Iterator[list[subprocess.Popen[str]]]:
    """Background uploaders of a test, killed at its end if still running (a failed test)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


def enqueue_and_wait(
    fleet: Fleet, uploads: list[subprocess.Popen[str]], photos: Path, *params: str
) -> subprocess.Popen[str]:
    extra = [arg for p in params for arg in ("--param", p)]
    proc = fleet.uploader_in_background(
        "enqueue", str(photos), *extra, "--wait", "--json", "--timeout", "120"
    )
    uploads.append(proc)
    return proc


def test_list_ping_pause_resume_shutdown_and_a_lost_worker(
    fleet: Fleet, uploads: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    started = time.monotonic()
    a, b = fleet.worker(*SLOW), fleet.worker(*SLOW)
    host = socket.gethostname()
    a_id, b_id = f"{host}:{a.pid}", f"{host}:{b.pid}"

    # Two workers are listed, with their groups, within 10 s (of their start, by the time the
    # listing that shows them was asked for: the CLI's own start-up is not the registry's).
    asked: list[float] = []

    def both_listed() -> bool:
        asked.append(time.monotonic() - started)
        rows = listed(fleet)
        return all(rows.get(w, {}).get("groups") == ["thumbs"] for w in (a_id, b_id))

    wait_until(both_listed, timeout=30, what="both workers listed")
    assert asked[-1] <= 10, f"first listed by the call made {asked[-1]:.1f}s after the start"
    row = listed(fleet)[a_id]
    assert (row["host"], row["pid"], row["state"]) == (host, a.pid, "consuming")

    # ping --all: one reply per live worker.
    assert sorted(r["worker"] for r in control(fleet, "ping", "--all")) == sorted([a_id, b_id])

    # An unknown worker id is a clear, typed error.
    unknown = fleet.uploader("control", "ping", "--worker", "nobody:1")
    assert unknown.returncode == 1
    expected = "error[fleet.unknown_worker]: worker 'nobody:1' is not in the roster"
    assert unknown.stderr.startswith(expected), unknown.stderr

    # Paused, a takes none of 20 tasks: b does them all.
    [paused] = control(fleet, "pause", "--worker", a_id)
    assert (paused["worker"], paused["data"]["state"]) == (a_id, "paused")
    wait_until(lambda: state_of(fleet, a_id) == "paused", timeout=10, what="a listed paused")
    twenty = small_photos(tmp_path / "twenty", 20)
    out, err = enqueue_and_wait(fleet, uploads, twenty).communicate(timeout=150)
    results = parse_results(out)
    assert len({r.task_id for r in results}) == 20, err
    assert {r.worker.pid for r in results} == {b.pid}

    # Resumed, a takes tasks again (b paused now, so only a can).
    assert control(fleet, "resume", "--worker", a_id)[0]["ok"]
    control(fleet, "pause", "--worker", b_id)
    wait_until(lambda: state_of(fleet, a_id) == "consuming", timeout=10, what="a consuming")
    three = small_photos(tmp_path / "three", 3)
    marks = tmp_path / "started"
    marks.mkdir()
    waiting = enqueue_and_wait(fleet, uploads, three, "delay=1", f"started={marks}")
    wait_until(lambda: held_tasks(marks)() >= 1, timeout=60, what="a to start a task")

    # shutdown drains a: the task it holds finishes, it exits 0; b (resumed) does the rest.
    [bye] = control(fleet, "shutdown", "--worker", a_id)
    assert bye["ok"]
    assert a.proc.wait(timeout=60) == 0
    control(fleet, "resume", "--worker", b_id)
    out, err = waiting.communicate(timeout=150)
    results = parse_results(out)
    assert sorted(r.status for r in results) == ["ok"] * 3, err
    assert len({r.task_id for r in results}) == 3  # one result per task: no duplicate
    assert a.pid in {r.worker.pid for r in results}
    assert "0 duplicate(s)" in a.log()
    assert a_id not in listed(fleet)  # it left the roster on its way out

    # kill -9: b is shown lost (it missed 3 one-second heartbeats) well within 20 s.
    os.kill(b.pid, signal.SIGKILL)
    b.proc.wait(timeout=10)
    wait_until(lambda: state_of(fleet, b_id) == "lost", timeout=20, what="b shown lost")
    assert listed(fleet)[b_id]["reported_state"] == "consuming"
