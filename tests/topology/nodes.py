"""Machines without a shared disk, simulated on one host: every process of a topology runs as a
:class:`Node` - its own ``PIXFLEET_HOME``, its own (empty) working directory, the installed
console scripts (``uploader``, ``worker``) and nothing from the repository checkout. What the
nodes share is what real machines would share: the broker URL, the ``s3://`` blob store URL and
the S3 credentials in the environment. Logs are written outside the nodes (``logs/``), so a node
that stayed empty provably kept nothing on its local disk.

nginx in front of ingress instances: :func:`start_nginx` renders ``docker/nginx.conf`` with
``tests/deploy/nginx.py`` and adds one response header naming the upstream that answered
(``X-Pixfleet-Upstream``), so a client knows which instance took each upload.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.deploy.nginx import LISTEN_FILE, run_argv, write_site
from tests.e2e.conftest import WorkerProc
from tests.http.procs import IngressProc

#: The console scripts of the installed package, next to this interpreter.
BIN = Path(sys.executable).parent
#: Response header the topology's nginx adds: the upstream(s) that handled the request.
UPSTREAM_HEADER = "X-Pixfleet-Upstream"


def script(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{path} is missing: install the package (make install)"
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited at start ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on {port} within {timeout}s")


def files_under(directory: Path) -> list[str]:
    """Every file below ``directory`` (relative paths), to show a node kept nothing."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


@dataclass
class Node:
    """One simulated machine: ``home`` is its PIXFLEET_HOME, ``cwd`` its working directory."""

    name: str
    home: Path
    cwd: Path
    logs: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    files: list[IO[bytes]] = field(default_factory=list)

    def popen(
        self, argv: Sequence[str], *, tag: str
    ) -> tuple[subprocess.Popen[bytes], Path, IO[bytes]]:
        """Start ``argv`` on this node in a session of its own (a crash kills its group only);
        output goes to ``logs/<node>-<tag>.log`` (the open file is returned for the process
        wrappers, which close it; :meth:`kill_all` closes it too)."""
        log_path = self.logs / f"{self.name}-{tag}.log"
        log = log_path.open("wb")
        self.files.append(log)
        proc = subprocess.Popen(
            list(argv),
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc, log_path, log

    def run(self, argv: Sequence[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def kept_nothing(self) -> list[str]:
        """Files this node wrote to its home (should be none: state is in S3 and the broker)."""
        return files_under(self.home)

    def kill_all(self) -> None:
        """Teardown: SIGKILL every process group this node started (also the group of a
        leader killed earlier: a pool child it left), then reap the leaders."""
        for proc in self.procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for log in self.files:
            log.close()


@dataclass
class Site:
    """The shared configuration of a topology and the nodes running in it."""

    root: Path
    broker_url: str
    blobs_url: str
    #: Environment every node gets on top of the test's (S3 credentials of a moto server).
    shared_env: Mapping[str, str]
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def urls(self) -> list[str]:
        return ["--broker", self.broker_url, "--blobs", self.blobs_url]

    def node(self, name: str) -> Node:
        """A fresh machine: new empty home and working directory."""
        assert name not in self.nodes, f"node {name} exists"
        base = self.root / "nodes" / name
        home, cwd, logs = base / "home", base / "cwd", self.root / "logs"
        for directory in (home, cwd, logs):
            directory.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIXFLEET_")}
        env.update(self.shared_env)
        env["PIXFLEET_HOME"] = str(home)
        node = Node(name, home, cwd, logs, env)
        self.nodes[name] = node
        return node

    def serve(self, node: Node, *args: str, port: int = 0) -> IngressProc:
        """``uploader serve`` on ``node``; returns once it listens (its port is then known)."""
        argv = [script("uploader"), "serve", "--port", str(port), *self.urls, *args]
        instance = IngressProc(*node.popen(argv, tag=f"serve-{len(node.procs)}"))
        instance.wait_listening(timeout=30)
        return instance

    def worker(self, node: Node, *args: str) -> WorkerProc:
        argv = [script("worker"), "run", "--group", "thumbs", *self.urls, *args]
        return WorkerProc(*node.popen(argv, tag=f"worker-{len(node.procs)}"))

    def uploader(
        self, node: Node, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return node.run([script("uploader"), *args, *self.urls], timeout=timeout)

    def kill_all(self) -> None:
        for node in self.nodes.values():
            node.kill_all()


@contextmanager
def start_nginx(directory: Path, upstreams: Sequence[str], log: Path) -> Iterator[str]:
    """docker/nginx.conf on a free loopback port, round robin over ``upstreams``; yields its
    base URL. Responses carry :data:`UPSTREAM_HEADER` (added through the listen include, the
    only part of the site that is not the repository's file)."""
    port = free_port()
    site = write_site(directory, upstreams, port=port)
    with (site / LISTEN_FILE).open("a", encoding="utf-8") as listen:
        listen.write(f"add_header {UPSTREAM_HEADER} $upstream_addr always;\n")
    with log.open("wb") as out:
        proc = subprocess.Popen(run_argv(site), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, "nginx")
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # fast stop: nothing of this run is left to serve
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
