"""The fault suite's harness: real worker processes, a producer, and a raw reader of results.

A row is: start ``workers`` worker processes (``python -m consumers run`` with the ledger
pipeline, each the leader of its own process group, as a service manager starts it), publish
the row's tasks (every confirmed publish noted), let a *fault* act on the fleet while it works,
wait until every confirmed task answered (or was dead-lettered), stop the fleet with SIGTERM,
drain the reply channel, and hand everything to :func:`tests.reliability.checker.check`.

A fault is any ``async def fault(run: Run) -> int`` returning how many faults it injected;
it runs beside the row and may use :class:`WorkerFleet` (kill, terminate, respawn) or do
something to the broker itself (stop it, hold its lock, cut the network) - the extension
point for the transport rows (outages, proxies, broker restarts, disk alarms).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from brokers import Transport
from pixfleet.envelope import Result, decode_task
from tests.reliability.ledger import Ledger, PublishLog

REPO = Path(__file__).resolve().parents[2]
LEDGER_PIPELINE = "tests.helpers.pipelines:ledger"
#: Seconds a worker process runs before the harness stops it (see WorkerFleet.stop_all).
START_GRACE = 0.5


@dataclass
class WorkerProc:
    """One ``worker run`` process, leader of its own process group."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]
    stopping: bool = False  # SIGTERM sent by the harness: a drain, not a death
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal_group(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the worker's whole process group (the worker and its pool)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)


@dataclass
class WorkerFleet:
    """Starts, kills, stops and respawns worker processes of one group."""

    root: Path
    broker_url: str
    blobs_url: str
    group: str
    args: tuple[str, ...] = ()
    workers: list[WorkerProc] = field(default_factory=list)

    def start(self, count: int = 1) -> list[WorkerProc]:
        return [self._start_one() for _ in range(count)]

    def _start_one(self) -> WorkerProc:
        log_path = self.root / f"worker-{len(self.workers)}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        env = {**os.environ, "PIXFLEET_HOME": str(self.root), "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-m", "consumers", "run", "--group", self.group]
        command += ["--broker", self.broker_url, "--blobs", self.blobs_url]
        command += ["--pipeline", LEDGER_PIPELINE, "--concurrency", "1", *self.args]
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        worker = WorkerProc(proc, log_path, log)
        self.workers.append(worker)
        return worker

    def alive(self) -> list[WorkerProc]:
        return [w for w in self.workers if w.alive()]

    def kill9(self, worker: WorkerProc) -> None:
        """``kill -9`` of the worker and its pool (as an OOM kill of its container would)."""
        worker.signal_group(signal.SIGKILL)
        worker.proc.wait(timeout=30)

    def terminate(self, worker: WorkerProc) -> None:
        """SIGTERM to the worker's process group (systemd, Kubernetes, Ctrl-C): a drain."""
        worker.stopping = True
        worker.signal_group(signal.SIGTERM)

    def respawn_dead(self, *, replace: bool = True) -> int:
        """Count the workers that died (not stopped by the harness) since the last call and
        start a replacement for each (unless not ``replace``)."""
        dead = [w for w in self.workers if not w.alive() and not w.stopping]
        for worker in dead:
            worker.stopping = True  # counted: not again
            if replace:
                self._start_one()
        return len(dead)

    def stop_all(self, timeout: float = 60) -> dict[int, int]:
        """SIGTERM every live worker's group and wait; exit codes by pid of those stopped.

        A worker gets :data:`START_GRACE` seconds of life first: a SIGTERM that arrives before
        the interpreter ran a line of the worker (tens of ms) kills it by the default action -
        nothing was taken, but the exit code would say -15."""
        live = self.alive()
        for worker in live:
            time.sleep(max(0.0, worker.started + START_GRACE - time.monotonic()))
            self.terminate(worker)
        return {w.pid: w.proc.wait(timeout=timeout) for w in live}

    def close(self) -> None:
        for worker in self.workers:
            if worker.alive():
                worker.signal_group(signal.SIGKILL)
                worker.proc.wait(timeout=30)
            worker.log.close()

    def logs(self) -> str:
        return "\n".join(f"== {w.log_path.name}\n{w.log_path.read_text()}" for w in self.workers)


class RawResults:
    """Every result sent to ``channel``, read as it arrives and acked - duplicates included.

    ``async with RawResults(transport, channel) as raw:`` reads in the background; after the
    block, :meth:`drain` reads whatever is left (``until_empty``)."""

    def __init__(self, transport: Transport, channel: str, *, prefetch: int = 64) -> None:
        self.transport = transport
        self.channel = channel
        self.prefetch = prefetch
        self.results: list[Result] = []
        self.answered: set[str] = set()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RawResults:
        self._reader = asyncio.create_task(self._read(until_empty=False))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def drain(self) -> None:
        await self._read(until_empty=True)

    async def _read(self, *, until_empty: bool) -> None:
        stream = self.transport.replies(
            self.channel, prefetch=self.prefetch, until_empty=until_empty
        )
        async with aclosing(stream) as deliveries:
            async for delivery in deliveries:
                self.results.append(delivery.message)
                self.answered.add(delivery.message.task_id)
                await delivery.ack()


@dataclass
class Run:
    """One row in progress: what a fault may look at and act on."""

    transport: Transport
    fleet: WorkerFleet
    raw: RawResults
    log: PublishLog
    ledger: Ledger
    done: asyncio.Event = field(default_factory=asyncio.Event)
    published: asyncio.Event = field(default_factory=asyncio.Event)  # every publish returned

    @property
    def group(self) -> str:
        return self.fleet.group

    def progress(self) -> float:
        """The share of confirmed tasks answered so far (0..1)."""
        return len(self.raw.answered) / max(1, len(self.log.confirmed))

    async def dead_ids(self) -> set[str]:
        letters = await self.transport.dead_letters(self.group, limit=100_000)
        return {decode_task(letter.body).id for letter in letters}


Fault = Callable[[Run], Coroutine[object, object, int]]


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float, every: float = 0.25
) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every)
    return True


async def wait_until_answered(
    run: Run, *, may_go_unanswered: Iterable[str], timeout: float
) -> bool:
    """Until every confirmed task has a result, or is one of ``may_go_unanswered`` and among
    the dead letters (a task that kills its worker ends there without a result)."""
    silent = set(may_go_unanswered)

    async def answered() -> bool:
        missing = set(run.log.confirmed) - run.raw.answered
        if not missing:
            return True
        return missing <= silent and missing <= await run.dead_ids()

    return await wait_for(answered, timeout=timeout, every=0.5)


async def wait_until_settled(run: Run, *, timeout: float = 20) -> bool:
    """Until the group holds nothing ready or in flight (acks and commits have landed)."""

    async def settled() -> bool:
        stats = await run.transport.stats(run.group)
        return stats.ready <= 0 and not stats.in_flight  # < 0: see checker.Report.stuck

    return await wait_for(settled, timeout=timeout, every=0.5)
