"""``python -m bench all [--quick|--smoke]``: every goal of issue 13 as a ratio against a
baseline measured in the same run, printed as one table and written as JSON.

    python -m bench all --quick            # < 5 minutes on 2 cores
    python -m bench all --amqp URL --kafka URL
    python -m bench images|roundtrip|system
    python -m bench clean [--amqp URL]     # delete bench groups earlier runs left behind

RabbitMQ: ``--amqp`` (default: the local server on 5672 if one answers). Kafka: ``--kafka``
(default: a tansu started by ``tests/harness/kafka.py`` when its wheel is installed). A
transport that cannot be had prints its rows as n/a. Every row deletes the group and reply
channels it made on the broker, also when it fails (``bench/cleanup.py``). The older
single-purpose scripts (``bench.throughput``, ``bench.transports``, ``bench.http``) stay as
they were.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench import vips
from bench.cleanup import sweep
from bench.images import image_rows, make_photo
from bench.report import Row, format_table, machine, write_json
from bench.rows import round_trip_rows, system_rows

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
LOCAL_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True)
class Scale:
    images: int
    size: tuple[int, int]
    tasks: int
    singles: int
    fleet_images: int
    fleet_singles: int


SCALES = {
    "full": Scale(20, (4000, 3000), 3000, 200, 32, 12),
    "quick": Scale(6, (4000, 3000), 1000, 100, 16, 8),
    "smoke": Scale(2, (640, 480), 30, 5, 4, 2),
}


def _answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


@contextlib.contextmanager
def broker_urls(args: argparse.Namespace) -> Iterator[dict[str, str]]:
    urls = {}
    with tempfile.TemporaryDirectory() as tmp:
        urls["sqlite"] = f"sqlite:///{tmp}/bench.db?poll=0.01"
        if args.smoke:
            yield urls
            return
        amqp = args.amqp or (LOCAL_AMQP if _answers("127.0.0.1", 5672) else "")
        if amqp:
            urls["amqp"] = amqp
        with _kafka(args.kafka) as kafka:
            if kafka:
                urls["kafka"] = kafka
            yield urls


@contextlib.contextmanager
def _kafka(url: str | None) -> Iterator[str | None]:
    if url:
        yield url
        return
    try:
        from tests.harness.kafka import TANSU_MARK, kafka_broker  # noqa: PLC0415
    except ImportError:
        yield None
        return
    with kafka_broker() as found:
        yield found.replace(TANSU_MARK, "") + "&session_timeout=2" if found else None


def versions() -> dict[str, str]:
    out = {"sqlite": sqlite3.sqlite_version, "pyvips": vips.version()}
    for pkg in ("pillow", "aio-pika", "aiokafka"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "n/a"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=("all", "images", "roundtrip", "system", "clean"))
    parser.add_argument("--quick", action="store_true", help="fewer samples: < 5 minutes")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, SQLite only: seconds")
    parser.add_argument("--amqp", help="e.g. amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--kafka", help="e.g. kafka://127.0.0.1:9092?idempotence=false")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.section == "clean":
        swept = asyncio.run(sweep(args.amqp or LOCAL_AMQP))
        print(f"deleted {len(swept)} bench group(s): {' '.join(swept)}")
        return
    scale = SCALES["smoke" if args.smoke else "quick" if args.quick else "full"]
    started = time.perf_counter()
    rows: list[Row] = []
    with broker_urls(args) as urls:
        if args.section in ("all", "roundtrip"):
            rows += asyncio.run(round_trip_rows(urls, scale.tasks, scale.singles))
        if args.section in ("all", "images"):
            rows += image_rows(scale.images, scale.size, smoke=args.smoke)
        if args.section in ("all", "system"):
            photos = [make_photo(*scale.size, i) for i in range(scale.fleet_images)]
            rows += asyncio.run(
                system_rows(urls, photos, scale.fleet_singles, one_worker=not args.smoke)
            )
    took = time.perf_counter() - started
    print(f"\n{machine()}\n{', '.join(f'{k} {v}' for k, v in versions().items())}\n")
    print(format_table(rows))
    print(f"\n{args.section} in {took:.0f} s; JSON: {args.json}")
    write_json(rows, args.json, versions())


if __name__ == "__main__":
    main()
