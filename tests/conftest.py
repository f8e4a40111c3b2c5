"""Shared fixtures: broker URLs (one per transport), blob stores, sample images."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import images

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class BrokerUnderTest:
    """A transport URL plus what the contract tests need to know about its configuration."""

    kind: str
    url: str
    delivery_limit: int


def _sqlite(tmp_path: Path) -> BrokerUnderTest:
    # Short lease so crash tests see redelivery in about a second; small poison limit.
    path = tmp_path / "broker.db"
    return BrokerUnderTest(
        "sqlite", f"sqlite:///{path}?lease=1&max_deliveries=3&poll=0.05", delivery_limit=3
    )


BROKER_KINDS = ["sqlite"]


@pytest.fixture(params=BROKER_KINDS)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerUnderTest]:
    kind = request.param
    if kind == "sqlite":
        yield _sqlite(tmp_path)
    else:  # pragma: no cover - later transports register here
        raise AssertionError(f"unknown broker kind {kind}")


@pytest.fixture
def sample_dir(tmp_path: Path) -> Path:
    out = tmp_path / "samples"
    images.write_samples(out, count=3)
    return out
