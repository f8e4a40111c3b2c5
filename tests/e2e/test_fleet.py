"""End to end with real worker and uploader processes, on every transport."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from pixfleet.envelope import Result
from tests.e2e.conftest import Fleet, held_tasks, parse_results, wait_until
from tests.helpers import images

pytestmark = pytest.mark.e2e


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_two_workers_share_fifty_images_each_processed_once(fleet: Fleet, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(50):
        (photos / f"p{i:02d}.jpg").write_bytes(images.jpeg_bytes(320, 240, seed=i))
    workers = [fleet.worker("--concurrency", "1"), fleet.worker("--concurrency", "1")]
    wait_until(lambda: fleet.stats().consumers == 2, timeout=30, what="two live consumers")

    done = fleet.uploader("enqueue", str(photos), "--wait", "--json", "--timeout", "120")

    assert done.returncode == 0, done.stderr
    results = parse_results(done.stdout)
    assert len(results) == 50
    assert all(r.status == "ok" and len(r.outputs) == 4 for r in results)
    assert len({r.task_id for r in results}) == 50
    by_worker = Counter(r.worker.pid for r in results)
    assert set(by_worker) == {w.pid for w in workers}, "both workers must have done work"
    assert [w.stop() for w in workers] == [0, 0]
    # Each image was processed exactly once: the workers' own counts add up to 50.
    assert sum(w.stopped_ok_count() for w in workers) == 50
    assert {w.pid: w.stopped_ok_count() for w in workers} == dict(by_worker)


def test_kill_9_of_a_worker_holding_tasks_loses_nothing(fleet: Fleet, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    images.write_samples(photos, count=4)
    slow = ("--pipeline", "tests.helpers.pipelines:slow", "--concurrency", "2")
    victim = fleet.worker(*slow)
    wait_until(lambda: fleet.stats().consumers == 1, timeout=30, what="the worker to subscribe")
    started = tmp_path / "started"
    started.mkdir()
    queued = fleet.uploader(
        "enqueue", str(photos), "--param", "delay=3", "--param", f"started={started}"
    )
    assert queued.returncode == 0, queued.stderr

    # concurrency 2: once two tasks have started, the victim holds two unfinished tasks.
    wait_until(lambda: held_tasks(started)() == 2, timeout=60, what="two tasks in flight")
    pool_children = _children(victim.pid)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.proc.wait(timeout=10) == -signal.SIGKILL

    rescuer = fleet.worker(*slow)
    results: list[Result] = []

    def four_results() -> bool:
        results.extend(fleet.drain_results())
        return len(results) >= 4

    wait_until(four_results, timeout=90, what="four results")
    assert rescuer.stop() == 0

    assert sorted(r.status for r in results) == ["ok"] * 4
    assert len({r.task_id for r in results}) == 4
    assert {r.worker.pid for r in results} == {rescuer.pid}
    # The two held tasks were redelivered (Kafka cannot count a crash as an attempt).
    assert sorted(r.attempt for r in results) == (
        [1, 1, 2, 2] if fleet.counts_crash_redeliveries else [1, 1, 1, 1]
    )
    stats = fleet.stats()
    assert (stats.ready, stats.dead) == (0, 0)
    assert stats.in_flight in (0, None)
    # The victim's pool processes noticed their parent died and exited (no orphans).
    assert pool_children
    wait_until(
        lambda: not any(_alive(p) for p in pool_children),
        timeout=10,
        what="orphaned pool processes to exit",
    )


def test_bad_inputs_get_one_line_errors_and_the_worker_goes_on(
    fleet: Fleet, tmp_path: Path
) -> None:
    d = tmp_path / "in"
    d.mkdir()
    (d / "notes.jpg").write_text("this is a text file with a .jpg name\n")
    (d / "empty.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(images.jpeg_bytes(800, 600)[:3000])
    (d / "bomb.png").write_bytes(images.bomb_png())
    (d / "good.jpg").write_bytes(images.jpeg_bytes())
    worker = fleet.worker("--concurrency", "1")

    done = fleet.uploader("enqueue", str(d / "missing.jpg"), str(d), "--wait", "--timeout", "60")

    assert done.returncode == 1
    errors = done.stderr.strip().splitlines()
    errors = [line for line in errors if line.startswith("error[")]
    assert sorted(line.split("]")[0] + "]" for line in errors) == [
        "error[image.too_large]",
        "error[input.empty]",
        "error[input.missing]",
        "error[input.not_image]",
    ]
    for name in ("missing.jpg", "empty.jpg", "notes.jpg", "bomb.png"):
        assert sum(name in line for line in errors) == 1, (name, errors)
    out = done.stdout.strip().splitlines()
    assert len(out) == 2, out
    [bad] = [line for line in out if "truncated.jpg" in line]
    [good] = [line for line in out if "good.jpg" in line]
    assert bad.startswith("error") and "error[image.invalid]" in bad
    assert good.startswith("ok")
    assert "Traceback" not in done.stderr

    # The worker survived and keeps serving.
    again = fleet.uploader("enqueue", str(d / "good.jpg"), "--wait", "--timeout", "60")
    assert again.returncode == 0, again.stderr
    assert worker.proc.poll() is None
    assert worker.stop() == 0
    assert "Traceback" not in worker.log()


def test_wait_times_out_with_one_clear_line_when_no_worker_runs(
    fleet: Fleet, sample_dir: Path
) -> None:
    done = fleet.uploader("enqueue", str(sample_dir), "--wait", "--timeout", "1")
    assert done.returncode == 3  # a timeout, told apart from failed files or results (1)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error[result.timeout]: 3 of 3 result(s) did not arrive within 1 s")
    assert last.count(" (") >= 3, last  # still pending: <id> (<file>) [thumbs]; ... x3
    # The tasks were not lost: they wait for a worker.
    assert fleet.stats().ready == 3


def test_sigterm_lets_the_in_flight_task_finish(fleet: Fleet, sample_dir: Path) -> None:
    worker = fleet.worker("--pipeline", "tests.helpers.pipelines:slow", "--concurrency", "1")
    wait_until(lambda: fleet.stats().consumers == 1, timeout=30, what="the worker to subscribe")
    one = sorted(sample_dir.iterdir())[0]
    started = sample_dir.parent / "started"
    started.mkdir()
    queued = fleet.uploader(
        "enqueue", str(one), "--param", "delay=1.5", "--param", f"started={started}"
    )
    assert queued.returncode == 0, queued.stderr
    wait_until(lambda: held_tasks(started)() > 0, timeout=60, what="the task in flight")

    assert worker.stop() == 0  # SIGTERM: drain, then exit cleanly

    [result] = fleet.drain_results()
    assert (result.status, result.attempt) == ("ok", 1)  # finished, not abandoned
    stats = fleet.stats()
    assert stats.ready == 0
    assert stats.in_flight in (0, None)
    assert "draining" in worker.log()


def test_sigterm_to_the_process_group_drains_without_a_retry(fleet: Fleet, tmp_path: Path) -> None:
    """``kill -TERM -<pgid>`` (systemd, Ctrl-C, a container runtime) reaches the pool children
    too: they must leave the drain to the worker, so in-flight tasks finish on attempt 1."""
    photos = tmp_path / "photos"
    images.write_samples(photos, count=2)
    slow = ("--pipeline", "tests.helpers.pipelines:slow", "--concurrency", "2")
    worker = fleet.worker(*slow, session=True)
    wait_until(lambda: fleet.stats().consumers == 1, timeout=30, what="the worker to subscribe")
    started = tmp_path / "started"
    started.mkdir()
    queued = fleet.uploader(
        "enqueue", str(photos), "--param", "delay=2", "--param", f"started={started}"
    )
    assert queued.returncode == 0, queued.stderr
    wait_until(lambda: held_tasks(started)() == 2, timeout=60, what="two tasks in flight")

    os.killpg(worker.pid, signal.SIGTERM)

    assert worker.proc.wait(timeout=60) == 0
    results = fleet.drain_results()
    assert sorted((r.status, r.attempt) for r in results) == [("ok", 1), ("ok", 1)]
    assert len({r.task_id for r in results}) == 2
    stats = fleet.stats()
    assert (stats.ready, stats.dead) == (0, 0)
    assert stats.in_flight in (0, None)
    assert "Traceback" not in worker.log()


def test_results_nobody_waited_for_are_read_with_uploader_results(
    fleet: Fleet, sample_dir: Path
) -> None:
    assert fleet.uploader("enqueue", str(sample_dir)).returncode == 0
    burst = fleet.worker("--burst", "--concurrency", "1")
    assert burst.proc.wait(timeout=60) == 0  # --burst: exits once the backlog is empty
    assert burst.stopped_ok_count() == 3

    first = fleet.uploader("results", "--json")
    assert first.returncode == 0, first.stderr
    results = parse_results(first.stdout)
    assert sorted(r.status for r in results) == ["ok"] * 3
    assert fleet.uploader("results").stdout == ""  # read means removed


def test_fan_out_reaches_a_group_whose_workers_start_after_the_publish(
    fleet: Fleet, sample_dir: Path
) -> None:
    early = fleet.worker("--concurrency", "1")
    wait_until(lambda: fleet.stats().consumers == 1, timeout=30, what="the thumbs worker")
    waiting = fleet.uploader_in_background(
        "enqueue",
        str(sample_dir),
        "-g",
        "thumbs",
        "-g",
        "late",
        "--wait",
        "--json",
        "--timeout",
        "120",
    )
    # "late" has no worker yet: its three tasks wait in its queue.
    wait_until(lambda: fleet.stats("late").ready == 3, timeout=30, what="tasks for 'late'")
    wait_until(lambda: fleet.stats("thumbs").ready == 0, timeout=60, what="thumbs to finish")
    late = fleet.worker("--concurrency", "1", "--pipeline", "thumbs", group="late")
    out, err = waiting.communicate(timeout=120)

    assert waiting.returncode == 0, err
    results = parse_results(out)
    pairs = Counter((r.task_id, r.group) for r in results)
    assert len(pairs) == 6 and set(pairs.values()) == {1}  # each task once per group
    assert Counter(r.group for r in results) == {"thumbs": 3, "late": 3}
    assert {r.worker.pid for r in results if r.group == "late"} == {late.pid}
    assert {r.worker.pid for r in results if r.group == "thumbs"} == {early.pid}
