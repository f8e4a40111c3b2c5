"""``uploader``: enqueue images, wait for or read results, inspect backlog.

uploader enqueue PATH... [--group G]... [--wait] [--timeout S] [--json] [--param K=V]...
                 [--task-id ID]                               (producer.enqueue)
uploader results [--follow] [--json]                          (producer.lookup)
uploader get TASK_ID [--json]                                 (producer.lookup)
uploader fetch TASK_ID --to DIR                               (producer.lookup)
uploader status [--json] [--watch]                            (producer.status)
uploader gc --older-than AGE                                  (producer.gc)
uploader config show                                          (producer.config_cli)
uploader samples DIR [--count N]
uploader serve ...                                            (producer.serve)
uploader dlq list|replay|purge, uploader purge                (producer.admin_cli)
uploader workers, uploader control                            (producer.fleet_cli)

Each command module registers here with one line.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pixfleet.runtime import guarded, root_options, stdout_closed
from producer import admin_cli, fleet_cli, gc
from producer.config_cli import config_app
from producer.enqueue import enqueue_cmd
from producer.lookup import fetch_cmd, get_cmd, results_cmd
from producer.options import BlobsOpt, BrokerOpt, DebugOpt, JsonOpt
from producer.samples import write_samples
from producer.serve import serve_cmd
from producer.status import status_cmd

app = typer.Typer(
    no_args_is_help=True,
    help="pixfleet uploader: store images and publish processing tasks.",
)

__all__ = ["BlobsOpt", "BrokerOpt", "DebugOpt", "JsonOpt", "app", "main"]


app.callback()(root_options)
app.command("serve")(serve_cmd)
app.command("status")(status_cmd)
app.command("gc")(gc.gc_cmd)
app.add_typer(config_app, name="config")
app.command("enqueue")(enqueue_cmd)
app.command("results")(results_cmd)
app.command("get")(get_cmd)
app.command("fetch")(fetch_cmd)
admin_cli.register(app)
fleet_cli.register(app)


@app.command()
def samples(
    directory: Path = typer.Argument(..., help="Where to write the sample images."),
    count: int = typer.Option(6, min=1, max=1000, help="How many."),
) -> None:
    """Write a few sample photos (one with EXIF orientation 6 and GPS tags)."""
    try:
        for path in write_samples(directory, count):
            typer.echo(str(path))
    except BrokenPipeError:  # | head: the reader has what it wanted
        stdout_closed()


def main() -> None:
    guarded(app)
