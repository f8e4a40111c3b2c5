"""The worker's side of the control plane: the pause :class:`Gate` and :class:`ControlLoop`.

The loop reads the control requests for this worker (by id, by group, or for all) from the
transport's :class:`~brokers.contract.Fleet` role and answers each on the requester's inbox:

* ``ping``     - ``{"state": ...}``;
* ``stats``    - the worker's counts, in-flight tasks, state and concurrency;
* ``pause``    - stop taking new tasks: the worker leaves its subscription (deliveries it was
  not yet handed go back to the broker, for the other workers of the group) and in-flight tasks
  finish; answered once the subscription is closed, so no task reaches it afterwards;
* ``resume``   - subscribe again;
* ``shutdown`` - the graceful drain of SIGTERM (exit 0), answered before it starts.

A subscription that fails while the broker is unavailable is opened again with
:data:`brokers.policy.RECONNECT` backoff; the loop never ends the worker.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from typing import Protocol

from pydantic import JsonValue

from brokers.contract import Fleet
from brokers.policy import RECONNECT
from consumers.events import WorkerState, WorkerStats
from pixfleet.envelope import ErrorInfo, WorkerInfo
from pixfleet.errors import BrokerError, ControlFailed
from pixfleet.fleet import ControlReply, ControlRequest

log = logging.getLogger(__name__)

#: Seconds a ``pause`` waits for the worker to leave its subscription before it answers.
PAUSE_WAIT = 10.0


class Gate:
    """Whether a worker takes new tasks: open, paused until :meth:`resume`, or shut for good
    (:meth:`stop`). :attr:`halted` is set while the worker should not be subscribed."""

    def __init__(self) -> None:
        self.halted = asyncio.Event()
        self.stopping = False
        self.pausing = False
        self._resumed = asyncio.Event()
        self._sitting = asyncio.Event()

    def stop(self) -> None:
        self.stopping = True
        self.halted.set()
        self._resumed.set()

    def pause(self) -> None:
        if not self.stopping:
            self.pausing = True
            self._resumed.clear()
            self.halted.set()

    def resume(self) -> None:
        if self.pausing and not self.stopping:
            self.pausing = False
            self.halted.clear()
            self._resumed.set()

    async def sit_out(self) -> None:
        """Called by the worker once it left its subscription: wait for a resume or a stop."""
        self._sitting.set()
        try:
            await self._resumed.wait()
        finally:
            self._sitting.clear()

    async def paused(self) -> None:
        """Wait until the worker sits out a pause (its subscription is closed)."""
        await self._sitting.wait()


class Controllable(Protocol):
    """What the control loop needs of a worker (:class:`consumers.worker.Worker`)."""

    info: WorkerInfo
    stats: WorkerStats
    gate: Gate

    @property
    def state(self) -> WorkerState: ...

    @property
    def in_flight(self) -> int: ...

    def request_stop(self) -> None: ...


class ControlLoop:
    """Answers the control requests of one worker until cancelled; :attr:`ready` is set once
    its subscription is in place (and cleared while it is being opened again)."""

    def __init__(
        self, fleet: Fleet, worker: Controllable, groups: tuple[str, ...], concurrency: int
    ) -> None:
        self._fleet = fleet
        self._worker = worker
        self._groups = groups
        self._concurrency = concurrency
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()  # a command changed the state: beat now

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                commands = await self._fleet.open_commands(self._worker.info.id, self._groups)
                async with aclosing(commands):
                    self.ready.set()
                    failures = 0
                    async for request in commands:
                        await self._answer_safely(request)
                return
            except BrokerError as err:
                self.ready.clear()
                failures += 1
                wait = RECONNECT.delay(failures)
                log.warning("control requests unavailable (%s); again in %.1fs", err.code, wait)
                await asyncio.sleep(wait)

    async def _answer_safely(self, request: ControlRequest) -> None:
        """Answer ``request``; a failure is logged with its traceback and the loop goes on
        (a control request never stops the worker, as a delivery never does)."""
        try:
            await self._answer(request)
        except Exception:
            log.exception("control %s (request %s) failed", request.command, request.id)

    async def _answer(self, request: ControlRequest) -> None:
        log.info("control %s (request %s)", request.command, request.id)
        try:
            data = await self._do(request)
            reply = ControlReply(
                request_id=request.id,
                worker=self._worker.info.id,
                command=request.command,
                data=data,
            )
        except TimeoutError:
            message = f"the worker did not leave its subscription within {PAUSE_WAIT:g}s"
            error = ErrorInfo(code=ControlFailed.code, message=message)
            reply = ControlReply(
                request_id=request.id,
                worker=self._worker.info.id,
                command=request.command,
                ok=False,
                error=error,
            )
        try:
            await self._fleet.reply_control(reply, request.reply_to)
        except BrokerError as exc:
            log.warning("control reply to %s not sent: %s", request.id, exc.one_line())

    async def _do(self, request: ControlRequest) -> dict[str, JsonValue]:
        worker, command = self._worker, request.command
        if command == "pause":
            worker.gate.pause()
            if not worker.gate.stopping:
                async with asyncio.timeout(PAUSE_WAIT):
                    await worker.gate.paused()
        elif command == "resume":
            worker.gate.resume()
        elif command == "shutdown":
            worker.request_stop()
        if command in ("pause", "resume", "shutdown"):
            self.changed.set()
            await asyncio.sleep(0)  # let the worker's loop see it
        data: dict[str, JsonValue] = {"state": worker.state, "in_flight": worker.in_flight}
        if command == "stats":
            s = worker.stats
            data |= {"ok": s.ok, "failed": s.failed, "retried": s.retried}
            data |= {"duplicates": s.duplicates, "concurrency": self._concurrency}
        return data
