"""The client side of every round-trip row: keep ``window`` tasks in flight, time each from
publish to its reply, then one task at a time.

A :class:`Client` is what a row plugs in: ``publish(n)`` returns once task ``n`` is durable
(commit / confirm / ``acks=all``), ``replies()`` yields the number of each answered task once
its reply arrived (the client acks it). The worker on the other side runs in another process.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

#: Seconds without a reply before a row gives up (a publish failed, a worker died).
TIMEOUT = 60.0


class Client(Protocol):
    async def publish(self, n: int) -> None: ...

    def replies(self) -> AsyncIterator[int]: ...


@dataclass(frozen=True)
class RoundTrips:
    rate: float  # tasks/s with ``window`` in flight
    p50: float  # ms, publish -> reply, with ``window`` in flight
    p99: float
    one_p50: float  # ms, one task in flight
    one_p99: float


def _q(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=100)
    return q[49], q[98]


async def _windowed(
    client: Client, replies: AsyncIterator[int], tasks: int, window: int
) -> list[float]:
    sent: dict[int, float] = {}
    room = asyncio.Semaphore(window)
    latencies: list[float] = []

    publishing: set[asyncio.Task[None]] = set()

    async def produce() -> None:
        for n in range(tasks):  # publishes overlap (pipelined confirms), as many as the window
            await room.acquire()
            sent[n] = time.perf_counter()
            publish = asyncio.create_task(client.publish(n))
            publishing.add(publish)
            publish.add_done_callback(publishing.discard)

    producer = asyncio.create_task(produce())
    try:
        while len(latencies) < tasks:
            n = await asyncio.wait_for(anext(replies), TIMEOUT)
            latencies.append((time.perf_counter() - sent.pop(n)) * 1000)
            room.release()
    finally:
        producer.cancel()
        await asyncio.gather(*publishing, return_exceptions=True)
    return latencies


async def measure(client: Client, *, tasks: int, window: int, singles: int) -> RoundTrips:
    """Warm up, then ``tasks`` round trips with ``window`` in flight, then ``singles`` alone."""
    replies = client.replies()
    await _windowed(client, replies, min(50, tasks), min(8, window))  # connections, JIT caches
    started = time.perf_counter()
    lat = await _windowed(client, replies, tasks, window)
    elapsed = time.perf_counter() - started
    one: list[float] = []
    for n in range(tasks, tasks + singles):
        sent = time.perf_counter()
        await client.publish(n)
        got = await asyncio.wait_for(anext(replies), TIMEOUT)
        assert got == n, f"reply {got} for task {n}"
        one.append((time.perf_counter() - sent) * 1000)
    p50, p99 = _q(lat)
    one_p50, one_p99 = _q(one)
    return RoundTrips(tasks / elapsed, p50, p99, one_p50, one_p99)
