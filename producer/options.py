"""Options every ``uploader`` command shares (one definition, so they read the same)."""

from __future__ import annotations

import typer

BrokerOpt = typer.Option(None, "--broker", help="Broker URL (default: $PIXFLEET_BROKER, config).")
BlobsOpt = typer.Option(None, "--blobs", help="Blob store URL (default: $PIXFLEET_BLOBS, config).")
JsonOpt = typer.Option(False, "--json", help="One JSON object per line.")
DebugOpt = typer.Option(False, "--debug", help="Print tracebacks.")
