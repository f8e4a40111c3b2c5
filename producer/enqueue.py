"""``uploader enqueue``: vet, store and publish one task per image, through the :class:`Client`;
with ``--wait``, print each result and show one progress display until the last one.

Exit codes: 0 all good; 1 a file was rejected, a publish failed (the tasks confirmed before it
are listed; the rest were not published) or a result is an error; 3 ``--wait`` timed out (the
tasks still pending are listed, with ``--json`` as one object on stdout).
"""

from __future__ import annotations

import sys
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import typer
from pydantic import TypeAdapter, ValidationError

from brokers.names import DEFAULT_GROUP
from pixfleet.bounds import seconds_option
from pixfleet.envelope import Ident, Task
from pixfleet.errors import ConfigError, PixfleetError, ResultTimeout
from pixfleet.images import MAX_BYTES, MAX_PIXELS, Limits
from pixfleet.params import from_pairs
from pixfleet.runtime import (
    EXIT_FAILURE,
    EXIT_TIMEOUT,
    HINTS,
    cli_urls,
    configure_logging,
    fail,
    run_async,
    with_hint,
)
from producer import inspect, render
from producer.client import Client
from producer.options import BlobsOpt, BrokerOpt, DebugOpt, JsonOpt
from producer.progress import Display, open_display
from producer.submission import SubmitOptions
from producer.watch import warn_new_groups, watching_consumers

TaskIdOpt = typer.Option(
    None,
    "--task-id",
    help="Idempotency key of the task (one file only): publishing the same id again never "
    "runs it twice nor makes a second result; --wait then answers from the recorded result.",
)


def enqueue_cmd(  # noqa: PLR0917 - Typer commands take one positional per option
    paths: list[Path] = typer.Argument(..., help="Image files or directories (recursive)."),
    group: list[str] = typer.Option(
        [DEFAULT_GROUP], "--group", "-g", help="Target group (repeatable)."
    ),
    wait: bool = typer.Option(False, "--wait", help="Wait for every result and print it."),
    timeout: float = typer.Option(
        300.0, callback=seconds_option("--timeout", low=0.1), help="Seconds --wait waits."
    ),
    param: list[str] = typer.Option([], "--param", "-p", help="Pipeline param KEY=JSON."),
    ttl: float = typer.Option(
        None, callback=seconds_option("--ttl", low=0.1), help="Seconds, then workers skip it."
    ),
    task_id: str = TaskIdOpt,
    max_bytes: int = typer.Option(MAX_BYTES, min=1, max=1 << 40, help="Largest file."),
    max_pixels: int = typer.Option(MAX_PIXELS, min=1, max=1 << 40, help="Largest image."),
    as_json: bool = JsonOpt,
    broker: str = BrokerOpt,
    blobs: str = BlobsOpt,
    debug: bool = DebugOpt,
) -> None:
    """Check, store and publish one task per image. Exit 1 if any file was rejected, a publish
    failed (the tasks confirmed before it are listed; the rest were not published) or any
    result is an error; exit 3 if --wait timed out (the pending tasks are listed)."""
    configure_logging("debug" if debug else "error")
    options = _submit_options(group, param, ttl, wait)
    files = list(inspect.expand(paths))
    _check_task_id(task_id, len(files))
    limits = Limits(max_pixels=max_pixels, max_bytes=max_bytes)
    candidates, rejected = _vet_all(files, limits)
    if not candidates:
        hint = HINTS["input.none"]
        fail(f"error[input.none]: nothing to enqueue ({rejected} file(s) rejected) (hint: {hint})")
    batch = _Batch(candidates, limits, options, task_id, timeout=timeout, as_json=as_json)
    code = run_async(_enqueue_all(*cli_urls(broker, blobs), batch), debug=debug)
    if code == 0 and rejected:
        code = EXIT_FAILURE
    if code:
        raise typer.Exit(code)


def _submit_options(
    groups: list[str], params: list[str], ttl: float | None, wait: bool
) -> SubmitOptions:
    """The options of a submission; ``-p`` values are JSON (or bare words)."""
    try:
        return SubmitOptions(tuple(groups), from_pairs(params), ttl, wait)
    except PixfleetError as exc:
        fail(with_hint(exc))


def _check_task_id(task_id: str | None, files: int) -> None:
    if task_id is None:
        return
    if files != 1:
        fail(
            ConfigError(f"--task-id names one task: give exactly one file (got {files})").one_line()
        )
    try:
        TypeAdapter(Ident).validate_python(task_id)
    except ValidationError:
        why = "use 1-200 of A-Z a-z 0-9 . _ : -, a letter or digit first"
        fail(ConfigError(f"--task-id {task_id[:210]!r} is not a task id: {why}").one_line())


