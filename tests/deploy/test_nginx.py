"""docker/nginx.conf with Debian's nginx on loopback: `nginx -t`, then a real nginx in front of
two stand-in ingress instances - round robin, unbuffered event streams, the upload body limit,
failover when an instance goes away."""

from __future__ import annotations

import http.client
import http.server
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.manifests import DOCKER, NGINX_CONF
from tests.deploy.nginx import check_argv, nginx_binary, run_argv, write_site

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: Seconds between the two events of the stand-in event stream.
EVENT_GAP = 1.0
MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _needs_nginx() -> None:
    if nginx_binary() is None:
        if IN_CI:
            pytest.fail("nginx is missing: tests/harness/ensure-nginx.sh (make brokers)")
        pytest.skip("nginx is not installed (tests/harness/ensure-nginx.sh)")


# -- syntax ----------------------------------------------------------------------------------


def test_nginx_accepts_the_config_with_loopback_upstreams(tmp_path: Path) -> None:
    site = write_site(tmp_path / "nginx", ["127.0.0.1:18081", "127.0.0.1:18082"], port=18080)
    done = subprocess.run(check_argv(site), capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def test_nginx_refuses_a_broken_config(tmp_path: Path) -> None:
    """`nginx -t` really parses the file: the check above is not vacuous."""
    site = write_site(tmp_path / "nginx", ["127.0.0.1:18081"], port=18080)
    conf = site / "nginx.conf"
    conf.write_text(conf.read_text().replace("proxy_buffering off;", "proxy_buffering maybe;"))
    done = subprocess.run(check_argv(site), capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0 and "proxy_buffering" in done.stderr


def test_compose_include_files_define_what_nginx_conf_includes() -> None:
    """The compose variants need nginx >= 1.27.3 (`resolve`) and Docker's DNS, so they cannot
    be loaded by Debian's nginx 1.22 here; their shape is checked instead."""
    upstream = (DOCKER / "nginx-upstream.compose.conf").read_text()
    listen = (DOCKER / "nginx-listen.compose.conf").read_text()
    assert re.search(r"^upstream pixfleet_ingress \{$", upstream, re.M)
    assert upstream.count("{") == upstream.count("}") == 1
    assert re.search(r"^listen 8080;$", listen, re.M)
    assert "proxy_pass http://pixfleet_ingress;" in NGINX_CONF.read_text()


# -- a running nginx -------------------------------------------------------------------------


class _Instance(http.server.BaseHTTPRequestHandler):
    """A stand-in ingress instance: says who it is, streams two events, takes uploads."""

    server: _Server

    def do_GET(self) -> None:
        if self.path.endswith("/events"):
            self._events()
            return
        body = f"{self.server.name} {self.headers.get('X-Request-ID', '')}".encode()
        self._reply(200, body)

    def do_POST(self) -> None:
        size = int(self.headers["Content-Length"])
        got = 0
        while got < size:
            got += len(self.rfile.read(min(size - got, 1 << 16)))
        self._reply(202, str(got).encode())

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"data: one\n\n")
        self.wfile.flush()
        time.sleep(EVENT_GAP)
        self.wfile.write(b"data: two\n\n")
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        return None


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Instance)
        self.name = name
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "nginx exited at start"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nginx did not listen on {port}")


@dataclass
class _Stack:
    port: int
    instances: list[_Server]

    def get(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def post(self, path: str, size: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("POST", path, body=b"\0" * size)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[_Stack]:
    instances = [_Server("ingress-1"), _Server("ingress-2")]
    port = _free_port()
    site = write_site(tmp_path / "nginx", [i.address for i in instances], port=port)
    log = (tmp_path / "nginx.log").open("wb")
    proc = subprocess.Popen(run_argv(site), stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(port, proc)
        yield _Stack(port, instances)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        log.close()
        for instance in instances:
            if instance.thread.is_alive():
                instance.stop()


def test_requests_go_round_robin_over_the_instances(stack: _Stack) -> None:
    answers = [stack.get("/v1/tasks/x") for _ in range(4)]
    assert {status for status, _ in answers} == {200}
    assert {body.split()[0] for _, body in answers} == {"ingress-1", "ingress-2"}
    assert all(len(body.split()) == 2 for _, body in answers), "X-Request-ID is passed on"


def test_nginx_answers_its_own_health_check(stack: _Stack) -> None:
    assert stack.get("/nginx-health") == (200, "ok\n")


def test_event_streams_are_not_buffered(stack: _Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(b"GET /v1/tasks/abc/events HTTP/1.1\r\nHost: test\r\n\r\n")
        started = time.monotonic()
        received = b""
        while b"data: one" not in received:
            chunk = sock.recv(4096)
            assert chunk, "stream closed before the first event"
            received += chunk
        first = time.monotonic() - started
        assert b"data: two" not in received
    assert first < EVENT_GAP * 0.6, f"first event after {first:.2f} s: buffered by nginx"


def test_uploads_may_be_large_other_requests_may_not(stack: _Stack) -> None:
    assert stack.post("/v1/uploads", 3 * MIB) == 202
    assert stack.post("/v1/tasks/x", 3 * MIB) == 413


def test_an_instance_that_goes_away_is_skipped(stack: _Stack) -> None:
    stack.instances[0].stop()
    answers = [stack.get("/v1/tasks/x") for _ in range(6)]
    assert all(status == 200 for status, _ in answers)
    assert {body.split()[0] for _, body in answers} == {"ingress-2"}
