"""The worker's state: its lifecycle phase, or ``reconnecting`` while the broker is unavailable.

Two things can find the broker gone: the subscription (it raised a retryable broker error, or
it shows ``reconnecting`` in its ``state`` while it retries by itself, as every transport's does)
and the handlers (a reply, ack or nack failed). Each is a *source* of trouble; the worker is
``reconnecting`` while any source is in trouble and back in its phase (``consuming`` or
``draining``) once every source has worked again. Every change is logged as one line and
reported to the listener - never one line per failed delivery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from consumers.events import WorkerState
from pixfleet.errors import BrokerUnavailable, PixfleetError

log = logging.getLogger(__name__)

_ACTIVE: tuple[WorkerState, ...] = ("consuming", "draining")


@runtime_checkable
class _Stated(Protocol):
    """A subscription that tells whether it reaches its broker (``consuming`` or
    ``reconnecting``); every transport's does, the contract does not require it."""

    @property
    def state(self) -> str: ...


class Health:
    """Derives :data:`WorkerState` from the phase and the sources in trouble."""

    def __init__(self, on_change: Callable[[WorkerState, WorkerState], None]) -> None:
        self._on_change = on_change
        self._phase: WorkerState = "starting"
        self._troubles: dict[str, str] = {}  # source -> the error that put it in trouble
        self.state: WorkerState = "starting"

    def phase(self, phase: WorkerState) -> None:
        """The worker entered a lifecycle phase (``starting``/``consuming``/``draining``/
        ``stopped``)."""
        self._phase = phase
        if phase == "stopped":
            self._troubles.clear()
        self._update()

    def trouble(self, source: str, error: PixfleetError) -> None:
        """``source`` met the broker unavailable."""
        if source not in self._troubles:
            self._troubles[source] = error.one_line()
            self._update()

    def recovered(self, source: str) -> None:
        """``source`` worked again."""
        if self._troubles.pop(source, None) is not None:
            self._update()

    def watch(self, source: str, subscription: object) -> None:
        """``source`` is waiting quietly on ``subscription``: in trouble while it shows
        ``reconnecting`` (retrying an unreachable broker by itself), else working."""
        if isinstance(subscription, _Stated) and subscription.state == "reconnecting":
            self.trouble(source, BrokerUnavailable("the subscription is reconnecting"))
        else:
            self.recovered(source)

    def probed(self, error: PixfleetError | None) -> None:
        """A look at the broker (``/metrics``' backlog probe) failed with ``error``, or worked."""
        if error is None:
            self.recovered("probe")
        else:
            self.trouble("probe", error)

    def _update(self) -> None:
        new = "reconnecting" if self._troubles and self._phase in _ACTIVE else self._phase
        if new == self.state:
            return
        old, self.state = self.state, new
        if new == "reconnecting":
            log.warning("worker %s -> reconnecting: %s", old, "; ".join(self._troubles.values()))
        else:
            log.info("worker %s -> %s", old, new)
        self._on_change(old, new)
