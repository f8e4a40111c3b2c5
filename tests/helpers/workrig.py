"""A worker in-process on a real transport, blob store and process pool, for security tests."""

from __future__ import annotations

import asyncio
import dataclasses
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import JsonValue

from brokers import Transport
from consumers.pipelines import Pipeline, resolve
from consumers.pool import PipelinePool
from consumers.worker import Worker, WorkerSettings
from pixfleet.blobs import BlobStore, store_upload
from pixfleet.blobs.file import FileBlobStore
from pixfleet.envelope import Result, Task
from pixfleet.images import Limits
from pixfleet.records import read_result
from tests.helpers.tasks import unique


@dataclass
class WorkRig:
    transport: Transport
    blobs: FileBlobStore
    pool: PipelinePool
    group: str = field(default_factory=lambda: unique("sec"))

    async def put(self, data: bytes, **params: JsonValue) -> Task:
        ref = await store_upload(self.blobs, data, "image/jpeg")
        task = Task.new(ref, groups=(self.group,), params=params)
        await self.transport.publish(task)
        return task

    async def work(
        self,
        pipeline: Pipeline | None = None,
        *,
        blobs: BlobStore | None = None,
        limits: Limits | None = None,
        prefetch: int = 0,
    ) -> None:
        settings = WorkerSettings(
            group=self.group,
            concurrency=1,
            prefetch=prefetch,
            burst=True,
            retry_backoff=0.05,
            reply_grace=0.2,
        )
        if limits is not None:
            settings = dataclasses.replace(settings, limits=limits)
        worker = Worker(
            tasks=self.transport,
            replies=self.transport,
            blobs=blobs or self.blobs,
            pipeline=pipeline or resolve(self.group, "thumbs"),
            pool=self.pool,
            settings=settings,
        )
        async with asyncio.timeout(60):
            await worker.run()

    async def replies(self) -> list[Result]:
        """This rig's results on the default channel since the last call, duplicates included."""
        out: list[Result] = []
        async with aclosing(self.transport.replies("results", until_empty=True)) as it:
            async for delivery in it:
                if delivery.message.group == self.group:
                    out.append(delivery.message)
                await delivery.ack()
        return out

    async def recorded(self, task: Task) -> Result:
        result = await read_result(self.blobs, task.id, self.group)
        assert result is not None, f"no result recorded for {task.id}"
        return result

    def output_files(self, result: Result) -> dict[Path, bytes]:
        return {(p := self.blobs.path_for_key(o.uri)): p.read_bytes() for o in result.outputs}
