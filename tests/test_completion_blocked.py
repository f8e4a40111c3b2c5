"""A reply that meets a blocked broker (memory or disk alarm) holds its delivery.

Giving the delivery back instead counts one more delivery towards the delivery limit per
blocked try, so a long alarm would dead-letter tasks whose result is already recorded ``ok``
(issue 9, found by the disk-alarm row of the fault suite). Pure logic of
:class:`consumers.completion.Completions`, so the reply channel is a stand-in that refuses the
first publishes the way the AMQP transport does while RabbitMQ blocks its publishers.
"""

from __future__ import annotations

import asyncio

import pytest

from brokers.policy import Backoff
from consumers import completion
from consumers.completion import Completions
from pixfleet import records
from pixfleet.blobs.memory import MemoryBlobStore
from pixfleet.envelope import Result
from pixfleet.errors import BrokerBlocked, BrokerUnavailable, PublishFailed
from tests.helpers.tasks import make_result, make_task


class _AlarmedReplies:
    """Refuses the first ``blocked`` replies with BrokerBlocked, then takes them."""

    def __init__(self, blocked: int, error: Exception | None = None) -> None:
        self.blocked = blocked
        self.error = error or BrokerBlocked("the broker blocked publishing (disk alarm)")
        self.tries = 0
        self.sent: list[tuple[str, Result]] = []

    async def reply(self, reply_to: str, result: Result) -> str:
        self.tries += 1
        if self.tries <= self.blocked:
            raise self.error
        self.sent.append((reply_to, result))
        return reply_to


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(completion, "RECONNECT", Backoff(first=0.001, cap=0.01))


async def test_a_blocked_reply_is_held_and_sent_once_the_alarm_ends() -> None:
    store = MemoryBlobStore()
    task = make_task("thumbs")
    replies = _AlarmedReplies(blocked=12)
    done = Completions(store, replies)  # type: ignore[arg-type]  # reason: only reply() is used
    outcome = await done.record(make_result(task, "thumbs"))
    assert outcome.owner

    await done.answer(task, outcome, attempt=1)  # must not raise while the alarm lasts

    assert replies.tries == 13
    assert [(to, r.task_id) for to, r in replies.sent] == [(task.reply_to, task.id)]
    assert await records.was_replied(store, task.id, "thumbs")


async def test_other_broker_errors_still_give_the_delivery_back() -> None:
    store = MemoryBlobStore()
    task = make_task("thumbs")
    replies = _AlarmedReplies(blocked=1, error=PublishFailed("not confirmed"))
    done = Completions(store, replies)  # type: ignore[arg-type]  # reason: only reply() is used
    outcome = await done.record(make_result(task, "thumbs"))

    with pytest.raises(PublishFailed):
        await done.answer(task, outcome, attempt=1)
    assert replies.sent == []
    assert not await records.was_replied(store, task.id, "thumbs")


class _LostConnectionReplies:
    """A reply the transport keeps trying (its connection is lost) until it is cancelled."""

    def __init__(self) -> None:
        self.cancelled = False

    async def reply(self, reply_to: str, result: Result) -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return reply_to


async def test_a_pending_reply_is_given_up_once_the_broker_takes_the_delivery_back() -> None:
    # The redelivery answers from the record: a reply sent too would be a raw duplicate.
    store = MemoryBlobStore()
    task = make_task("thumbs")
    replies = _LostConnectionReplies()
    done = Completions(store, replies)  # type: ignore[arg-type]  # reason: only reply() is used
    outcome = await done.record(make_result(task, "thumbs"))
    held = [True]
    asyncio.get_running_loop().call_later(0.2, held.clear)  # its channel closes

    with pytest.raises(BrokerUnavailable, match="given up"):
        async with asyncio.timeout(5):
            await done.answer(task, outcome, attempt=1, held=lambda: bool(held))
    assert replies.cancelled
    assert not await records.was_replied(store, task.id, "thumbs")
