"""Counting Kafka deliveries ahead: one in-flight write per batch of due records, each count
confirmed before its record is handed out, counts taken back for records never handed out.

Pure logic: the in-flight log writes to a recording host instead of a broker (the crash
counting itself, end to end, is the contract's crash tests on a real broker)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import TopicPartition

from brokers import names
from brokers.kafka.counting import AheadCounts
from brokers.kafka.inflight import InflightLog, _parse
from brokers.kafka.member import Pending
from brokers.kafka.records import Headers
from brokers.kafka.settings import KafkaSettings

TP = TopicPartition("pixfleet.tasks", 0)


@dataclass
class Rec:
    offset: int
    timestamp: int = 0
    key: bytes | None = None
    value: bytes | None = b"{}"
    headers: Sequence[tuple[str, bytes | None]] = ()


class Host:
    """Records the in-flight sets written (one produce each)."""

    settings = KafkaSettings("127.0.0.1:1")

    def __init__(self) -> None:
        self.written: list[bytes] = []

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Headers,
                   what: str, partition: int | None = None,
                   timestamp_ms: int | None = None) -> None:  # fmt: skip
        self.written.append(value)

    async def partitions_of(self, topic: str) -> int:
        return 2

    async def prepare_topics(self, topics: list[str], partitions: int = 1,
                             configs: dict[str, str] | None = None) -> None:  # fmt: skip
        return None


async def _log(host: Host, prior: dict[int, int] | None = None) -> InflightLog:
    log = InflightLog(host, "pixfleet.inflight.g", ("pixfleet.tasks", "pixfleet.retry.g"))
    await log.prepare()
    log._loaded.add(TP)
    if prior:
        log._counts[TP] = dict(prior)
    return log


async def test_a_batch_of_due_records_is_counted_in_one_confirmed_write() -> None:
    host = Host()
    counts = AheadCounts(await _log(host), limit=10)
    due = [Pending(TP, Rec(offset), 0.0) for offset in range(5)]
    assert not any(counts.confirmed(e) for e in due)
    await counts.count(due)
    assert len(host.written) == 1  # was one produce (acks=all) per record handed out
    assert _parse(host.written[0]) == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}
    assert all(counts.confirmed(e) for e in due)
    await counts.count(due)  # counted once, written once
    assert len(host.written) == 1


async def test_past_the_limit_or_unreadable_is_not_counted() -> None:
    host = Host()
    counts = AheadCounts(await _log(host, prior={1: 3}), limit=3)
    bad = Rec(2, headers=[(names.KAFKA_HEADER_ATTEMPT, b"x")])
    due = [Pending(TP, Rec(0), 0.0), Pending(TP, Rec(1), 0.0), Pending(TP, bad, 0.0)]
    await counts.count(due)
    assert [e.counted for e in due] == [True, False, False]  # 1: 3 crashes + this = 4 > 3
    assert due[1].deliveries == 4
    assert _parse(host.written[-1]) == {0: 1, 1: 3}


async def test_records_dropped_before_their_hand_out_get_their_count_back() -> None:
    host = Host()
    log = await _log(host, prior={7: 2})
    counts = AheadCounts(log, limit=10)
    due = [Pending(TP, Rec(7), 0.0), Pending(TP, Rec(8), 0.0)]
    await counts.count(due)
    assert _parse(host.written[-1]) == {7: 3, 8: 1}
    counts.drop(due)  # a rebalance or a close took them from the buffer
    await log.flush()
    assert _parse(host.written[-1]) == {7: 2}  # the crash count of 7 stays, 8 never went out
    assert not any(counts.confirmed(e) for e in due)
