"""``uploader``: enqueue images, wait for or read results, inspect backlog.

uploader enqueue PATH... [--group G]... [--wait] [--timeout S] [--json] [--param K=V]...
                 [--task-id ID]
uploader results [--follow] [--json]
uploader status [--json]
uploader samples DIR [--count N]
"""

from __future__ import annotations

import io
import sys
from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import typer
from pydantic import TypeAdapter, ValidationError

from brokers import open_transport
from brokers.names import DEFAULT_GROUP, DEFAULT_RESULTS
from pixfleet.blobs import open_blobstore
from pixfleet.declared import check_params
from pixfleet.envelope import Ident, Task
from pixfleet.errors import ConfigError, PixfleetError
from pixfleet.images import MAX_BYTES, MAX_PIXELS, Limits
from pixfleet.params import from_pairs
from pixfleet.runtime import (
    EXIT_FAILURE,
    cli_urls,
    configure_logging,
    fail,
    guarded,
    root_options,
    run_async,
    with_hint,
)
from producer import gc, inspect, render
from producer.config_cli import config_app
from producer.samples import write_samples
from producer.serve import serve_cmd
from producer.status import status_cmd
from producer.submission import Submission, SubmitOptions

app = typer.Typer(
    no_args_is_help=True,
    help="pixfleet uploader: store images and publish processing tasks.",
)

BrokerOpt = typer.Option(None, "--broker", help="Broker URL (default: $PIXFLEET_BROKER, config).")
BlobsOpt = typer.Option(None, "--blobs", help="Blob store URL (default: $PIXFLEET_BLOBS, config).")
JsonOpt = typer.Option(False, "--json", help="One JSON object per line.")
DebugOpt = typer.Option(False, "--debug", help="Print tracebacks.")
TaskIdOpt = typer.Option(
    None,
    "--task-id",
    help="Idempotency key of the task (one file only): publishing the same id again never "
    "runs it twice nor makes a second result; --wait then answers from the recorded result.",
)


app.callback()(root_options)
app.command("serve")(serve_cmd)
app.command("status")(status_cmd)
app.command("gc")(gc.gc_cmd)
app.add_typer(config_app, name="config")


def _submit_options(
    groups: list[str], params: list[str], ttl: float | None, wait: bool
) -> SubmitOptions:
    """The options of a submission; ``-p`` values are JSON (or bare words)."""
    try:
        return SubmitOptions(tuple(groups), from_pairs(params), ttl, wait)
    except PixfleetError as exc:
        fail(with_hint(exc))


@app.command("enqueue")
def enqueue_cmd(
    paths: list[Path] = typer.Argument(..., help="Image files or directories (recursive)."),
    group: list[str] = typer.Option(
        [DEFAULT_GROUP], "--group", "-g", help="Target group (repeatable)."
    ),
    wait: bool = typer.Option(False, "--wait", help="Wait for every result and print it."),
    timeout: float = typer.Option(300.0, min=0.1, help="Seconds --wait waits for results."),
    param: list[str] = typer.Option([], "--param", "-p", help="Pipeline param KEY=JSON."),
    ttl: float = typer.Option(None, min=0.1, help="Seconds after which workers skip the task."),
    task_id: str = TaskIdOpt,
    max_bytes: int = typer.Option(MAX_BYTES, min=1, help="Largest file."),
    max_pixels: int = typer.Option(MAX_PIXELS, min=1, help="Largest image."),
    as_json: bool = JsonOpt,
    broker: str = BrokerOpt,
    blobs: str = BlobsOpt,
    debug: bool = DebugOpt,
) -> None:
    """Check, store and publish one task per image. Exit 1 if any file was rejected, a publish
    failed (the tasks confirmed before it are listed; the rest were not published), any result
    is an error, or --wait timed out."""
    configure_logging("debug" if debug else "error")
    options = _submit_options(group, param, ttl, wait)
    files = list(inspect.expand(paths))
    _check_task_id(task_id, len(files))
    limits = Limits(max_pixels=max_pixels, max_bytes=max_bytes)
    candidates, rejected = _vet_all(files, limits)
    if not candidates:
        fail(f"error[input.none]: nothing to enqueue ({rejected} file(s) rejected)")
    batch = _Batch(candidates, limits, options, task_id, timeout=timeout, as_json=as_json)
    urls = cli_urls(broker, blobs)
    failures = run_async(_enqueue_all(*urls, batch), debug=debug)
    if rejected or failures:
        raise typer.Exit(EXIT_FAILURE)


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
            sys.stderr.write(exc.one_line() + "\n")
    return candidates, rejected


@dataclass(frozen=True)
class _Batch:
    candidates: list[Path]  # vetted; each is read (and vetted) again when it is submitted
    limits: Limits
    options: SubmitOptions
    task_id: str | None
    timeout: float
    as_json: bool


