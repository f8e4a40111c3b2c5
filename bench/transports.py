"""Transport throughput and latency, each broker against the embedded SQLite baseline measured
in the same run (read the ratios; absolute numbers move with the machine's load).

    python -m bench.transports [--messages 500] [--amqp URL] [--kafka URL]

Per transport: durable publishes/s (each awaited: commit / confirm / acks=all), consume+ack/s of
that backlog, and publish->delivery latency percentiles with a live consumer (one message in
flight at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
import uuid
from contextlib import aclosing
from pathlib import Path

from brokers import open_transport
from pixfleet.blobs import store_upload
from pixfleet.blobs.file import FileBlobStore
from pixfleet.envelope import Task


async def measure(url: str, messages: int, samples: int) -> dict[str, float]:
    blob = await store_upload(FileBlobStore(Path(tempfile.mkdtemp())), b"x", "image/jpeg")
    group = f"bench-{uuid.uuid4().hex[:8]}"
    async with open_transport(url) as transport:
        started = time.perf_counter()
        for _ in range(messages):
            await transport.publish(Task.new(blob, groups=(group,)))
        published = time.perf_counter()
        consumed = 0
        first = published
        async with aclosing(transport.consume(group, prefetch=64, until_empty=True)) as it:
            async for delivery in it:
                if consumed == 0:
                    first = time.perf_counter()  # after subscribing (Kafka: group join)
                await delivery.ack()
                consumed += 1
        drained = time.perf_counter()  # closed: every ack settled (Kafka: final commit flushed)
        assert consumed == messages, f"{url}: consumed {consumed} of {messages}"

        latencies = []
        async with aclosing(transport.consume(group, prefetch=8)) as it:
            for _ in range(samples):
                sent = time.perf_counter()
                await transport.publish(Task.new(blob, groups=(group,)))
                delivery = await anext(it)
                latencies.append((time.perf_counter() - sent) * 1000)
                await delivery.ack()
    q = statistics.quantiles(latencies, n=100)
    return {
        "publish": messages / (published - started),
        "first": (first - published) * 1000,
        "consume": (messages - 1) / (drained - first),
        "p50": q[49],
        "p95": q[94],
        "p99": q[98],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--amqp", help="e.g. amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--kafka", help="e.g. kafka://127.0.0.1:9092?idempotence=false")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"sqlite": f"sqlite:///{tmp}/bench.db?poll=0.01"}
        if args.amqp:
            urls["amqp"] = args.amqp
        if args.kafka:
            sep = "&" if "?" in args.kafka else "?"
            urls["kafka"] = f"{args.kafka}{sep}namespace=bench{uuid.uuid4().hex[:6]}."
        rows = {
            name: asyncio.run(measure(url, args.messages, args.samples))
            for name, url in urls.items()
        }
    base = rows["sqlite"]
    print(f"\n{args.messages} tasks, then {args.samples} one-at-a-time round trips per transport\n")
    header = (
        "transport",
        "publish/s",
        "x sqlite",
        "1st ms",
        "settle/s",
        "x sqlite",
        "p50 ms",
        "p95 ms",
        "p99 ms",
    )
    print("{:<10}{:>11}{:>9}{:>8}{:>10}{:>9}{:>8}{:>8}{:>8}".format(*header))
    for name, r in rows.items():
        print(
            f"{name:<10}{r['publish']:>11.0f}{r['publish'] / base['publish']:>9.2f}"
            f"{r['first']:>8.0f}{r['consume']:>10.0f}{r['consume'] / base['consume']:>9.2f}"
            f"{r['p50']:>8.1f}{r['p95']:>8.1f}{r['p99']:>8.1f}"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of the benchmark process: {rss:.0f} MB")


if __name__ == "__main__":
    main()
