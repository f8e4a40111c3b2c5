"""``worker run --metrics-port``: Prometheus counters move with real tasks; /healthz follows the
worker's state (a real worker process on the embedded transport, scraped over a real socket)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.helpers import images
from tests.helpers.cli import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _ok_count(body: str) -> float:
    for line in body.splitlines():
        if line.startswith('pixfleet_worker_tasks_total{group="thumbs",outcome="ok"}'):
            return float(line.split()[-1])
    return 0.0


def test_metrics_count_tasks_and_healthz_follows_the_worker(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "PIXFLEET_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(10):
        (photos / f"p{i}.jpg").write_bytes(images.jpeg_bytes(64, 48, seed=i))
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "consumers",
            "run",
            "-g",
            "thumbs",
            "-c",
            "1",
            "--metrics-port",
            str(port),
        ],
        env=env,
        stderr=log,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(lambda: _get(f"{base}/healthz") == (200, "consuming\n"), 30, "healthy")
        queued = subprocess.run(
            [sys.executable, "-m", "producer", "enqueue", str(photos), "--wait", "--timeout", "60"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert queued.returncode == 0, queued.stderr
        _wait_for(lambda: _ok_count(_get(f"{base}/metrics")[1]) == 10, 10, "10 ok tasks")
        status, body = _get(f"{base}/metrics")
        assert status == 200 and 'pixfleet_worker_state{state="consuming"} 1.0' in body
        assert _get(f"{base}/nope")[0] == 404
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
        log.close()
        assert code == 0, (tmp_path / "worker.log").read_text()[-2000:]
