"""``uploader status [--json] [--watch [--interval S]]``: every group's backlog at a glance.

One row per group: ``ready`` (waiting for a worker), ``in-flight`` (delivered, not settled),
``dead`` (dead-lettered), ``consumers`` (live), ``rate`` (tasks finished per second) and, on
Kafka, ``lag`` (records after the group's committed offsets: ready and in-flight together).

Where each number comes from:

* the broker's :class:`~brokers.contract.Inspector` gives ready, dead, consumers, and in-flight
  where the broker can tell (SQLite's leases);
* where it cannot (RabbitMQ without the management plugin, Kafka), in-flight is the sum of what
  the group's live workers reported in their last heartbeat (the fleet roster); on Kafka
  ``ready`` is then the lag less that in-flight. With no live worker of the group heartbeating
  (a consumer that is not a pixfleet worker) it is unknown;
* ``rate`` comes from the workers' heartbeat counters (ok + failed): between two looks with
  ``--watch``, else their average since each worker started.

A number nobody can tell is shown as ``?`` (``null`` in ``--json``). ``--watch`` redraws the
table in place every ``--interval`` seconds (rich) until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from brokers import open_transport
from brokers.contract import GroupStats, Inspector
from pixfleet.bounds import seconds_option
from pixfleet.runtime import cli_urls, configure_logging, run_async


class _Beat(Protocol):
    """What status reads of one worker's heartbeat (:class:`pixfleet.fleet.WorkerStatus`)."""

    @property
    def groups(self) -> tuple[str, ...]: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def ok(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def heartbeat(self) -> float: ...
    @property
    def started_at(self) -> datetime: ...
    @property
    def last_seen(self) -> datetime: ...


@runtime_checkable
class _Roster(Protocol):
    """A transport that keeps the fleet's roster (:class:`brokers.contract.Fleet`)."""

    async def roster(self) -> Sequence[_Beat]: ...


#: Heartbeats a worker may miss and still count as live.
LIVE_BEATS = 3


@dataclass(frozen=True)
class GroupRow:
    """One group's line of ``uploader status``; None: nobody can tell."""

    group: str
    ready: int
    in_flight: int | None
    dead: int
    consumers: int
    rate: float | None
    lag: int | None  # Kafka only
    finished: int | None = None  # ok + failed over the live workers (for the next rate)


@dataclass(frozen=True)
class Look:
    """Every row at one moment (``at``: monotonic seconds)."""

    rows: list[GroupRow]
    at: float


async def look(inspector: Inspector, *, kafka: bool, before: Look | None = None) -> Look:
    """Every group's row now; with ``before`` (the previous look), rates between the two."""
    stats = [await inspector.stats(g) for g in await inspector.groups()]
    beats = await _live_beats(inspector)
    at = time.monotonic()
    previous = {r.group: r for r in before.rows} if before else {}
    seconds = at - before.at if before else 0.0
    rows = [
        _row(s, beats, kafka=kafka, before=previous.get(s.group), seconds=seconds) for s in stats
    ]
    return Look(rows, at)


async def _live_beats(inspector: Inspector) -> list[_Beat] | None:
    if not isinstance(inspector, _Roster):
        return None
    now = datetime.now(UTC)
    return [
        b
        for b in await inspector.roster()
        if (now - b.last_seen).total_seconds() <= LIVE_BEATS * b.heartbeat
    ]


def _row(
    stats: GroupStats,
    beats: list[_Beat] | None,
    *,
    kafka: bool,
    before: GroupRow | None,
    seconds: float,
) -> GroupRow:
    mine = [b for b in beats or () if stats.group in b.groups]  # none: nobody to ask
    in_flight = stats.in_flight
    if in_flight is None and mine:
        in_flight = sum(b.in_flight for b in mine)
    lag = stats.ready if kafka else None
    ready = max(0, stats.ready - (in_flight or 0)) if kafka else stats.ready
    finished = sum(b.ok + b.failed for b in mine) if mine else None
    return GroupRow(
        stats.group,
        ready,
        in_flight,
        stats.dead,
        stats.consumers,
        _rate(mine, finished, before, seconds) if mine else None,
        lag,
        finished,
    )


def _rate(
    mine: list[_Beat], finished: int | None, before: GroupRow | None, seconds: float
) -> float:
    last = before.finished if before is not None else None
    if last is not None and finished is not None and seconds > 0 and finished >= last:
        return (finished - last) / seconds
    now = datetime.now(UTC)
    return sum((b.ok + b.failed) / max(1.0, (now - b.started_at).total_seconds()) for b in mine)


# -- rendering ---------------------------------------------------------------------------------

COLUMNS = ("group", "ready", "in-flight", "dead", "consumers", "rate/s", "lag")


def cells(row: GroupRow) -> tuple[str, ...]:
    def text(value: int | None) -> str:
        return "?" if value is None else str(value)

    rate = "?" if row.rate is None else f"{row.rate:.1f}"
    lag = "-" if row.lag is None else str(row.lag)
    return (row.group, str(row.ready), text(row.in_flight), str(row.dead), str(row.consumers),
            rate, lag)  # fmt: skip


def lines(rows: Sequence[GroupRow], *, as_json: bool) -> list[str]:
    """A header and one line per group, or one JSON object per group."""
    if as_json:
        return [json.dumps({k: v for k, v in asdict(r).items() if k != "finished"}) for r in rows]
    return [_fixed(COLUMNS), *(_fixed(cells(row)) for row in rows)]


def _fixed(values: tuple[str, ...]) -> str:
    widths = (20, 7, 9, 6, 9, 7, 7)
    first, *rest = zip(values, widths, strict=True)
    return " ".join([first[0].ljust(first[1]), *(v.rjust(w) for v, w in rest)])


def table(current: Look, url: str) -> Table:
    stamp = datetime.now(UTC).strftime("%H:%M:%S")
    shown = Table(title=f"pixfleet status - {url} - {stamp} UTC", title_justify="left")
    for i, name in enumerate(COLUMNS):
        shown.add_column(name, justify="left" if i == 0 else "right")
    for row in current.rows:
        shown.add_row(*cells(row))
    return shown


# -- the command -------------------------------------------------------------------------------

BrokerOpt = typer.Option(None, "--broker", help="Broker URL (default: $PIXFLEET_BROKER, config).")


def status_cmd(
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Redraw live until Ctrl-C."),
    interval: float = typer.Option(
        2.0, callback=seconds_option("--interval", low=0.1), help="Seconds between redraws."
    ),
    broker: str = BrokerOpt,
    debug: bool = typer.Option(False, "--debug", help="Print tracebacks."),
) -> None:
    """Backlog, in-flight, dead-lettered tasks, live consumers and rate per group."""
    configure_logging("debug" if debug else "error")
    url = cli_urls(broker, blobs_used=False)[0]
    if watch:
        run_async(_watch(url, interval), debug=debug)
    else:
        run_async(_once(url, as_json), debug=debug)


async def _once(url: str, as_json: bool) -> None:
    async with open_transport(url) as transport:
        current = await look(transport, kafka=_is_kafka(url))
    for line in lines(current.rows, as_json=as_json):
        typer.echo(line)


async def _watch(url: str, interval: float) -> None:
    kafka = _is_kafka(url)
    async with open_transport(url) as transport:
        current = await look(transport, kafka=kafka)
        with Live(table(current, transport.url), console=Console(), auto_refresh=False) as live:
            try:
                while True:
                    await asyncio.sleep(interval)
                    current = await look(transport, kafka=kafka, before=current)
                    live.update(table(current, transport.url), refresh=True)
            except asyncio.CancelledError:
                return  # Ctrl-C: the last table stays on screen


def _is_kafka(url: str) -> bool:
    return urlsplit(url).scheme == "kafka"
