"""The commit point when several records of one partition are in flight (pure logic)."""

from __future__ import annotations

import random

import pytest

from brokers.kafka.offsets import OffsetTracker
from brokers.kafka.settings import KafkaSettings
from pixfleet.errors import InvalidURL


def test_commit_point_never_passes_an_unfinished_record() -> None:
    t: OffsetTracker[str] = OffsetTracker()
    for offset in (5, 6, 7):
        t.fetched("p0", offset)
    t.done("p0", 7)
    t.done("p0", 6)
    assert t.safe("p0") == 5  # 5 is still running: a bare commit() would say 8
    t.done("p0", 5)
    assert t.safe("p0") == 8


def test_to_commit_reports_only_progress() -> None:
    t: OffsetTracker[str] = OffsetTracker()
    t.fetched("a", 0)
    t.fetched("b", 10)
    t.done("a", 0)
    assert t.to_commit() == {"a": 1, "b": 10}
    t.committed({"a": 1, "b": 10})
    assert t.to_commit() == {}
    t.done("b", 10)
    assert t.to_commit() == {"b": 11}


def test_random_completion_orders_keep_the_invariant() -> None:
    rng = random.Random(7)
    for _ in range(200):
        t: OffsetTracker[int] = OffsetTracker()
        offsets = list(range(rng.randint(1, 30)))
        for o in offsets:
            t.fetched(0, o)
        finished: set[int] = set()
        for o in rng.sample(offsets, len(offsets)):
            t.done(0, o)
            finished.add(o)
            safe = t.safe(0)
            assert safe is not None
            assert all(x in finished for x in range(safe)), "committed past unfinished work"
            unfinished = set(offsets) - finished
            assert safe == (min(unfinished) if unfinished else len(offsets))


def test_forget_drops_revoked_partitions() -> None:
    t: OffsetTracker[str] = OffsetTracker()
    t.fetched("p", 3)
    t.committed({"p": 3})
    t.forget(["p"])
    assert t.safe("p") is None and not t.has_committed("p") and t.to_commit() == {}


def test_kafka_urls() -> None:
    s = KafkaSettings.from_url("kafka://a:9092,b:9092?idempotence=false&namespace=t1.&partitions=3")
    assert (s.bootstrap, s.idempotence, s.partitions) == ("a:9092,b:9092", False, 3)
    assert s.name("pixfleet.tasks") == "t1.pixfleet.tasks"
    assert KafkaSettings.from_url("kafka://a:9092").idempotence is True
    for bad in (
        "kafka://u:p@a:9092",
        "kafka://a:9092?acks=1",
        "kafka://a?idempotence=maybe",
        "kafka://a?namespace=x/y",
        "kafka://",
    ):
        with pytest.raises(InvalidURL):
            KafkaSettings.from_url(bad)
