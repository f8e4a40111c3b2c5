"""``uploader status`` (issue 12): every column on every transport - in-flight from the broker
where it can tell, else from the workers' heartbeats; Kafka's lag apart from its ready tasks;
``--watch`` redraws until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import pytest

from brokers import Transport, open_transport
from brokers.contract import DeadLetter, GroupStats
from producer.status import GroupRow, look
from tests.conftest import BrokerUnderTest
from tests.helpers import images
from tests.helpers.cli import REPO
from tests.helpers.tasks import make_task, unique


@dataclass(frozen=True)
class Beat:
    """One worker's last heartbeat, as the fleet roster returns it."""

    groups: tuple[str, ...]
    in_flight: int
    ok: int
    failed: int = 0
    heartbeat: float = 5.0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(seconds=10))
    last_seen: datetime = field(default_factory=lambda: datetime.now(UTC))


class WithRoster:
    """A real transport's Inspector plus a roster of heartbeats (the fleet role's read side)."""

    def __init__(self, transport: Transport, beats: list[Beat]) -> None:
        self.transport, self.beats = transport, beats

    async def stats(self, group: str) -> GroupStats:
        return await self.transport.stats(group)

    async def groups(self) -> tuple[str, ...]:
        return await self.transport.groups()

    async def dead_letters(self, group: str, *, limit: int = 100) -> list[DeadLetter]:
        return await self.transport.dead_letters(group, limit=limit)

    async def roster(self) -> list[Beat]:
        return self.beats


def _read_until(stream: IO[str], done: Callable[[str], bool], timeout: float) -> str:
    """What ``stream`` printed until ``done`` says enough (TimeoutError after ``timeout``)."""
    text = ""
    deadline = time.monotonic() + timeout
    while not done(text):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([stream], [], [], left)[0]:
            raise TimeoutError(text)
        chunk = os.read(stream.fileno(), 65536).decode(errors="replace")
        if not chunk:
            raise TimeoutError(text)
        text += chunk
    return text


def _row(rows: list[GroupRow], group: str) -> GroupRow:
    [row] = [r for r in rows if r.group == group]
    return row


async def test_every_column_on_every_transport(broker: BrokerUnderTest) -> None:
    group, other = unique(), unique()
    kafka = broker.kind == "kafka"
    async with open_transport(broker.url) as transport:
        for _ in range(3):
            await transport.publish(make_task(group))
        async with aclosing(transport.consume(group, prefetch=1)) as deliveries:
            async with asyncio.timeout(20):
                held = await anext(deliveries)  # one in flight, two ready
            plain = _row((await look(transport, kafka=kafka)).rows, group)
            lost = Beat((group,), in_flight=9, ok=1, last_seen=datetime.now(UTC) - timedelta(60))
            beats = [Beat((group,), in_flight=1, ok=30), Beat((other,), in_flight=5, ok=7), lost]
            first = await look(WithRoster(transport, beats), kafka=kafka)
            beats[0] = Beat((group,), in_flight=1, ok=50)
            second = await look(WithRoster(transport, beats), kafka=kafka, before=first)
            await held.ack()
    # Without heartbeats of the group's workers (the holder here is no pixfleet worker) only
    # the broker speaks: SQLite counts its leases, the others cannot.
    assert plain.in_flight == (1 if broker.kind == "sqlite" else None)
    assert plain.rate is None and plain.dead == 0 and plain.consumers == 1
    assert plain.lag == (3 if kafka else None)
    # With them nothing is blank: in-flight from the group's live workers where the broker
    # cannot tell (the lost worker and the other group's do not count), rate from their counters.
    row = _row(first.rows, group)
    assert (row.ready, row.in_flight, row.lag) == (2, 1, 3 if kafka else None)
    assert row.rate is not None and 2.5 <= row.rate <= 3.1  # 30 tasks in ~10 s since start
    rate = _row(second.rows, group).rate
    assert rate is not None and rate > 20  # 20 more between two looks a moment apart


def test_watch_redraws_until_interrupted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    group = unique()

    async def publish() -> None:
        async with open_transport(url) as transport:
            await transport.publish(make_task(group))

    asyncio.run(publish())
    env = {**os.environ, "PYTHONPATH": str(REPO), "PIXFLEET_HOME": str(tmp_path)}
    # A terminal as far as rich is concerned, so each redraw is written as it happens.
    tty = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "120"}
    watching = subprocess.Popen(
        [sys.executable, "-m", "producer", "status", "--watch", "--interval", "0.2"],
        env={**env, **tty, "PIXFLEET_BROKER": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watching.stdout is not None
    shown = ""
    with contextlib.suppress(TimeoutError):
        shown = _read_until(watching.stdout, lambda text: text.count(group) >= 2, 20)
    watching.send_signal(signal.SIGINT)  # after two redraws
    out, err = watching.communicate(timeout=10)
    out = shown + out
    assert watching.returncode == 0, err
    assert "in-flight" in out and group in out, out
    done = subprocess.run(
        [sys.executable, "-m", "producer", "status", "--json", "--broker", url],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    [line] = [json.loads(line) for line in done.stdout.splitlines()]
    assert line | {"rate": None} == {
        "group": group, "ready": 1, "in_flight": 0, "dead": 0, "consumers": 0, "rate": None,
        "lag": None,
    }  # fmt: skip


def test_in_flight_comes_from_the_workers_heartbeats(
    broker: BrokerUnderTest, tmp_path: Path
) -> None:
    """A real worker process holding a slow task: ``uploader status --json`` shows it in flight
    where the broker cannot count it (RabbitMQ, Kafka), from the worker's heartbeats."""
    if broker.kind == "sqlite":
        pytest.skip("SQLite counts its leases itself (test_every_column_on_every_transport)")
    group, photo = unique("slow"), tmp_path / "photo.jpg"
    photo.write_bytes(images.jpeg_bytes(64, 48))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PIXFLEET_HOME": str(tmp_path / "home")}
    env["PIXFLEET_BROKER"] = broker.url
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "consumers", "run", "-g", group, "-c", "1"),
            *("--pipeline", "tests.helpers.pipelines:slow", "--heartbeat", "0.5"),
        ],
        cwd=REPO,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        queued = subprocess.run(
            [sys.executable, "-m", "producer", "enqueue", str(photo), "-g", group, "-p", "delay=6"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert queued.returncode == 0, queued.stderr
        seen = _poll_status(env, group, lambda row: row["in_flight"] == 1, 20)
        assert seen["in_flight"] == 1 and seen["consumers"] != 0, seen
        assert seen["rate"] is not None  # from the heartbeats' counters
    finally:
        worker.kill()  # the slow task goes back to the broker; nothing else uses this group
        worker.wait(timeout=60)


def _poll_status(
    env: dict[str, str], group: str, done: Callable[[dict[str, object]], bool], timeout: float
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    row: dict[str, object] = {}
    while time.monotonic() < deadline:
        out = subprocess.run(
            [sys.executable, "-m", "producer", "status", "--json"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        rows = [json.loads(line) for line in out.splitlines()]
        row = next((r for r in rows if r["group"] == group), {})
        if row and done(row):
            return row
        time.sleep(0.3)
    raise AssertionError(f"status never showed it: {row}")
