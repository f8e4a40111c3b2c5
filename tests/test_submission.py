"""The reusable submission path (store -> publish -> wait), on every transport.

A stand-in worker (the test itself) consumes the published tasks and replies through the real
transport, so these tests exercise the private reply channel, duplicate handling and timeouts
exactly as ``uploader enqueue --wait`` and the HTTP ingress use them.
"""

from __future__ import annotations

from contextlib import aclosing

import pytest

from brokers import Transport, open_transport
from brokers.names import DEFAULT_RESULTS
from pixfleet import records
from pixfleet.blobs import upload_key
from pixfleet.blobs.memory import MemoryBlobStore
from pixfleet.envelope import Task
from pixfleet.errors import ConfigError, ResultTimeout
from producer.inspect import Candidate, vet
from producer.submission import Submission, SubmitOptions
from tests.conftest import BrokerUnderTest
from tests.helpers import images
from tests.helpers.tasks import make_result, unique


def _candidate(seed: int) -> Candidate:
    return vet(images.jpeg_bytes(64, 48, seed=seed), f"photo-{seed}.jpg")


async def _take(transport: Transport, group: str, count: int) -> list[Task]:
    tasks: list[Task] = []
    async with aclosing(transport.consume(group, prefetch=count)) as deliveries:
        async for delivery in deliveries:
            tasks.append(delivery.message)
            await delivery.ack()
            if len(tasks) == count:
                break
    return tasks


async def test_submit_stores_then_publishes_and_results_come_once(
    broker: BrokerUnderTest,
) -> None:
    store, group = MemoryBlobStore(), unique()
    options = SubmitOptions(groups=(group,), wait=True)
    async with (
        open_transport(broker.url) as transport,
        Submission(queue=transport, replies=transport, store=store, options=options) as sub,
    ):
        submitted = [await sub.submit(_candidate(i)) for i in range(3)]
        assert sub.reply_to != DEFAULT_RESULTS
        for task in submitted:
            assert await store.exists(upload_key(task.blob.sha256))
            assert task.reply_to == sub.reply_to and task.groups == (group,)
        received = await _take(transport, group, 3)
        assert {t.id for t in received} == {t.id for t in submitted}
        stray = make_result(received[0], "other-group")
        for task in received:  # every result twice (a redelivery), plus a stray
            await transport.reply(sub.reply_to, make_result(task, group))
            await transport.reply(sub.reply_to, make_result(task, group))
        await transport.reply(sub.reply_to, stray)
        results = await sub.collect(timeout=30)
    assert sorted(r.task_id for r in results) == sorted(t.id for t in submitted)
    assert {r.filename for r in submitted} == {"photo-0.jpg", "photo-1.jpg", "photo-2.jpg"}


async def test_results_time_out_with_the_missing_count(broker: BrokerUnderTest) -> None:
    options = SubmitOptions(groups=(unique(),), wait=True)
    async with (
        open_transport(broker.url) as transport,
        Submission(
            queue=transport, replies=transport, store=MemoryBlobStore(), options=options
        ) as sub,
    ):
        await sub.submit(_candidate(1))
        await sub.submit(_candidate(2))
        with pytest.raises(ResultTimeout, match="2 of 2 result"):
            await sub.collect(timeout=1.0)


async def test_a_submission_that_does_not_wait_replies_to_the_default_channel(
    broker: BrokerUnderTest,
) -> None:
    group = unique()
    async with open_transport(broker.url) as transport:
        async with Submission(
            queue=transport,
            replies=transport,
            store=MemoryBlobStore(),
            options=SubmitOptions(groups=(group,)),
        ) as sub:
            task = await sub.submit(_candidate(3))
            assert task.reply_to == DEFAULT_RESULTS
            with pytest.raises(RuntimeError):
                await sub.collect(timeout=1)
        [received] = await _take(transport, group, 1)
    assert received.id == task.id


@pytest.mark.parametrize(
    "options",
    [
        {"groups": ("Bad Name",)},
        {"groups": (), "wait": True},
        {"ttl": 0.0},
    ],
)
def test_invalid_options_are_config_errors(options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SubmitOptions(**options)  # type: ignore[arg-type]  # deliberately untyped bad input


async def test_a_resubmitted_task_id_is_answered_from_the_completion_record(
    broker: BrokerUnderTest,
) -> None:
    store, group = MemoryBlobStore(), unique()
    options = SubmitOptions(groups=(group,), wait=True)
    async with open_transport(broker.url) as transport:
        async with Submission(
            queue=transport, replies=transport, store=store, options=options
        ) as first:
            task = await first.submit(_candidate(5), task_id="client-key-1")
        assert task.id == "client-key-1"
        await records.record_result(store, make_result(task, group))  # a worker finished it
        async with Submission(
            queue=transport, replies=transport, store=store, options=options
        ) as again:
            retry = await again.submit(_candidate(5), task_id="client-key-1")
            [result] = await again.collect(timeout=10)
    assert retry.id == task.id and result.task_id == task.id
    assert await records.read_task(store, task.id) == task  # the first submission's record


async def test_unread_results_are_handed_to_the_default_channel(broker: BrokerUnderTest) -> None:
    group = unique()
    options = SubmitOptions(groups=(group,), wait=True)
    async with open_transport(broker.url) as transport:
        async with Submission(
            queue=transport, replies=transport, store=MemoryBlobStore(), options=options
        ) as sub:
            task = await sub.submit(_candidate(7))
            await transport.reply(sub.reply_to, make_result(task, group))
            # the waiter leaves without reading its result
        seen = []
        async with aclosing(transport.replies(DEFAULT_RESULTS, until_empty=True)) as results:
            async for delivery in results:
                seen.append(delivery.message.task_id)
                await delivery.ack()
    assert task.id in seen
