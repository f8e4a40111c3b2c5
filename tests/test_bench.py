"""``python -m bench all --smoke`` runs and prints every section (no timing is asserted: the
numbers live in docs/benchmarks.md, measured with ``--quick``); a bench row deletes what it
declared on the broker (:mod:`bench.cleanup`)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from contextlib import aclosing
from pathlib import Path

import aio_pika
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from bench.cleanup import Declared, declared, sweep
from bench.cleanup_amqp import amqp_queues
from bench.cleanup_kafka import kafka_topics
from brokers import open_transport
from brokers.amqp.settings import AmqpSettings
from brokers.kafka.settings import KafkaSettings
from tests.conftest import BrokerUnderTest
from tests.helpers.tasks import make_task, unique

REPO = Path(__file__).resolve().parents[1]


def test_bench_all_smoke_prints_one_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run(
        [sys.executable, "-m", "bench", "all", "--smoke", "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    for heading in ("-- round trip: sqlite", "-- images", "-- system"):
        assert heading in run.stdout
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    for name in (
        "raw sqlite loop",
        "pixfleet sqlite",
        "thumbs pipeline",
        "fleet sqlite, 2 workers",
    ):
        assert rows[name]["value"] > 0, rows[name]
    assert rows["pixfleet sqlite"]["goal"] == ">= 2000 t/s"
    assert rows["fleet sqlite, 2 workers"]["ratio"] > 0


async def _left_on_broker(broker: BrokerUnderTest, made: Declared) -> set[str]:
    """Which of the queues (RabbitMQ) or topics (Kafka) of ``made`` exist now."""
    if broker.kind == "kafka":
        settings = KafkaSettings.from_url(broker.url)
        admin = AIOKafkaAdminClient(**settings.client_options())
        await admin.start()
        try:
            listed = set(await admin.list_topics())
        finally:
            await admin.close()
        return kafka_topics(settings, made.groups, made.channels) & listed
    left = set()
    async with await aio_pika.connect(AmqpSettings.from_url(broker.url).url) as connection:
        for queue in amqp_queues(made.groups, made.channels):
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.ChannelNotFoundEntity):
                await channel.declare_queue(queue, passive=True)
                left.add(queue)
                await channel.close()
    return left


@pytest.mark.parametrize("broker", ["amqp", "kafka"], indirect=True)
async def test_a_bench_row_deletes_its_group_and_reply_channel_even_when_it_fails(
    broker: BrokerUnderTest,
) -> None:
    """What a row declared - the group's queues (a delayed-retry one too) or topics, its
    registry entry, a private reply channel - is gone after its block, which raised; another
    group stays registered. ``bench clean`` sweeps a bench group nobody cleaned."""
    async with open_transport(broker.url) as transport:
        other = unique("keep")
        await transport.publish(make_task(other))
        with pytest.raises(RuntimeError, match="mid-way"):
            async with declared(broker.url) as made:
                group = made.group("bench-test")
                made.channel(await transport.open_reply_channel())
                await transport.publish(make_task(group))
                async with aclosing(transport.consume(group)) as deliveries:
                    await (await anext(deliveries)).nack(requeue=True, delay=1.0)  # a retry
                assert len(await _left_on_broker(broker, made)) >= 3  # e.g. group, retry, reply
                raise RuntimeError("the bench failed mid-way")
        assert await _left_on_broker(broker, made) == set()
        if broker.kind == "amqp":
            assert group not in await transport.groups()
            assert other in await transport.groups()
            killed = Declared(broker.url, [unique("bench-rt")])  # a run killed with -9 left it
            await transport.publish(make_task(*killed.groups))
            assert await sweep(broker.url) == killed.groups  # python -m bench clean
            assert await _left_on_broker(broker, killed) == set()
