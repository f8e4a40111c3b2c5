"""amqps:// against a private RabbitMQ node with a TLS listener and a throwaway CA."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import pytest

from brokers import open_transport
from tests.conftest import missing_broker
from tests.harness import rabbitmq
from tests.helpers.cli import run_cli
from tests.helpers.tasks import make_task, unique

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tls_rabbit() -> Iterator[rabbitmq.PrivateRabbit]:
    if not rabbitmq.can_run_private_node():
        missing_broker("a local rabbitmq-server (run as root) for a private TLS node")
    node = rabbitmq.PrivateRabbit(tls=True)
    node.start()
    try:
        yield node
    finally:
        node.stop()


async def test_tasks_flow_over_amqps_with_a_ca_file(tls_rabbit: rabbitmq.PrivateRabbit) -> None:
    group = unique()
    task = make_task(group)
    url = tls_rabbit.tls_url(cafile=str(tls_rabbit.ca_file))
    async with open_transport(url) as transport:
        await transport.publish(task)
        async with aclosing(transport.consume(group, prefetch=1)) as it:
            delivery = await anext(it)
            assert delivery.message == task
            await delivery.ack()


def test_an_untrusted_server_certificate_is_one_clear_error(
    tls_rabbit: rabbitmq.PrivateRabbit, tmp_path: Path
) -> None:
    url = tls_rabbit.tls_url(connect_timeout="1")  # no cafile: the test CA is not trusted
    done = run_cli("producer", "status", "--broker", url, home=tmp_path)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error[broker.auth_failed]: TLS: the certificate of amqps://guest:***@")
    assert "not trusted" in line
    assert "guest:guest" not in line
