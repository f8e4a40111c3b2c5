"""Round-trip rows: pixfleet's worker with a no-op pipeline against a hand-written loop with the
same guarantees on the same broker, measured one after the other in the same run.

pixfleet: one ``worker run -c 1 --prefetch 256 --pipeline bench.noop:run`` process; the client
publishes through the transport, awaits each reply on a private reply channel. The blob store
is a file store on tmpfs (``/dev/shm`` where there is one), so the rows weigh the broker and the
worker, not the disk's fsyncs of the completion records.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path

from bench.cleanup import Declared, declared
from bench.loop import RoundTrips, measure
from brokers import Transport, open_transport
from pixfleet.blobs import store_upload
from pixfleet.blobs.file import FileBlobStore
from pixfleet.envelope import BlobRef, Task

REPO = Path(__file__).resolve().parents[1]
WINDOW = 256


def tmpfs_dir() -> str | None:
    return "/dev/shm" if Path("/dev/shm").is_dir() else None


@contextlib.contextmanager
def worker_process(
    url: str, blobs: Path, group: str, *extra: str
) -> Iterator[subprocess.Popen[bytes]]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PIXFLEET_BROKER=url, PIXFLEET_BLOBS=blobs.as_uri())
    argv = [sys.executable, "-m", "consumers", "run", "-g", group, "--log-level", "warning", *extra]
    proc = subprocess.Popen(argv, cwd=REPO, env=env)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_for_consumers(transport: Transport, group: str, count: int) -> None:
    import asyncio  # noqa: PLC0415

    for _ in range(600):
        if (await transport.stats(group)).consumers >= count:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no worker of {group!r} came up")


class PixfleetClient:
    def __init__(self, transport: Transport, blob: BlobRef, group: str, channel: str) -> None:
        self.transport, self.blob, self.group, self.channel = transport, blob, group, channel
        self.numbers: dict[str, int] = {}

    async def publish(self, n: int) -> None:
        task = Task.new(self.blob, groups=(self.group,), reply_to=self.channel)
        self.numbers[task.id] = n
        await self.transport.publish(task)

    async def replies(self) -> AsyncIterator[int]:
        async with aclosing(self.transport.replies(self.channel, prefetch=WINDOW)) as it:
            async for delivery in it:
                await delivery.ack()
                yield self.numbers.pop(delivery.message.task_id)


async def pixfleet_round_trips(url: str, tasks: int, singles: int) -> RoundTrips:
    async with declared(url) as made:  # its group and reply channel deleted afterwards
        return await _round_trips(url, tasks, singles, made)


async def _round_trips(url: str, tasks: int, singles: int, made: Declared) -> RoundTrips:
    group = made.group("bench-rt")
    with tempfile.TemporaryDirectory(dir=tmpfs_dir()) as tmp:
        blobs = Path(tmp)
        extra = ("-c", "1", "--prefetch", str(WINDOW), "--pipeline", "bench.noop:run")
        async with open_transport(url) as transport:
            blob = await store_upload(FileBlobStore(blobs), b"\xff\xd8 not decoded", "image/jpeg")
            channel = made.channel(await transport.open_reply_channel())
            with worker_process(url, blobs, group, *extra):
                await wait_for_consumers(transport, group, 1)
                client = PixfleetClient(transport, blob, group, channel)
                return await measure(client, tasks=tasks, window=WINDOW, singles=singles)
