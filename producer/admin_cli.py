"""``uploader dlq`` and ``uploader purge``: dead letters and queues, for operators.

uploader dlq list   [--group G] [--limit N] [--json]
uploader dlq replay [--group G] (--task ID... | --all)
uploader dlq purge  [--group G] [--yes]
uploader purge      --group G [--yes]

Without ``--group`` the dead-letter commands cover every group the broker knows. Purges ask
for confirmation on a terminal; elsewhere they need ``--yes`` (refused with an error, not
assumed). Replay semantics: :mod:`producer.deadletters`.
"""

from __future__ import annotations

import asyncio
import json
import sys

import typer

from brokers import open_transport
from pixfleet.blobs import open_blobstore
from pixfleet.errors import ConfigError
from pixfleet.runtime import cli_urls, configure_logging, fail, run_async
from producer import deadletters
from producer.deadletters import DeadTask
from producer.options import BlobsOpt, BrokerOpt, DebugOpt, JsonOpt

dlq_app = typer.Typer(
    no_args_is_help=True, help="Dead letters: list them, replay them, purge them."
)

GroupOpt = typer.Option(None, "--group", "-g", help="One group (default: every group).")
YesOpt = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")


def register(app: typer.Typer) -> None:
    """Add ``dlq`` and ``purge`` to the uploader's commands."""
    app.add_typer(dlq_app, name="dlq")
    app.command("purge")(purge_cmd)


def _start(
    broker: str | None, blobs: str | None, debug: bool, *, blobs_used: bool = True
) -> tuple[str, str]:
    """Logging for a command, and its broker and blob store URLs (flags > env > config)."""
    configure_logging("debug" if debug else "error")
    return cli_urls(broker, blobs, blobs_used=blobs_used)


# -- list -------------------------------------------------------------------------------------


@dlq_app.command("list")
def list_cmd(  # noqa: PLR0917 - Typer commands take one positional per option
    group: str = GroupOpt,
    limit: int = typer.Option(100, min=1, max=deadletters.SCAN_LIMIT, help="Per group."),
    as_json: bool = JsonOpt,
    broker: str = BrokerOpt,
    blobs: str = BlobsOpt,
    debug: bool = DebugOpt,
) -> None:
    """Dead-lettered tasks, oldest first: group, task id, file, attempts, reason, last error."""
    urls = _start(broker, blobs, debug)
    rows = run_async(_list(*urls, group, limit), debug=debug)
    for row in rows:
        typer.echo(_json(row) if as_json else _line(row))
    if not rows and not as_json:
        typer.echo("no dead letters", err=True)


async def _list(broker: str, blobs: str, group: str | None, limit: int) -> list[DeadTask]:
    store = open_blobstore(blobs)
    async with open_transport(broker) as transport:
        groups = await deadletters.groups_of(transport, group)
        return await deadletters.dead_tasks(transport, store, groups, limit=limit)


def _line(row: DeadTask) -> str:
    attempts = "?" if row.attempts is None else str(row.attempts)
    when = row.dead_at.isoformat(timespec="seconds") if row.dead_at else "?"
    head = f"{row.group}  {row.task_id or '(no task)'}  {row.filename or '-'}"
    text = f"{head}  attempts {attempts}  died {when}\n  reason: {row.reason}"
    if row.last_error and row.last_error != row.reason:
        text += f"\n  last error: {row.last_error}"
    return text


def _json(row: DeadTask) -> str:
    return json.dumps(
        {
            "group": row.group,
            "task_id": row.task_id,
            "file": row.filename,
            "reason": row.reason,
            "attempts": row.attempts,
            "last_error": row.last_error,
            "dead_at": row.dead_at.isoformat() if row.dead_at else None,
        }
    )


# -- replay -----------------------------------------------------------------------------------


@dlq_app.command("replay")
def replay_cmd(  # noqa: PLR0917 - Typer commands take one positional per option
    group: str = GroupOpt,
    task: list[str] = typer.Option([], "--task", "-t", help="Task id to replay (repeatable)."),
    every: bool = typer.Option(False, "--all", help="Replay every dead task."),
    broker: str = BrokerOpt,
    blobs: str = BlobsOpt,
    debug: bool = DebugOpt,
) -> None:
    """Re-publish dead tasks to their group (same task id, attempts from 1), after removing
    their error results, so a worker runs them again. Fix the cause first."""
    if bool(task) == every:
        why = "name the tasks to replay with --task ID (repeatable) or --all"
        fail(ConfigError(why).one_line())
    urls = _start(broker, blobs, debug)
    ids = None if every else task
    counts = run_async(_replay(*urls, group, ids), debug=debug)
    for name, count in counts.items():
        typer.echo(f"replayed {count} dead task(s) of group {name}")
    if not counts:
        typer.echo("no dead tasks to replay", err=True)


async def _replay(
    broker: str, blobs: str, group: str | None, ids: list[str] | None
) -> dict[str, int]:
    store = open_blobstore(blobs)
    async with open_transport(broker) as transport:
        groups = await deadletters.groups_of(transport, group)
        return await deadletters.replay(transport, store, groups, ids)


# -- purges -----------------------------------------------------------------------------------


@dlq_app.command("purge")
def dlq_purge_cmd(
    group: str = GroupOpt, yes: bool = YesOpt, broker: str = BrokerOpt, debug: bool = DebugOpt
) -> None:
    """Delete dead letters for good (asks first unless --yes)."""
    url = _start(broker, None, debug, blobs_used=False)[0]
    run_async(_purge(url, group, yes, dead=True), debug=debug)


def purge_cmd(
    group: str = typer.Option(..., "--group", "-g", help="The group whose waiting tasks go."),
    yes: bool = YesOpt,
    broker: str = BrokerOpt,
    debug: bool = DebugOpt,
) -> None:
    """Delete the tasks waiting for GROUP's workers (delayed retries included; tasks a worker
    holds are left). Other groups keep their copies. Asks first unless --yes."""
    url = _start(broker, None, debug, blobs_used=False)[0]
    run_async(_purge(url, group, yes, dead=False), debug=debug)


async def _purge(url: str, group: str | None, yes: bool, *, dead: bool) -> None:
    what = "dead letter(s)" if dead else "waiting task(s)"
    async with open_transport(url) as transport:
        groups = await deadletters.groups_of(transport, group)
        stats = [await transport.stats(g) for g in groups]
        counts = {s.group: s.dead if dead else s.ready for s in stats}
        if not any(counts.values()):
            typer.echo(f"no {what} to purge", err=True)
            return
        listing = ", ".join(f"{n} of {g}" for g, n in counts.items() if n)
        await _confirm(f"Delete {listing} {what} for good?", yes)
        for g in groups:
            gone = await (transport.purge_dead_letters(g) if dead else transport.purge(g))
            typer.echo(f"purged {gone} {what} of group {g}")


async def _confirm(question: str, yes: bool) -> None:
    """Go on with ``--yes`` or a yes on the terminal; else exit (1 if it cannot ask)."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(ConfigError("not a terminal: pass --yes to purge without confirmation").one_line())
    if not await asyncio.to_thread(typer.confirm, question, default=False):
        fail("aborted: nothing purged")
