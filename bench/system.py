"""System rows: the whole fleet (broker, blob store, worker processes) on photos, against the
same pipeline in a bare loop with the same number of processes, in the same run.

* fleet images/s vs a bare ``multiprocessing`` pool of as many processes (goal >= 0.9x), per
  transport;
* 2 workers vs 1 worker on the same transport (goal >= 1.8x on 2 cores);
* upload -> result (the thumbnails are written before the reply) with an idle worker, one
  photo at a time, against the pipeline's own time for the same photo (goal <= 1.2x).

Workers run ``worker run -g thumbs -c 1``; the blob store is a file store on disk (each file
fsynced, like production).
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time
from contextlib import ExitStack, aclosing
from dataclasses import dataclass
from pathlib import Path

from bench.cleanup import Declared, declared
from bench.images import thumbs
from bench.roundtrip import wait_for_consumers, worker_process
from brokers import Transport, open_transport
from pixfleet.blobs import store_upload
from pixfleet.blobs.file import FileBlobStore
from pixfleet.envelope import BlobRef, Task

#: Rounds of each rate; the best one counts (the least disturbed by other jobs on the machine).
ROUNDS = 2


def bare_rate(images: list[bytes], processes: int) -> float:
    """Images/s of ``processes`` plain processes running the pipeline (pool start excluded),
    the best of ``ROUNDS``."""
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(thumbs, images[:processes])  # imports done, caches warm
        best = 0.0
        for _ in range(ROUNDS):
            started = time.perf_counter()
            pool.map(thumbs, images, chunksize=1)
            best = max(best, len(images) / (time.perf_counter() - started))
        return best


async def _run_batch(
    transport: Transport, refs: list[BlobRef], group: str, made: Declared
) -> float:
    channel = made.channel(await transport.open_reply_channel())
    tasks = [Task.new(ref, groups=(group,), reply_to=channel) for ref in refs]
    started = time.perf_counter()
    for task in tasks:
        await transport.publish(task)
    waiting = {t.id for t in tasks}
    async with aclosing(transport.replies(channel)) as it:
        async for delivery in it:
            await delivery.ack()
            assert delivery.message.status == "ok", delivery.message.error
            waiting.discard(delivery.message.task_id)
            if not waiting:
                break
    return len(tasks) / (time.perf_counter() - started)


async def _one_by_one(
    transport: Transport, store: FileBlobStore, images: list[bytes], group: str, made: Declared
) -> tuple[list[float], list[float]]:
    """Milliseconds from the upload (blob stored, task published) to the reply, one at a time,
    and of the pipeline alone in this process on the same photo just before."""
    channel = made.channel(await transport.open_reply_channel())
    latencies, alone = [], []
    async with aclosing(transport.replies(channel)) as it:
        for data in images:
            started = time.perf_counter()
            thumbs(data)  # the pipeline alone on the same photo, right before its upload
            alone.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            ref = await store_upload(store, data, "image/jpeg")
            await transport.publish(Task.new(ref, groups=(group,), reply_to=channel))
            delivery = await anext(it)
            await delivery.ack()
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies, alone


@dataclass(frozen=True)
class Fleet:
    rate: float  # images/s of the batch
    latencies: list[float]  # ms, upload -> result, one photo at a time after the batch
    alone: list[float]  # ms, the pipeline alone on each of those photos


async def fleet(url: str, images: list[bytes], workers: int, *, singles: int = 0) -> Fleet:
    """Images/s of ``workers`` worker processes on ``images`` (the best of ``ROUNDS``), then
    ``singles`` photos one at a time on the idle fleet. The group and its reply channels are
    deleted afterwards (:mod:`bench.cleanup`)."""
    async with declared(url) as made:
        return await _fleet(made, images, workers, singles)


async def _fleet(made: Declared, images: list[bytes], workers: int, singles: int) -> Fleet:
    url, group = made.url, made.group("bench-sys")
    argv = ("-c", "1", "--pipeline", "thumbs")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as procs:
        blobs = Path(tmp)
        store = FileBlobStore(blobs)
        async with open_transport(url) as transport:
            refs = [await store_upload(store, data, "image/jpeg") for data in images]
            for _ in range(workers):
                procs.enter_context(worker_process(url, blobs, group, *argv))
            await wait_for_consumers(transport, group, workers)
            await _run_batch(transport, refs[:workers], group, made)  # warm-up: pools started
            rate = max([await _run_batch(transport, refs, group, made) for _ in range(ROUNDS)])
            latencies, alone = await _one_by_one(transport, store, images[:singles], group, made)
    return Fleet(rate, latencies, alone)


def p50_p99(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=100)
    return q[49], q[98]
