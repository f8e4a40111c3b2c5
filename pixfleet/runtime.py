"""What both command-line entry points share: logging set-up, one-line errors with a hint,
exit codes, and the root options (``--config``, ``--version``).

Library code only ever calls ``logging.getLogger(__name__)``; logging is configured here, from
the CLIs, and nowhere else. A closed stdout (``uploader results | head -1``) is handled here
once, for every command: the reader stopped reading, so the command stops quietly with exit 0 -
no traceback, no ``internal.error``, no "Exception ignored" at interpreter exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer

from pixfleet.config import ENV_CONFIG, Effective, LogLevel, Settings, load
from pixfleet.errors import ConfigError, PixfleetError
from pixfleet.logs import LOG_FORMATS, JsonFormatter
from pixfleet.storage import check_local_storage

try:  # Typer >= 0.2x carries its own copy of click; older ones use click itself
    from typer._click import exceptions as cli_errors
except ImportError:  # pragma: no cover - depends on the Typer installed
    from click import exceptions as cli_errors  # type: ignore[no-redef]  # reason: same API

T = TypeVar("T")

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3  # `uploader enqueue --wait` gave up with results still pending
EXIT_INTERRUPTED = 130


#: Where ``--log-format`` and ``PIXFLEET_LOG_FORMAT`` choose ``text`` or ``json`` lines.
ENV_LOG_FORMAT = "PIXFLEET_LOG_FORMAT"
_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def set_log_format(log_format: str | None) -> None:
    """Remember ``--log-format`` (a CLI's root option) for :func:`configure_logging`; an
    unknown format is one ``error[config.invalid]`` line and exit 2."""
    if log_format is None:
        return
    if log_format not in LOG_FORMATS:
        fail(
            ConfigError(
                f"log format {log_format!r} (--log-format, {ENV_LOG_FORMAT}) is not one of "
                f"{', '.join(LOG_FORMATS)}"
            ).one_line(),
            EXIT_USAGE,
        )
    os.environ[ENV_LOG_FORMAT] = log_format  # child processes (the pool) log the same way


#: What to try, by error code (or its family): appended to the CLI's one error line.
HINTS: dict[str, str] = {
    "config": "see --help; `uploader config show` prints the effective settings and their sources",
    "broker.unavailable": "is the broker running? it is --broker, $PIXFLEET_BROKER or `broker` "
    "in pixfleet.toml (`uploader config show`)",
    "broker.auth_failed": "check the user, password and permissions the broker URL carries",
    "broker.blocked": "the broker refuses publishes for now (memory or disk alarm); retry later",
    "storage": "point PIXFLEET_HOME (or --broker/--blobs) at a writable directory with free space",
    "blob": "check the blob store: --blobs, $PIXFLEET_BLOBS or `blobs` in pixfleet.toml",
    "pipeline.unknown": "`worker pipelines` lists the known pipelines",
    "input.missing": "check the path",
    "input.unreadable": "check the file's permissions",
    "input.empty": "the file has no bytes (an unfinished copy?)",
    "input.too_large": "raise --max-bytes / --max-pixels, or shrink the image",
    "input.not_image": "give JPEG, PNG, GIF, WebP, TIFF or BMP files",
    "input.none": "give image files, or directories holding them",
    "params": "docs/pipelines.md lists each pipeline's parameters",
    "result.timeout": "is a worker serving the group (`worker run --group G`)? late results: "
    "`uploader results`",
}

#: What ``--log-level`` accepts (anything else is a usage error).
LogLevelOpt = typer.Option(
    None,
    "--log-level",
    help="debug, info, warning or error (default: $PIXFLEET_LOG_LEVEL, config, else info).",
    show_default=False,
)


def with_hint(exc: PixfleetError) -> str:
    """``exc`` as its one line, plus what to try when its code (or family) has a hint."""
    hint = HINTS.get(exc.code) or HINTS.get(exc.code.split(".")[0])
    line = exc.one_line()
    return f"{line} (hint: {hint})" if hint and "hint:" not in line else line


def configure_logging(level: str = "info") -> None:
    """Log to stderr at ``level``, as text or (``PIXFLEET_LOG_FORMAT=json``) one JSON object
    per line (:class:`pixfleet.logs.JsonFormatter`)."""
    log_format = os.environ.get(ENV_LOG_FORMAT, "text").strip().lower() or "text"
    set_log_format(log_format)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT)
    )
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), handlers=[handler]
    )  # a no-op where logging is configured already (under pytest)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    if level.lower() != "debug":
        # aiormq/aio-pika log every failed connection attempt at ERROR; the transport turns
        # those into its own warnings and one-line errors, so theirs are noise here.
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)
        logging.getLogger("aio_pika").setLevel(logging.CRITICAL)
        # aiokafka logs a refused idempotent producer (and other failures the transport
        # reports itself as one error line) at ERROR too.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def effective_level(flag: LogLevel | None, configured: LogLevel | None, default: str) -> str:
    """The log level: the flag, else the configured one (env, file), else ``default``."""
    return flag or configured or default


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    sys.stderr.write(message.rstrip("\n") + "\n")
    raise SystemExit(code)


def run_async(main: Coroutine[Any, Any, T], *, debug: bool = False) -> T:
    """Run ``main``; a :class:`PixfleetError` becomes one ``error[code]: ...`` line and exit 1.

    With ``debug`` the traceback is printed as well.
    """
    try:
        return asyncio.run(main)
    except BrokenPipeError:
        stdout_closed()
    except PixfleetError as exc:
        if debug:
            logging.getLogger("pixfleet").exception("failed")
        fail(with_hint(exc))
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:
        # A bug or an unclassified library failure: still one line (traceback with --debug).
        logging.getLogger("pixfleet").log(
            logging.ERROR if debug else logging.DEBUG, "unexpected failure", exc_info=True
        )
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        fail(f"error[internal.error]: {text} (run with --debug for the traceback)")


def effective_or_fail(**flags: Any) -> Effective:
    """The effective settings with their sources (:func:`pixfleet.config.load`), or one error
    line and exit 1."""
    try:
        return load(**flags)
    except PixfleetError as exc:
        fail(with_hint(exc))


def settings_or_fail(**flags: Any) -> Settings:
    """The effective settings, or one error line and exit 1."""
    return effective_or_fail(**flags).settings


def checked_urls(settings: Settings, *, blobs: bool = True) -> tuple[str, str]:
    """The broker and blob store URLs, after a pre-flight of their local directories (a
    read-only or full data dir is ``storage.*``, not an unreachable broker)."""
    try:
        check_local_storage(settings.broker_url, settings.blobs_url if blobs else "")
    except PixfleetError as exc:
        fail(with_hint(exc))
    return settings.broker_url, settings.blobs_url


# -- root options of both CLIs ---------------------------------------------------------------


def package_version() -> str:
    try:
        return version("pixfleet")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "0+unknown"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"pixfleet {package_version()}")
        raise typer.Exit


ConfigOpt = typer.Option(
    None,
    "--config",
    envvar=ENV_CONFIG,
    dir_okay=False,
    help="Config file (TOML; default: pixfleet.toml in the data dir, if there is one).",
    show_default=False,
)
VersionOpt = typer.Option(
    False, "--version", is_eager=True, callback=_show_version, help="Print the version and exit."
)


LogFormatOpt = typer.Option(
    None,
    "--log-format",
    help="Log lines as text or json (one object per line); env PIXFLEET_LOG_FORMAT.",
)


def root_options(
    config: Path = ConfigOpt, log_format: str = LogFormatOpt, _version: bool = VersionOpt
) -> None:
    """The root callback of both CLIs: ``--version``, ``--log-format`` (:func:`set_log_format`)
    and ``--config PATH`` made the config file of this process and its children (the same as
    ``PIXFLEET_CONFIG=PATH``), so every settings look-up reads it."""
    set_log_format(log_format)
    if config is not None:
        os.environ[ENV_CONFIG] = str(config.expanduser().resolve())


def cli_urls(
    broker: str | None, blobs: str | None = None, *, blobs_used: bool = True
) -> tuple[str, str]:
    """The broker and blob store URLs of a command given ``--broker``/``--blobs``: flags >
    env > config file > data dir, after a pre-flight of their local directories. A bad
    configuration or storage is one error line and exit 1."""
    return checked_urls(settings_or_fail(broker=broker, blobs=blobs), blobs=blobs_used)


def guarded(app: Callable[..., Any]) -> NoReturn:
    """Run a Typer app. A usage error (``--log-level verbose``, a missing option) is one
    ``error[config.invalid]`` line naming the command's ``--help`` (exit 2), and a
    :class:`PixfleetError` escaping a command (outside :func:`run_async`) is one line too."""
    try:
        code = app(standalone_mode=False)
    except cli_errors.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        raise SystemExit(EXIT_USAGE) from None
    except cli_errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "the command"
        text = " ".join(exc.format_message().replace("Value error, ", "").split())
        fail(f"error[config.invalid]: {text} (hint: {where} --help)", EXIT_USAGE)
    except typer.Abort:
        fail("aborted", EXIT_FAILURE)
    except PixfleetError as exc:
        fail(with_hint(exc))
    raise SystemExit(code if isinstance(code, int) else 0)


def stdout_closed() -> NoReturn:
    """The reader of stdout went away (``| head``): exit 0 quietly. Stdout now points at
    ``/dev/null``, so the interpreter's final flush has nowhere to fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a descriptor: nothing left to flush into
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until the process ends
    raise SystemExit(0)
