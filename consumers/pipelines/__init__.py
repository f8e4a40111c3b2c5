"""Pipelines by name. No global registry: names resolve to import paths.

``worker run --group thumbs`` runs the built-in ``thumbs`` pipeline; ``--pipeline`` names a
built-in or a user function as ``package.module:function`` (a :data:`Pipeline`).
"""

from __future__ import annotations

import importlib
from typing import cast

from consumers.pipelines.base import Limits, Pipeline, PipelineOutput, Rendition
from pixfleet.errors import PipelineUnknown

__all__ = ["BUILTIN", "Limits", "Pipeline", "PipelineOutput", "Rendition", "resolve"]

BUILTIN: dict[str, str] = {
    "thumbs": "consumers.pipelines.thumbs:run",
}


def resolve(group: str, spec: str | None = None) -> Pipeline:
    """The pipeline for ``group``: ``spec`` if given (built-in name or ``module:function``),
    else the built-in named like the group. Raises :class:`PipelineUnknown`."""
    target = BUILTIN.get(spec or group, spec)
    if not target:
        raise PipelineUnknown(
            f"no pipeline named {group!r} (built-in: {', '.join(sorted(BUILTIN))}); "
            "pass --pipeline NAME or --pipeline package.module:function"
        )
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise PipelineUnknown(f"pipeline {target!r} is not 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineUnknown(f"cannot import pipeline module {module_name!r}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise PipelineUnknown(f"{target!r} is not a callable in {module_name!r}")
    return cast(Pipeline, fn)
