"""What a pipeline is: a pure function from image bytes + params to renditions.

Pipelines run in a worker's process pool, so they must be importable module-level functions and
everything they take and return must pickle. They raise :class:`~pixfleet.errors.PixfleetError`
subclasses for classified failures (``image.invalid``, ``image.too_large``, ``params.invalid``);
they never touch a broker or the blob store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pixfleet.images import Limits

__all__ = ["Limits", "Pipeline", "PipelineOutput", "Rendition"]


@dataclass(frozen=True)
class Rendition:
    name: str  # file name of the output, unique within the task (e.g. "256.webp")
    data: bytes
    width: int
    height: int
    format: str  # "jpeg", "webp", ...


@dataclass(frozen=True)
class PipelineOutput:
    renditions: tuple[Rendition, ...]
    meta: dict[str, Any] = field(default_factory=dict)


Pipeline = Callable[[bytes, Mapping[str, Any], Limits], PipelineOutput]
