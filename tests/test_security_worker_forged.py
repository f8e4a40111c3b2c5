"""A forged task id on every transport: a task that re-uses a victim's task id with another blob
is dead-lettered once with its reason (``task.conflict``); the victim's outputs, recorded result
and reply channel stay as they were, and the worker goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from brokers import open_transport
from consumers.pool import PipelinePool
from pixfleet.blobs import store_upload
from pixfleet.blobs.file import FileBlobStore
from pixfleet.envelope import decode_task
from pixfleet.errors import TaskConflict
from pixfleet.records import read_task
from tests.conftest import BrokerUnderTest
from tests.helpers import images
from tests.helpers.workrig import WorkRig


@pytest.fixture
async def rig(tmp_path: Path, broker: BrokerUnderTest) -> AsyncIterator[WorkRig]:
    async with open_transport(broker.url) as transport, PipelinePool(1) as pool:
        yield WorkRig(transport, FileBlobStore(tmp_path / "blobs"), pool)


async def test_a_forged_task_id_is_dead_lettered_and_changes_nothing_of_the_victim(
    rig: WorkRig,
) -> None:
    victim = await rig.put(images.jpeg_bytes(seed=1))
    await rig.work()
    assert [r.task_id for r in await rig.replies()] == [victim.id]
    result = await rig.recorded(victim)
    assert result.status == "ok"
    outputs = rig.output_files(result)
    assert len(outputs) == 4

    other = await store_upload(rig.blobs, images.jpeg_bytes(seed=7), "image/jpeg")
    forged = victim.model_copy(update={"blob": other, "correlation_id": "forged"})
    await rig.transport.publish(forged)  # same id, same reply channel, other bytes
    good = await rig.put(images.jpeg_bytes(seed=3))
    await rig.work()

    assert [r.task_id for r in await rig.replies()] == [good.id]  # nothing for the forged one
    assert await rig.recorded(victim) == result
    assert rig.output_files(result) == outputs
    assert not [p for p in rig.blobs.root.rglob("outputs/**/*") if other.sha256[:16] in str(p)]
    assert await read_task(rig.blobs, victim.id) == victim  # the id stays bound to its blob
    dead = await rig.transport.dead_letters(rig.group)
    [refused] = [d for d in dead if TaskConflict.code in d.reason]
    assert len(dead) == 1 and decode_task(refused.body).blob == other
