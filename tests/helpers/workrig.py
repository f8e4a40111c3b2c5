"""A worker in-process on a real transport, blob store and process pool (the worker tests and
the security tests)."""

from __future__ import annotations

import asyncio
import dataclasses
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pydantic import JsonValue

from brokers import ReplyChannels, TaskQueue, Transport
from consumers.events import NO_EVENTS, WorkerEvents, WorkerStats
from consumers.pipelines import Pipeline, resolve
from consumers.pool import PipelinePool
from consumers.worker import Worker, WorkerSettings
from pixfleet.blobs import BlobStore, store_upload
from pixfleet.blobs.file import FileBlobStore
from pixfleet.envelope import BlobRef, Result, Task
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
        """Upload ``data`` and publish a task of it to this rig's group."""
        ref = await store_upload(self.blobs, data, "image/jpeg")
        return await self._publish(ref, params, None)

    async def publish(
        self, ref: BlobRef, *, deadline: datetime | None = None, **params: JsonValue
    ) -> Task:
        return await self._publish(ref, params, deadline)

    async def _publish(
        self, ref: BlobRef, params: dict[str, JsonValue], deadline: datetime | None
    ) -> Task:
        task = Task.new(ref, groups=(self.group,), params=params, deadline=deadline)
        await self.transport.publish(task)
        return task

    async def work(
        self,
        pipeline: Pipeline | None = None,
        *,
        blobs: BlobStore | None = None,
        limits: Limits | None = None,
        prefetch: int = 0,
        delivery_limit: int | None = None,
        events: WorkerEvents = NO_EVENTS,
        tasks: TaskQueue | None = None,
        replies: ReplyChannels | None = None,
        reply_grace: float = 0.2,
    ) -> WorkerStats:
        """Run a burst worker (concurrency 1) until the group is empty, within 60 s."""
        settings = WorkerSettings(
            group=self.group,
            concurrency=1,
            prefetch=prefetch,
            burst=True,
            retry_backoff=0.05,
            reply_grace=reply_grace,
        )
        if limits is not None:
            settings = dataclasses.replace(settings, limits=limits)
        if delivery_limit is not None:
            settings = dataclasses.replace(settings, delivery_limit=delivery_limit)
        worker = Worker(
            tasks=tasks or self.transport,
            replies=replies or self.transport,
            blobs=blobs or self.blobs,
            pipeline=pipeline or resolve(self.group, "thumbs"),
            pool=self.pool,
            settings=settings,
            events=events,
        )
        async with asyncio.timeout(60):
            return await worker.run()

    async def replies(self) -> list[Result]:
        """This rig's results on the default channel since the last call (shared by the tests
        of a session on some transports), duplicates included, in arrival order."""
        out: list[Result] = []
        async with aclosing(self.transport.replies("results", until_empty=True)) as it:
            async for delivery in it:
                if delivery.message.group == self.group:
                    out.append(delivery.message)
                await delivery.ack()
        return out

    async def results(self) -> dict[str, Result]:
        """:meth:`replies` by task id (the last one of each)."""
        return {r.task_id: r for r in await self.replies()}

    async def recorded(self, task: Task) -> Result:
        result = await read_result(self.blobs, task.id, self.group)
        assert result is not None, f"no result recorded for {task.id}"
        return result

    def output_files(self, result: Result) -> dict[Path, bytes]:
        return {(p := self.blobs.path_for_key(o.uri)): p.read_bytes() for o in result.outputs}
