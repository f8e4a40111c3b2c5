"""The effective settings of a command: flags > ``PIXFLEET_*`` environment > ``pixfleet.toml``
> defaults, with where each value came from.

The config file is ``--config PATH`` (or ``$PIXFLEET_CONFIG``) when given - then it must exist -
else ``pixfleet.toml`` in the data dir, if there is one. It holds the same keys as the
environment, in lower case and without the prefix::

    # ~/.local/share/pixfleet/pixfleet.toml
    broker = "amqp://rabbit.internal:5672/pixfleet"
    blobs = "s3://pixfleet/blobs?region=eu-west-1"
    log_level = "warning"

    [worker]             # worker run's options (env: PIXFLEET_CONCURRENCY, ...)
    group = "thumbs"
    concurrency = 4
    timeout = 30.0

Unknown keys and bad values are refused (``config.invalid``, naming the source), never ignored.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from platformdirs import user_data_dir
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pixfleet.errors import ConfigError

ENV_HOME = "PIXFLEET_HOME"
ENV_CONFIG = "PIXFLEET_CONFIG"
CONFIG_FILE = "pixfleet.toml"
WORKER_TABLE = "worker"
LOG_LEVELS = ("debug", "info", "warning", "error")
LogLevel = Literal["debug", "info", "warning", "error"]

#: Where a value came from: "flag --broker", "env PIXFLEET_BROKER", "file PATH" or "default".
Source = str


def data_dir() -> Path:
    """Where the embedded broker and the default blob store live, as an absolute path (not
    created here): ``$PIXFLEET_HOME``, else the user's data directory (platformdirs; on Linux
    ``$XDG_DATA_HOME/pixfleet``, by default ``~/.local/share/pixfleet``) - never the current
    directory, so every command finds the same broker wherever it is run from."""
    explicit = os.environ.get(ENV_HOME)
    if explicit:
        return Path(explicit).expanduser().resolve()
    return Path(user_data_dir("pixfleet", appauthor=False)).expanduser().resolve()


class Settings(BaseSettings):
    """What every command shares. ``broker``/``blobs`` unset mean the embedded defaults under
    ``home`` (:attr:`broker_url`, :attr:`blobs_url`); ``log_level`` unset means the command's
    own default (``info`` for servers, ``error`` for one-shot commands)."""

    model_config = SettingsConfigDict(
        env_prefix="PIXFLEET_", env_ignore_empty=True, extra="forbid", frozen=True
    )

    home: Path = Field(default_factory=data_dir, description="data dir (broker.db, blobs/)")
    broker: str | None = Field(default=None, description="broker URL")
    blobs: str | None = Field(default=None, description="blob store URL")
    log_level: LogLevel | None = Field(default=None, description=", ".join(LOG_LEVELS))

    @field_validator("home")
    @classmethod
    def _absolute(cls, home: Path) -> Path:
        return home.expanduser().resolve()

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, level: object) -> object:
        return level.lower() if isinstance(level, str) else level

    @property
    def broker_url(self) -> str:
        return self.broker or f"sqlite:///{self.home / 'broker.db'}"

    @property
    def blobs_url(self) -> str:
        return self.blobs or (self.home / "blobs").as_uri()


@dataclass(frozen=True)
class Effective:
    """The settings, the config file consulted (and whether it exists), and each value's
    source: ``flag ...``, ``env ...``, ``file ...`` or ``default``."""

    settings: Settings
    config_file: Path
    config_found: bool
    sources: dict[str, Source] = field(default_factory=dict)


def config_file(explicit: Path | None = None) -> Path:
    """The config file to read: ``explicit``, else ``$PIXFLEET_CONFIG`` (which ``--config``
    sets), else ``pixfleet.toml`` in the data dir (``$PIXFLEET_HOME`` or the user data dir)."""
    if explicit is not None:
        return explicit.expanduser().resolve()
    named = os.environ.get(ENV_CONFIG)
    if named:
        return Path(named).expanduser().resolve()
    return data_dir() / CONFIG_FILE


def load(config: Path | None = None, **flags: Any) -> Effective:
    """The effective settings; ``flags`` are the command-line values (None: not given).

    Raises :class:`ConfigError` for a missing explicit config file, a file that is not TOML,
    an unknown key or a bad value - naming where it came from."""
    path = config_file(config)
    explicit = config is not None or bool(os.environ.get(ENV_CONFIG))
    found = path.is_file()
    if explicit and not found:
        raise ConfigError(f"config file {path} does not exist")
    layers: list[tuple[Source, dict[str, Any]]] = [
        ("flag", {k: v for k, v in flags.items() if v is not None}),
        ("env", _env_values()),
        (f"file {path}", _file_values(path) if found else {}),
    ]
    merged: dict[str, Any] = {}
    sources: dict[str, Source] = dict.fromkeys(Settings.model_fields, "default")
    for name, values in reversed(layers):
        merged.update(values)
        sources.update({key: _label(name, key) for key in values})
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, sources)) from exc
    return Effective(settings, path, found, sources)


def _env_values() -> dict[str, Any]:
    return dict(EnvSettingsSource(Settings)())


def _file_values(path: Path) -> dict[str, Any]:
    try:
        values = dict(TomlConfigSettingsSource(Settings, toml_file=path)())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    values.pop(WORKER_TABLE, None)  # worker run's own table: load_worker
    unknown = sorted(set(values) - set(Settings.model_fields))
    if unknown:
        known = ", ".join(Settings.model_fields)
        raise ConfigError(f"config file {path}: unknown key(s) {unknown} (known: {known})")
    return values


def _label(layer: Source, key: str) -> Source:
    if layer == "flag":
        return f"flag --{key.replace('_', '-')}"
    if layer == "env":
        return f"env PIXFLEET_{key.upper()}"
    return layer


def _explain(exc: ValidationError, sources: Mapping[str, Source]) -> str:
    first = exc.errors()[0]
    key = str(first["loc"][0]) if first["loc"] else "settings"
    where = sources.get(key, "settings")
    return f"{key} ({where}): {first['msg']}"


# -- worker run's options --------------------------------------------------------------------


class WorkerOptions(BaseModel):
    """``worker run``'s options that the environment (``PIXFLEET_<KEY>``) and the config
    file's ``[worker]`` table may set; None: not set there. Types are checked here, ranges by
    the worker (:mod:`consumers.options`, the same bounds as its flags)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: str | None = None
    pipeline: str | None = None
    concurrency: int | None = None
    prefetch: int | None = None
    timeout: float | None = None
    delivery_limit: int | None = None
    drain_timeout: float | None = None
    memory_limit: int | None = None
    metrics_port: int | None = None


