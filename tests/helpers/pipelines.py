"""User-module pipelines for tests (loaded with ``--pipeline tests.helpers.pipelines:NAME``).

They wrap the real thumbs pipeline, adding behaviour that tests need to provoke on purpose.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from consumers.pipelines import thumbs
from consumers.pipelines.base import Limits, PipelineOutput
from pixfleet.errors import BlobUnavailable

#: ``params`` keys :func:`ledger` takes for itself; everything else goes to thumbs.
LEDGER_KEYS = ("ledger", "task", "poison", "delay")


def slow(data: bytes, params: Mapping[str, Any], limits: Limits) -> PipelineOutput:
    """Sleep ``params["delay"]`` seconds, then make thumbnails. With ``params["started"]`` (a
    directory), first drop a marker file there, so a test knows a worker holds the task."""
    rest = dict(params)
    started = rest.pop("started", None)
    if started:
        (Path(str(started)) / f"{os.getpid()}-{time.monotonic_ns()}").touch()
    time.sleep(float(rest.pop("delay", 0)))
    return thumbs.run(data, rest, limits)


def stubborn(data: bytes, params: Mapping[str, Any], limits: Limits) -> PipelineOutput:
    """Ignore the time-limit alarm and hang (like a pipeline stuck in C code)."""
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(3600)
    return thumbs.run(data, params, limits)


def flaky_once(data: bytes, params: Mapping[str, Any], limits: Limits) -> PipelineOutput:
    """Fail with a retryable error the first time (per marker file), then succeed."""
    rest = dict(params)
    marker = Path(str(rest.pop("marker")))
    if not marker.exists():
        marker.write_text("failed once")
        raise BlobUnavailable("simulated transient storage failure")
    return thumbs.run(data, rest, limits)


def always_transient(data: bytes, params: Mapping[str, Any], limits: Limits) -> PipelineOutput:
    """Fail with a retryable error every time (unless told this is a good image)."""
    if "marker" in params:
        raise BlobUnavailable("simulated storage outage that never ends")
    return thumbs.run(data, params, limits)


def crash(data: bytes, params: Mapping[str, Any], limits: Limits) -> PipelineOutput:
    """Kill the pool process (like the OOM killer would), unless told it is a good image."""
    rest = dict(params)
    if rest.pop("crash", True):
        os._exit(137)
    return thumbs.run(data, rest, limits)


def ledger(data: bytes, params: Mapping[str, Any], limits: Limits) -> PipelineOutput:
    """Log this execution, then run thumbs (or misbehave, as ``params["poison"]`` says).

    The fault suite's witness of every execution: one JSON line ``{task_id, pid, worker_pid,
    host, t}`` appended with a single ``os.write`` on an ``O_APPEND`` descriptor to a file of
    this process in the directory ``params["ledger"]`` (a pipeline does not see its task, so
    the harness puts the task id in ``params["task"]``). ``poison``: ``"transient"`` fails
    with a retryable error every time; ``"kill-worker"`` SIGKILLs the worker process (a task
    that crashes its worker, again on every redelivery). ``delay`` sleeps that many seconds.
    """
    rest = {k: v for k, v in params.items() if k not in LEDGER_KEYS}
    line = {
        "task_id": str(params["task"]),
        "pid": os.getpid(),
        "worker_pid": os.getppid(),
        "host": socket.gethostname(),
        "t": time.time(),
    }
    path = Path(str(params["ledger"])) / f"{socket.gethostname()}-{os.getpid()}.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)
    poison = params.get("poison")
    if poison == "transient":
        raise BlobUnavailable("simulated storage outage that never ends")
    if poison == "kill-worker":
        os.kill(os.getppid(), signal.SIGKILL)
        os._exit(137)
    time.sleep(float(params.get("delay", 0)))
    return thumbs.run(data, rest, limits)


def broken_until_fixed(data: bytes, params: Mapping[str, Any], limits: Limits) -> PipelineOutput:
    """Fail with a retryable error until the file ``params["fixed"]`` exists (an operator
    fixed the cause), then make thumbnails."""
    rest = dict(params)
    if not Path(str(rest.pop("fixed"))).exists():
        raise BlobUnavailable("simulated outage: the cause is not fixed yet")
    return thumbs.run(data, rest, limits)


def raises(data: bytes, params: Mapping[str, Any], limits: Limits) -> PipelineOutput:
    """Fail with a plain exception (a pipeline's bug), unless told this is a good image."""
    if params.get("good"):
        return thumbs.run(data, {}, limits)
    missing: dict[str, PipelineOutput] = {}
    return missing["output"]  # KeyError, on purpose


def garbage(data: bytes, params: Mapping[str, Any], limits: Limits) -> PipelineOutput:
    """Return something that is not a PipelineOutput (the worker fails on it, not the pool)."""
    if params.get("good"):
        return thumbs.run(data, {}, limits)
    return None  # type: ignore[return-value] # reason: garbage on purpose


def pid(data: bytes, params: Mapping[str, Any], limits: Limits) -> PipelineOutput:
    """No output; ``meta["pid"]`` says which pool process ran it."""
    return PipelineOutput(renditions=(), meta={"pid": os.getpid()})
