"""Bounds on numeric options: every duration and count a user gives is checked at the edge.

``inf``, ``nan``, negative and absurd values are refused with one typed line
(``error[config.invalid]: ...``) before anything starts, instead of failing deep inside (an
``OverflowError`` from a timer, a pool of a million processes). The CLIs use the Typer callbacks
:func:`seconds_option` and :func:`count_option`; library code calls :func:`check_seconds` and
:func:`check_count`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pixfleet.errors import ConfigError
from pixfleet.runtime import fail

#: The longest duration any option accepts: 7 days.
MAX_SECONDS = 7 * 24 * 3600.0


def check_seconds(
    option: str, value: float, *, low: float = 0.0, high: float = MAX_SECONDS
) -> float:
    """``value`` if it is a finite number of seconds in ``[low, high]``; else
    :class:`~pixfleet.errors.ConfigError` naming ``option``."""
    if not isinstance(value, int | float) or not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(
            f"{option} must be a number of seconds from {low:g} to {high:g}, got {value!r}"
        )
    return float(value)


def check_count(option: str, value: int, *, low: int = 0, high: int) -> int:
    """``value`` if it is an integer in ``[low, high]``; else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{option} must be a whole number from {low} to {high}, got {value!r}")
    return value


def seconds_option(
    option: str, *, low: float = 0.0, high: float = MAX_SECONDS
) -> Callable[[float | None], float | None]:
    """A Typer ``callback`` that refuses a bad duration with one line and exit status 1."""

    def check(value: float | None) -> float | None:
        if value is None:
            return None
        try:
            return check_seconds(option, value, low=low, high=high)
        except ConfigError as exc:
            fail(exc.one_line())

    return check


def count_option(option: str, *, low: int = 0, high: int) -> Callable[[int | None], int | None]:
    """A Typer ``callback`` that refuses a bad count with one line and exit status 1."""

    def check(value: int | None) -> int | None:
        if value is None:
            return None
        try:
            return check_count(option, value, low=low, high=high)
        except ConfigError as exc:
            fail(exc.one_line())

    return check
