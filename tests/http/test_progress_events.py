"""The task event stream forwards a worker's progress reports (issue 12): each new report of a
pending group is one ``progress`` event, before that group's ``result``; a report that did not
change is not sent again."""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import UTC, datetime

from pixfleet.envelope import WorkerInfo
from pixfleet.progress import Progress, write_progress
from pixfleet.records import read_task, record_result
from tests.helpers import images
from tests.helpers.tasks import make_result
from tests.http.inprocess import Api, files, parse_sse


async def test_events_forward_progress_before_the_result(api: Api) -> None:
    response = await api.client.post(
        "/v1/uploads", files=files(("a.jpg", images.jpeg_bytes())), data={"groups": "thumbs"}
    )
    task = await read_task(api.store, response.json()["tasks"][0]["task_id"])
    assert task is not None
    worker = WorkerInfo(id="w:1", host=socket.gethostname(), pid=os.getpid())

    def report(step: str, done: int) -> Progress:
        return Progress(
            task_id=task.id, group="thumbs", step=step, done=done, total=4, worker=worker,
            at=datetime.now(UTC),
        )  # fmt: skip

    await write_progress(api.store, report("store", 1))

    async def later() -> None:
        await asyncio.sleep(0.3)  # several polls of the stream see the same report: sent once
        await write_progress(api.store, report("store", 3))
        await asyncio.sleep(0.3)
        await record_result(api.store, make_result(task, "thumbs"))

    writer = asyncio.create_task(later())
    events = parse_sse((await api.client.get(f"/v1/tasks/{task.id}/events")).text)
    await writer
    assert [(e, d.get("done")) for e, d in events] == [
        ("progress", 1),
        ("progress", 3),
        ("result", None),
        ("done", None),
    ]
    assert events[0][1]["step"] == "store" and events[0][1]["task_id"] == task.id
