"""Fixtures of the fault suite: one :class:`~tests.reliability.rows.Bench` per row, or one per
transport for the rows that run on every transport side by side."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pytest

from tests.conftest import AMQP_OPTIONS, BROKER_KINDS, BrokerUnderTest, kafka_under_test
from tests.reliability.rows import Bench, open_bench

#: SQLite lease for the suite. The contract tests' 1 s lease expires under a *live* worker whose
#: settle waits for the write lock on 2 busy cores: the delivery is then delivered twice while
#: it is still being worked on, and its result may be replied twice (measured: 1 raw duplicate
#: in 2,000). Crash recovery does not need a short lease: dead consumers' leases are released
#: when their process is gone (issue 9.10); otherwise this lease bounds it.
SQLITE_LEASE = "10"

#: The transports of the side-by-side rows; ``PIXFLEET_FAULT_TRANSPORTS=kafka`` (a comma list)
#: narrows them for a local run.
TRANSPORTS = tuple(
    kind
    for kind in os.environ.get("PIXFLEET_FAULT_TRANSPORTS", ",".join(BROKER_KINDS)).split(",")
    if kind
)


def suite_broker(broker: BrokerUnderTest) -> BrokerUnderTest:
    if broker.kind != "sqlite":
        return broker
    base, _, query = broker.url.partition("?")
    options = {**dict(parse_qsl(query)), "lease": SQLITE_LEASE}
    return dataclasses.replace(broker, url=f"{base}?{urlencode(options)}")


def amqp_broker(url: str) -> BrokerUnderTest:
    """RabbitMQ at ``url`` (a vhost of the row's) with the suite's options."""
    return BrokerUnderTest("amqp", f"{url}?{AMQP_OPTIONS}", delivery_limit=3)


def sqlite_broker(root: Path) -> BrokerUnderTest:
    """A SQLite broker file of its own under ``root``, with the suite's lease."""
    root.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{root / 'broker.db'}?delivery_limit=3&poll=0.05"
    return suite_broker(BrokerUnderTest("sqlite", url, delivery_limit=3))


@pytest.fixture
async def bench(broker: BrokerUnderTest, tmp_path: Path) -> AsyncIterator[Bench]:
    """A fresh group, blob store, ledger and private reply channel on ``broker``."""
    async with open_bench(suite_broker(broker), tmp_path) as opened:
        yield opened


def _broker_of(kind: str, request: pytest.FixtureRequest, root: Path) -> BrokerUnderTest:
    if kind == "sqlite":
        return sqlite_broker(root)
    if kind == "amqp":
        return amqp_broker(request.getfixturevalue("amqp_session_url"))
    if kind == "kafka":
        return kafka_under_test(request.getfixturevalue("kafka_session_url"))
    raise AssertionError(f"unknown transport {kind!r} in PIXFLEET_FAULT_TRANSPORTS")


@pytest.fixture
async def benches(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[dict[str, Bench]]:
    """A bench per transport (:data:`TRANSPORTS`), each on its own broker, under its own
    directory: the rows of :func:`~tests.reliability.rows.on_every_transport`."""
    async with contextlib.AsyncExitStack() as stack:
        opened: dict[str, Bench] = {}
        for kind in TRANSPORTS:
            broker = _broker_of(kind, request, tmp_path / kind)
            opened[kind] = await stack.enter_async_context(open_bench(broker, tmp_path / kind))
        yield opened
