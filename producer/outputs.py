"""Looking a task up in the records and copying its outputs out of the blob store
(``uploader get`` / ``fetch``, ``Client.get`` / ``fetch``): the blob store alone answers.

Outputs land in ``DIR/<group>/<name>``: both parts come from validated envelopes (a group name,
an output name: a letter or digit first, no ``/``), and every destination is checked to stay
inside ``DIR`` after symlinks are resolved, so a record can never make us write elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from pixfleet.blobs import BlobStore
from pixfleet.errors import ConfigError, PixfleetError
from pixfleet.records import TaskState, task_state


class TaskNotFound(PixfleetError):
    """No task with this id is recorded in the blob store."""

    code = "task.not_found"


async def lookup(store: BlobStore, task_id: str) -> TaskState:
    """A task's recorded state; :class:`TaskNotFound` for an unknown id."""
    state = await task_state(store, task_id)
    if state is None:
        raise TaskNotFound(f"no task {task_id!r} is recorded in {store.url}")
    return state


async def fetch_outputs(store: BlobStore, state: TaskState, to: Path) -> list[Path]:
    """Write each recorded output of ``state`` to ``to/<group>/<name>`` (atomically: a
    partial file never has the final name); returns the paths written, in group order."""
    root = to.expanduser().resolve()
    written = []
    for group in state.task.groups:
        result = state.results.get(group)
        if result is None:
            continue
        for output in result.outputs:
            dest = _inside(root, group, output.name)
            _write(dest, await store.read(output.uri))
            written.append(dest)
    return written


def _inside(root: Path, group: str, name: str) -> Path:
    dest = (root / group / name).resolve()
    if not dest.is_relative_to(root) or dest.parent.name != group:
        raise ConfigError(f"output {group}/{name} would leave {root}")
    return dest


def _write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
