"""The ingress behind nginx with the repository's own ``docker/nginx.conf`` (Debian's nginx on
loopback, round robin over the two real instances): uploads stream through, and event streams
reach the client as they are written - not when they end (no proxy buffering)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import IN_CI
from tests.deploy.nginx import nginx_binary, run_argv, write_site
from tests.helpers import images
from tests.http.inprocess import parse_sse
from tests.http.procs import IngressFleet

pytestmark = pytest.mark.e2e

JPEG = images.jpeg_bytes(320, 240, seed=5)


@pytest.fixture
def nginx(ingress_fleet: IngressFleet, tmp_path: Path) -> Iterator[str]:
    """nginx in front of both instances; its base URL."""
    if nginx_binary() is None:
        if IN_CI:
            pytest.fail("nginx is missing: tests/harness/ensure-nginx.sh (make brokers)")
        pytest.skip("nginx is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    upstreams = [f"127.0.0.1:{i.port}" for i in ingress_fleet.instances[:2]]
    site = write_site(tmp_path / "nginx", upstreams, port=port)
    with (tmp_path / "nginx.log").open("wb") as log:
        proc = subprocess.Popen(run_argv(site), stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_listening(port, proc)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)


def test_uploads_and_events_go_through_nginx(nginx: str) -> None:
    with httpx.Client(base_url=nginx, timeout=30) as client:
        response = client.post("/v1/uploads", files={"file": ("a.jpg", JPEG)})
        assert response.status_code == 202, response.text
        task = response.json()["tasks"][0]
        events = parse_sse(client.get(task["events_url"]).text)
        assert [e for e, _ in events] == ["result", "done"]


def test_event_streams_are_not_buffered_by_nginx(nginx: str) -> None:
    # No worker serves "audit": the stream stays open, so its first bytes can only arrive
    # now if nothing between the instance and the client holds them back.
    with httpx.Client(base_url=nginx, timeout=30) as client:
        response = client.post(
            "/v1/uploads", files={"file": ("a.jpg", JPEG)}, data={"groups": "audit"}
        )
        assert response.status_code == 202, response.text
        url = response.json()["tasks"][0]["events_url"]
        started = time.monotonic()
        with client.stream("GET", url, timeout=httpx.Timeout(5.0)) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            first = next(stream.iter_text())
        assert first.startswith("retry: ")
        assert time.monotonic() - started < 3


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "nginx exited at start"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nginx did not listen on {port}")