@dataclass(frozen=True)
class WorkerEffective:
    """The worker options that were set (flag, env or file) and where each came from."""

    values: dict[str, Any]
    sources: dict[str, Source]


def load_worker(config: Path | None = None, **flags: Any) -> WorkerEffective:
    """``worker run``'s options: flags (None: not given) > ``PIXFLEET_<KEY>`` > the config
    file's ``[worker]`` table. Raises :class:`ConfigError` naming the source of a bad value."""
    path = config_file(config)
    layers: list[tuple[Source, dict[str, Any]]] = [
        ("flag", {k: v for k, v in flags.items() if v is not None}),
        ("env", _worker_env()),
        (f"file {path} [worker]", _worker_file(path)),
    ]
    merged: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for name, values in reversed(layers):
        merged.update(values)
        sources.update({key: _label(name, key) for key in values})
    try:
        options = WorkerOptions.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, sources)) from exc
    return WorkerEffective(options.model_dump(exclude_none=True), sources)


def _worker_env() -> dict[str, Any]:
    found = {key: os.environ.get(f"PIXFLEET_{key.upper()}") for key in WorkerOptions.model_fields}
    return {key: value for key, value in found.items() if value}


def _worker_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        table = tomllib.loads(path.read_text()).get(WORKER_TABLE, {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [{WORKER_TABLE}] must be a table")
    return table
