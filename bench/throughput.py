"""Throughput and latency of pixfleet on the embedded transport, against baselines measured in
the same run (these machines are noisy: read the ratios, not the absolute numbers).

    python -m bench.throughput [--images 30] [--workers N] [--size 4000x3000]

Rows:
  naive pillow      one process: full decode, resize per size, encode JPEG+WebP (no draft mode)
  thumbs pipeline   one process: pixfleet's thumbs pipeline (draft decode, one decode per image)
  sqlite transport  publish + consume + ack of small tasks, one process (messages/s)
  fleet end-to-end  W worker processes (concurrency 1) + publisher, results awaited
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image, ImageDraw

from brokers import Transport, open_transport
from consumers.pipelines.base import Limits
from consumers.pipelines.thumbs import run as thumbs
from pixfleet.blobs import store_upload
from pixfleet.blobs.file import FileBlobStore
from pixfleet.envelope import Task

REPO = Path(__file__).resolve().parents[1]
SIZES = (256, 1024)


def make_jpeg(width: int, height: int, seed: int) -> bytes:
    im = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(im)
    for i in range(12):
        x, y = (seed * 131 + i * 97) % (width - 80), (seed * 71 + i * 53) % (height - 80)
        draw.ellipse(
            [x, y, x + width // 5, y + height // 5], fill=(i * 20, 255 - i * 20, seed % 255)
        )
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def naive(data: bytes) -> int:
    total = 0
    with Image.open(io.BytesIO(data)) as src:
        src.load()
        for size in SIZES:
            im = src.copy()
            im.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=None)
            for fmt in ("JPEG", "WEBP"):
                buf = io.BytesIO()
                im.save(buf, fmt, quality=82)
                total += buf.tell()
    return total


def per_image(fn: Callable[[bytes], object], blobs: list[bytes]) -> float:
    started = time.perf_counter()
    for data in blobs:
        fn(data)
    return len(blobs) / (time.perf_counter() - started)


async def transport_rate(url: str, n: int) -> float:
    blob = await store_upload(FileBlobStore(Path(tempfile.mkdtemp())), b"x", "image/jpeg")
    async with open_transport(url) as transport:
        started = time.perf_counter()
        for _ in range(n):
            await transport.publish(Task.new(blob, groups=("bench",)))
        async with aclosing(transport.consume("bench", prefetch=64, until_empty=True)) as it:
            async for delivery in it:
                await delivery.ack()
        return n / (time.perf_counter() - started)


def tree_rss_kb(pid: int) -> int:
    """Peak RSS (VmHWM) of a process plus its children."""
    total = 0
    pids = [pid] + [
        int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat") if _ppid(p) == pid
    ]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _ppid(stat: Path) -> int:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def start_workers(url: str, blobs_dir: Path, workers: int) -> list[subprocess.Popen[bytes]]:
    env = dict(
        os.environ, PYTHONPATH=str(REPO), PIXFLEET_BROKER=url, PIXFLEET_BLOBS=blobs_dir.as_uri()
    )
    argv = [sys.executable, "-m", "consumers", "run", "-g", "thumbs", "-c", "1"]
    return [
        subprocess.Popen([*argv, "--log-level", "warning"], cwd=REPO, env=env)
        for _ in range(workers)
    ]


async def await_latencies(transport: Transport, channel: str, tasks: list[Task]) -> list[float]:
    """Milliseconds from each task's creation to its result, in arrival order."""
    created = {t.id: t.created_at for t in tasks}
    latencies: list[float] = []
    async with aclosing(transport.replies(channel)) as it:
        async for delivery in it:
            await delivery.ack()
            lag = datetime.now(UTC) - created[delivery.message.task_id]
            latencies.append(lag.total_seconds() * 1000)
            if len(latencies) == len(tasks):
                break
    return latencies


async def fleet(url: str, blobs_dir: Path, images: list[bytes], workers: int) -> dict[str, float]:
    procs = start_workers(url, blobs_dir, workers)
    store = FileBlobStore(blobs_dir)
    try:
        async with open_transport(url) as transport:
            while (await transport.stats("thumbs")).consumers < workers:
                await asyncio.sleep(0.1)
            channel = await transport.open_reply_channel()
            refs = [await store_upload(store, data, "image/jpeg") for data in images]
            started = time.perf_counter()
            tasks = [Task.new(ref, groups=("thumbs",), reply_to=channel) for ref in refs]
            for task in tasks:
                await transport.publish(task)
            latencies = await await_latencies(transport, channel, tasks)
            elapsed = time.perf_counter() - started
            rss = max(tree_rss_kb(p.pid) for p in procs)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)
    q = statistics.quantiles(latencies, n=100)
    return {
        "rate": len(images) / elapsed,
        "p50": q[49],
        "p95": q[94],
        "p99": q[98],
        "rss_mb": rss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--size", default="4000x3000")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    images = [make_jpeg(width, height, i) for i in range(args.images)]
    cores = os.cpu_count() or 1

    naive_rate = per_image(naive, images)
    limits = Limits()
    thumbs_rate = per_image(lambda d: thumbs(d, {}, limits), images)
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        msg_rate = asyncio.run(transport_rate(f"sqlite:///{tmp}/t.db", 500))
        fleet_stats = asyncio.run(
            fleet(f"sqlite:///{tmp}/f.db?poll=0.05", Path(tmp) / "blobs", images, args.workers)
        )

    print(
        f"\n{args.images} images {width}x{height} JPEG -> {len(SIZES)} sizes x JPEG+WebP; "
        f"{cores} cores, {args.workers} workers\n"
    )
    report(naive_rate, thumbs_rate, msg_rate, fleet_stats, self_rss, args.workers)


def report(
    naive_rate: float,
    thumbs_rate: float,
    msg_rate: float,
    f: dict[str, float],
    self_rss: float,
    workers: int,
) -> None:
    cores = os.cpu_count() or 1
    print(
        f"{'row':<22}{'rate':>16}{'per core':>12}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'peak RSS':>11}"
    )
    print(
        f"{'naive pillow (1 proc)':<22}{naive_rate:>12.1f} i/s{naive_rate:>12.1f}"
        f"{'':>27}{self_rss:>8.0f} MB"
    )
    print(f"{'thumbs pipeline (1)':<22}{thumbs_rate:>12.1f} i/s{thumbs_rate:>12.1f}")
    print(f"{'sqlite transport':<22}{msg_rate:>12.0f} m/s")
    print(
        f"{'fleet end-to-end':<22}{f['rate']:>12.1f} i/s{f['rate'] / cores:>12.1f}"
        f"{f['p50']:>9.0f}{f['p95']:>9.0f}{f['p99']:>9.0f}{f['rss_mb']:>8.0f} MB"
    )
    print(f"\nthumbs / naive (one decode + draft): {thumbs_rate / naive_rate:.2f}x")
    print(
        f"fleet / (thumbs x {workers} workers): "
        f"{f['rate'] / (thumbs_rate * workers):.2f} (scaling efficiency incl. broker)"
    )


if __name__ == "__main__":
    main()
