"""An S3 API server for tests, on real sockets.

Order: ``$PIXFLEET_TEST_S3_URL`` (an ``s3://bucket[/prefix]?endpoint=...`` whose bucket exists;
credentials from the usual ``AWS_*`` environment), else moto's server (``moto[server]``, a dev
dependency) started here on a free loopback port, with a fresh bucket created over plain HTTP.

moto is served one request at a time: its ``If-None-Match: *`` check and the write that follows
are not atomic across the threads of ``python -m moto.server`` (about one race in 2000 let two
writers win), whereas S3 and MinIO decide a conditional put atomically - which the
create-if-absent tests rely on.

:func:`throttling_proxy` puts a loopback HTTP proxy in front of a server that answers the first
requests with S3's ``503 SlowDown``, to see the client back off and retry.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit, urlunsplit

ENV_URL = "PIXFLEET_TEST_S3_URL"
BUCKET = "pixfleet-test"
#: moto accepts any credentials, but the client must have some (or it asks EC2 metadata).
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
#: ``python -m moto.server`` without its worker threads (see the module docstring).
SERIAL_MOTO = """
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app,
)
app = DomainDispatcherApplication(create_backend_app)
run_simple(sys.argv[1], int(sys.argv[2]), app, threaded=False, request_handler=MotoRequestHandler)
"""


@dataclass(frozen=True)
class S3Server:
    """A reachable bucket: ``url(prefix)`` names a private prefix in it."""

    base_url: str
    #: Environment the client needs (moto's dummy credentials); empty for ``$PIXFLEET_TEST_S3_URL``.
    env: Mapping[str, str] = field(default_factory=dict)
    endpoint: str | None = None

    def url(self, prefix: str) -> str:
        parts = urlsplit(self.base_url)
        path = "/".join(p for p in (parts.path.strip("/"), prefix) if p)
        return urlunsplit((parts.scheme, parts.netloc, f"/{path}", parts.query, ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def moto_available() -> bool:
    return all(importlib.util.find_spec(name) for name in ("moto", "flask", "flask_cors"))


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server | None]:
    """The session's S3 server, or None if none can be had."""
    url = os.environ.get(ENV_URL)
    if url:
        yield S3Server(url)
    elif moto_available():
        with moto_server() as endpoint:
            create_bucket(endpoint, BUCKET)
            yield S3Server(
                f"s3://{BUCKET}?endpoint={endpoint}&region=us-east-1&path_style=true",
                MOTO_CREDENTIALS,
                endpoint,
            )
    else:
        yield None


@contextlib.contextmanager
def moto_server(env: Mapping[str, str] | None = None) -> Iterator[str]:
    """moto's S3 server on a free loopback port; yields ``http://127.0.0.1:<port>``."""
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="pixfleet-moto-")) / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERIAL_MOTO, "127.0.0.1", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MOTO_PORT": str(port), **(env or {})},
        )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not _answers(endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def create_bucket(endpoint: str, bucket: str) -> None:
    """``PUT /<bucket>`` (moto needs no signature for it); an existing bucket is fine."""
    request = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class Throttle:
    """What the proxy did: requests seen, and how many it refused with 503 SlowDown."""

    failures: int
    seen: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def refuse(self) -> bool:
        with self.lock:
            self.seen += 1
            return self.seen <= self.failures


class _ProxyServer(ThreadingHTTPServer):
    def __init__(self, upstream: str, throttle: Throttle) -> None:
        super().__init__(("127.0.0.1", 0), _ThrottlingHandler)
        self.upstream = urlsplit(upstream)
        self.throttle = throttle


class _ThrottlingHandler(BaseHTTPRequestHandler):
    def _handle(self) -> None:
        server = cast(_ProxyServer, self.server)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if server.throttle.refuse():
            self._reply(503, [("Content-Type", "application/xml")], SLOW_DOWN)
            return
        target = server.upstream
        conn = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
        try:
            conn.request(self.command, self.path, body, dict(self.headers.items()))
            answer = conn.getresponse()
            self._reply(answer.status, answer.getheaders(), answer.read())
        finally:
            conn.close()

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        head = self.command == "HEAD"  # keeps the upstream Content-Length, sends no body
        dropped = ("transfer-encoding", "connection") + (() if head else ("content-length",))
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in dropped:
                self.send_header(name, value)
        if not head:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _handle

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def throttling_proxy(upstream: str, failures: int) -> Iterator[tuple[str, Throttle]]:
    """``(endpoint, throttle)``: the first ``failures`` requests get ``503 SlowDown``, the
    rest are forwarded to ``upstream`` (``http://host:port``) as they are."""
    throttle = Throttle(failures)
    server = _ProxyServer(upstream, throttle)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", throttle
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
