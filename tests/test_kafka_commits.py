"""Coalesced Kafka commits: never past an unfinished offset, at once on revoke and on leaving.

Pure logic: a :class:`GroupMember` whose consumer is a recorder (each commit is checked against
the records still unfinished at that moment); the end-to-end commit behaviour on a real broker
is the contract's (a killed consumer's task comes again, a clean close leaves nothing ready)."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from brokers.kafka import commits
from brokers.kafka.member import GroupMember
from brokers.kafka.settings import KafkaSettings

A, B = TopicPartition("pixfleet.tasks", 0), TopicPartition("pixfleet.tasks", 1)


class Recorder:
    """The consumer of a member: records commits, fails the test on one past unfinished work."""

    def __init__(self, member: GroupMember) -> None:
        self.member = member
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return {A, B}

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        tracker = self.member.commits.tracker
        for tp, meta in offsets.items():  # every offset below the commit is finished
            assert not any(tracker.is_open(tp, o) for o in range(meta.offset)), (tp, meta)
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})
        await asyncio.sleep(0.001)  # a round trip: settles go on meanwhile

    async def stop(self) -> None:
        return None


class Host:
    settings = KafkaSettings("127.0.0.1:1")


class Holder:
    async def let_go(self, revoked: set[TopicPartition]) -> None:
        return None


def joined(fetched: dict[TopicPartition, range]) -> tuple[GroupMember, Recorder]:
    member = GroupMember(Host(), Holder(), topics=["pixfleet.tasks"], group_id="g",  # type: ignore[arg-type]  # reason: only settings is used
                         prefetch=256, inflight=None)  # fmt: skip
    consumer = Recorder(member)
    member._consumer = consumer
    member.commits.attach(consumer)
    for tp, offsets in fetched.items():
        for offset in offsets:
            member.commits.tracker.fetched(tp, offset)
    return member, consumer


async def test_settles_coalesce_and_never_commit_past_an_unfinished_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(commits, "COMMIT_WITHIN", 0.005)
    member, consumer = joined({A: range(300), B: range(300)})
    order = [(tp, o) for tp in (A, B) for o in range(300)]
    random.Random(7).shuffle(order)
    for i, (tp, offset) in enumerate(order):  # out of order, as concurrent tasks finish
        await member.done(tp, offset)
        if i % 50 == 0:
            await asyncio.sleep(0.01)  # the timer commits between bursts
    await asyncio.sleep(0.05)
    assert 0 < len(consumer.commits) < len(order) / 10  # was one commit per settle
    final = {tp: max(c[tp] for c in consumer.commits if tp in c) for tp in (A, B)}
    assert final == {A: 300, B: 300}  # everything done, so everything committed


async def test_a_settle_alone_commits_within_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commits, "COMMIT_WITHIN", 0.02)
    member, consumer = joined({A: range(3)})
    await member.done(A, 1)
    await member.done(A, 0)
    assert consumer.commits == []  # coalescing: not yet
    await asyncio.sleep(0.06)
    assert consumer.commits == [{A: 2}]  # 2 is still unfinished


async def test_revoke_and_leaving_commit_what_is_done_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(commits, "COMMIT_WITHIN", 60.0)  # the timer never fires here
    member, consumer = joined({A: range(5), B: range(5)})
    for offset in (0, 1, 3):
        await member.done(A, offset)
    await member.done(B, 0)
    assert consumer.commits == []
    await member.on_revoked({A})
    assert consumer.commits == [{A: 2}]  # 2 unfinished: 3 is done but not committed past 2
    await member.done(B, 1)
    await member.stop()
    assert consumer.commits == [{A: 2}, {B: 2}]
    assert member.commits._timer is None  # nothing left to fire after leaving


async def test_a_record_whose_copy_was_published_commits_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A retry copy or dead letter is a side effect: a redelivery after a crash inside the
    coalescing interval would publish it again (the poison row's duplicate dead letters)."""
    monkeypatch.setattr(commits, "COMMIT_WITHIN", 60.0)
    member, consumer = joined({A: range(3)})
    await member.done(A, 0)  # an ack: coalesced
    assert consumer.commits == []
    await member.done(A, 1, at_once=True)  # a nack whose copy is out
    assert consumer.commits == [{A: 2}]
