"""The Kafka transport under faults (issues 9 and 15), against a real Kafka-protocol broker.

* a nack whose retry publish fails gives the record back: it comes again (9.1);
* failing commits and fetches never end a subscription (9.2);
* a task that kills its worker process every time is dead-lettered at the delivery limit, and
  the retry topic has as many partitions as the task topic (9.8);
* a wall clock five minutes off, on either side, neither releases a retry early nor holds it
  for minutes (9.9);
* hostile bodies and headers on the task topic and hostile results on a reply channel are each
  dead-lettered once, with a reason, while consuming goes on (15.1, 15.2).
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from brokers import names, open_transport
from brokers.contract import Delivery, Subscription
from brokers.kafka.client import KafkaClient
from brokers.kafka.delivery import KafkaDelivery
from brokers.kafka.settings import KafkaSettings
from brokers.kafka.subscription import KafkaSubscription
from pixfleet.envelope import MAX_BODY_BYTES, Task, encode
from pixfleet.errors import PublishFailed
from tests.conftest import kafka_under_test
from tests.helpers.raw import inject_kafka_record, read_kafka_topic
from tests.helpers.tasks import make_result, make_task, unique

WAIT = 20.0


@pytest.fixture
def url(kafka_session_url: str) -> str:
    """A namespace of its own; delivery_limit=3, session_timeout=2, 4 partitions."""
    return kafka_under_test(kafka_session_url).url


async def next_of(it: AsyncIterator[Delivery[Task]], timeout: float = WAIT) -> Delivery[Task]:
    async with asyncio.timeout(timeout):
        return await anext(it)


def deliveries_of(delivery: Delivery[Task]) -> int:
    assert isinstance(delivery, KafkaDelivery)
    return delivery.attempt


def state_of(sub: Subscription[Any]) -> str:
    assert isinstance(sub, KafkaSubscription)
    return sub.state


# -- 9.1: a nack counts only once its copy is confirmed --------------------------------------


async def test_a_nack_whose_retry_publish_fails_gives_the_record_back(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = unique()
    task = make_task(group)
    original = KafkaClient.send
    failures = [1]

    async def send(self: KafkaClient, topic: str, value: bytes, **kwargs: Any) -> None:
        if kwargs.get("what") == "a retry" and failures[0] > 0:
            failures[0] -= 1
            raise PublishFailed("injected: Kafka did not accept a retry")
        await original(self, topic, value, **kwargs)

    monkeypatch.setattr(KafkaClient, "send", send)
    async with open_transport(url) as transport:
        await transport.publish(task)
        async with aclosing(transport.consume(group, prefetch=1)) as it:
            first = await next_of(it)
            with pytest.raises(PublishFailed):
                await first.nack(requeue=True, reason="transient")
            await first.nack(requeue=True, reason="fallback")  # the worker's: a no-op now
            again = await next_of(it, timeout=10.0)
            assert again.message.id == task.id
            assert deliveries_of(again) == 2
            await again.ack()
        assert (await transport.stats(group)).ready == 0


# -- 9.2: never exit on transient unavailability ----------------------------------------------


async def test_failing_commits_and_fetches_never_end_a_subscription(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    group = unique()
    first_task, second_task = make_task(group), make_task(group)
    commit_failures, fetch_failures = _fail(monkeypatch, "commit"), _fail(monkeypatch, "getmany")
    async with open_transport(url) as transport:
        await transport.publish(first_task)
        sub = transport.consume(group, prefetch=1)
        async with aclosing(sub) as it:
            first = await next_of(it)
            commit_failures[0] = 3  # the broker's coordinator goes away
            await first.ack()  # a failed commit is retried later, never raised
            fetch_failures[0] = 3
            with caplog.at_level(logging.WARNING, logger="brokers.kafka"):
                waiter = asyncio.ensure_future(anext(it))
                await asyncio.sleep(1.5)  # three failed fetches, with backoff
                await transport.publish(second_task)
                async with asyncio.timeout(WAIT):
                    second = await waiter
            assert second.message.id == second_task.id
            assert state_of(sub) == "consuming"
            await second.ack()
        assert (commit_failures[0], fetch_failures[0]) == (0, 0)
        assert (await transport.stats(group)).ready == 0  # every commit made it in the end
    changes = [r.getMessage() for r in caplog.records if "reconnecting" in r.getMessage()]
    assert len(changes) == 1, changes  # one line per state change, not one per try


def _fail(monkeypatch: pytest.MonkeyPatch, method: str) -> list[int]:
    """Make ``AIOKafkaConsumer.<method>`` raise a connection error while the counter is > 0."""
    original: Callable[..., Any] = getattr(AIOKafkaConsumer, method)
    left = [0]

    async def failing(self: AIOKafkaConsumer, *args: Any, **kwargs: Any) -> Any:
        if left[0] > 0:
            left[0] -= 1
            raise KafkaConnectionError(f"injected: {method} failed")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(AIOKafkaConsumer, method, failing)
    return left


# -- 9.8: crash loops end at the delivery limit -----------------------------------------------


async def test_a_task_that_kills_its_worker_every_time_is_dead_lettered_at_the_limit(
    url: str,
) -> None:
    group = unique()
    task = make_task(group)
    async with open_transport(url) as transport:
        await transport.publish(task)
    for _ in range(3):  # delivery_limit=3
        crashed = subprocess.run(
            [sys.executable, "-m", "tests.contract.crash_consumer", url, group],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert crashed.returncode == -9, crashed.stderr
        assert crashed.stdout.strip() == task.id
    async with open_transport(url) as transport:
        assert await _drain(transport.consume(group, until_empty=True)) == []
        [dead] = await transport.dead_letters(group)
    assert dead.body == encode(task)
    assert "delivery limit 3 reached" in dead.reason and "settled" in dead.reason


async def test_the_retry_topic_has_as_many_partitions_as_the_task_topic(url: str) -> None:
    group = unique()
    async with open_transport(url) as transport:
        await transport.publish(make_task(group))
        await _drain(transport.consume(group, until_empty=True))
    s = KafkaSettings.from_url(url)
    producer = AIOKafkaProducer(**s.client_options())
    await producer.start()
    try:
        tasks = await producer.partitions_for(s.name(names.KAFKA_TASK_TOPIC))
        retries = await producer.partitions_for(s.name(names.kafka_retry_topic(group)))
    finally:
        await producer.stop()
    assert len(retries) == len(tasks) == 4


# -- 9.9: clocks -----------------------------------------------------------------------------


async def test_a_wall_clock_five_minutes_off_neither_releases_a_retry_early_nor_holds_it(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = unique()
    real_time = time.time
    async with open_transport(url) as transport:
        await transport.publish(make_task(group))
        async with aclosing(transport.consume(group, prefetch=1)) as it:
            first = await next_of(it)
            await first.nack(requeue=True, delay=2.0)  # made by an honest clock
            monkeypatch.setattr(time, "time", lambda: real_time() + 300.0)
            started = time.monotonic()
            second = await next_of(it)  # fetched by a clock five minutes ahead
            assert time.monotonic() - started >= 1.8
            await second.nack(requeue=True, delay=1.0)  # made by that clock
            monkeypatch.undo()
            started = time.monotonic()
            third = await next_of(it)  # fetched by an honest clock
            assert 0.8 <= time.monotonic() - started < 5.0
            assert (third.message.id, third.attempt) == (first.message.id, 3)
            await third.ack()


# -- 15.1 / 15.2: nothing on the wire stops a consumer ----------------------------------------

HOSTILE_BODIES = [
    b"[" * 200_000,
    b'{"a":' * 40_000,
    b"\xff\xfe\xfa not UTF-8",
    b"x" * (MAX_BODY_BYTES + 1),
    b"",
    b"null",
    b'"just a string"',
    b"1e999999",
    b'{"v": 1e999}',
    b'{"v": 1, "id": "\\ud800"}',
    b'{"v": 1}\x00\x00',
]


def hostile_headers(group: str) -> list[list[tuple[str, bytes | None]]]:
    """Header sets that must each get a record dead-lettered (its body a valid task)."""
    g, a, nb = names.KAFKA_HEADER_GROUPS, names.KAFKA_HEADER_ATTEMPT, names.KAFKA_HEADER_NOT_BEFORE
    mine = (g, group.encode())
    return [
        [(g, b"\xff\xfe")],  # targets that are not UTF-8
        [(g, None)],
        [mine, (a, b"abc")],
        [mine, (a, b"-5")],  # negative: would reset the count
        [mine, (a, b"99999999999")],  # too long to be a count
        [mine, (a, "٣".encode())],  # a digit, but not ASCII
        [mine, (a, b"1"), (a, b"0")],  # given twice
        [mine, (a, None)],
        [mine, (a, b"99999")],  # a count past the delivery limit
        [mine, (nb, b"soon")],
        [mine, (nb, b"1e30")],
        [mine, (nb, None)],
    ]


async def test_hostile_task_records_are_dead_lettered_once_and_consuming_goes_on(
    url: str,
) -> None:
    group = unique()
    injected: list[bytes] = []
    mine = (names.KAFKA_HEADER_GROUPS, group.encode())
    async with open_transport(url) as transport:
        await _drain(transport.consume(group, until_empty=True))  # the group exists
        for body in HOSTILE_BODIES:
            await inject_kafka_record(url, names.KAFKA_TASK_TOPIC, body, [mine])
            injected.append(body)
        await inject_kafka_record(url, names.KAFKA_TASK_TOPIC, None, [mine])  # a tombstone
        injected.append(b"")  # dead-lettered as an empty body
        for headers in hostile_headers(group):
            body = encode(make_task(group))
            await inject_kafka_record(url, names.KAFKA_TASK_TOPIC, body, headers)
            injected.append(body)
        good = make_task(group)
        await transport.publish(good)
        ids = await _drain(transport.consume(group, prefetch=4, until_empty=True))
        assert ids == [good.id]
        dead = await transport.dead_letters(group, limit=1000)
    assert sorted(d.body for d in dead) == sorted(injected)
    assert all(d.reason.startswith(("error[envelope.", "delivery limit")) for d in dead), [
        d.reason for d in dead
    ]


async def test_hostile_results_are_dead_lettered_once_and_replies_go_on(url: str) -> None:
    group = unique()
    async with open_transport(url) as transport:
        channel = await transport.open_reply_channel()
        for body in [*HOSTILE_BODIES, None]:
            await inject_kafka_record(url, names.kafka_reply_topic(channel), body)
        task = make_task(group, reply_to=channel)
        await transport.reply(channel, make_result(task, group))
        assert await _drain(transport.replies(channel, prefetch=4, until_empty=True)) == [task.id]
    dead = await read_kafka_topic(url, names.kafka_reply_dead_topic(channel))
    assert sorted(value or b"" for value, _ in dead) == sorted([*HOSTILE_BODIES, b""])
    assert all(headers[names.KAFKA_HEADER_REASON].startswith(b"error[") for _, headers in dead)


async def _drain(sub: Subscription[Any]) -> list[str]:
    """Ids (task id or result task id) of everything delivered, each acked."""
    seen = []
    async with asyncio.timeout(WAIT * 2), aclosing(sub) as it:
        async for delivery in it:
            message = delivery.message
            seen.append(message.id if isinstance(message, Task) else message.task_id)
            await delivery.ack()
    return seen
