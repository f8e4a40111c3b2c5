"""``uploader gc``: retention for the blob store (issue 15.7).

    uploader gc --older-than 7d [--all] [--dry-run] [--json] [--blobs URL]

Originals (``uploads/``) are the personal data a deployment keeps: the photo itself, with its
GPS position and camera metadata (outputs are re-encoded with metadata stripped). ``gc`` deletes
the uploads last written more than ``--older-than`` ago; ``--all`` also deletes outputs
(``outputs/``) and completion records (``records/``) of that age. What is deleted is gone:
``--dry-run`` lists it first.

Age is the store's modification time: re-uploading the same bytes rewrites the blob (file:// and
s3:// alike), so an image uploaded again today is never collected with last month's copy. A task
still queued after the age finds its blob gone and fails with ``blob.not_found``; keep the age
well above the longest queue time. On S3 a lifecycle rule on ``<prefix>/uploads/`` does the same
without running anything (``docs/blobstore.md``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import typer

from pixfleet.blobs import BlobInfo, BlobStore, open_blobstore
from pixfleet.errors import ConfigError
from pixfleet.runtime import fail, run_async, settings_or_fail

ORIGINALS = ("uploads",)
EVERYTHING = ("uploads", "outputs", "records")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"^(\d{1,6})([smhdw])$")


def parse_age(text: str) -> timedelta:
    """``30s``, ``15m``, ``12h``, ``7d``, ``2w`` -> a timedelta; :class:`ConfigError` else."""
    found = _AGE.fullmatch(text.strip().lower())
    if found is None:
        raise ConfigError(f"--older-than expects a number and s, m, h, d or w (7d), got {text!r}")
    return timedelta(seconds=int(found[1]) * _UNITS[found[2]])


@dataclass
class GcReport:
    deleted: int = 0
    bytes: int = 0
    kept: int = 0


async def collect(
    store: BlobStore,
    *,
    older_than: timedelta,
    prefixes: tuple[str, ...] = ORIGINALS,
    dry_run: bool = False,
    now: datetime | None = None,
    on_blob: Callable[[BlobInfo], None] = lambda _: None,
) -> GcReport:
    """Delete (or with ``dry_run`` only report) every blob under ``prefixes`` last modified
    before ``now - older_than``; ``on_blob`` sees each one that goes."""
    cutoff = (now or datetime.now(UTC)) - older_than
    report = GcReport()
    for prefix in prefixes:
        async for blob in store.scan(prefix):
            if blob.modified >= cutoff:
                report.kept += 1
                continue
            if not dry_run:
                await store.delete(blob.key)
            report.deleted += 1
            report.bytes += blob.size
            on_blob(blob)
    return report


def gc_cmd(
    older_than: str = typer.Option(..., "--older-than", help="Age, e.g. 7d, 12h, 2w."),
    everything: bool = typer.Option(
        False, "--all", help="Also delete outputs and completion records of that age."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would go; delete nothing."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    blobs: str | None = typer.Option(
        None, "--blobs", help="Blob store URL (default: $PIXFLEET_BLOBS, config)."
    ),
) -> None:
    """Delete originals (and with --all outputs and records) older than an age."""
    try:
        age = parse_age(older_than)
    except ConfigError as exc:
        fail(exc.one_line())
    store = open_blobstore(settings_or_fail(blobs=blobs).blobs_url)  # flags > env > file
    verb = "would delete" if dry_run else "deleted"

    def show(blob: BlobInfo) -> None:
        if as_json:
            line = {"key": blob.key, "bytes": blob.size, "modified": blob.modified.isoformat()}
            typer.echo(json.dumps({**line, "deleted": not dry_run}))
        elif dry_run:
            typer.echo(f"{verb} {blob.key} ({blob.size} bytes, {blob.modified:%Y-%m-%d %H:%M})")

    prefixes = EVERYTHING if everything else ORIGINALS
    report = run_async(
        collect(store, older_than=age, prefixes=prefixes, dry_run=dry_run, on_blob=show)
    )
    if as_json:
        summary = {"deleted": report.deleted, "bytes": report.bytes, "kept": report.kept}
        typer.echo(json.dumps({"summary": {**summary, "dry_run": dry_run}}))
    else:
        typer.echo(
            f"{verb} {report.deleted} blob(s), {report.bytes} bytes, older than {older_than} "
            f"under {', '.join(prefixes)} of {store.url}; kept {report.kept}"
        )