def _vet_all(paths: list[Path], limits: Limits) -> tuple[list[Path], int]:
    """Read and vet every file, keeping only the paths (memory: one file at a time); each
    rejection is one ``error[...]`` line on stderr."""
    candidates: list[Path] = []
    rejected = 0
    for path in inspect.expand(paths):
        try:
            inspect.vet_file(path, limits)
            candidates.append(path)
        except PixfleetError as exc:
            rejected += 1
            sys.stderr.write(with_hint(exc) + "\n")
    return candidates, rejected


@dataclass(frozen=True)
class _Batch:
    candidates: list[Path]  # vetted; the Client reads (and vets) each again to submit it
    limits: Limits
    options: SubmitOptions
    task_id: str | None
    timeout: float
    as_json: bool


async def _enqueue_all(broker_url: str, blobs_url: str, batch: _Batch) -> int:
    """Submit every candidate; with ``--wait``, print the results. Returns the exit code."""
    wait = batch.options.wait
    async with Client(broker=broker_url, blobs=blobs_url, wait=wait, limits=batch.limits) as client:
        with open_display(total=len(batch.candidates), plain_progress=wait) as display:
            await warn_new_groups(
                client.transport, client.store, batch.options.groups, display.warn
            )
            error = await _publish(client, batch, display)
            if error is not None:
                _report_partial(error, client.tasks, batch, display)
                return EXIT_FAILURE
            if not wait:
                return 0
            return await _wait(client, batch, display)


async def _publish(client: Client, batch: _Batch, display: Display) -> PixfleetError | None:
    """Submit the candidates in order; stop at the first failure and return it. Without
    ``--wait`` each task is listed once confirmed, so what was published is known whatever
    happens next."""
    options = batch.options
    total = len(batch.candidates)
    for count, candidate in enumerate(batch.candidates, 1):
        try:
            handle = await client.enqueue(
                candidate,
                groups=options.groups,
                params=options.params,
                ttl=options.ttl,
                task_id=batch.task_id,
            )
        except PixfleetError as exc:
            return exc
        display.published(count, total)
        if not options.wait:
            display.emit(render.queued_line(handle.task, as_json=batch.as_json))
    return None


def _report_partial(
    error: PixfleetError, tasks: tuple[Task, ...], batch: _Batch, display: Display
) -> None:
    """The confirmed tasks (with ``--wait``; else they were listed as they came), then one
    ``error[...]`` line (and with ``--json`` one summary object) naming the files not sent."""
    if batch.options.wait:
        for task in tasks:
            display.emit(render.queued_line(task, as_json=batch.as_json))
    missing = [p.name for p in batch.candidates[len(tasks) :]]
    if batch.as_json:
        display.emit(render.partial_json(error, tasks, missing))
    display.warn(render.partial_line(error, len(tasks), len(batch.candidates), missing))


async def _wait(client: Client, batch: _Batch, display: Display) -> int:
    """Print each result as it arrives, warn about groups nobody consumes, then a summary.
    Returns the exit code."""
    names = {t.id: t.filename for t in client.tasks}
    locate = client.store.url_for
    counts: Counter[str] = Counter()
    display.waiting(len(client.pending))
    if not batch.as_json:  # a running task's progress, above the display (stdout: results only)
        client.router.on_progress = lambda p: display.warn(
            render.progress_line(p, names.get(p.task_id, ""))
        )
        client.router.start()
    groups = lambda: {group for _, group in client.pending}  # noqa: E731 - a view, read later
    watch = watching_consumers(client.transport, groups, display.warn)
    try:
        async with watch, aclosing(client.results(timeout=batch.timeout)) as rs:
            async for result in rs:
                counts[result.status] += 1
                display.result(result.status == "ok")
                name = names.get(result.task_id, "")
                display.emit(render.result_text(result, name, locate, batch.as_json))
    except ResultTimeout as exc:
        _report_pending(exc, client, batch, display)
        return EXIT_TIMEOUT
    if not batch.as_json:
        display.warn(
            f"{counts['ok']} ok, {counts['error']} failed, {counts.total()} result(s) "
            f"for {len(names)} task(s)"
        )
    return EXIT_FAILURE if counts["error"] else 0


def _report_pending(exc: ResultTimeout, client: Client, batch: _Batch, display: Display) -> None:
    """A timed-out wait: one ``error[result.timeout]`` line naming each pending task (with
    ``--json`` also one object on stdout)."""
    missing = client.pending
    pending = [
        (task, [g for g in task.groups if (task.id, g) in missing])
        for task in client.tasks
        if any((task.id, g) in missing for g in task.groups)
    ]
    if batch.as_json:
        display.emit(render.pending_json(exc, pending))
    display.warn(with_hint(ResultTimeout(f"{exc.message}; {render.pending_line(pending)}")))