async def _enqueue_all(broker_url: str, blobs_url: str, batch: _Batch) -> int:
    """Submit every candidate; with ``--wait``, print results. Returns the number of failures
    (a failed publish counts one, after the tasks confirmed before it were listed)."""
    store = open_blobstore(blobs_url)
    # -p against the pipeline the groups' workers declared, before anything is published
    await check_params(store, batch.options.groups, batch.options.params)
    async with (
        open_transport(broker_url) as transport,
        Submission(queue=transport, replies=transport, store=store, options=batch.options) as sub,
    ):
        error = await _publish(sub, batch)
        if error is not None:
            _report_partial(error, sub.tasks, batch)
            return 1
        if not batch.options.wait:
            return 0
        return await _wait(sub, store.url_for, timeout=batch.timeout, as_json=batch.as_json)


async def _publish(sub: Submission, batch: _Batch) -> PixfleetError | None:
    """Submit the candidates in order; stop at the first failure and return it. Without
    ``--wait`` each task is listed once confirmed, so what was published is known whatever
    happens next."""
    show = len(batch.candidates) >= 10 and sys.stderr.isatty()
    with typer.progressbar(
        batch.candidates,
        label="enqueue",
        file=sys.stderr if show else io.StringIO(),
        show_pos=True,
    ) as bar:
        for path in bar:
            try:
                candidate = inspect.vet_file(path, batch.limits)  # changed since? refused
                task = await sub.submit(candidate, task_id=batch.task_id)
            except PixfleetError as exc:
                return exc
            if not batch.options.wait:
                typer.echo(render.queued_line(task, as_json=batch.as_json))
    return None


def _report_partial(error: PixfleetError, tasks: tuple[Task, ...], batch: _Batch) -> None:
    """The confirmed tasks (with ``--wait``; else they were listed as they came), then one
    ``error[...]`` line (and with ``--json`` one summary object) naming the files not sent."""
    if batch.options.wait:
        for task in tasks:
            typer.echo(render.queued_line(task, as_json=batch.as_json))
    missing = [p.name for p in batch.candidates[len(tasks) :]]
    if batch.as_json:
        typer.echo(render.partial_json(error, tasks, missing))
    typer.echo(render.partial_line(error, len(tasks), len(batch.candidates), missing), err=True)


async def _wait(sub: Submission, locate: render.Locate, *, timeout: float, as_json: bool) -> int:
    """Print each result as it arrives, then a summary; returns the number of error results."""
    names = {t.id: t.filename for t in sub.tasks}
    counts: Counter[str] = Counter()
    async with aclosing(sub.results(timeout=timeout)) as results:
        async for result in results:
            counts[result.status] += 1
            typer.echo(render.result_text(result, names[result.task_id], locate, as_json))
    if not as_json:
        typer.echo(
            f"{counts['ok']} ok, {counts['error']} failed, {counts.total()} result(s) "
            f"for {len(names)} task(s)",
            err=True,
        )
    return counts["error"]


@app.command()
def results(
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep reading new results."),
    channel: str = typer.Option(DEFAULT_RESULTS, help="Reply channel to read."),
    as_json: bool = JsonOpt,
    broker: str = BrokerOpt,
    blobs: str = BlobsOpt,
    debug: bool = DebugOpt,
) -> None:
    """Read (and remove) results from a results channel, each (task id, group) once.

    A duplicate of a result already shown by this run (a worker died between its reply and its
    ack) is removed without being shown. Deduplication spans one run: a result shown by an
    earlier run is not remembered (its completion record is the lasting answer)."""
    configure_logging("debug" if debug else "error")
    urls = cli_urls(broker, blobs)
    run_async(_read_results(*urls, channel, follow=follow, as_json=as_json), debug=debug)


async def _read_results(
    broker_url: str, blobs_url: str, channel: str, *, follow: bool, as_json: bool
) -> None:
    locate = open_blobstore(blobs_url).url_for
    async with open_transport(broker_url) as transport:
        stream = transport.replies(channel, until_empty=not follow)
        seen: set[tuple[str, str]] = set()  # (task id, group) shown by this run
        async with aclosing(stream) as deliveries:
            async for delivery in deliveries:
                result = delivery.message
                if (result.task_id, result.group) not in seen:
                    seen.add((result.task_id, result.group))
                    typer.echo(render.result_text(result, "", locate, as_json))
                await delivery.ack()


@app.command()
def samples(
    directory: Path = typer.Argument(..., help="Where to write the sample images."),
    count: int = typer.Option(6, min=1, max=1000, help="How many."),
) -> None:
    """Write a few sample photos (one with EXIF orientation 6 and GPS tags)."""
    for path in write_samples(directory, count):
        typer.echo(str(path))


def main() -> None:
    guarded(app)
