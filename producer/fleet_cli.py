"""``uploader workers`` and ``uploader control``: see and steer the fleet.

uploader workers [--group G] [--json]
uploader control ping|stats|pause|resume|shutdown (--worker ID | --group G | --all)
                 [--timeout S] [--json]

``workers`` reads the roster (:meth:`brokers.contract.Fleet.roster`): one line per worker, or
with ``--json`` one object per line (the :class:`~pixfleet.fleet.WorkerStatus` fields plus
``age`` in seconds); a worker that missed three heartbeats shows ``state: lost`` (its last
reported state in ``reported_state``) and is no longer listed after twelve.

``control`` checks a ``--worker`` id against the roster (``fleet.unknown_worker`` unless it is
live), sends the request, and prints each reply as it arrives until every targeted live worker
answered or ``--timeout`` passed. Exit 1 if a targeted worker did not answer
(``fleet.no_reply``) or answered with an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import typer

from brokers import open_transport
from brokers.contract import Fleet
from pixfleet.errors import ConfigError, NoControlReply, UnknownWorker
from pixfleet.fleet import (
    COMMANDS,
    Command,
    ControlReply,
    ControlRequest,
    ControlTarget,
    WorkerStatus,
)
from pixfleet.fleet import liveness as liveness_of
from pixfleet.runtime import EXIT_FAILURE, cli_urls, configure_logging, fail, run_async

BrokerOpt = typer.Option(None, "--broker", help="Broker URL (default: $PIXFLEET_BROKER, config).")
JsonOpt = typer.Option(False, "--json", help="One JSON object per line.")
DebugOpt = typer.Option(False, "--debug", help="Print tracebacks.")
GroupOpt = typer.Option(None, "--group", "-g", help="Only the workers of this group.")


def register(app: typer.Typer) -> None:
    """Add ``workers`` and ``control`` to the ``uploader`` app."""
    app.command("workers")(workers_cmd)
    app.command("control")(control_cmd)


# -- workers ------------------------------------------------------------------------------


def workers_cmd(
    group: str = GroupOpt, as_json: bool = JsonOpt, broker: str = BrokerOpt, debug: bool = DebugOpt
) -> None:
    """List the workers of this deployment: live ones, and lost ones (missed 3 heartbeats)."""
    configure_logging("debug" if debug else "error")
    rows = run_async(_listed(cli_urls(broker, blobs_used=False)[0], group), debug=debug)
    if not as_json:
        typer.echo(
            f"{'worker':<28} {'state':<12} {'groups':<16} {'in-flight':>9} {'ok':>7} "
            f"{'failed':>6}  {'seen':>5}"
        )
    for row in rows:
        typer.echo(json.dumps(row) if as_json else _line(row))


async def _listed(url: str, group: str | None) -> list[dict[str, Any]]:
    async with open_transport(url) as transport:
        roster = await transport.roster()
    now = datetime.now(UTC)
    rows = []
    for status in sorted(roster, key=lambda s: (s.groups, s.id)):
        alive = liveness_of(status, now)
        if alive == "gone" or (group is not None and group not in status.groups):
            continue
        row = status.model_dump(mode="json")
        row["age"] = round((now - status.last_seen).total_seconds(), 1)
        if alive == "lost":
            row["reported_state"], row["state"] = status.state, "lost"
        rows.append(row)
    return rows


def _line(row: dict[str, Any]) -> str:
    groups = ",".join(row["groups"])
    return (
        f"{row['id']:<28} {row['state']:<12} {groups:<16} {row['in_flight']:>9} {row['ok']:>7} "
        f"{row['failed']:>6}  {row['age']:>4.0f}s"
    )


# -- control ------------------------------------------------------------------------------


def control_cmd(  # noqa: PLR0917 - Typer commands take one positional per option
    command: str = typer.Argument(..., help="ping, stats, pause, resume or shutdown."),
    worker: str = typer.Option(None, "--worker", "-w", help="One worker, by id."),
    group: str = typer.Option(None, "--group", "-g", help="Every worker of a group."),
    everyone: bool = typer.Option(False, "--all", help="Every worker."),
    timeout: float = typer.Option(5.0, min=0.1, help="Seconds to collect replies."),
    as_json: bool = JsonOpt,
    broker: str = BrokerOpt,
    debug: bool = DebugOpt,
) -> None:
    """Send a control command to one worker, a group or all, and print the replies."""
    configure_logging("debug" if debug else "error")
    if command not in COMMANDS:
        fail(ConfigError(f"unknown command {command!r} (one of {', '.join(COMMANDS)})").one_line())
    if sum((worker is not None, group is not None, everyone)) != 1:
        fail(ConfigError("name exactly one target: --worker ID, --group G or --all").one_line())
    if worker is not None:
        target = ControlTarget(kind="worker", name=worker)
    elif group is not None:
        target = ControlTarget(kind="group", name=group)
    else:
        target = ControlTarget(kind="all")
    url = cli_urls(broker, blobs_used=False)[0]
    asking = _control(url, command, target, timeout, as_json)
    code = run_async(asking, debug=debug)
    raise typer.Exit(code)


async def _control(
    url: str, command: Command, target: ControlTarget, timeout: float, as_json: bool
) -> int:
    async with open_transport(url) as transport:
        expected = _targeted(await transport.roster(), target)
        replies = await _ask(
            transport,
            command=command,
            target=target,
            expected=expected,
            timeout=timeout,
            as_json=as_json,
        )
    missing = sorted(expected - {r.worker for r in replies})
    if not replies:
        raise NoControlReply(f"no worker answered {command} within {timeout:g}s")
    if missing:
        typer.echo(
            NoControlReply(f"no reply from {', '.join(missing)} within {timeout:g}s").one_line(),
            err=True,
        )
    return EXIT_FAILURE if missing or not all(r.ok for r in replies) else 0


def _targeted(roster: list[WorkerStatus], target: ControlTarget) -> set[str]:
    """The live workers ``target`` reaches; an unknown or lost ``--worker`` id is an error."""
    now = datetime.now(UTC)
    live = {s.id: s for s in roster if liveness_of(s, now) == "live"}
    if target.kind == "worker" and target.name not in live:
        lost = any(s.id == target.name and liveness_of(s, now) == "lost" for s in roster)
        why = "is lost (missed 3 heartbeats)" if lost else "is not in the roster"
        raise UnknownWorker(f"worker {target.name!r} {why}; see uploader workers")
    return {wid for wid, s in live.items() if target.reaches(wid, s.groups)}


async def _ask(
    fleet: Fleet,
    *,
    command: Command,
    target: ControlTarget,
    expected: set[str],
    timeout: float,
    as_json: bool,
) -> list[ControlReply]:
    replies: list[ControlReply] = []
    inbox = await fleet.open_control_inbox()
    async with contextlib.aclosing(inbox):
        request = ControlRequest.new(command, target, inbox.address)
        await fleet.send_control(request)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                async for reply in inbox:
                    if reply.request_id != request.id or reply.worker in {
                        r.worker for r in replies
                    }:
                        continue
                    replies.append(reply)
                    typer.echo(reply.model_dump_json() if as_json else _reply_line(reply))
                    if expected and expected <= {r.worker for r in replies}:
                        break
    return replies


def _reply_line(reply: ControlReply) -> str:
    if not reply.ok and reply.error is not None:
        return f"{reply.worker:<28} error[{reply.error.code}]: {reply.error.message}"
    details = " ".join(f"{k}={v}" for k, v in sorted(reply.data.items()))
    return f"{reply.worker:<28} ok  {details}"
