"""Faults of the transport rows (issue 9): broker outages, restarts, network cuts and a disk
alarm (a Kafka group that changes, and its commit audit: :mod:`tests.reliability.kafka_group`).

Each ``def name(...) -> Fault`` builds an ``async def fault(run) -> int`` for
:func:`tests.reliability.rows.drive` (as ``fault``, beside the row, or as ``prelude``, on the
idle fleet before anything is published); the int is the faults it injected.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from pixfleet.errors import BrokerBlocked, PixfleetError
from tests.harness.proxy import TcpProxy
from tests.harness.rabbitmq import PrivateRabbit
from tests.helpers import images
from tests.helpers.tasks import make_task, unique
from tests.reliability.harness import REPO, Fault, Run, wait_for

Step = Callable[[], Awaitable[None]]


async def progress(run: Run, share: float) -> bool:
    """Wait until every publish returned and ``share`` of the tasks answered; False if the
    row ended first."""

    async def far_enough() -> bool:
        return run.done.is_set() or (run.published.is_set() and run.progress() >= share)

    await wait_for(far_enough, timeout=300, every=0.1)
    return not run.done.is_set()


async def _consumers(run: Run, count: int, timeout: float) -> bool:
    async def back() -> bool:
        try:
            return (await run.transport.stats(run.group)).consumers >= count
        except PixfleetError:  # the bench's own connection is still coming back
            return False

    return await wait_for(back, timeout=timeout, every=0.5)


# -- an idle fleet through an outage ----------------------------------------------------------


@dataclass
class OutageReport:
    seconds: float = 0.0
    alive_after: int = 0  # workers still running when the broker came back
    back_after: float = 0.0  # seconds from the broker's return to every consumer back


def idle_outage(begin: Step, end: Step, seconds: float, report: OutageReport) -> Fault:
    """Before anything is published: the broker goes away for ``seconds`` (``begin`` ..
    ``end``); every worker must still run, and subscribe again, afterwards."""

    async def fault(run: Run) -> int:
        workers = len(run.fleet.alive())
        began = time.monotonic()
        await begin()
        try:
            await asyncio.sleep(seconds)
            report.alive_after = len(run.fleet.alive())
        finally:
            await end()
        report.seconds = round(time.monotonic() - began, 1)
        back = time.monotonic()
        assert await _consumers(run, workers, timeout=60), "the workers did not subscribe again"
        report.back_after = round(time.monotonic() - back, 1)
        return 1

    return fault


def rabbit_outage(node: PrivateRabbit) -> tuple[Step, Step]:
    """RabbitMQ stops (``stop_app``: connections closed, new ones refused) and comes back."""

    async def begin() -> None:
        await asyncio.to_thread(node.stop_app)

    async def end() -> None:
        await asyncio.to_thread(node.start_app)

    return begin, end


def sqlite_lock(path: Path) -> tuple[Step, Step]:
    """Another process's transaction holds the database's write lock, then lets it go."""
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    async def begin() -> None:
        locker.execute("BEGIN EXCLUSIVE")

    async def end() -> None:
        locker.execute("ROLLBACK")
        locker.close()

    return begin, end


# -- broker restarts and network cuts -----------------------------------------------------------


def restart_rabbit(node: PrivateRabbit, *, at: tuple[float, float] = (0.2, 0.55)) -> Fault:
    """A graceful node restart once ``at[0]`` of the tasks answered, a ``kill -9`` of the node
    and a start once ``at[1]`` did."""

    async def fault(run: Run) -> int:
        restarts = 0
        for share, kill in zip(at, (False, True), strict=True):
            if not await progress(run, share):
                break
            print(f"{'kill -9' if kill else 'graceful'} restart of {node.name}")
            await asyncio.to_thread(node.restart, kill=kill)
            restarts += 1
        return restarts

    return fault


def network_faults(
    proxy: TcpProxy, *, after: float, blackhole: float, flaps: int, every: float
) -> Fault:
    """Once ``after`` of the tasks answered: ``blackhole`` seconds of silence, then ``flaps``
    cycles of connections reset and refused for ``every`` seconds, allowed for ``every``."""

    async def fault(run: Run) -> int:
        if not await progress(run, after):
            return 0
        proxy.blackhole()
        await asyncio.sleep(blackhole)
        proxy.restore()
        await asyncio.sleep(every)
        await proxy.flap(every=every, times=flaps)
        return 1 + flaps

    return fault


# -- a disk alarm ------------------------------------------------------------------------------


@dataclass
class AlarmReport:
    publish_blocked_after: float = -1.0  # seconds until the transport's publish failed
    uploader_error_after: float = -1.0  # seconds from `uploader enqueue`'s start to its error
    uploader_exited_after: float = -1.0  # ... to its exit (closing a blocked connection)
    uploader_error: str = ""  # its error line (the last stderr line)
    alarm_s: float = 0.0  # seconds from raising the alarm to its clearing


def disk_alarm(node: PrivateRabbit, url: str, home: Path, report: AlarmReport) -> Fault:
    """Once every task is published and a third answered, raise the node's disk alarm: a
    publish and ``uploader enqueue`` must fail with ``broker.blocked`` (measured: the error's
    arrival and the uploader's exit), then the alarm is cleared."""

    async def fault(run: Run) -> int:
        if not await progress(run, 0.3):
            return 0
        raised = time.monotonic()
        await asyncio.to_thread(node.disk_alarm, True)
        try:
            started = time.monotonic()
            try:
                # For a group nobody consumes: if it goes out once the alarm is over, it must
                # not become one more task of the row.
                await run.transport.publish(make_task(unique("alarm")))
            except BrokerBlocked:
                report.publish_blocked_after = round(time.monotonic() - started, 2)
            error, exited, line = await asyncio.to_thread(_uploader, url, home)
            report.uploader_error_after, report.uploader_exited_after = error, exited
            report.uploader_error = line
        finally:
            await asyncio.to_thread(node.disk_alarm, False)
            report.alarm_s = round(time.monotonic() - raised, 2)
        return 1

    return fault


def _uploader(url: str, home: Path) -> tuple[float, float, str]:
    """``uploader enqueue`` of one photo (a new process: interpreter, imports, upload, publish):
    seconds until its ``error[...]`` line arrived on stderr and until it exited, and its last
    stderr line."""
    home.mkdir(parents=True, exist_ok=True)
    photo = home / "photo.jpg"
    photo.write_bytes(images.jpeg_bytes())
    env = {"PIXFLEET_HOME": str(home), "PIXFLEET_BROKER": url, "PYTHONPATH": str(REPO)}
    started, error_after, lines = time.monotonic(), -1.0, [""]
    with subprocess.Popen(
        [sys.executable, "-m", "producer", "enqueue", str(photo)], cwd=REPO,
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        watchdog = threading.Timer(60, proc.kill)
        watchdog.start()
        assert proc.stderr is not None
        for line in proc.stderr:
            if error_after < 0 and line.startswith("error["):
                error_after = round(time.monotonic() - started, 2)
            lines.append(line.strip())
        code = proc.wait()
        watchdog.cancel()
    exited_after = round(time.monotonic() - started, 2)
    return error_after, exited_after, lines[-1] or f"exit {code}, no error line"
