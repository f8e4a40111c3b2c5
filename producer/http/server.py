"""``uploader serve``'s server: the ingress app on uvicorn, draining on SIGTERM/SIGINT.

Apart from :mod:`producer.serve` (the command and its options) so that every other ``uploader``
command starts without importing uvicorn and FastAPI (a few hundred ms per process).
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from types import FrameType

import uvicorn
from fastapi import FastAPI

from brokers import open_transport
from pixfleet.blobs import open_blobstore
from producer.http.app import create_app
from producer.http.services import services_of_app
from producer.http.settings import ServeSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    drain: int  # seconds (uvicorn takes whole ones)
    log_level: str


async def serve(settings: ServeSettings, listen: Listen) -> None:
    store = open_blobstore(settings.blobs_url)
    async with open_transport(settings.broker_url) as transport:
        app = create_app(settings, transport=transport, store=store)
        server = _Server(
            uvicorn.Config(
                app,
                host=listen.host,
                port=listen.port,
                lifespan="off",
                log_config=None,
                log_level=listen.log_level,
                timeout_graceful_shutdown=listen.drain,
                server_header=False,
            ),
            app,
        )
        log.info("serving %s with broker %s", settings.blobs_url, transport.url)
        previous = signal.signal(signal.SIGTERM, _ignore)  # uvicorn re-raises it when done
        try:
            await server.serve()
        finally:
            signal.signal(signal.SIGTERM, previous)
    log.info("ingress stopped")


class _Server(uvicorn.Server):
    """uvicorn's server, which on SIGTERM/SIGINT also tells the app to drain, and which does
    not kill the process with the signal again once it has shut down gracefully (exit 0)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        services_of_app(self._app).draining = True
        super().handle_exit(sig, frame)


def _ignore(sig: int, frame: FrameType | None) -> None:
    """Swallow the SIGTERM uvicorn re-raises after its graceful shutdown."""
