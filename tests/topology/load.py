"""The client side of the topology e2e: uploads through the load balancer with safe retries, and
the reads that check every task afterwards.

Each file is one ``POST /v1/uploads`` with an ``Idempotency-Key`` (its task id): the API takes a
key only on a single-file request (``400 request.invalid`` otherwise), and only a keyed upload
can be retried without risking a second task. Several uploads are in flight at once instead
(a thread each). A retry is made for what a lost or refused instance looks like - a transport
error, ``502``/``504`` from nginx, ``503``, ``429`` - with the same key and bytes; anything else
is final.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.topology.nodes import UPSTREAM_HEADER

#: Statuses worth a retry of the same upload (same key): the instance or its broker was lost.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass
class Upload:
    """One file and what happened to it."""

    key: str
    filename: str
    data: bytes
    attempts: int = 0
    #: What each failed attempt met: an HTTP status or a transport error's class name.
    failures: list[str] = field(default_factory=list)
    status: int | None = None  # the final answer's status (None: no answer at all)
    body: dict[str, Any] = field(default_factory=dict)
    #: ``$upstream_addr`` of the final answer: the instance(s) nginx passed it to, in order.
    upstreams: tuple[str, ...] = ()
    accepted_at: float | None = None  # time.monotonic() of the 202

    @property
    def accepted(self) -> bool:
        return self.status == 202

    @property
    def taker(self) -> str:
        """The instance (``host:port``) that took the upload: the last one nginx tried."""
        return self.upstreams[-1] if self.upstreams else ""


@dataclass
class LoadStats:
    """Shared counters of a load run (thread-safe)."""

    accepted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note_accepted(self) -> None:
        with self.lock:
            self.accepted += 1


def send(client: httpx.Client, upload: Upload, stats: LoadStats, *, deadline: float) -> None:
    """POST the upload until it is answered with something other than a retryable failure, or
    ``deadline`` (monotonic) passes; the outcome is left on ``upload``."""
    delay = 0.1
    while time.monotonic() < deadline:
        upload.attempts += 1
        try:
            response = client.post(
                "/v1/uploads",
                files={"file": (upload.filename, upload.data, "image/jpeg")},
                headers={"Idempotency-Key": upload.key},
            )
        except httpx.TransportError as exc:
            upload.failures.append(type(exc).__name__)
        else:
            upload.upstreams = tuple(
                u.strip() for u in response.headers.get(UPSTREAM_HEADER, "").split(",") if u
            )
            if response.status_code not in RETRY_STATUSES:
                upload.status = response.status_code
                upload.body = _json(response)
                if upload.accepted:
                    upload.accepted_at = time.monotonic()
                    stats.note_accepted()
                return
            upload.failures.append(str(response.status_code))
            delay = max(delay, min(float(response.headers.get("retry-after") or 0), 2.0))
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"text": response.text[:500]}
    return body if isinstance(body, dict) else {"json": body}


def failure_counts(uploads: list[Upload]) -> Counter[str]:
    return Counter(f for u in uploads for f in u.failures)


def wait_done(
    client: httpx.Client, task_id: str, *, deadline: float, pause: float = 0.25
) -> dict[str, Any]:
    """``GET /v1/tasks/{task_id}`` until it is no longer ``queued``; the last body."""
    body: dict[str, Any] = {}
    while True:
        response = client.get(f"/v1/tasks/{task_id}")
        assert response.status_code == 200, f"{task_id}: {response.status_code} {response.text}"
        body = response.json()
        if body["state"] != "queued" or time.monotonic() > deadline:
            return body
        time.sleep(pause)
