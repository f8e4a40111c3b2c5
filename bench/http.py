"""The HTTP ingress against ``uploader enqueue``, same files, same run (read the ratios: these
machines are noisy and the load generator shares their cores).

    python -m bench.http [--files 60] [--size-kb 1024] [--concurrency 4] [--big-mb 200]

Rows:
  uploader enqueue   one CLI process stores and publishes every file (its start-up excluded
                     from the per-core rate: measured separately by enqueuing one file)
  http, 1 instance   httpx clients POST one file per request (the web page's pattern)
  http, 2 instances  the same, round-robin over two instances (what a load balancer does)

``per core`` is uploads per CPU-second of the uploader / ingress process(es) themselves (the
client's CPU is not counted); ``uploads/s`` is wall-clock. Then the ingress's peak RSS growth
while one ``--big-mb`` file is streamed in (its header is a real JPEG, the rest padding).
Everything runs on the embedded SQLite broker and a file blob store in a temp dir; no worker
runs, so the tasks stay queued in the ``bench`` group.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
GROUP = "bench"
_LISTENING = re.compile(r"Uvicorn running on http://[^:]+:(\d+)")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Row:
    name: str
    files: int
    wall: float  # seconds
    cpu: float  # CPU-seconds of the serving / uploading process(es)

    @property
    def rate(self) -> float:
        return self.files / self.wall

    @property
    def per_core(self) -> float:
        return self.files / self.cpu


def make_files(directory: Path, count: int, size_kb: int) -> list[Path]:
    """``count`` distinct JPEGs of about ``size_kb`` kB (random pixels barely compress)."""
    directory.mkdir(parents=True)
    side = int((size_kb * 1024 / 0.92) ** 0.5)  # ~0.92 bytes per pixel at quality 90, 4:2:0
    paths = []
    for i in range(count):
        rng = random.Random(i)
        im = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
        path = directory / f"photo-{i:04d}.jpg"
        im.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def env_for(home: Path) -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=str(REPO),
        PIXFLEET_HOME=str(home),
        PIXFLEET_BROKER=f"sqlite:///{home}/broker.db",
        PIXFLEET_BLOBS=(home / "blobs").as_uri(),
    )


def cli_cpu(home: Path, paths: list[Path]) -> tuple[float, float]:
    """(wall seconds, CPU-seconds) of one ``uploader enqueue`` of ``paths``."""
    argv = [sys.executable, "-m", "producer", "enqueue", "-g", GROUP, *map(str, paths)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, cwd=REPO, env=env_for(home), check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def bench_cli(home: Path, paths: list[Path]) -> Row:
    """The CLI over every file, less its fixed cost (start-up + one file, measured alone, the
    cheaper of two runs)."""
    wall0, cpu0 = min(cli_cpu(home / f"warm-{i}", paths[:1]) for i in range(2))
    wall, cpu = cli_cpu(home / "cli", paths)
    return Row("uploader enqueue", len(paths) - 1, wall - wall0, cpu - cpu0)


@dataclass
class Instance:
    proc: subprocess.Popen[bytes]
    url: str

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def status_kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise KeyError(field)


@contextmanager
def serving(home: Path, count: int, *args: str) -> Iterator[list[Instance]]:
    """``count`` ingress instances on free ports, sharing ``home``'s broker and blobs."""
    home.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for i in range(count):
            log = home / f"ingress-{i}.log"
            argv = [sys.executable, "-m", "producer", "serve", "--port", "0", "-g", GROUP, *args]
            with open(log, "wb") as out:
                procs.append(
                    subprocess.Popen(argv, cwd=REPO, env=env_for(home), stdout=out, stderr=out)
                )
        yield [Instance(p, _url_of(home / f"ingress-{i}.log")) for i, p in enumerate(procs)]
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)


