"""Finding results after the fact: ``uploader results``, ``uploader get``, ``uploader fetch``.

``results`` reads (and removes) the shared results channel; ``get`` and ``fetch`` read the
completion records in the blob store, so they answer for any task, whoever submitted it and
whichever transport carried it.
"""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path

import typer

from brokers import open_transport
from brokers.names import DEFAULT_RESULTS
from pixfleet.blobs import BlobStore, open_blobstore
from pixfleet.envelope import Result
from pixfleet.records import TaskState, read_task
from pixfleet.runtime import cli_urls, configure_logging, run_async, settings_or_fail
from producer import render
from producer.options import BlobsOpt, BrokerOpt, DebugOpt, JsonOpt
from producer.outputs import fetch_outputs, lookup

TaskIdArg = typer.Argument(..., help="The task id (`queued <id>`, `task <id>` on result lines).")


def results_cmd(  # noqa: PLR0917 - Typer commands take one positional per option
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
    run_async(_read_results(*cli_urls(broker, blobs), channel, follow, as_json), debug=debug)


async def _read_results(
    broker_url: str, blobs_url: str, channel: str, follow: bool, as_json: bool
) -> None:
    store = open_blobstore(blobs_url)
    async with open_transport(broker_url) as transport:
        stream = transport.replies(channel, until_empty=not follow)
        seen: set[tuple[str, str]] = set()  # (task id, group) shown by this run
        async with aclosing(stream) as deliveries:
            async for delivery in deliveries:
                result = delivery.message
                if (result.task_id, result.group) not in seen:
                    seen.add((result.task_id, result.group))
                    name = await _filename(store, result)
                    # Shown (and flushed) before the ack: a closed stdout leaves it queued.
                    typer.echo(render.result_text(result, name, store.url_for, as_json))
                await delivery.ack()


async def _filename(store: BlobStore, result: Result) -> str:
    """The result's file name, from its task's record for a result that carries none."""
    if result.filename:
        return result.filename
    task = await read_task(store, result.task_id)
    return task.filename if task is not None else ""


def get_cmd(
    task_id: str = TaskIdArg,
    as_json: bool = JsonOpt,
    blobs: str = BlobsOpt,
    debug: bool = DebugOpt,
) -> None:
    """One task's state (queued, done, error), its result per group, outputs and errors, from
    the completion records in the blob store (no broker needed). Exit 1 for an unknown task id
    (error[task.not_found])."""
    configure_logging("debug" if debug else "error")
    store = open_blobstore(settings_or_fail(blobs=blobs).blobs_url)
    state = run_async(lookup(store, task_id), debug=debug)
    if as_json:
        typer.echo(render.task_json(state, store.url_for))
    else:
        for line in render.task_lines(state, store.url_for):
            typer.echo(line)


def fetch_cmd(
    task_id: str = TaskIdArg,
    to: Path = typer.Option(..., "--to", help="Directory; outputs go to DIR/<group>/<name>."),
    blobs: str = BlobsOpt,
    debug: bool = DebugOpt,
) -> None:
    """Copy a task's outputs out of the blob store into DIR/<group>/<name>, one path per line.
    Groups without a result yet, and failed ones, are named on stderr."""
    configure_logging("debug" if debug else "error")
    store = open_blobstore(settings_or_fail(blobs=blobs).blobs_url)
    state, paths = run_async(_fetch(store, task_id, to), debug=debug)
    for path in paths:
        typer.echo(str(path))
    pending = [g for g in state.task.groups if g not in state.results]
    if pending:
        typer.echo(f"note: no result yet for group(s) {', '.join(pending)}", err=True)
    for result in state.results.values():
        if result.error is not None:
            typer.echo(f"note: group {result.group} failed: error[{result.error.code}]", err=True)


async def _fetch(store: BlobStore, task_id: str, to: Path) -> tuple[TaskState, list[Path]]:
    state = await lookup(store, task_id)
    return state, await fetch_outputs(store, state, to)
