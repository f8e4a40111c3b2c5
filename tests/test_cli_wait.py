"""``uploader`` as a user lives with it (issue 14): waiting with no worker, typo groups, results
that name their files, looking one task up, fetching its outputs, and ``| head -1``.

Real CLI processes on the embedded SQLite broker, with a real worker where results are needed.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from brokers import open_transport
from pixfleet.envelope import Task, decode_result
from tests.conftest import BrokerUnderTest
from tests.helpers import images
from tests.helpers.cli import REPO, run_cli
from tests.helpers.tasks import make_result, make_task

NO_WORKER = "no worker is consuming group 'thumbs' — start one with: worker run --group thumbs"


def _env(home: Path) -> dict[str, str]:
    return {"PIXFLEET_HOME": str(home), "PATH": "/usr/bin:/bin"}


def test_wait_without_a_worker_warns_within_10_s_and_a_timeout_lists_the_pending(
    tmp_path: Path,
) -> None:
    [photo] = images.write_samples(tmp_path / "s", count=1)
    started = time.monotonic()
    waiter = subprocess.Popen(
        [sys.executable, "-m", "producer", "enqueue", str(photo), "--wait", "--json",
         "--timeout", "30", "--task-id", "order-1"],
        cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert waiter.stderr is not None
    seen = []
    try:
        while time.monotonic() - started < 10:
            line = waiter.stderr.readline()
            seen.append(line)
            if line.strip() == NO_WORKER or not line:
                break
    finally:
        waiter.terminate()
        waiter.communicate(timeout=30)
    assert seen[-1].strip() == NO_WORKER, seen
    assert time.monotonic() - started < 10
    assert "published 1 task(s)\n" in seen

    timed_out = run_cli(
        "producer", "enqueue", str(photo), "--wait", "--json", "--timeout", "1",
        "--task-id", "order-2", home=tmp_path,
    )  # fmt: skip
    assert timed_out.returncode == 3
    summary = json.loads(timed_out.stdout)
    assert summary["error"]["code"] == "result.timeout"
    assert summary["pending"] == [{"task_id": "order-2", "file": photo.name, "groups": ["thumbs"]}]
    [line] = [x for x in timed_out.stderr.splitlines() if x.startswith("error[")]
    assert line.startswith("error[result.timeout]: 1 of 1 result(s) did not arrive within 1 s")
    assert f"; still pending: order-2 ({photo.name}) [thumbs]" in line


def test_a_group_never_consumed_is_flagged_at_enqueue_but_still_queued(tmp_path: Path) -> None:
    [photo] = images.write_samples(tmp_path / "s", count=1)
    first = run_cli("producer", "enqueue", str(photo), home=tmp_path)  # a fresh broker: no warning
    assert first.returncode == 0 and first.stderr == "", first.stderr
    typo = run_cli("producer", "enqueue", str(photo), "-g", "thumbz", home=tmp_path)
    assert typo.returncode == 0, typo.stderr
    assert typo.stdout.startswith("queued ")
    assert typo.stderr.splitlines() == [
        "warning: no worker has ever consumed group 'thumbz' (known groups: thumbs) — its "
        "tasks wait for: worker run --group thumbz"
    ]
    status = run_cli("producer", "status", "--json", home=tmp_path)
    assert {json.loads(x)["group"]: json.loads(x)["ready"] for x in status.stdout.splitlines()} == {
        "thumbs": 1,
        "thumbz": 1,
    }


def test_results_name_their_files_and_get_and_fetch_find_a_task(tmp_path: Path) -> None:
    photos = images.write_samples(tmp_path / "s", count=2)
    worker = subprocess.Popen(
        [sys.executable, "-m", "consumers", "run", "-g", "thumbs", "-c", "1"],
        cwd=REPO, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        waited = run_cli(
            "producer", "enqueue", str(tmp_path / "s"), "--wait", "--json", "--timeout", "60",
            home=tmp_path,
        )  # fmt: skip
    finally:
        worker.terminate()
        worker.communicate(timeout=30)
    assert waited.returncode == 0, waited.stderr
    results = [decode_result(line) for line in waited.stdout.splitlines()]
    assert sorted(r.filename for r in results) == sorted(p.name for p in photos)
    assert "published 2 task(s)" in waited.stderr
    result = results[0]

    shown = run_cli("producer", "get", result.task_id, home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:3] == [
        f"task     {result.task_id}",
        f"file     {result.filename}",
        "state    done",
    ]
    assert any(x.strip().startswith("256.jpg") and "file://" in x for x in lines)
    as_json = json.loads(run_cli("producer", "get", result.task_id, "--json", home=tmp_path).stdout)
    assert (as_json["state"], as_json["pending"]) == ("done", [])
    assert as_json["results"][0]["filename"] == result.filename
    assert {o["name"] for o in as_json["outputs"]} == {o.name for o in result.outputs}

    fetched = run_cli(
        "producer", "fetch", result.task_id, "--to", str(tmp_path / "out"), home=tmp_path
    )
    assert fetched.returncode == 0, fetched.stderr
    paths = [Path(p) for p in fetched.stdout.splitlines()]
    assert sorted(p.name for p in paths) == sorted(o.name for o in result.outputs)
    for output in result.outputs:
        copied = tmp_path / "out" / "thumbs" / output.name
        assert copied.stat().st_size == output.bytes
    unknown = run_cli("producer", "get", "no-such-task", home=tmp_path)
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error[task.not_found]: no task 'no-such-task'")


def test_results_piped_into_head_exits_0_without_a_traceback(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"

    async def reply_many() -> None:
        async with open_transport(url) as transport:
            for _ in range(200):
                task = make_task("thumbs")
                await transport.reply("results", make_result(task, "thumbs"))

    asyncio.run(reply_many())
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {sys.executable} -m producer results --broker '{url}'"
         " | head -1"],
        cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "error[" not in done.stderr, done.stderr
    assert len(done.stdout.splitlines()) == 1
    assert done.stdout.startswith("ok    thumbs ")
    left = run_cli("producer", "results", "--json", "--broker", url, home=tmp_path)
    assert 150 < len(left.stdout.splitlines()) < 200  # what was not shown was not taken


def test_results_follow_prints_results_as_they_come(
    broker: BrokerUnderTest, tmp_path: Path
) -> None:
    follower = subprocess.Popen(
        [sys.executable, "-m", "producer", "results", "--follow", "--json", "--broker", broker.url],
        cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    tasks = [make_task("thumbs") for _ in range(2)]

    async def reply(task: Task) -> None:
        async with open_transport(broker.url) as transport:
            await transport.reply("results", make_result(task, "thumbs"))

    try:
        assert follower.stdout is not None
        asyncio.run(reply(tasks[0]))  # before or while the follower subscribes
        first = _line_within(follower.stdout, 30)
        asyncio.run(reply(tasks[1]))  # while it follows
        second = _line_within(follower.stdout, 30)
    finally:
        follower.terminate()
        _, err = follower.communicate(timeout=30)
    assert [decode_result(first).task_id, decode_result(second).task_id] == [t.id for t in tasks], (
        err
    )


def _line_within(stream: IO[str], seconds: float) -> str:
    ready, _, _ = select.select([stream], [], [], seconds)
    assert ready, f"no line within {seconds} s"
    return stream.readline()


def test_on_a_terminal_the_display_is_live_and_no_color_means_no_colour(tmp_path: Path) -> None:
    [photo] = images.write_samples(tmp_path / "s", count=1)
    main, terminal = pty.openpty()
    waiter = subprocess.Popen(
        [sys.executable, "-m", "producer", "enqueue", str(photo), "--wait", "--timeout", "1"],
        cwd=REPO, env={**_env(tmp_path), "NO_COLOR": "1", "TERM": "xterm"},
        stdout=terminal, stderr=terminal,
    )  # fmt: skip
    os.close(terminal)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(main)
        waiter.wait(timeout=30)
    shown = b"".join(chunks).decode(errors="replace")
    assert waiter.returncode == 3
    assert re.search(r"publish .*1/1", shown) and re.search(r"results .*0/1", shown), shown
    assert "error[result.timeout]" in shown
    assert re.findall(r"\x1b\[[0-9;]*m", shown) == []  # cursor moves, but no colour
