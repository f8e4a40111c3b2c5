"""A worker's membership of the fleet: heartbeats and the control loop, while it runs.

:class:`FleetMember` is an async context manager around :meth:`consumers.worker.Worker.run`:

* it opens the control subscription first (:class:`~consumers.control.ControlLoop`), so a
  worker is listed only once it can be reached;
* then announces a :class:`~pixfleet.fleet.WorkerStatus` every ``heartbeat`` seconds - and at
  once after a control command changed its state - built from the worker's id, counts
  (:class:`~consumers.events.WorkerStats`), in-flight tasks and state;
* on exit it stops both and leaves the roster (a ``kill -9``-ed worker cannot: it shows as
  ``lost`` after three missed heartbeats, then drops out).

Heartbeat failures (the broker is away) are logged once per outage and never end the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from importlib import metadata

from brokers.contract import Fleet
from consumers.control import Controllable, ControlLoop
from pixfleet.errors import BrokerError
from pixfleet.fleet import WorkerStatus

log = logging.getLogger(__name__)

#: Seconds a stopping worker gives its fleet tasks to end, and its leave to be sent.
LEAVE_TIMEOUT = 2.0


def _version() -> str:
    try:
        return metadata.version("pixfleet")
    except metadata.PackageNotFoundError:
        return ""


class FleetMember:
    """Heartbeats and control for ``worker`` through ``fleet`` (see the module docstring)."""

    def __init__(
        self,
        fleet: Fleet,
        worker: Controllable,
        *,
        groups: tuple[str, ...],
        concurrency: int,
        transport: str,
        heartbeat: float,
    ) -> None:
        self._fleet = fleet
        self._worker = worker
        self._groups = groups
        self._concurrency = concurrency
        self._transport = transport
        self._interval = heartbeat
        self._started = datetime.now(UTC)
        self.control = ControlLoop(fleet, worker, groups, concurrency)
        self._tasks: list[asyncio.Task[None]] = []
        self._failing = False

    async def __aenter__(self) -> FleetMember:
        self._tasks = [
            asyncio.create_task(self.control.run(), name="fleet-control"),
            asyncio.create_task(self._beat_forever(), name="fleet-heartbeat"),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop both tasks and leave the roster, each within :data:`LEAVE_TIMEOUT`: a worker
        whose broker is away must still exit promptly (it then drops out of the roster by
        itself). A task that ignores its cancellation (a client library reconnecting) is left
        to the event loop's shutdown."""
        for task in self._tasks:
            task.cancel()
        done, _ = await asyncio.wait(self._tasks, timeout=LEAVE_TIMEOUT)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.warning("fleet task %s failed: %r", task.get_name(), task.exception())
        try:
            async with asyncio.timeout(LEAVE_TIMEOUT):
                await self._fleet.leave(self._worker.info.id)
        except (BrokerError, TimeoutError) as err:
            log.info("could not leave the roster (%r); it drops out by itself", err)

    def status(self) -> WorkerStatus:
        w = self._worker
        return WorkerStatus(
            id=w.info.id,
            host=w.info.host,
            pid=w.info.pid,
            version=_version(),
            transport=self._transport,
            groups=self._groups,
            concurrency=self._concurrency,
            in_flight=w.in_flight,
            ok=w.stats.ok,
            failed=w.stats.failed,
            retried=w.stats.retried,
            state=w.state,
            heartbeat=self._interval,
            started_at=self._started,
            last_seen=datetime.now(UTC),
        )

    async def _beat_forever(self) -> None:
        await self.control.ready.wait()
        changed = self.control.changed
        while True:
            await self._beat()
            changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await changed.wait()
            await self.control.ready.wait()

    async def _beat(self) -> None:
        try:
            await self._fleet.heartbeat(self.status())
        except BrokerError as err:
            if not self._failing:
                log.warning("heartbeat not sent (%s); retrying", err.one_line())
            self._failing = True
        else:
            if self._failing:
                log.info("heartbeats flow again")
            self._failing = False
