"""The transport alone: ``python -m bench.echo URL [--tasks 2000]``.

An echo consumer in its own process consumes, replies and acks through the transport - no blob
store, no pipeline, no worker - while the bench client (:mod:`bench.loop`) keeps 256 tasks in
flight, then one. What the round-trip row would show if the worker's own per-task path cost
nothing; compare it with the raw loop of the same broker, in the same session.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import uuid
from contextlib import aclosing

from bench.loop import RoundTrips, measure
from bench.roundtrip import WINDOW, PixfleetClient, wait_for_consumers
from brokers import open_transport
from brokers.contract import Delivery
from pixfleet.envelope import BlobRef, Result, Task, WorkerInfo

_BLOB = BlobRef(uri="uploads/ab/cd/" + "0" * 64, sha256="0" * 64, size=1, content_type="image/jpeg")


async def _echo(url: str, group: str) -> None:
    worker = WorkerInfo(id="echo", host="bench", pid=0)
    running: set[asyncio.Task[None]] = set()

    async def answer(delivery: Delivery[Task]) -> None:
        task = delivery.message
        result = Result(
            task_id=task.id,
            correlation_id=task.correlation_id,
            group=group,
            status="ok",
            worker=worker,
        )
        await transport.reply(task.reply_to, result)
        await delivery.ack()

    async with (
        open_transport(url) as transport,
        aclosing(transport.consume(group, prefetch=WINDOW)) as deliveries,
    ):
        async for delivery in deliveries:
            job = asyncio.create_task(answer(delivery))
            running.add(job)
            job.add_done_callback(running.discard)


def echo(url: str, group: str) -> None:
    asyncio.run(_echo(url, group))


async def echo_round_trips(url: str, tasks: int, singles: int) -> RoundTrips:
    group = f"bench-echo-{uuid.uuid4().hex[:6]}"
    process = multiprocessing.get_context("spawn").Process(target=echo, args=(url, group))
    async with open_transport(url) as transport:
        process.start()
        try:
            await wait_for_consumers(transport, group, 1)
            channel = await transport.open_reply_channel()
            client = PixfleetClient(transport, _BLOB, group, channel)
            return await measure(client, tasks=tasks, window=WINDOW, singles=singles)
        finally:
            process.terminate()
            process.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="e.g. sqlite:///tmp/echo.db?poll=0.01")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--singles", type=int, default=100)
    args = parser.parse_args()
    r = asyncio.run(echo_round_trips(args.url, args.tasks, args.singles))
    print(
        f"{args.url}: {r.rate:,.0f} tasks/s with {WINDOW} in flight (p50 {r.p50:.0f} ms,"
        f" p99 {r.p99:.0f} ms); 1 in flight p50 {r.one_p50:.2f} ms, p99 {r.one_p99:.2f} ms"
    )


if __name__ == "__main__":
    main()
