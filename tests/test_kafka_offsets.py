"""The commit point when several records of one partition are in flight, and the untrusted
headers of a record (pure logic)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from brokers import names
from brokers.kafka.offsets import OffsetTracker
from brokers.kafka.records import (
    MAX_RETRY_DELAY,
    is_targeted,
    retry_delay,
    retry_headers,
    retry_info,
    targets_of,
)
from brokers.kafka.settings import KafkaSettings
from pixfleet.errors import EnvelopeError, InvalidURL


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
    assert KafkaSettings.from_url("kafka://a:9092").leader_leave is False
    assert KafkaSettings.from_url("kafka://a:9092?leader_leave=true").leader_leave is True
    for bad in (
        "kafka://u:p@a:9092",
        "kafka://a:9092?acks=1",
        "kafka://a?idempotence=maybe",
        "kafka://a?namespace=x/y",
        "kafka://",
    ):
        with pytest.raises(InvalidURL):
            KafkaSettings.from_url(bad)


# -- headers are untrusted (pure parsing, brokers.kafka.records) -------------------------------


Headers = list[tuple[str, bytes | None]]


@dataclass
class FakeRecord:
    headers: Sequence[tuple[str, bytes | None]]
    timestamp: int = 1_000_000
    offset: int = 0
    key: bytes | None = None
    value: bytes | None = None


def test_attempt_headers_are_counts_or_the_record_is_dead_lettered() -> None:
    a = names.KAFKA_HEADER_ATTEMPT
    assert retry_info(FakeRecord([])).attempt == 1
    assert retry_info(FakeRecord([(a, b"0")])).attempt == 1
    assert retry_info(FakeRecord([(a, b"4")])).attempt == 5
    for bad in (b"abc", b"-5", b"+3", b" 3", b"3.0", b"1e3", "٣".encode(), b"9" * 10, b""):
        with pytest.raises(EnvelopeError, match=a):
            retry_info(FakeRecord([(a, bad)]))
    repeats: list[Headers] = [[(a, b"1"), (a, b"0")], [(a, None)]]
    for repeated in repeats:
        with pytest.raises(EnvelopeError, match=a):
            retry_info(FakeRecord(repeated))


def test_retry_delays_are_clamped_differences_of_one_clock() -> None:
    nb = names.KAFKA_HEADER_NOT_BEFORE
    made = 1_000_000
    assert retry_info(FakeRecord([(nb, str(made + 2500).encode())], made)).delay == 2.5
    assert retry_info(FakeRecord([(nb, str(made - 9000).encode())], made)).delay == 0.0
    far = retry_info(FakeRecord([(nb, b"9" * 18)], made)).delay
    assert far == MAX_RETRY_DELAY
    for bad in (b"soon", b"1e30", b"9" * 19, b""):
        with pytest.raises(EnvelopeError, match=nb):
            retry_info(FakeRecord([(nb, bad)], made))
    assert retry_delay(FakeRecord([(nb, b"soon")], made)) == 0.0  # handed on, then dead


def test_retry_headers_read_back_as_the_delay_they_were_made_with() -> None:
    headers, made_at = retry_headers("g", 2, 1.5)
    info = retry_info(FakeRecord(list(headers), made_at))
    assert (info.attempt, info.delay) == (3, 1.5)
    headers, made_at = retry_headers("g", 2, 10**9)
    assert retry_info(FakeRecord(list(headers), made_at)).delay == MAX_RETRY_DELAY


def test_unreadable_targets_reach_every_group_to_be_dead_lettered() -> None:
    g = names.KAFKA_HEADER_GROUPS
    assert is_targeted(FakeRecord([(g, b"a,b")]), "b")
    assert not is_targeted(FakeRecord([(g, b"a,b")]), "c")
    assert is_targeted(FakeRecord([]), "c")
    bads: list[Headers] = [[(g, b"\xff")], [(g, None)], [(g, b"a"), (g, b"c")]]
    for bad in bads:
        assert is_targeted(FakeRecord(bad), "c")
        with pytest.raises(EnvelopeError, match=g):
            targets_of(FakeRecord(bad))
