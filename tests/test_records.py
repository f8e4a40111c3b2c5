"""Task and completion records: one result per (task id, group), readable by any instance."""

from __future__ import annotations

import asyncio

import pytest

from pixfleet import records
from pixfleet.blobs.memory import MemoryBlobStore
from pixfleet.errors import TaskConflict
from tests.helpers.tasks import fake_blob, make_result, make_task


async def test_a_task_id_is_recorded_once() -> None:
    store = MemoryBlobStore()
    first = make_task("thumbs")
    again = first.model_copy(update={"reply_to": "reply.other"})
    assert await records.record_task(store, first) == first
    assert await records.record_task(store, again) == first  # the earlier submission wins
    assert await records.read_task(store, first.id) == first
    assert await records.read_task(store, "unknown") is None


async def test_exactly_one_completion_wins_a_race() -> None:
    store = MemoryBlobStore()
    task = make_task("thumbs")
    contenders = [
        make_result(task, "thumbs").model_copy(update={"attempt": n}) for n in range(1, 9)
    ]
    recorded = await asyncio.gather(*(records.record_result(store, r) for r in contenders))
    assert len({r.attempt for r in recorded}) == 1
    assert await records.read_result(store, task.id, "thumbs") == recorded[0]


async def test_task_state_follows_its_groups() -> None:
    store = MemoryBlobStore()
    task = make_task("thumbs", "faces")
    await records.record_task(store, task)
    state = await records.task_state(store, task.id)
    assert state is not None and state.state == "queued"
    await records.record_result(store, make_result(task, "thumbs"))
    state = await records.task_state(store, task.id)
    assert state is not None and state.state == "queued" and set(state.results) == {"thumbs"}
    await records.record_result(store, make_result(task, "faces", ok=False))
    state = await records.task_state(store, task.id)
    assert state is not None and state.state == "error"
    assert await records.task_state(store, "nope") is None


async def test_reply_marks_are_idempotent() -> None:
    store = MemoryBlobStore()
    assert not await records.was_replied(store, "t1", "thumbs")
    await records.mark_replied(store, "t1", "thumbs")
    await records.mark_replied(store, "t1", "thumbs")
    assert await records.was_replied(store, "t1", "thumbs")


async def test_binding_and_reading_the_result_in_one_trip() -> None:
    store = MemoryBlobStore()
    task = make_task("thumbs")
    assert await records.bind_and_read_result(store, task, "thumbs") is None
    assert await records.read_task(store, task.id) == task  # recorded now
    result = make_result(task, "thumbs")
    await records.record_result(store, result)
    assert await records.bind_and_read_result(store, task, "thumbs") == result
    # the same id with another blob is refused, though a result is recorded
    forged = task.model_copy(update={"blob": fake_blob(b"other bytes")})
    with pytest.raises(TaskConflict):
        await records.bind_and_read_result(store, forged, "thumbs")
    assert await records.read_task(store, task.id) == task
