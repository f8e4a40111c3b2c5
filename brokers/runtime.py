"""What both command-line entry points share: logging set-up and one-line errors.

Library code only ever calls ``logging.getLogger(__name__)``; logging is configured here, from
the CLIs, and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

from brokers.errors import PixfleetError

T = TypeVar("T")

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiosqlite/asyncio chatter is not useful at info level.
    logging.getLogger("asyncio").setLevel(logging.WARNING)


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
