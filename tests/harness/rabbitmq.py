"""Finding, starting and isolating RabbitMQ brokers for tests.

Order: ``$PIXFLEET_TEST_AMQP_URL``; a broker answering on 127.0.0.1:5672 (guest/guest); the
Debian ``rabbitmq-server`` started here; a testcontainers RabbitMQ where Docker works.
:class:`PrivateRabbit` runs a separate node (own name, ports and data dir) for fault tests that
stop or cut a broker - never the shared one.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

SHARED_URL = "amqp://guest:guest@127.0.0.1:5672/"


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ctl(*args: str, node: str | None = None, timeout: float = 120) -> str:
    cmd = ["rabbitmqctl", *(["-n", node] if node else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.stdout}")
    return done.stdout


def start_local_default() -> bool:
    """Start Debian's default node if the binary is here and nothing listens yet."""
    if not shutil.which("rabbitmq-server"):
        return False
    subprocess.run(["rabbitmq-server", "-detached"], check=False, capture_output=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if answers("127.0.0.1", 5672):
            ctl("await_startup")
            return True
        time.sleep(1)
    return False


def docker_works() -> bool:
    if not shutil.which("docker"):
        return False
    done = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    return done.returncode == 0


@contextlib.contextmanager
def shared_rabbit() -> Iterator[str | None]:
    """A base URL for the session's tests, or None if no RabbitMQ can be had."""
    url = os.environ.get("PIXFLEET_TEST_AMQP_URL")
    if url:
        yield url
    elif answers("127.0.0.1", 5672) or start_local_default():
        yield SHARED_URL
    elif docker_works():
        from testcontainers.rabbitmq import RabbitMqContainer  # noqa: PLC0415

        with RabbitMqContainer("rabbitmq:3.13-management") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(5672)
            yield f"amqp://guest:guest@{host}:{port}/"
    else:
        yield None


@contextlib.contextmanager
def private_vhost(base_url: str, node: str | None = None) -> Iterator[str]:
    """A fresh vhost on a local broker (via rabbitmqctl), deleted afterwards. Remote brokers
    (no rabbitmqctl) keep the URL's vhost: tests still use unique queue names."""
    if not shutil.which("rabbitmqctl") or urlsplit(base_url).hostname not in (
        "127.0.0.1",
        "localhost",
    ):
        yield base_url
        return
    vhost = f"pixfleet-test-{uuid.uuid4().hex[:8]}"
    user = urlsplit(base_url).username or "guest"
    ctl("add_vhost", vhost, node=node)
    ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*", node=node)
    parts = urlsplit(base_url)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), parts.query, ""))
    finally:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            ctl("delete_vhost", vhost, node=node)


def can_run_private_node() -> bool:
    """Debian's wrapper runs the server as the ``rabbitmq`` user: we must be root (or it)."""
    if not shutil.which("rabbitmq-server"):
        return False
    try:
        return os.geteuid() in (0, pwd.getpwnam("rabbitmq").pw_uid)
    except KeyError:
        return False


@dataclass
class PrivateRabbit:
    """A RabbitMQ node of our own (name, ports, data dir) that tests may stop and restart."""

    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pixfleet-rabbit-")))
    name: str = ""
    port: int = 0
    tls: bool = False  # also listen with TLS on tls_port, certificates from a throwaway CA
    app_stopped: bool = False  # stop_app was called (an outage in progress)
    alarmed: bool = False  # the disk alarm is raised

    def __post_init__(self) -> None:
        self.name = self.name or f"pixfleet-fault-{uuid.uuid4().hex[:6]}@localhost"
        self.port = self.port or free_port()
        self.dist_port = free_port()
        self.tls_port = free_port() if self.tls else 0
        if os.geteuid() == 0:  # the node runs as the rabbitmq user and writes here
            shutil.chown(self.base, "rabbitmq", "rabbitmq")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def ca_file(self) -> Path:
        return self.base / "ca.pem"

    def tls_url(self, **options: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"amqps://guest:guest@localhost:{self.tls_port}/" + (f"?{query}" if query else "")

    def _env(self) -> dict[str, str]:
        plugins = self.base / "enabled_plugins"
        plugins.write_text("[].\n")
        conf = self.base / "rabbitmq.conf"
        lines = ["loopback_users = none"]
        if self.tls:
            make_certificates(self.base)
            lines += [
                f"listeners.ssl.default = {self.tls_port}",
                f"ssl_options.cacertfile = {self.base / 'ca.pem'}",
                f"ssl_options.certfile = {self.base / 'server.pem'}",
                f"ssl_options.keyfile = {self.base / 'server.key'}",
                "ssl_options.verify = verify_none",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        conf.write_text("\n".join(lines) + "\n")
        return dict(
            os.environ,
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(plugins),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq"),
            RABBITMQ_PID_FILE=str(self.base / "pid"),
        )

    def start(self) -> None:
        subprocess.run(
            ["rabbitmq-server", "-detached"],
            env=self._env(),
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 120
        while not answers("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"private RabbitMQ {self.name} did not start")
            time.sleep(0.5)
        ctl("await_startup", node=self.name)

    def close_all_connections(self) -> None:
        ctl("close_all_connections", "pixfleet fault test", node=self.name)

    def stop_app(self) -> None:
        """An outage: RabbitMQ stops (every connection is closed, new ones are refused) while
        the Erlang node keeps running, so :meth:`start_app` brings it back in seconds."""
        self.app_stopped = True
        ctl("stop_app", node=self.name)

    def start_app(self) -> None:
        ctl("start_app", node=self.name)
        ctl("await_startup", node=self.name)
        self.app_stopped = False

    def ensure_app(self) -> None:
        """Back to normal after a test that failed during an outage or an alarm."""
        if self.app_stopped:
            self.start_app()
        if self.alarmed:
            self.disk_alarm(False)

    def disk_alarm(self, on: bool) -> None:
        """Raise (a free-disk limit no disk meets) or clear RabbitMQ's disk alarm, which blocks
        every connection that publishes."""
        ctl("set_disk_free_limit", "1000000GB" if on else "1MB", node=self.name)
        self.alarmed = on

    def restart(self, *, kill: bool = False) -> None:
        """Stop the whole node - gracefully (``rabbitmqctl stop``), or with ``kill -9`` of its
        Erlang VM - and start it again on the same data directory and ports."""
        if kill:
            pid = int((self.base / "pid").read_text().strip())
            os.kill(pid, signal.SIGKILL)
        else:
            ctl("stop", node=self.name)
        deadline = time.monotonic() + 60
        while answers("127.0.0.1", self.port, timeout=0.2):
            if time.monotonic() > deadline:
                raise RuntimeError(f"private RabbitMQ {self.name} did not stop")
            time.sleep(0.1)
        self.start()

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            ctl("stop", node=self.name)
        shutil.rmtree(self.base, ignore_errors=True)


def make_certificates(directory: Path) -> None:
    """A throwaway CA and a server certificate for localhost/127.0.0.1 (openssl CLI)."""

    def run(*args: str) -> None:
        subprocess.run(
            ["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60
        )

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=pixfleet test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    )
    for name in ("ca.pem", "server.pem", "server.key"):
        (directory / name).chmod(0o644)  # the node runs as the rabbitmq user
