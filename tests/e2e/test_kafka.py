"""Kafka-only end-to-end behaviour: commit safety under kill -9, rebalances, foreign producers."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from brokers import names
from brokers.kafka.transport import KafkaTransport
from pixfleet.blobs import store_upload
from pixfleet.blobs.file import FileBlobStore
from pixfleet.envelope import Task, decode_result, encode
from tests.conftest import BrokerUnderTest, kafka_under_test, missing_broker
from tests.e2e.conftest import Fleet, held_tasks, parse_results, wait_until
from tests.helpers import images

pytestmark = pytest.mark.e2e

NODE_DIR = Path(__file__).resolve().parents[1] / "harness" / "node"


@pytest.fixture
def kafka_fleet(kafka_session_url: str, tmp_path: Path) -> Iterator[Fleet]:
    home = tmp_path / "home"
    home.mkdir()
    broker = kafka_under_test(kafka_session_url)
    # Two partitions and four slots per worker: several tasks of one partition in flight.
    url = broker.url.replace("partitions=4", "partitions=2")
    fleet = Fleet(home, url, BrokerUnderTest(broker.kind, url, broker.delivery_limit))
    yield fleet
    fleet.stop_all()


class CommitAuditor:
    """Reads the group's committed offsets from the broker and checks, against the results
    published so far, that no commit ever passed a task without a result."""

    def __init__(self, transport: KafkaTransport, group: str, where: dict[tuple[int, int], str]):
        s = transport.settings
        self.tasks_topic = s.name(names.KAFKA_TASK_TOPIC)
        self.results = TopicPartition(s.name(names.kafka_reply_topic("results")), 0)
        self.where = where  # (partition, offset) -> task id
        self.finished: set[str] = set()
        self.violations: list[str] = []
        self.max_committed = 0
        self._offsets = AIOKafkaConsumer(
            group_id=s.name(group), enable_auto_commit=False, **s.client_options()
        )
        self._reader = AIOKafkaConsumer(enable_auto_commit=False, **s.client_options())

    async def __aenter__(self) -> CommitAuditor:
        await self._offsets.start()
        await self._reader.start()
        self._reader.assign([self.results])
        await self._reader.seek_to_beginning(self.results)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._offsets.stop()
        await self._reader.stop()

    async def check(self) -> None:
        committed = {}
        for partition in (0, 1):
            committed[partition] = (
                await self._offsets.committed(TopicPartition(self.tasks_topic, partition)) or 0
            )
        # A result is published before its task is committed: catch up to the results
        # topic's end *after* reading the commits, and every result the commits rely on is in.
        end = (await self._reader.end_offsets([self.results]))[self.results]
        while await self._reader.position(self.results) < end:
            for records in (await self._reader.getmany(timeout_ms=500)).values():
                self.finished.update(decode_result(r.value).task_id for r in records)
        self.max_committed = max(self.max_committed, sum(committed.values()))
        for (partition, offset), task_id in self.where.items():
            if offset < committed[partition] and task_id not in self.finished:
                self.violations.append(f"p{partition}@{offset} committed before {task_id} ended")


async def _publish_with_random_delays(fleet: Fleet, count: int) -> dict[tuple[int, int], str]:
    """Produce tasks the way an external system would, recording where each one landed."""
    rng = random.Random(42)
    store = FileBlobStore(fleet.home / "blobs")
    async with KafkaTransport.from_url(fleet.broker_url) as transport:
        s = transport.settings
        producer = AIOKafkaProducer(acks="all", **s.client_options())
        await producer.start()
        where = {}
        try:
            for i in range(count):
                data = images.jpeg_bytes(320, 240, seed=i)
                ref = await store_upload(store, data, "image/jpeg")
                task = Task.new(
                    ref, groups=("thumbs",), params={"delay": round(rng.uniform(0.05, 1.2), 2)}
                )
                meta = await producer.send_and_wait(
                    s.name(names.KAFKA_TASK_TOPIC),
                    encode(task),
                    key=task.id.encode(),
                    headers=[(names.KAFKA_HEADER_GROUPS, b"thumbs")],
                )
                where[(meta.partition, meta.offset)] = task.id
        finally:
            await producer.stop()
    return where


def test_committed_offsets_never_pass_an_unfinished_task_across_a_kill_9(
    kafka_fleet: Fleet,
) -> None:
    fleet = kafka_fleet
    slow = ("--pipeline", "tests.helpers.pipelines:slow", "--concurrency", "4")

    async def scenario() -> CommitAuditor:
        where = await _publish_with_random_delays(fleet, 24)
        assert {p for p, _ in where} == {0, 1}
        victim = fleet.worker(*slow)
        async with (
            KafkaTransport.from_url(fleet.broker_url) as transport,
            CommitAuditor(transport, "thumbs", where) as audit,
        ):
            while len(audit.finished) < 6:
                await audit.check()
                await asyncio.sleep(0.05)
            os.kill(victim.pid, signal.SIGKILL)  # with several tasks in flight
            victim.proc.wait(timeout=10)
            fleet.worker(*slow)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 120
            # commits are coalesced (at most 0.1 s after a settle): audit until they reach the end
            while (len(audit.finished) < 24 or audit.max_committed < 24) and loop.time() < deadline:
                await audit.check()
                await asyncio.sleep(0.05)
            await audit.check()
            return audit

    audit = asyncio.run(scenario())
    assert audit.violations == []
    assert len(audit.finished) == 24, "every task has a result after the kill"
    assert audit.max_committed == 24, "the commits reached the end of both partitions"


def test_a_worker_joining_and_one_leaving_mid_run_lose_nothing(
    kafka_fleet: Fleet, tmp_path: Path
) -> None:
    fleet = kafka_fleet
    photos = tmp_path / "photos"
    # Enough work that every partition still holds some after the join's rebalance (6
    # partitions; with 30 tasks the joining worker once got two already drained).
    images.write_samples(photos, count=60)
    started = tmp_path / "started"
    started.mkdir()
    slow = ("--pipeline", "tests.helpers.pipelines:slow", "--concurrency", "2")
    first, second = fleet.worker(*slow), fleet.worker(*slow)
    waiting = fleet.uploader_in_background(
        "enqueue",
        str(photos),
        "--param",
        "delay=0.4",
        "--param",
        f"started={started}",
        "--wait",
        "--json",
        "--timeout",
        "180",
    )
    wait_until(lambda: held_tasks(started)() >= 6, timeout=60, what="work under way")
    third = fleet.worker(*slow)  # joins: partitions are rebalanced
    wait_until(lambda: held_tasks(started)() >= 24, timeout=60, what="more work")
    assert first.stop() == 0  # leaves: its partitions move to the others

    out, err = waiting.communicate(timeout=180)
    assert waiting.returncode == 0, err
    results = parse_results(out)
    assert len({r.task_id for r in results}) == 60 and all(r.status == "ok" for r in results)
    assert second.stop() == 0 and third.stop() == 0
    for worker in (first, second, third):
        assert "Traceback" not in worker.log()
    assert third.pid in {r.worker.pid for r in results}, "the joining worker got partitions"


def test_a_task_longer_than_max_poll_interval_keeps_its_member_in_the_group(
    kafka_fleet: Fleet, sample_dir: Path
) -> None:
    fleet = kafka_fleet
    fleet.broker_url += "&max_poll_interval=2"
    worker = fleet.worker("--pipeline", "tests.helpers.pipelines:slow", "--concurrency", "1")
    one = sorted(sample_dir.iterdir())[0]
    done = fleet.uploader(
        "enqueue", str(one), "--param", "delay=6", "--wait", "--json", "--timeout", "60"
    )
    assert done.returncode == 0, done.stderr
    [result] = parse_results(done.stdout)
    assert (result.status, result.attempt) == ("ok", 1)
    assert worker.stop() == 0
    # Not evicted: no rebalance happened while the 6 s task ran with a 2 s poll interval.
    assert worker.log().count("Setting newly assigned partitions") <= 1, worker.log()
    assert worker.stopped_ok_count() == 1


def _kafkajs() -> Path:
    if not shutil.which("node") or not shutil.which("npm"):
        missing_broker("Node.js and npm (for the kafkajs client)")
    if not (NODE_DIR / "node_modules" / "kafkajs").exists():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent"],
            cwd=NODE_DIR,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return NODE_DIR / "produce-task.js"


def test_task_produced_by_kafkajs_is_processed_and_answered(kafka_fleet: Fleet) -> None:
    fleet = kafka_fleet
    script = _kafkajs()
    worker = fleet.worker("--concurrency", "1")
    store = FileBlobStore(fleet.home / "blobs")
    ref = asyncio.run(store_upload(store, images.jpeg_bytes(), "image/jpeg"))
    task = Task.new(ref, groups=("thumbs",), params={"sizes": [96]})
    s = KafkaTransport.from_url(fleet.broker_url).settings

    produced = subprocess.run(
        [
            "node",
            str(script),
            s.bootstrap,
            s.name(names.KAFKA_TASK_TOPIC),
            json.dumps(json.loads(encode(task))),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert produced.returncode == 0, produced.stderr
    [result] = fleet.result_of(task.id)
    assert result.status == "ok"
    assert sorted(o.name for o in result.outputs) == ["96.jpg", "96.webp"]
    assert worker.stop() == 0
