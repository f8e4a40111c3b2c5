"""Fixtures of the fault suite: one :class:`~tests.reliability.rows.Bench` per row."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pytest

from tests.conftest import BrokerUnderTest
from tests.reliability.rows import Bench, open_bench

#: SQLite lease for the suite. The contract tests' 1 s lease expires under a *live* worker whose
#: settle waits for the write lock on 2 busy cores: the delivery is then delivered twice while
#: it is still being worked on, and its result may be replied twice (measured: 1 raw duplicate
#: in 2,000). Crash recovery does not need a short lease: dead consumers' leases are released
#: when their process is gone (issue 9.10); otherwise this lease bounds it.
SQLITE_LEASE = "10"


def suite_broker(broker: BrokerUnderTest) -> BrokerUnderTest:
    if broker.kind != "sqlite":
        return broker
    base, _, query = broker.url.partition("?")
    options = {**dict(parse_qsl(query)), "lease": SQLITE_LEASE}
    return dataclasses.replace(broker, url=f"{base}?{urlencode(options)}")


@pytest.fixture
async def bench(broker: BrokerUnderTest, tmp_path: Path) -> AsyncIterator[Bench]:
    """A fresh group, blob store, ledger and private reply channel on ``broker``."""
    async with open_bench(suite_broker(broker), tmp_path) as opened:
        yield opened
