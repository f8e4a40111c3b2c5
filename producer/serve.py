"""``uploader serve``: the HTTP ingress (API, live results, web page) on uvicorn.

One process = one stateless instance; run as many as you like behind a load balancer, all with
the same ``--broker`` and ``--blobs``. SIGTERM (or Ctrl-C) drains: the listening socket closes,
``/readyz`` turns 503, open event streams end (clients reconnect elsewhere), uploads in flight
finish (up to ``--drain-timeout`` seconds), then the process exits 0. The server itself
(uvicorn, FastAPI) is :mod:`producer.http.server`, imported only by this command.
"""

from __future__ import annotations

import math

import typer

from brokers.names import DEFAULT_GROUP
from pixfleet.bounds import seconds_option
from pixfleet.config import LogLevel
from pixfleet.errors import ConfigError
from pixfleet.images import MAX_BYTES, MAX_PIXELS
from pixfleet.runtime import (
    LogLevelOpt,
    cli_urls,
    configure_logging,
    effective_level,
    fail,
    run_async,
    settings_or_fail,
)
from producer.http.settings import ENV_TOKEN, MIB, IngressLimits, ServeSettings

GroupsOpt = typer.Option(
    [DEFAULT_GROUP], "--groups", "--group", "-g", help="Default target group(s); comma-separated."
)
RequestTimeoutOpt = typer.Option(
    300.0, callback=seconds_option("--request-timeout", low=0.1), help="Seconds per upload."
)
DrainTimeoutOpt = typer.Option(
    30.0, callback=seconds_option("--drain-timeout"), help="Seconds SIGTERM waits for work."
)
TokenOpt = typer.Option(
    None, envvar=ENV_TOKEN, help="Bearer token required by /v1 (default: no auth)."
)


def serve_cmd(  # noqa: PLR0917 - Typer commands take one positional per option
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8080, min=0, max=65535, help="Port to listen on (0: any free)."),
    group: list[str] = GroupsOpt,
    token: str = TokenOpt,
    cors_origin: list[str] = typer.Option([], help="Allow this browser origin (repeatable)."),
    max_file_bytes: int = typer.Option(MAX_BYTES, min=1, help="Largest file."),
    max_request_bytes: int = typer.Option(256 * MIB, min=1, help="Largest request body."),
    max_files: int = typer.Option(16, min=1, help="Most files per request."),
    max_pixels: int = typer.Option(MAX_PIXELS, min=1, help="Largest image (header)."),
    request_timeout: float = RequestTimeoutOpt,
    max_in_flight: int = typer.Option(64, min=1, help="Uploads at once, then 429."),
    drain_timeout: float = DrainTimeoutOpt,
    broker: str = typer.Option(None, "--broker", help="Broker URL (default: $PIXFLEET_BROKER)."),
    blobs: str = typer.Option(None, "--blobs", help="Blob store URL (default: $PIXFLEET_BLOBS)."),
    log_level: LogLevel | None = LogLevelOpt,
    debug: bool = typer.Option(False, "--debug", help="Print tracebacks."),
) -> None:
    """Serve the HTTP API and the upload page until SIGTERM/SIGINT (which drain)."""
    level = effective_level(log_level, settings_or_fail(log_level=log_level).log_level, "info")
    configure_logging("debug" if debug else level)
    broker_url, blobs_url = cli_urls(broker, blobs)
    try:
        limits = IngressLimits(
            max_file_bytes, max_request_bytes, max_files, max_pixels, request_timeout,
            max_in_flight,
        )  # fmt: skip
        settings = ServeSettings(
            broker_url,
            blobs_url,
            tuple(g.strip() for value in group for g in value.split(",") if g.strip()),
            limits,
            token=token or None,
            cors_origins=tuple(cors_origin),
        )
    except ConfigError as exc:
        fail(exc.one_line())
    listen = (host, port, math.ceil(drain_timeout), "debug" if debug else level)
    run_async(_serve(settings, listen), debug=debug)


async def _serve(settings: ServeSettings, listen: tuple[str, int, int, str]) -> None:
    """Run the server; uvicorn and FastAPI are imported here, so that the other commands of
    ``uploader`` start without them."""
    from producer.http.server import Listen, serve  # noqa: PLC0415 - see the docstring

    await serve(settings, Listen(*listen))
