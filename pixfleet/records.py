"""Task and result records in the blob store: the shared state behind idempotent results.

Every machine of a deployment shares the blob store, so records written there are visible to
every worker (whatever the transport) and every ingress instance:

* ``records/tasks/<id[:2]>/<task id>.json`` - the task as submitted (its groups say which
  results to expect); written by the submission path, create-if-absent, so a re-submission
  with the same task id (an idempotency key) keeps the first task. It binds the task id to the
  task's blob: a worker records a task it finds unrecorded (published straight onto the broker)
  the same way, and refuses a task whose id is recorded with another blob (:func:`bind_task`);
* ``records/results/<id[:2]>/<task id>/<group>.json`` - the completion record: the first result
  of (task id, group), written create-if-absent by the worker *before* it replies, so exactly one
  result per (task id, group) exists however often the task is published or redelivered;
* ``records/results/<id[:2]>/<task id>/<group>.replied`` - written once that result's reply was
  confirmed by the broker, so a redelivery re-publishes a missing reply but never a confirmed one;
* ``records/results/<id[:2]>/<task id>/<group>.dead`` - written once an ``error`` result's task
  was dead-lettered (confirmed), so a later copy of that task (published again, or a second
  retry chain after a lost settle) is settled without a second dead letter.

Records are JSON envelopes (validated on read, like anything from the wire).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pixfleet.blobs import BlobStore, check_key
from pixfleet.envelope import Result, Task, decode_result, decode_task, encode
from pixfleet.errors import BlobNotFound, TaskConflict

_ROOT = "records"


def task_key(task_id: str) -> str:
    return check_key(f"{_ROOT}/tasks/{task_id[:2]}/{task_id}.json")


def result_key(task_id: str, group: str) -> str:
    return check_key(f"{_ROOT}/results/{task_id[:2]}/{task_id}/{group}.json")


def replied_key(task_id: str, group: str) -> str:
    return check_key(f"{_ROOT}/results/{task_id[:2]}/{task_id}/{group}.replied")


def dead_key(task_id: str, group: str) -> str:
    return check_key(f"{_ROOT}/results/{task_id[:2]}/{task_id}/{group}.dead")


async def record_task(store: BlobStore, task: Task) -> Task:
    """Record ``task`` unless a task with its id is recorded already; returns the recorded one
    (the earlier task when the id was submitted before)."""
    if await store.create(task_key(task.id), encode(task)):
        return task
    return decode_task(await store.read(task_key(task.id)))


async def read_task(store: BlobStore, task_id: str) -> Task | None:
    try:
        return decode_task(await store.read(task_key(task_id)))
    except BlobNotFound:
        return None


async def bind_task(store: BlobStore, task: Task) -> Task:
    """The recorded task of ``task.id`` - recorded now if there was none - provided it names
    the same blob (sha256) as ``task``; else :class:`~pixfleet.errors.TaskConflict`."""
    recorded = await read_task(store, task.id) or await record_task(store, task)
    return same_blob(recorded, task)


async def bind_and_read_result(store: BlobStore, task: Task, group: str) -> Result | None:
    """:func:`bind_task`, then :func:`read_result` of (task, ``group``): both in one trip to the
    store (:meth:`~pixfleet.blobs.BlobStore.read_many`). The task record is still bound first:
    a :class:`~pixfleet.errors.TaskConflict` is raised before any result is looked at."""
    tkey, rkey, body = task_key(task.id), result_key(task.id, group), encode(task)
    recorded, result = await store.read_many([tkey, rkey], create={tkey: body})
    if recorded is None:  # deleted between its create and its read: bind the slow way
        await bind_task(store, task)
    elif recorded != body:  # recorded before, by the submission path or an earlier copy
        same_blob(decode_task(recorded), task)
    return None if result is None else decode_result(result)


def same_blob(recorded: Task, task: Task) -> Task:
    """``recorded`` if it names the blob ``task`` names; else :class:`TaskConflict`."""
    if recorded.blob.sha256 != task.blob.sha256:
        raise TaskConflict(
            f"task id {task.id} is bound to blob sha256 {recorded.blob.sha256[:16]}..., this"
            f" task names {task.blob.sha256[:16]}...: refused"
        )
    return recorded


async def record_result(store: BlobStore, result: Result) -> Result:
    """Record ``result`` as the completion of (task id, group) unless one is recorded already;
    returns the recorded result (the first one - exactly one wins across machines)."""
    key = result_key(result.task_id, result.group)
    if await store.create(key, encode(result)):
        return result
    return decode_result(await store.read(key))


async def read_result(store: BlobStore, task_id: str, group: str) -> Result | None:
    try:
        return decode_result(await store.read(result_key(task_id, group)))
    except BlobNotFound:
        return None


async def forget_error(store: BlobStore, task_id: str, group: str) -> bool:
    """Remove the completion record of (task id, group) if it holds an ``error`` result (never
    an ``ok`` one), its ``replied`` and ``dead`` marks first, so that a replayed dead task runs
    again instead of being answered from the record. True if an error record was removed."""
    recorded = await read_result(store, task_id, group)
    if recorded is None or recorded.status != "error":
        return False
    await store.delete(replied_key(task_id, group))
    await store.delete(dead_key(task_id, group))
    await store.delete(result_key(task_id, group))
    return True


async def mark_replied(store: BlobStore, task_id: str, group: str) -> None:
    """Note that the reply of (task id, group) was confirmed by the broker."""
    await store.create(replied_key(task_id, group), b"1")


async def was_replied(store: BlobStore, task_id: str, group: str) -> bool:
    return await store.exists(replied_key(task_id, group))


async def mark_dead(store: BlobStore, task_id: str, group: str) -> None:
    """Note that the task of (task id, group)'s ``error`` result was dead-lettered."""
    await store.create(dead_key(task_id, group), b"1")


async def was_dead(store: BlobStore, task_id: str, group: str) -> bool:
    return await store.exists(dead_key(task_id, group))


@dataclass(frozen=True)
class TaskState:
    """What any instance can tell about a task from the records alone."""

    task: Task
    results: dict[str, Result] = field(default_factory=dict)  # group -> recorded result

    @property
    def state(self) -> str:
        """``queued`` until every targeted group answered, then ``done`` or ``error``."""
        if any(g not in self.results for g in self.task.groups):
            return "queued"
        return "error" if any(r.status == "error" for r in self.results.values()) else "done"


async def task_state(store: BlobStore, task_id: str) -> TaskState | None:
    """The recorded task and every result recorded for its groups, or None if unknown."""
    task = await read_task(store, task_id)
    if task is None:
        return None
    results = {}
    for group in task.groups:
        result = await read_result(store, task_id, group)
        if result is not None:
            results[group] = result
    return TaskState(task, results)
