"""One progress display on stderr for ``uploader enqueue``: publishing, then results.

On a terminal (and with ``rich`` importable) it is a live display: a ``publish`` bar, then a
``results`` bar with done/failed counts, rate and ETA; warnings are printed above it. Anywhere
else - stderr redirected, ``TERM=dumb`` - it writes plain lines instead: the published count
once, the results' progress at most every :data:`PLAIN_EVERY` seconds, warnings as they come.
``NO_COLOR`` turns colour off (the live display stays: it is not colour).

Result lines go to stdout (:meth:`Display.emit`) - through the live display when stdout is the
same terminal, so neither garbles the other.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any, Protocol, Self

import typer

#: Seconds between two plain progress lines while waiting.
PLAIN_EVERY = 5.0


class Display(Protocol):
    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...

    def published(self, count: int, total: int) -> None:
        """``count`` of ``total`` tasks are published."""

    def waiting(self, expected: int) -> None:
        """Publishing is over; ``expected`` results are awaited."""

    def result(self, ok: bool) -> None:
        """One more result arrived."""

    def warn(self, line: str) -> None:
        """A warning line on stderr."""

    def emit(self, line: str) -> None:
        """A result line on stdout."""


def open_display(*, total: int, live: bool | None = None, plain_progress: bool = True) -> Display:
    """The display for ``total`` files: live if stderr is a terminal (``live`` overrides),
    else plain lines (none for progress when ``plain_progress`` is false)."""
    if live is None:
        live = sys.stderr.isatty() and os.environ.get("TERM", "") != "dumb"
    if live:
        try:
            return _Live(total)
        except ImportError:  # rich is optional: typer brings it, a slim install may not
            pass
    return _Plain(total, sys.stderr, show=plain_progress)


class _Plain:
    def __init__(self, total: int, stream: IO[str], *, show: bool) -> None:
        self._total = total
        self._stream = stream
        self._show = show
        self._expected = self._ok = self._failed = 0
        self._started = self._last = 0.0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass  # every line is written as it comes

    def published(self, count: int, total: int) -> None:
        if self._show and count == total:
            self._write(f"published {count} task(s)")

    def waiting(self, expected: int) -> None:
        self._expected = expected
        self._started = self._last = time.monotonic()

    def result(self, ok: bool) -> None:
        self._ok += ok
        self._failed += not ok
        now = time.monotonic()
        if self._show and now - self._last >= PLAIN_EVERY:
            self._last = now
            self._line()

    def warn(self, line: str) -> None:
        self._write(line)

    def emit(self, line: str) -> None:
        typer.echo(line)

    def _line(self) -> None:
        done = self._ok + self._failed
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = done / elapsed
        eta = f", ETA {(self._expected - done) / rate:.0f} s" if rate > 0 else ""
        self._write(
            f"results: {done} of {self._expected} ({self._ok} ok, {self._failed} failed), "
            f"{rate:.1f}/s{eta}"
        )

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()


class _Live:
    """The rich display (imported here only: a plain run never loads rich)."""

    def __init__(self, total: int) -> None:
        from rich.console import Console  # noqa: PLC0415 - optional, only on a terminal
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True, no_color="NO_COLOR" in os.environ or None)
        self._progress = Progress(
            TextColumn("{task.description:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=console,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._publish = self._progress.add_task("publish", total=total, detail="", rate="")
        self._results: Any = None
        self._ok = self._failed = 0
        self._to_console = sys.stdout.isatty()

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def published(self, count: int, total: int) -> None:
        self._progress.update(self._publish, completed=count, total=total)

    def waiting(self, expected: int) -> None:
        self._results = self._progress.add_task("results", total=expected, detail="", rate="")

    def result(self, ok: bool) -> None:
        self._ok += ok
        self._failed += not ok
        self._progress.advance(self._results)
        speed = self._progress.tasks[self._results].speed
        self._progress.update(
            self._results,
            detail=f"{self._ok} ok, {self._failed} failed",
            rate=f"{speed:.1f}/s" if speed else "",
        )

    def warn(self, line: str) -> None:
        self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def emit(self, line: str) -> None:
        if self._to_console:
            self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            typer.echo(line)
