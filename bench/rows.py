"""The round-trip and system rows of ``python -m bench all``, each against its baseline."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from bench.loop import RoundTrips
from bench.report import Row, at_least, bounded, plain, versus
from bench.roundtrip import pixfleet_round_trips
from bench.system import bare_rate, fleet, p50_p99

log = logging.getLogger("bench")

#: Goals of issue 13 per transport: (pixfleet / raw loop, one-in-flight p50 ms, p99 ms).
GOALS: dict[str, tuple[float | None, float | None, float | None]] = {
    "sqlite": (None, None, None),
    "amqp": (0.8, 1.5, 3.0),
    "kafka": (0.5, 10.0, None),
}


async def _raw(name: str, url: str, tasks: int, singles: int) -> RoundTrips:
    if name == "amqp":
        from bench.raw_amqp import raw_amqp_round_trips  # noqa: PLC0415 - aio-pika optional

        return await raw_amqp_round_trips(url, tasks, singles)
    if name == "kafka":
        from bench.raw_kafka import raw_kafka_round_trips  # noqa: PLC0415

        return await raw_kafka_round_trips(url, tasks, singles)
    from bench.raw_sqlite import raw_sqlite_round_trips  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        return await raw_sqlite_round_trips(Path(tmp) / "raw.db", tasks, singles)


async def _guarded(what: str, fn: Callable[[], Awaitable[RoundTrips]]) -> RoundTrips | None:
    try:
        return await fn()
    except Exception:
        log.exception("%s failed; its rows are n/a", what)
        return None


def _lat(r: RoundTrips | None, one: bool) -> str:
    if r is None:
        return "failed"
    if one:
        return f"1 in flight: p50 {r.one_p50:.1f} ms, p99 {r.one_p99:.1f} ms"
    return f"256 in flight: p50 {r.p50:.0f} ms, p99 {r.p99:.0f} ms"


def _goal_row(section: str, name: str, value: float | None, unit: str, limit: float | None) -> Row:
    return (
        bounded(section, name, value, unit, limit) if limit else plain(section, name, value, unit)
    )


def _transport_rows(name: str, raw: RoundTrips | None, ours: RoundTrips | None) -> list[Row]:
    ratio_goal, p50_goal, p99_goal = GOALS[name]
    section = f"round trip: {name}"
    raw_rate, rate = (raw.rate if raw else None), (ours.rate if ours else None)
    baseline = (f"raw {name} loop", raw_rate)
    return [
        Row(section, f"raw {name} loop", raw_rate, "t/s", note=_lat(raw, False)),
        Row(
            section,
            f"raw {name} loop, 1 in flight p50",
            raw.one_p50 if raw else None,
            "ms",
            note=_lat(raw, True),
        ),
        versus(section, f"pixfleet {name}", rate, "t/s", baseline, ratio_goal)
        if ratio_goal
        else at_least(section, f"pixfleet {name}", rate, "t/s", 2000),
        Row(
            section,
            f"pixfleet {name}, 256 in flight p50",
            ours.p50 if ours else None,
            "ms",
            note=f"p99 {ours.p99:.0f} ms" if ours else "failed",
        ),
        _goal_row(
            section,
            f"pixfleet {name}, 1 in flight p50",
            ours.one_p50 if ours else None,
            "ms",
            p50_goal,
        ),
        _goal_row(
            section,
            f"pixfleet {name}, 1 in flight p99",
            ours.one_p99 if ours else None,
            "ms",
            p99_goal,
        ),
    ]


async def round_trip_rows(urls: dict[str, str], tasks: int, singles: int) -> list[Row]:
    rows: list[Row] = []
    for name, url in urls.items():
        raw = await _guarded(f"raw {name}", partial(_raw, name, url, tasks, singles))
        ours = await _guarded(
            f"pixfleet {name}", partial(pixfleet_round_trips, url, tasks // 2, singles)
        )
        rows += _transport_rows(name, raw, ours)
    return rows


async def system_rows(
    urls: dict[str, str], photos: list[bytes], singles: int, *, one_worker: bool = True
) -> list[Row]:
    """Fleet rows per transport; on SQLite also 2 workers vs 1 (unless not ``one_worker``)
    and, once the batch is done, upload -> result one photo at a time."""
    rows: list[Row] = []
    for name, url in urls.items():
        # the baseline right before each fleet: the machine's load drifts between rows
        bare = (f"bare loop, 2 processes ({name})", bare_rate(photos, 2))
        rows.append(plain("system", *bare, "i/s"))
        try:
            two = await fleet(url, photos, 2, singles=singles if name == "sqlite" else 0)
        except Exception:
            log.exception("fleet on %s failed; its rows are n/a", name)
            rows.append(plain("system", f"fleet {name}, 2 workers", None, "i/s", "failed"))
            continue
        rows.append(versus("system", f"fleet {name}, 2 workers", two.rate, "i/s", bare, 0.9))
        if name != "sqlite":
            continue
        if one_worker:
            one = await fleet(url, photos[: len(photos) // 2], 1)
            base = ("fleet sqlite, 1 worker", one.rate)
            rows.append(versus("system", "fleet sqlite, 2 workers / 1", two.rate, "i/s", base, 1.8))
        rows += _latency_rows(two.latencies, two.alone)
    return rows


def _latency_rows(latencies: list[float], own: list[float]) -> list[Row]:
    (l50, l99), (o50, o99) = p50_p99(latencies), p50_p99(own)
    ratio = l50 / o50
    return [
        plain("system", "pipeline alone, one photo", o50, "ms", f"p99 {o99:.0f} ms"),
        Row(
            "system",
            "upload -> result, idle worker",
            l50,
            "ms",
            "pipeline alone",
            o50,
            "<= 1.2x",
            ratio <= 1.2,
            f"p99 {l99:.0f} ms",
        ),
    ]
