"""A row of the fault suite from start to :class:`~tests.reliability.checker.Report`.

:class:`Bench` holds one row's resources (a transport, a blob store, the ledger, a private reply
channel, a fresh group); :func:`drive` runs the row; the faults below are the ones this suite
uses (``kill_every``, ``terminate``, ``respawn``) - write another the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import JsonValue

from brokers import Transport, open_transport
from pixfleet.blobs import store_upload
from pixfleet.blobs.file import FileBlobStore
from pixfleet.envelope import BlobRef, Result, Task
from pixfleet.errors import PixfleetError
from tests.conftest import BrokerUnderTest
from tests.helpers import images
from tests.helpers.tasks import unique
from tests.reliability.checker import Report, check
from tests.reliability.harness import (
    Fault,
    RawResults,
    Run,
    WorkerFleet,
    wait_for,
    wait_until_answered,
    wait_until_settled,
)
from tests.reliability.ledger import Ledger, PublishLog

#: One small output per task: the suite measures the delivery machinery, not Pillow.
THUMBS: dict[str, JsonValue] = {"sizes": [32], "formats": ["jpeg"]}
#: Where rows append their reports as JSON lines (for docs/reliability.md), if set.
REPORT_ENV = "PIXFLEET_FAULT_REPORT"
#: The workers' log level (``info`` logs a line per task: for digging into a failed row).
LOG_LEVEL = os.environ.get("PIXFLEET_FAULT_LOG", "warning")


@dataclass
class Bench:
    """One row's resources; tasks built by :meth:`task` log their executions to the ledger."""

    root: Path
    broker: BrokerUnderTest
    transport: Transport
    store: FileBlobStore
    ledger: Ledger
    group: str
    channel: str

    async def photos(self, count: int) -> list[BlobRef]:
        """``count`` distinct small JPEGs in the store."""
        return [await self.upload(images.jpeg_bytes(96, 72, seed=i)) for i in range(count)]

    async def upload(self, data: bytes) -> BlobRef:
        return await store_upload(self.store, data, "image/jpeg")

    def task(self, ref: BlobRef, task_id: str, **params: str | float) -> Task:
        return Task.new(
            ref,
            groups=(self.group,),
            params={**THUMBS, **self.ledger.params(task_id), **params},
            reply_to=self.channel,
            task_id=task_id,
        )


@contextlib.asynccontextmanager
async def open_bench(broker: BrokerUnderTest, root: Path) -> AsyncIterator[Bench]:
    """A fresh group, blob store, ledger and private reply channel on ``broker``, under
    ``root``."""
    async with open_transport(broker.url) as transport:
        channel = await transport.open_reply_channel()
        try:
            yield Bench(
                root=root,
                broker=broker,
                transport=transport,
                store=FileBlobStore(root / "blobs"),
                ledger=Ledger(root / "ledger"),
                group=unique("rel"),
                channel=channel,
            )
        finally:
            with contextlib.suppress(PixfleetError):
                await transport.close_reply_channel(channel)


@dataclass(frozen=True)
class Driven:
    """A finished row: its report, the exit codes (by pid) of the workers stopped at the end
    (each must have drained and exited 0) and every raw result."""

    report: Report
    exit_codes: dict[int, int]
    results: list[Result]


async def publish_all(
    queue: Transport, log: PublishLog, tasks: Iterable[Task], *, parallel: int = 8
) -> None:
    """Publish every task, at most ``parallel`` at a time, noting each outcome in ``log``."""
    slots = asyncio.Semaphore(parallel)

    async def one(task: Task) -> None:
        async with slots:
            await log.publish(queue, task)

    await asyncio.gather(*(one(t) for t in tasks))