def _url_of(log: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _LISTENING.search(log.read_text(errors="replace"))
        if found:
            return f"http://127.0.0.1:{found.group(1)}"
        time.sleep(0.05)
    raise RuntimeError(f"ingress did not start: {log.read_text()}")


async def post_all(urls: list[str], paths: list[Path], concurrency: int) -> None:
    """POST every file, one per request, ``concurrency`` at a time, round-robin over ``urls``."""
    todo = list(enumerate(paths))
    limits = httpx.Limits(max_connections=concurrency * len(urls))

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def lane() -> None:
            while todo:
                i, path = todo.pop()
                files = {"file": (path.name, path.read_bytes(), "image/jpeg")}
                response = await client.post(f"{urls[i % len(urls)]}/v1/uploads", files=files)
                if response.status_code != 202:
                    raise RuntimeError(f"{response.status_code}: {response.text}")

        await asyncio.gather(*(lane() for _ in range(concurrency)))


def bench_http(home: Path, paths: list[Path], instances: int, concurrency: int) -> Row:
    with serving(home, instances) as running:
        urls = [i.url for i in running]
        asyncio.run(post_all(urls, paths[:2], concurrency))  # warm-up: imports, connections
        cpu0 = sum(i.cpu() for i in running)
        started = time.perf_counter()
        asyncio.run(post_all(urls, paths, concurrency))
        wall = time.perf_counter() - started
        cpu = sum(i.cpu() for i in running) - cpu0
    return Row(f"http, {instances} instance{'s' if instances > 1 else ''}", len(paths), wall, cpu)


async def big_body(boundary: str, megabytes: int) -> AsyncIterator[bytes]:
    """A multipart body with one ``megabytes`` MB JPEG (a real header, then padding)."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(buf, "JPEG")
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + buf.getvalue()
    chunk = b"\0" * (1 << 20)
    for _ in range(megabytes - 1):
        yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def bench_big(home: Path, megabytes: int) -> tuple[int, int, float]:
    """(RSS kB before, peak RSS kB after, seconds) of one instance taking one big file."""
    limit = str((megabytes + 16) << 20)
    with serving(home, 1, "--max-file-bytes", limit, "--max-request-bytes", limit) as [one]:
        warm = make_files(home / "warm-big", 1, 64)
        asyncio.run(post_all([one.url], warm, 1))
        before = one.status_kb("VmRSS")
        started = time.perf_counter()
        asyncio.run(_post_big(one.url, megabytes))
        took = time.perf_counter() - started
        return before, one.status_kb("VmHWM"), took


async def _post_big(url: str, megabytes: int) -> None:
    boundary = "pixfleet-bench-boundary"
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    async with httpx.AsyncClient(timeout=600) as client:
        response = await client.post(
            f"{url}/v1/uploads", content=big_body(boundary, megabytes), headers=headers
        )
    if response.status_code != 202:
        raise RuntimeError(f"{response.status_code}: {response.text}")


def median_row(rows: list[Row]) -> Row:
    """The row of median per-core rate among rounds of one path."""
    return sorted(rows, key=lambda r: r.per_core)[len(rows) // 2]


def report(rows: list[Row], big: tuple[int, int, float], args: argparse.Namespace) -> None:
    cli = rows[0]
    mean_kb = args.mean_kb
    print(
        f"{len(args.paths)} JPEGs of {mean_kb:.0f} kB on average, {args.concurrency} HTTP clients"
        f" at once; median of {args.rounds} rounds"
    )
    print(f"{'path':<20} {'files':>5} {'uploads/s':>10} {'per core':>9} {'x cli/core':>10}")
    for row in rows:
        print(
            f"{row.name:<20} {row.files:>5} {row.rate:>10.1f} {row.per_core:>9.1f} "
            f"{row.per_core / cli.per_core:>10.2f}"
        )
    before, peak, took = big
    print(
        f"one {args.big_mb} MB upload: RSS {before / 1024:.1f} MB before, peak {peak / 1024:.1f}"
        f" MB, +{(peak - before) / 1024:.1f} MB; {args.big_mb / took:.0f} MB/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=60)
    parser.add_argument("--size-kb", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pixfleet-bench-http-") as tmp:
        home = Path(tmp)
        args.paths = paths = make_files(home / "files", args.files, args.size_kb)
        args.mean_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        rounds: dict[int, list[Row]] = {0: [], 1: [], 2: []}
        for n in range(args.rounds):  # interleaved, so drifting load hits every path alike
            rounds[0].append(bench_cli(home / f"cli-{n}", paths))
            for count in (1, 2):
                run = bench_http(home / f"http-{count}-{n}", paths, count, args.concurrency)
                rounds[count].append(run)
        big = bench_big(home / "big", args.big_mb)
    report([median_row(rounds[k]) for k in (0, 1, 2)], big, args)


if __name__ == "__main__":
    main()
