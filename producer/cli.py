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
import re
import sys
from contextlib import aclosing
from pathlib import Path

import typer
from pydantic import JsonValue

from brokers import Transport, open_transport
from brokers.names import DEFAULT_GROUP, DEFAULT_RESULTS
from pixfleet.blobs import FileBlobStore, open_blobstore
from pixfleet.envelope import Result, Task
from pixfleet.errors import ConfigError, PixfleetError
from pixfleet.runtime import EXIT_FAILURE, configure_logging, fail, run_async
from pixfleet.settings import ENV_BLOBS, ENV_BROKER, default_blobs_url, default_broker_url
from producer import inspect
from producer.render import result_line, stats_header, stats_line
from producer.samples import write_samples
from producer.uploads import EnqueueOptions, collect_results, enqueue

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="pixfleet uploader: store images and publish processing tasks.",
)

BrokerOpt = typer.Option(None, "--broker", envvar=ENV_BROKER, help="Broker URL.")
BlobsOpt = typer.Option(None, "--blobs", envvar=ENV_BLOBS, help="Blob store URL.")
JsonOpt = typer.Option(False, "--json", help="One JSON object per line.")
DebugOpt = typer.Option(False, "--debug", help="Print tracebacks.")

_GROUP = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


@app.callback()
def _root() -> None:
    """pixfleet uploader."""


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
    max_bytes: int = typer.Option(inspect.DEFAULT_MAX_BYTES, min=1, help="Largest file."),
    max_pixels: int = typer.Option(inspect.DEFAULT_MAX_PIXELS, min=1, help="Largest image."),
    as_json: bool = JsonOpt,
    broker: str = BrokerOpt,
    blobs: str = BlobsOpt,
    debug: bool = DebugOpt,
) -> None:
    """Check, store and publish one task per image. Exit 1 if any file was rejected, any
    result is an error, or --wait timed out."""
    configure_logging("debug" if debug else "error")
    bad_groups = [g for g in group if not _GROUP.fullmatch(g)]
    if bad_groups:
        fail(ConfigError(f"invalid group name(s) {bad_groups}").one_line())
    candidates, rejected = _check_all(paths, max_bytes=max_bytes, max_pixels=max_pixels)
    if not candidates:
        fail(f"error[input.none]: nothing to enqueue ({rejected} file(s) rejected)")
    options = EnqueueOptions(
        groups=tuple(dict.fromkeys(group)), params=_parse_params(param), ttl=ttl
    )
    failures = run_async(
        _enqueue_all(
            broker or default_broker_url(),
            blobs or default_blobs_url(),
            candidates,
            options,
            wait=wait,
            timeout=timeout,
            as_json=as_json,
        ),
        debug=debug,
    )
    if rejected or failures:
        raise typer.Exit(EXIT_FAILURE)


def _check_all(
    paths: list[Path], *, max_bytes: int, max_pixels: int
) -> tuple[list[inspect.Candidate], int]:
    candidates: list[inspect.Candidate] = []
    rejected = 0
    for path in inspect.expand(paths):
        try:
            candidates.append(inspect.check(path, max_bytes=max_bytes, max_pixels=max_pixels))
        except PixfleetError as exc:
            rejected += 1
            sys.stderr.write(exc.one_line() + "\n")
    return candidates, rejected


async def _enqueue_all(
    broker_url: str,
    blobs_url: str,
    candidates: list[inspect.Candidate],
    options: EnqueueOptions,
    *,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> int:
    """Publish every candidate; with ``wait``, print results. Returns the number of failures."""
    store = open_blobstore(blobs_url)
    async with open_transport(broker_url) as transport:
        channel = await transport.open_reply_channel() if wait else DEFAULT_RESULTS
        options = dataclasses.replace(options, reply_to=channel)
        try:
            tasks = await _publish(transport, store, candidates, options)
            if not wait:
                for task in tasks:
                    typer.echo(
                        json.dumps({"task_id": task.id, "file": task.filename})
                        if as_json
                        else f"queued {task.id}  {task.filename}"
                    )
                return 0
            return await _wait(transport, channel, tasks, timeout=timeout, as_json=as_json)
        finally:
            if wait:
                await transport.close_reply_channel(channel)


async def _publish(
    transport: Transport,
    store: FileBlobStore,
    candidates: list[inspect.Candidate],
    options: EnqueueOptions,
) -> list[Task]:
    tasks: list[Task] = []
    show = len(candidates) >= 10 and sys.stderr.isatty()
    with typer.progressbar(
        candidates, label="enqueue", file=sys.stderr if show else io.StringIO(), show_pos=True
    ) as bar:
        for candidate in bar:
            tasks.append(await enqueue(transport, store, candidate, options))
    return tasks


async def _wait(
    transport: Transport, channel: str, tasks: list[Task], *, timeout: float, as_json: bool
) -> int:
    names = {t.id: t.filename for t in tasks}
    failures = 0

    def show(result: Result) -> None:
        nonlocal failures
        failures += result.status == "error"
        line = result.model_dump_json() if as_json else result_line(result, names[result.task_id])
        typer.echo(line)

    results = await collect_results(transport, channel, tasks, timeout=timeout, on_result=show)
    if not as_json:
        ok = sum(r.status == "ok" for r in results)
        typer.echo(
            f"{ok} ok, {failures} failed, {len(results)} result(s) for {len(tasks)} task(s)",
            err=True,
        )
    return failures


@app.command()
def results(
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep reading new results."),
    channel: str = typer.Option(DEFAULT_RESULTS, help="Reply channel to read."),
    as_json: bool = JsonOpt,
    broker: str = BrokerOpt,
    debug: bool = DebugOpt,
) -> None:
    """Read (and remove) results from the default results channel."""
    configure_logging("debug" if debug else "error")
    run_async(_read_results(broker or default_broker_url(), channel, follow, as_json), debug=debug)


async def _read_results(url: str, channel: str, follow: bool, as_json: bool) -> None:
    async with open_transport(url) as transport:
        stream = transport.replies(channel, until_empty=not follow)
        async with aclosing(stream) as deliveries:
            async for delivery in deliveries:
                result = delivery.message
                typer.echo(result.model_dump_json() if as_json else result_line(result))
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
        all_stats = [await transport.stats(g) for g in await transport.groups()]
    if as_json:
        for s in all_stats:
            typer.echo(json.dumps(dataclasses.asdict(s)))
        return
    typer.echo(stats_header())
    for s in all_stats:
        typer.echo(stats_line(s))


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
