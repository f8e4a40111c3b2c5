"""A SIGTERM that arrives while the worker is still starting: remembered, not fatal.

Until the worker installs its handlers on the event loop (first SIGTERM or SIGINT: drain;
second: abort), Python's default action would kill the process - a service manager stopping a
worker that is still connecting or spawning its pool would see it die of the signal.
:func:`defer_sigterm` (called first by ``python -m consumers`` and the ``worker`` command)
remembers the signal instead, and the worker stops as soon as it is built, having taken no
task, with exit code 0. Signal dispositions belong to the process, so this state does too.
"""

from __future__ import annotations

import signal
from types import FrameType

_received: list[int] = []


def _remember(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


def defer_sigterm() -> None:
    """From now until the worker's own handlers: remember SIGTERM instead of dying of it."""
    signal.signal(signal.SIGTERM, _remember)


def received_early() -> bool:
    """Did a SIGTERM arrive before the worker's own handlers were installed?"""
    return bool(_received)
