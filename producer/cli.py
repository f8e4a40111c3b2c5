"""``uploader``: enqueue images, wait for or read results, inspect backlog.

uploader enqueue PATH... [--group G]... [--wait] [--timeout S] [--json] [--param K=V]...
uploader results [--follow] [--json]
uploader status [--json]
uploader samples DIR [--count N]
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from collections import Counter
from contextlib import aclosing
from pathlib import Path

import typer
from pydantic import JsonValue

from brokers import open_transport
from brokers.contract import GroupStats, Inspector
from brokers.names import DEFAULT_GROUP, DEFAULT_RESULTS
from pixfleet.blobs import open_blobstore
from pixfleet.envelope import Task
from pixfleet.errors import ConfigError, PixfleetError
from pixfleet.images import MAX_BYTES, MAX_PIXELS, Limits
from pixfleet.runtime import EXIT_FAILURE, configure_logging, fail, run_async
from pixfleet.settings import ENV_BLOBS, ENV_BROKER, default_blobs_url, default_broker_url
from producer import inspect
from producer.render import Locate, result_line, stats_header, stats_line
from producer.samples import write_samples
from producer.serve import serve_cmd
from producer.submission import Submission, SubmitOptions

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="pixfleet uploader: store images and publish processing tasks.",
)

BrokerOpt = typer.Option(None, "--broker", envvar=ENV_BROKER, help="Broker URL.")
BlobsOpt = typer.Option(None, "--blobs", envvar=ENV_BLOBS, help="Blob store URL.")
JsonOpt = typer.Option(False, "--json", help="One JSON object per line.")
DebugOpt = typer.Option(False, "--debug", help="Print tracebacks.")


@app.callback()
def _root() -> None:
    """pixfleet uploader."""


app.command("serve")(serve_cmd)


def _parse_params(pairs: list[str]) -> dict[str, JsonValue]:
    params: dict[str, JsonValue] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            fail(ConfigError(f"--param expects KEY=VALUE, got {pair!r}").one_line())
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


def _submit_options(
    groups: list[str], params: list[str], ttl: float | None, wait: bool
) -> SubmitOptions:
    try:
        return SubmitOptions(tuple(groups), _parse_params(params), ttl=ttl, wait=wait)
    except ConfigError as exc:
        fail(exc.one_line())


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
    max_bytes: int = typer.Option(MAX_BYTES, min=1, help="Largest file."),
    max_pixels: int = typer.Option(MAX_PIXELS, min=1, help="Largest image."),
    as_json: bool = JsonOpt,
    broker: str = BrokerOpt,
    blobs: str = BlobsOpt,
    debug: bool = DebugOpt,
) -> None:
    """Check, store and publish one task per image. Exit 1 if any file was rejected, any
    result is an error, or --wait timed out."""
    configure_logging("debug" if debug else "error")
    options = _submit_options(group, param, ttl, wait)
    limits = Limits(max_pixels=max_pixels, max_bytes=max_bytes)
    candidates, rejected = _vet_all(paths, limits)
    if not candidates:
        fail(f"error[input.none]: nothing to enqueue ({rejected} file(s) rejected)")
    urls = (broker or default_broker_url(), blobs or default_blobs_url())
    failures = run_async(
        _enqueue_all(*urls, candidates, options, timeout=timeout, as_json=as_json), debug=debug
    )
    if rejected or failures:
        raise typer.Exit(EXIT_FAILURE)


def _vet_all(paths: list[Path], limits: Limits) -> tuple[list[inspect.Candidate], int]:
    """Read and vet every file; each rejection is one ``error[...]`` line on stderr."""
    candidates: list[inspect.Candidate] = []
    rejected = 0
    for path in inspect.expand(paths):
        try:
            data = inspect.read_file(path, limits.max_bytes)
            candidates.append(inspect.vet(data, str(path), limits=limits))
        except PixfleetError as exc:
            rejected += 1
            sys.stderr.write(exc.one_line() + "\n")
    return candidates, rejected


async def _enqueue_all(
    broker_url: str,
    blobs_url: str,
    candidates: list[inspect.Candidate],
    options: SubmitOptions,
    *,
    timeout: float,
    as_json: bool,
) -> int:
    """Submit every candidate; with ``--wait``, print results. Returns the number of failures."""
    store = open_blobstore(blobs_url)
    async with (
        open_transport(broker_url) as transport,
        Submission(queue=transport, replies=transport, store=store, options=options) as sub,
    ):
        tasks = await _publish(sub, candidates)
        if not options.wait:
            _print_queued(tasks, as_json=as_json)
            return 0
        return await _wait(sub, store.url_for, timeout=timeout, as_json=as_json)


async def _publish(sub: Submission, candidates: list[inspect.Candidate]) -> list[Task]:
    tasks: list[Task] = []
    show = len(candidates) >= 10 and sys.stderr.isatty()
    with typer.progressbar(
        candidates, label="enqueue", file=sys.stderr if show else io.StringIO(), show_pos=True
    ) as bar:
        for candidate in bar:
            tasks.append(await sub.submit(candidate))
    return tasks


def _print_queued(tasks: list[Task], *, as_json: bool) -> None:
    for task in tasks:
        typer.echo(
            json.dumps({"task_id": task.id, "file": task.filename})
            if as_json
            else f"queued {task.id}  {task.filename}"
        )


async def _wait(sub: Submission, locate: Locate, *, timeout: float, as_json: bool) -> int:
    """Print each result as it arrives, then a summary; returns the number of error results."""
    names = {t.id: t.filename for t in sub.tasks}
    counts: Counter[str] = Counter()
    async with aclosing(sub.results(timeout=timeout)) as results:
        async for result in results:
            counts[result.status] += 1
            name = names[result.task_id]
            typer.echo(
                result.model_dump_json() if as_json else result_line(result, name, locate=locate)
            )
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
    """Read (and remove) results from the default results channel."""
    configure_logging("debug" if debug else "error")
    urls = (broker or default_broker_url(), blobs or default_blobs_url())
    run_async(_read_results(*urls, channel, follow=follow, as_json=as_json), debug=debug)


async def _read_results(
    broker_url: str, blobs_url: str, channel: str, *, follow: bool, as_json: bool
) -> None:
    locate = open_blobstore(blobs_url).url_for
    async with open_transport(broker_url) as transport:
        stream = transport.replies(channel, until_empty=not follow)
        async with aclosing(stream) as deliveries:
            async for delivery in deliveries:
                result = delivery.message
                typer.echo(
                    result.model_dump_json() if as_json else result_line(result, locate=locate)
                )
                await delivery.ack()


@app.command()
def status(
    as_json: bool = JsonOpt,
    broker: str = BrokerOpt,
    debug: bool = DebugOpt,
) -> None:
    """Backlog, in-flight, dead-lettered tasks and live consumers per group."""
    configure_logging("debug" if debug else "error")
    run_async(_status(broker or default_broker_url(), as_json), debug=debug)


async def _status(url: str, as_json: bool) -> None:
    async with open_transport(url) as transport:
        all_stats = await _all_stats(transport)
    if as_json:
        for s in all_stats:
            typer.echo(json.dumps(dataclasses.asdict(s)))
        return
    typer.echo(stats_header())
    for s in all_stats:
        typer.echo(stats_line(s))


async def _all_stats(inspector: Inspector) -> list[GroupStats]:
    return [await inspector.stats(g) for g in await inspector.groups()]


@app.command()
def samples(
    directory: Path = typer.Argument(..., help="Where to write the sample images."),
    count: int = typer.Option(6, min=1, max=1000, help="How many."),
) -> None:
    """Write a few sample photos (one with EXIF orientation 6 and GPS tags)."""
    for path in write_samples(directory, count):
        typer.echo(str(path))


def main() -> None:
    app()
