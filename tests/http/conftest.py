"""Fixtures of the HTTP ingress tests: the app in-process, and real ``uploader serve``
processes (two instances, one worker) sharing one SQLite broker and one file blob store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.http.inprocess import Api, running_api
from tests.http.procs import IngressFleet, start_fleet


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(tmp_path) as running:
        yield running


@pytest.fixture(scope="package")
def ingress_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngressFleet]:
    """Two ingress instances (the second with a 200 kB file limit) and one thumbs worker."""
    with start_fleet(tmp_path_factory.mktemp("ingress")) as fleet:
        yield fleet
