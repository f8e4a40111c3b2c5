"""Which pipeline a group runs, as its workers declare it in the shared blob store.

A worker writes ``records/groups/<group>/pipeline.json`` (``{"pipeline": NAME}``: a built-in
name, an entry-point name or ``module:function``) when it starts; the uploader reads it to check
``-p`` against that pipeline's parameter model (:mod:`pixfleet.params`) before publishing. A
group no worker has declared yet - or one running a pipeline without a model in the kernel - is
left to its workers (they check every task's params anyway). The last worker to start wins.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from pixfleet.blobs import BlobStore, check_key
from pixfleet.errors import BlobNotFound
from pixfleet.params import PARAMS, parse


def pipeline_key(group: str) -> str:
    return check_key(f"records/groups/{group}/pipeline.json")


async def declare_pipeline(store: BlobStore, group: str, pipeline: str) -> None:
    """Record that ``group``'s workers run ``pipeline`` (overwrites an earlier declaration)."""
    await store.put(pipeline_key(group), json.dumps({"pipeline": pipeline}).encode())


async def declared_pipeline(store: BlobStore, group: str) -> str | None:
    """The pipeline ``group``'s workers last declared, or None."""
    try:
        raw = await store.read(pipeline_key(group))
    except BlobNotFound:
        return None
    try:
        name = json.loads(raw).get("pipeline")
    except (ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


async def check_params(store: BlobStore, groups: Iterable[str], params: Mapping[str, Any]) -> None:
    """Check ``params`` against the model of every group's declared pipeline that has one;
    raises :class:`~pixfleet.errors.ParamsInvalid`."""
    for group in groups:
        pipeline = await declared_pipeline(store, group)
        model = PARAMS.get(pipeline) if pipeline else None
        if model is not None:
            parse(model, params, pipeline or group)
