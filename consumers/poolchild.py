"""The child side of :class:`~consumers.pool.PipelinePool`: what each pool process runs.

Its initializer ignores SIGINT and SIGTERM (the parent drains and ends its children), installs
the progress channel, caps the address space and watches the parent (a child exits by itself
when its parent dies); :func:`run_in_child` runs one pipeline call under a ``SIGALRM`` time limit
and turns whatever it raises into a typed, picklable error.
"""

from __future__ import annotations

import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from consumers.pipelines import progress as pipeline_progress
from consumers.pipelines.base import Pipeline, PipelineOutput
from pixfleet.errors import MemoryLimitExceeded, PipelineError, PixfleetError, TaskTimeout
from pixfleet.images import Limits

MIB = 1 << 20


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(70)


def child_init(parent_pid: int, memory_limit: int, progress: Connection | None = None) -> None:
    # The parent handles Ctrl-C and SIGTERM (also when sent to the whole group) and drains.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pipeline_progress.install(progress)
    if memory_limit:
        _limit_address_space(memory_limit)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _limit_address_space(limit: int) -> None:
    """Cap this process's address space at ``limit`` bytes (never above an existing hard cap),
    soft and hard, so the pipeline cannot raise it again."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _out_of_memory() -> MemoryLimitExceeded:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return MemoryLimitExceeded("the pipeline ran out of memory")
    return MemoryLimitExceeded(
        f"the pipeline needed more than the {soft // MIB} MiB a pool process may use"
        " (worker run --memory-limit)"
    )


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise TaskTimeout("pipeline exceeded its time limit")


def run_in_child(
    pipeline: Pipeline,
    data: bytes | Callable[[], bytes],
    params: dict[str, Any],
    limits: Limits,
    token: int = 0,
) -> PipelineOutput:
    """``pipeline(data, ...)`` under the time limit; ``data`` may be a blob store's loader
    (:meth:`~pixfleet.blobs.BlobStore.loader`), called here first (its errors are typed)."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limits.timeout)
    try:
        with pipeline_progress.running(token):
            return pipeline(data if isinstance(data, bytes) else data(), params, limits)
    except TaskTimeout:
        raise TaskTimeout(f"pipeline exceeded its time limit of {limits.timeout:g} s") from None
    except PixfleetError:
        raise
    except MemoryError:
        raise _out_of_memory() from None
    except Exception as exc:  # noqa: BLE001 - re-raised as a typed error
        # Unclassified failures cross the process boundary as one typed, picklable error.
        raise PipelineError(f"{type(exc).__name__}: {exc}") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
