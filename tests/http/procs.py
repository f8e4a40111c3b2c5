"""Real processes for the ingress e2e and browser tests: ``python -m producer serve`` instances
and a ``python -m consumers run`` worker, sharing one SQLite broker and one file blob store."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from brokers import GroupStats
from tests.e2e.conftest import REPO, Fleet, WorkerProc

_LISTENING = re.compile(r"Uvicorn running on http://[^:]+:(\d+)")


@dataclass
class IngressProc:
    proc: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes]
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _LISTENING.search(self.log())
            if found:
                self.port = int(found.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"ingress did not start:\n{self.log()}")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM (drain) and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


@dataclass
class IngressFleet:
    home: Path
    fleet: Fleet
    instances: list[IngressProc] = field(default_factory=list)

    @property
    def a(self) -> IngressProc:
        return self.instances[0]

    @property
    def b(self) -> IngressProc:
        return self.instances[1]

    @property
    def worker(self) -> WorkerProc:
        return self.fleet.workers[0]

    def stats(self, group: str = "thumbs") -> GroupStats:
        return self.fleet.stats(group)

    def serve(self, *args: str) -> IngressProc:
        """Start one more instance on a free port; returns once it listens."""
        log_path = self.home / f"ingress-{len(self.instances)}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed by IngressProc.terminate/kill
        proc = subprocess.Popen(
            [sys.executable, "-m", "producer", "serve", "--port", "0", *args],
            cwd=REPO,
            env=self.fleet.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        instance = IngressProc(proc, log_path, log)
        self.instances.append(instance)
        instance.wait_listening()
        return instance


def wait_json(client: httpx.Client, url: str, *, until: str, timeout: float = 30) -> dict[str, Any]:
    """GET ``url`` until its ``state`` is ``until``; the last body."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(url).json()
        if body.get("state") == until:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{url} did not reach {until!r} within {timeout}s: {body}")


@contextmanager
def start_fleet(home: Path) -> Iterator[IngressFleet]:
    fleet = Fleet(home, f"sqlite:///{home}/broker.db?poll=0.05")
    env_home = os.environ.get("PIXFLEET_HOME")
    assert env_home is None or Path(env_home) != home
    ingress = IngressFleet(home, fleet)
    try:
        fleet.worker("--concurrency", "1")
        ingress.serve()
        ingress.serve("--max-file-bytes", "200000")
        yield ingress
    finally:
        for instance in ingress.instances:
            instance.kill()
        fleet.stop_all()
