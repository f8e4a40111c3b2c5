"""Real processes: ``python -m consumers run ...`` workers and ``python -m producer ...`` calls."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from brokers import GroupStats, open_transport
from pixfleet.envelope import Result, decode_result
from tests.conftest import BrokerUnderTest, kafka_under_test, missing_broker
from tests.harness import rabbitmq

REPO = Path(__file__).resolve().parents[2]


@dataclass
class WorkerProc:
    proc: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (drain) and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code

    def stopped_ok_count(self) -> int:
        for line in self.log().splitlines():
            if "worker stopped:" in line:
                return int(line.split("worker stopped:")[1].split()[0])
        raise AssertionError(f"worker {self.pid} did not report its stop:\n{self.log()}")


@dataclass
class Fleet:
    home: Path
    broker_url: str
    broker: BrokerUnderTest | None = None
    workers: list[WorkerProc] = field(default_factory=list)

    @property
    def counts_crash_redeliveries(self) -> bool:
        return self.broker is None or self.broker.counts_crash_redeliveries

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PIXFLEET_HOME=str(self.home), PIXFLEET_BROKER=self.broker_url, PYTHONPATH=str(REPO)
        )
        return env

    def worker(self, *args: str, group: str = "thumbs", session: bool = False) -> WorkerProc:
        """Start ``worker run``; with ``session`` in a session (and process group) of its own,
        led by the worker, as a service manager or a container runtime starts it."""
        log_path = self.home / f"worker-{len(self.workers)}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed in WorkerProc.stop
        proc = subprocess.Popen(
            [sys.executable, "-m", "consumers", "run", "--group", group, *args],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=session,
        )
        worker = WorkerProc(proc, log_path, log)
        self.workers.append(worker)
        return worker

    def uploader(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "producer", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def uploader_in_background(self, *args: str) -> subprocess.Popen[str]:
        """Start an uploader command and return at once (``communicate()`` collects it)."""
        return subprocess.Popen(
            [sys.executable, "-m", "producer", *args],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def result_of(self, task_id: str, *, timeout: float = 60) -> list[Result]:
        """Read the default results channel until ``task_id`` has answered; its results."""
        found: list[Result] = []

        def arrived() -> bool:
            found.extend(r for r in self.drain_results() if r.task_id == task_id)
            return bool(found)

        wait_until(arrived, timeout=timeout, what=f"the result of task {task_id}")
        return found

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait(timeout=10)
            worker._log.close()

    def stats(self, group: str = "thumbs") -> GroupStats:
        async def read() -> GroupStats:
            async with open_transport(self.broker_url) as transport:
                return await transport.stats(group)

        return asyncio.run(read())

    def drain_results(self) -> list[Result]:
        async def read() -> list[Result]:
            out = []
            async with open_transport(self.broker_url) as transport:
                async for delivery in transport.replies("results", until_empty=True):
                    out.append(delivery.message)
                    await delivery.ack()
            return out

        return asyncio.run(read())


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def parse_results(stdout: str) -> list[Result]:
    return [decode_result(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(params=["sqlite", "amqp", "kafka"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    home = tmp_path / "home"
    home.mkdir()
    with contextlib.ExitStack() as stack:
        broker = None
        if request.param == "sqlite":
            url = f"sqlite:///{home}/broker.db?lease=2&poll=0.05"
        elif request.param == "amqp":
            session_url = request.getfixturevalue("amqp_session_url")
            base = session_url.rsplit("/", 1)[0] + "/"
            url = stack.enter_context(rabbitmq.private_vhost(base)) + "?reconnect_timeout=60"
        else:
            broker = kafka_under_test(request.getfixturevalue("kafka_session_url"))
            url = broker.url
        f = Fleet(home, url, broker)
        yield f
        f.stop_all()


def held_tasks(directory: Path) -> Callable[[], int]:
    """How many tasks the ``slow`` test pipeline has started (see its ``started`` param)."""
    return lambda: len(list(directory.iterdir()))


@pytest.fixture
def private_rabbit(amqp_session_url: str) -> Iterator[rabbitmq.PrivateRabbit]:
    """A RabbitMQ node of this test's own, for faults that must not hit the shared broker."""
    if not rabbitmq.can_run_private_node():
        missing_broker("a local rabbitmq-server (run as root) for a private fault-test node")
    node = rabbitmq.PrivateRabbit()
    node.start()
    try:
        yield node
    finally:
        node.stop()
