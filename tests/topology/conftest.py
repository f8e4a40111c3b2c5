"""Fixtures of the topology tests: an S3 API server (moto on loopback, or
``$PIXFLEET_TEST_S3_URL``), a private RabbitMQ vhost per test, and a :class:`Site` - the shared
broker and blob store URLs - on which each test starts its nodes (simulated machines)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pixfleet.blobs import open_blobstore
from pixfleet.blobs.s3 import S3BlobStore
from tests.conftest import missing_broker
from tests.harness import rabbitmq
from tests.harness import s3 as s3_harness
from tests.topology.nodes import Site


@pytest.fixture(scope="session")
def topology_s3() -> Iterator[s3_harness.S3Server]:
    """The S3 API server of the topology tests (their own moto: the e2e's load stays off the
    one other S3 tests use)."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(s3_harness.s3_server())
        except (RuntimeError, OSError) as exc:
            missing_broker(f"an S3 API server ({exc})")
            raise  # not reached: missing_broker fails or skips
        if server is None:
            missing_broker("an S3 API server (set PIXFLEET_TEST_S3_URL or install moto[server])")
        assert server is not None
        yield server


@pytest.fixture
def amqp_vhost(amqp_session_url: str) -> Iterator[str]:
    """A RabbitMQ vhost of this test alone."""
    base = amqp_session_url.rsplit("/", 1)[0] + "/"
    with rabbitmq.private_vhost(base) as url:
        yield url


@pytest.fixture
def s3_url(topology_s3: s3_harness.S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A private prefix of this test in the bucket; the test process gets the credentials."""
    for name, value in topology_s3.env.items():
        monkeypatch.setenv(name, value)
    return topology_s3.url(f"topo{uuid.uuid4().hex[:12]}")


@pytest.fixture
def s3_store(s3_url: str) -> S3BlobStore:
    """The test's own client of the blob store, to read back what the nodes wrote."""
    store = open_blobstore(s3_url)
    assert isinstance(store, S3BlobStore)
    return store


def make_site(
    tmp_path: Path, broker_url: str, s3_url: str, server: s3_harness.S3Server
) -> Iterator[Site]:
    site = Site(tmp_path, broker_url, s3_url, dict(server.env))
    try:
        yield site
    finally:
        site.kill_all()


@pytest.fixture
def amqp_site(
    tmp_path: Path, amqp_vhost: str, s3_url: str, topology_s3: s3_harness.S3Server
) -> Iterator[Site]:
    """RabbitMQ (a private vhost) + S3; every node started on it is killed at teardown."""
    yield from make_site(tmp_path, amqp_vhost, s3_url, topology_s3)
