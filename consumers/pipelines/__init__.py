"""Pipelines by name. No global registry: names resolve to import paths.

``worker run --group thumbs`` runs the built-in ``thumbs`` pipeline; ``--pipeline`` names a
built-in, a pipeline an installed package registers under the ``pixfleet.pipelines`` entry-point
group, or a user function as ``package.module:function`` (a :data:`Pipeline`), found on
``sys.path`` and in the current directory (appended to ``sys.path``, so it never shadows an
installed module). Built-in names win over entry points of the same name.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points
from typing import cast

from consumers.pipelines.base import Limits, Pipeline, PipelineOutput, Rendition
from pixfleet.errors import PipelineUnknown

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "Limits",
    "Pipeline",
    "PipelineOutput",
    "Rendition",
    "known",
    "pipeline_name",
    "resolve",
]

BUILTIN: dict[str, str] = {
    "thumbs": "consumers.pipelines.thumbs:run",
}

#: Installed packages register pipelines here: ``[project.entry-points."pixfleet.pipelines"]``
#: ``faces = "mypkg.faces:run"``.
ENTRY_POINT_GROUP = "pixfleet.pipelines"


def known() -> dict[str, str]:
    """Every pipeline with a name: entry points, then built-ins (which win); name -> target."""
    registered = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**registered, **BUILTIN}


def pipeline_name(group: str, spec: str | None = None) -> str:
    """What a worker of ``group`` runs, as it declares it: the name, or ``module:function``."""
    return spec or group


def resolve(group: str, spec: str | None = None) -> Pipeline:
    """The pipeline for ``group``: ``spec`` if given (a name or ``module:function``), else the
    pipeline named like the group. Raises :class:`PipelineUnknown`."""
    names = known()
    target = names.get(spec or group, spec)
    if not target:
        raise PipelineUnknown(
            f"no pipeline named {group!r} (known: {', '.join(sorted(names))}); "
            "pass --pipeline NAME or --pipeline package.module:function"
        )
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise PipelineUnknown(f"pipeline {target!r} is not 'package.module:function'")
    fn = getattr(_import(module_name), attr, None)
    if not callable(fn):
        raise PipelineUnknown(f"{target!r} is not a callable in {module_name!r}")
    return cast(Pipeline, fn)


def _import(module_name: str) -> object:
    """Import ``module_name`` from ``sys.path`` or the current directory. The directory stays
    on ``sys.path``: the pool's processes (spawned with this ``sys.path``) import it too."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.append(here)
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineUnknown(
            f"cannot import pipeline module {module_name!r}: {exc} (searched sys.path and {here})"
        ) from exc
