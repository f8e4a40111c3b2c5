"""What both command-line entry points share: logging set-up and one-line errors.

Library code only ever calls ``logging.getLogger(__name__)``; logging is configured here, from
the CLIs, and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

from pixfleet.errors import ConfigError, PixfleetError
from pixfleet.logs import LOG_FORMATS, JsonFormatter

T = TypeVar("T")

EXIT_FAILURE = 1
EXIT_USAGE = 2
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
                f"--log-format {log_format!r} is not one of {', '.join(LOG_FORMATS)}"
            ).one_line(),
            EXIT_USAGE,
        )
    os.environ[ENV_LOG_FORMAT] = log_format  # child processes (the pool) log the same way


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


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    sys.stderr.write(message.rstrip("\n") + "\n")
    raise SystemExit(code)


def run_async(main: Coroutine[Any, Any, T], *, debug: bool = False) -> T:
    """Run ``main``; a :class:`PixfleetError` becomes one ``error[code]: ...`` line and exit 1.

    With ``debug`` the traceback is printed as well.
    """
    try:
        return asyncio.run(main)
    except PixfleetError as exc:
        if debug:
            logging.getLogger("pixfleet").exception("failed")
        fail(exc.one_line())
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:
        # A bug or an unclassified library failure: still one line (traceback with --debug).
        logging.getLogger("pixfleet").log(
            logging.ERROR if debug else logging.DEBUG, "unexpected failure", exc_info=True
        )
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        fail(f"error[internal.error]: {text} (run with --debug for the traceback)")
