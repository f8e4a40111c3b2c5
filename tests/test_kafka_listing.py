"""The shared topic listing behind the Kafka reply-channel check (pure logic, no broker)."""

from __future__ import annotations

import asyncio

import pytest

from brokers.kafka import listing
from brokers.kafka.listing import TopicListing


class Broker:
    """Counts listings; each takes ``pause`` seconds and lists ``topics`` as they are then."""

    def __init__(self, *topics: str, pause: float = 0.01) -> None:
        self.topics, self.pause, self.calls = set(topics), pause, 0

    async def list(self) -> list[str]:
        self.calls += 1
        await asyncio.sleep(self.pause)
        return sorted(self.topics)


async def test_callers_share_the_running_listing() -> None:
    broker = Broker("a")
    topics = TopicListing(broker.list)
    found = await asyncio.gather(*(topics.fresh() for _ in range(50)))
    assert broker.calls == 1  # was one metadata request per reply
    assert all(f == {"a"} for f in found)
    await topics.fresh()
    assert broker.calls == 2  # a listing that finished is never shared: "fresh" means started now


async def test_a_seen_topic_is_remembered_briefly_and_absence_never(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = Broker("a")
    topics = TopicListing(broker.list)
    assert not topics.seen("a")
    await topics.fresh()
    assert topics.seen("a") and not topics.seen("b")
    monkeypatch.setattr(listing, "SEEN_FOR", 0.0)
    assert not topics.seen("a")


async def test_a_topic_deleted_here_is_not_seen_even_by_a_listing_running_meanwhile() -> None:
    broker = Broker("a", pause=0.05)
    topics = TopicListing(broker.list)
    await topics.fresh()
    running = asyncio.ensure_future(topics.fresh())
    await asyncio.sleep(0.01)
    topics.forget("a")  # deleted while the listing (which still has it) runs
    assert await running == {"a"}
    assert not topics.seen("a")
    await topics.fresh()  # a listing started after the deletion counts again
    assert topics.seen("a")


async def test_a_failed_listing_fails_every_waiter_and_the_next_one_is_new() -> None:
    calls = 0

    async def failing() -> list[str]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise OSError("down")

    topics = TopicListing(failing)
    got = await asyncio.gather(topics.fresh(), topics.fresh(), return_exceptions=True)
    assert [type(g) for g in got] == [OSError, OSError] and calls == 1
    with pytest.raises(OSError):
        await topics.fresh()
    assert calls == 2
