"""``uploader config show [--json]``: the effective settings, where each came from, secrets
masked (the URLs' passwords, through :func:`pixfleet.settings.redact`)."""

from __future__ import annotations

import json

import typer

from pixfleet.config import Effective, WorkerOptions, load_worker
from pixfleet.errors import ConfigError
from pixfleet.runtime import effective_or_fail, fail
from pixfleet.settings import redact

config_app = typer.Typer(no_args_is_help=True, help="The effective configuration.")


@config_app.command("show")
def show_cmd(
    broker: str = typer.Option(None, "--broker", help="As a command would be given it."),
    blobs: str = typer.Option(None, "--blobs", help="As a command would be given it."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
) -> None:
    """Print every setting with its source: flag, env PIXFLEET_*, the config file or default.

    Precedence: flags > environment > config file (--config, $PIXFLEET_CONFIG, else
    pixfleet.toml in the data dir) > defaults."""
    effective = effective_or_fail(broker=broker, blobs=blobs)
    values = shown(effective) | worker_shown()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "config_file": str(effective.config_file),
                    "config_file_found": effective.config_found,
                    "settings": {k: {"value": v, "source": src} for k, (v, src) in values.items()},
                }
            )
        )
        return
    found = "" if effective.config_found else "  (not found: defaults and environment only)"
    typer.echo(f"config file  {effective.config_file}{found}")
    width = max(len(k) for k in values)
    for key, (value, source) in values.items():
        typer.echo(f"{key:<{width}}  {value}  [{source}]")


def shown(effective: Effective) -> dict[str, tuple[str, str]]:
    """Every value as text with its source; passwords in URLs masked."""
    s = effective.settings

    def source(key: str) -> str:
        found = effective.sources[key]
        return (
            "default (under home)" if found == "default" and key in ("broker", "blobs") else found
        )

    return {
        "home": (str(s.home), source("home")),
        "broker": (redact(s.broker_url), source("broker")),
        "blobs": (redact(s.blobs_url), source("blobs")),
        "log_level": (s.log_level or "(command default)", source("log_level")),
    }


def worker_shown() -> dict[str, tuple[str, str]]:
    """``worker run``'s options that env/config set, as ``worker.KEY``; the rest are the
    worker's defaults (or its flags)."""
    try:
        worker = load_worker()
    except ConfigError as exc:
        fail(exc.one_line())
    return {
        f"worker.{key}": (
            str(worker.values[key]) if key in worker.values else "(worker default)",
            worker.sources.get(key, "default"),
        )
        for key in WorkerOptions.model_fields
    }