async def drive(
    bench: Bench,
    *,
    row: str,
    tasks: Sequence[Task],
    workers: int = 3,
    fault: Fault | None = None,
    prelude: Fault | None = None,
    worker_url: str | None = None,
    reader_prefetch: int = 64,
    expected_runs: Mapping[str, int] | None = None,
    expected_dead: Iterable[str] = (),
    timeout: float = 150.0,
) -> Driven:
    """Run a row (see :mod:`tests.reliability.harness`). ``prelude`` acts on the idle fleet
    before anything is published (an outage it must ride out); ``worker_url`` is where the
    workers connect (a proxy), if not where the bench does; ``reader_prefetch`` bounds the
    raw results a broker restart can hand the reader twice (those it had not acked yet)."""
    limit = str(bench.broker.delivery_limit)
    fleet = WorkerFleet(
        bench.root, worker_url or bench.broker.url, bench.store.url, bench.group,
        args=("--delivery-limit", limit, "--retry-backoff", "0.1", "--log-level", LOG_LEVEL),
    )  # fmt: skip
    log, began, dead = PublishLog(), time.monotonic(), set(expected_dead)
    try:
        fleet.start(workers)
        await until_consumers(bench, workers)
        async with RawResults(bench.transport, bench.channel, prefetch=reader_prefetch) as raw:
            run = Run(bench.transport, fleet, raw, log, bench.ledger)
            injected = await prelude(run) if prelude else 0
            faults = asyncio.ensure_future(fault(run)) if fault else None
            await publish_all(bench.transport, log, tasks)
            run.published.set()
            await wait_until_answered(run, may_go_unanswered=dead, timeout=timeout)
            run.done.set()
            injected += await faults if faults else 0
            await wait_until_settled(run)
        codes = await asyncio.to_thread(fleet.stop_all)  # rows may run side by side
        await raw.drain()
        stats = await bench.transport.stats(bench.group)
        dead_ids = await run.dead_ids() if stats.dead else set()
    finally:
        fleet.close()
    report = check(
        row=row, transport=bench.broker.kind, sent=log.sent, confirmed=log.confirmed,
        results=raw.results, dead_ids=dead_ids, runs=bench.ledger.runs(), stats=stats,
        expected_runs=expected_runs, expected_dead=len(dead), faults=injected,
        runtime_s=time.monotonic() - began,
    )  # fmt: skip
    _publish_report(report)
    with open(bench.root / "results.jsonl", "w") as out:  # for digging into a failed row
        out.writelines(r.model_dump_json() + "\n" for r in raw.results)
    return Driven(report, codes, raw.results)


async def until_consumers(bench: Bench, count: int, timeout: float = 90) -> None:
    async def subscribed() -> bool:
        return (await bench.transport.stats(bench.group)).consumers >= count

    assert await wait_for(subscribed, timeout=timeout), f"{count} workers did not subscribe"


def _publish_report(report: Report) -> None:
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(report.as_dict()) + "\n")
    print(f"\n{report.row} [{report.transport}]: {report.as_dict()}")  # shown with pytest -s


async def on_every_transport(
    benches: Mapping[str, Bench], row: Callable[[Bench], Awaitable[None]]
) -> None:
    """Run ``row`` (which drives and asserts one row) on every bench at once - each on its own
    broker, group and fleet, so they share nothing but the CPU. Every row finishes before the
    failures (each noted with its transport) are raised together."""
    kinds = list(benches)
    outcomes = await asyncio.gather(*(row(benches[k]) for k in kinds), return_exceptions=True)
    failed: dict[str, BaseException] = {}
    for kind, outcome in zip(kinds, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            outcome.add_note(f"transport: {kind}")
            failed[kind] = outcome
    if failed:
        raise BaseExceptionGroup(f"the row failed on {', '.join(failed)}", list(failed.values()))


# -- faults ------------------------------------------------------------------------------------


async def _pause(run: Run, seconds: float) -> bool:
    """Sleep ``seconds``; True if the row finished meanwhile."""
    try:
        await asyncio.wait_for(run.done.wait(), seconds)
    except TimeoutError:
        return False
    return True


def kill_every(interval: float, times: int, *, seed: int = 9) -> Fault:
    """``kill -9`` a random worker (and its pool) every ``interval`` s (+-30 %), ``times``
    times, starting a replacement right after each kill."""

    async def fault(run: Run) -> int:
        rng, kills = random.Random(seed), 0
        while kills < times and not await _pause(run, interval * rng.uniform(0.7, 1.3)):
            live = run.fleet.alive()
            if live:
                victim = rng.choice(live)
                print(f"kill -9 {victim.pid} at {time.time():.3f}")  # shown with pytest -s
                run.fleet.kill9(victim)
                run.fleet.start(1)
                kills += 1
        return kills

    return fault


def terminate(count: int, *, after: float, codes: list[int]) -> Fault:
    """Once ``after`` of the tasks answered, SIGTERM the process groups of ``count`` workers
    and collect their exit codes in ``codes`` (each must drain and exit 0)."""

    async def fault(run: Run) -> int:
        async def far_enough() -> bool:
            return run.progress() >= after or run.done.is_set()

        await wait_for(far_enough, timeout=300, every=0.1)
        victims = run.fleet.alive()[:count]
        for victim in victims:
            run.fleet.terminate(victim)
        for victim in victims:
            codes.append(await asyncio.to_thread(victim.proc.wait, 120))
        return len(victims)

    return fault


def respawn() -> Fault:
    """Replace workers that die (a task that kills its worker); returns how many died."""

    async def fault(run: Run) -> int:
        died = 0
        while not await _pause(run, 0.2):
            died += run.fleet.respawn_dead()
        return died + run.fleet.respawn_dead(replace=False)  # the row is over: count only

    return fault
