"""A waiting client on Kafka lets go of its private reply channel at once.

``uploader enqueue --wait`` printed every result and then hung 45 - 80 s on exit: the reply
router read the private channel as a consumer group, and handing its unread results over at
exit joined that group again - while the router's member, its leave cut short, still counted
as one; the join waited for a rebalance until it gave up after 3 x ``op_timeout``. A private
channel has one reader: it is read with no group at all.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from brokers import open_transport
from producer import Client
from tests.conftest import BrokerUnderTest, kafka_under_test
from tests.helpers import images
from tests.helpers.tasks import make_result, unique
from tests.test_client import _take

#: Seconds the exit (hand-over and delete of the private channel) may take; it took 45+.
EXIT_WITHIN = 8.0


@pytest.fixture
def kafka(kafka_session_url: str) -> BrokerUnderTest:
    return kafka_under_test(kafka_session_url)


async def test_a_waiting_client_exits_soon_after_its_last_result(
    kafka: BrokerUnderTest, tmp_path: Path
) -> None:
    group, url = unique("kx"), f"{kafka.url}&op_timeout=15"
    async with open_transport(url) as worker:
        client = Client(broker=url, blobs=tmp_path.as_uri(), groups=[group])
        async with client:
            handle = await client.enqueue(images.jpeg_bytes(64, 48, seed=7), filename="a.jpg")
            (task,) = await _take(worker, group, 1)
            await worker.reply(task.reply_to, make_result(task, group))
            assert [r.task_id async for r in client.results(timeout=30)] == [handle.id]
            started = time.monotonic()
        took = time.monotonic() - started
        assert took < EXIT_WITHIN, f"closing the client took {took:.1f} s"
