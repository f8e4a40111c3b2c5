"""The no-op pipeline of the round-trip rows: no output, no work (``--pipeline bench.noop:run``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from consumers.pipelines.base import Limits, PipelineOutput


def run(data: bytes, params: Mapping[str, Any], limits: Limits) -> PipelineOutput:
    return PipelineOutput(renditions=())
