"""The ingress app in-process: a real SQLite broker and file blob store in a temp dir, driven
through httpx's ASGI transport (no socket, no server process)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI

from brokers import open_transport
from brokers.contract import Transport
from pixfleet.blobs.file import FileBlobStore
from producer.http.app import create_app
from producer.http.services import Services, services_of_app
from producer.http.settings import IngressLimits, ServeSettings

Files = list[tuple[str, tuple[str, bytes, str]]]


@dataclass
class Api:
    client: httpx.AsyncClient
    app: FastAPI
    transport: Transport
    store: FileBlobStore

    @property
    def services(self) -> Services:
        return services_of_app(self.app)

    async def ready(self, group: str = "thumbs") -> int:
        """Tasks waiting in ``group`` (what the broker holds: published means counted here)."""
        return (await self.transport.stats(group)).ready


def files(*items: tuple[str, bytes]) -> Files:
    """Multipart ``file`` parts for httpx (``files=``)."""
    return [("file", (name, data, "application/octet-stream")) for name, data in items]


@asynccontextmanager
async def running_api(
    tmp_path: Path,
    *,
    limits: IngressLimits | None = None,
    token: str | None = None,
    raise_app_exceptions: bool = True,
) -> AsyncIterator[Api]:
    settings = ServeSettings(
        broker_url=f"sqlite:///{tmp_path}/broker.db?poll=0.05",
        blobs_url=(tmp_path / "blobs").as_uri(),
        limits=limits or IngressLimits(),
        token=token,
        sse_poll=0.05,
    )
    store = FileBlobStore(tmp_path / "blobs")
    async with open_transport(settings.broker_url) as transport:
        app = create_app(settings, transport=transport, store=store)
        asgi = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=asgi, base_url="http://ingress") as client:
            yield Api(client, app, transport, store)


def parse_sse(text: str) -> list[tuple[str, dict[str, object]]]:
    """(event, data) of each event in a ``text/event-stream`` body."""
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events
