"""The built-in pipelines' parameter models, shared by both sides: the uploader checks ``-p``
before anything is published (for a group whose workers declared the pipeline:
:mod:`pixfleet.declared`), and the pipeline checks again (a task may come from anywhere).

A pipeline's parameters are a pydantic model that forbids unknown keys; a refusal is
:class:`~pixfleet.errors.ParamsInvalid` (``params.invalid``) naming the first bad field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pixfleet.errors import ConfigError, ParamsInvalid

M = TypeVar("M", bound=BaseModel)


class ThumbParams(BaseModel):
    """``thumbs``: long-edge ``sizes`` in px (16..8192), ``formats``, ``quality`` (1..95)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sizes: list[int] = Field(default=[256, 1024], min_length=1, max_length=8)
    formats: list[Literal["jpeg", "webp"]] = Field(default=["jpeg", "webp"], min_length=1)
    quality: int = Field(default=82, ge=1, le=95)

    @field_validator("sizes")
    @classmethod
    def _in_range(cls, sizes: list[int]) -> list[int]:
        bad = [s for s in sizes if not 16 <= s <= 8192]
        if bad:
            raise ValueError(f"sizes must be within 16..8192 px, got {bad}")
        return sizes


#: The parameter model of each built-in pipeline, by name (= its group's name by default).
PARAMS: dict[str, type[BaseModel]] = {"thumbs": ThumbParams}


def parse(model: type[M], params: Mapping[str, Any], pipeline: str) -> M:
    """``params`` validated by ``model``; raises :class:`ParamsInvalid` naming the field."""
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "params"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ParamsInvalid(f"{pipeline} params: {where}: {message}") from exc


def from_pairs(pairs: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (``-p``) as params: each value is JSON, or else a bare string; a
    value that starts like JSON (``[``, ``{``, ``"``) but does not parse is refused
    (:class:`ParamsInvalid`), as is a pair without ``=`` (:class:`ConfigError`)."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param expects KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(raw)
        except ValueError as exc:
            if raw.lstrip()[:1] in ("[", "{", '"'):
                raise ParamsInvalid(f"-p {key}: {raw!r} is not valid JSON ({exc})") from exc
            params[key] = raw
    return params
