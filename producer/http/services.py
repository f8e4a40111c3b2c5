"""What every request handler of one instance uses: the broker roles, the blob store, settings,
metrics - built once per process and passed down, never global.

The instance keeps only per-process bookkeeping here (uploads in flight, whether it is draining);
everything a client may ask another instance about lives in the broker and the blob store.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

from starlette.applications import Starlette
from starlette.requests import Request

from brokers.contract import Inspector, ReplyChannels, TaskQueue, Transport
from pixfleet.blobs import BlobStore
from producer.http.errors import Draining, IngressBusy
from producer.http.metrics import Metrics
from producer.http.settings import ServeSettings


@dataclass
class Services:
    """One instance's parts. ``transport`` is open for as long as the app serves."""

    settings: ServeSettings
    transport: Transport
    store: BlobStore
    metrics: Metrics = field(default_factory=Metrics)
    draining: bool = False
    in_flight: int = 0

    @property
    def queue(self) -> TaskQueue:
        return self.transport

    @property
    def replies(self) -> ReplyChannels:
        return self.transport

    @property
    def inspector(self) -> Inspector:
        return self.transport

    @contextmanager
    def admit_upload(self) -> Iterator[None]:
        """Count one upload in flight; :class:`Draining` once shutting down and
        :class:`IngressBusy` at the in-flight limit (the client retries, perhaps elsewhere)."""
        if self.draining:
            raise Draining("this instance is shutting down; retry (another instance will answer)")
        limit = self.settings.limits.max_in_flight
        if self.in_flight >= limit:
            raise IngressBusy(f"this instance is receiving {limit} uploads already; retry shortly")
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()


def services_of(request: Request) -> Services:
    """The :class:`Services` of the app serving ``request`` (a FastAPI dependency)."""
    return cast(Services, request.app.state.services)


def root_of(request: Request) -> str:
    """The app's root path (``""`` unless mounted under a prefix), for root-relative URLs."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def services_of_app(app: Starlette) -> Services:
    """The :class:`Services` of ``app`` (one built by :func:`producer.http.app.create_app`)."""
    return cast(Services, app.state.services)
