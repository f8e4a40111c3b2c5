"""The fleet on Kafka (:class:`brokers.contract.Fleet`); every name is namespaced.

* **Roster**: ``pixfleet.workers``, compacted, key = worker id: each heartbeat is the worker's
  latest status, ``leave`` writes a tombstone. A lister reads, with a consumer of no group, from
  the first record of the last ``ROSTER_WINDOW`` seconds (``offsets_for_times``; compaction
  keeps the latest record of every key, so this stays short) to the end offsets it found when
  it began; the latest record per key wins.
* **Control**: ``pixfleet.control`` (kept an hour). Each worker reads it from the end - the end
  is resolved before :meth:`KafkaFleet.open_commands` returns - with a consumer of no group, and
  keeps the requests that target it.
* **Replies**: ``pixfleet.control-replies`` (kept an hour), key = the requester's inbox address.
  A requester reads it from the end it resolved before sending and keeps its own.

Records that are not valid fleet messages are dropped with a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from brokers import names
from brokers.kafka.client import KafkaClient
from brokers.kafka.failures import translate
from brokers.kafka.records import Record
from pixfleet.errors import EnvelopeError
from pixfleet.fleet import (
    ROSTER_WINDOW,
    ControlReply,
    ControlRequest,
    WorkerStatus,
    decode_reply,
    decode_request,
    decode_status,
    encode_fleet,
    new_inbox,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_KEPT_AN_HOUR = {"retention.ms": str(3_600_000)}
_POLL_MS = 500


class KafkaFleet:
    """The fleet role of one :class:`~brokers.kafka.transport.KafkaTransport`."""

    def __init__(self, client: KafkaClient) -> None:
        self._client = client
        s = client.settings
        self.workers = s.name(names.KAFKA_WORKERS_TOPIC)
        self.control = s.name(names.KAFKA_CONTROL_TOPIC)
        self.replies = s.name(names.KAFKA_CONTROL_REPLIES_TOPIC)
        self._prepared = False

    async def _prepare(self) -> None:
        if not self._prepared:
            compacted = {"cleanup.policy": "compact"}
            await self._client.prepare_topics([self.workers], 1, compacted)
            await self._client.prepare_topics([self.control, self.replies], 1, _KEPT_AN_HOUR)
            self._prepared = True

    async def heartbeat(self, status: WorkerStatus) -> None:
        await self._prepare()
        body = encode_fleet(status)
        key = status.id.encode()
        await self._client.send(self.workers, body, key=key, headers=[], what="a worker status")

    async def leave(self, worker_id: str) -> None:
        await self._prepare()
        key = worker_id.encode()
        await self._client.send(self.workers, None, key=key, headers=[], what="a leave")

    async def roster(self) -> list[WorkerStatus]:
        await self._prepare()
        latest: dict[str, WorkerStatus] = {}
        since_ms = int((time.time() - ROSTER_WINDOW) * 1000)
        async with self._reader(self.workers) as reader:
            for record in await reader.read_window(since_ms):
                _fold(record, latest)
        return list(latest.values())

    async def open_commands(
        self, worker_id: str, groups: tuple[str, ...]
    ) -> KafkaListener[ControlRequest]:
        await self._prepare()
        listener = KafkaListener(
            self._reader(self.control),
            decode_request,
            keep=lambda record, request: request.target.reaches(worker_id, groups),
        )
        await listener.start()
        return listener

    async def send_control(self, request: ControlRequest) -> None:
        await self._prepare()
        body, key = encode_fleet(request), request.id.encode()
        await self._client.send(self.control, body, key=key, headers=[], what="a control request")

    async def reply_control(self, reply: ControlReply, reply_to: str) -> None:
        await self._prepare()
        body, key = encode_fleet(reply), reply_to.encode()
        await self._client.send(self.replies, body, key=key, headers=[], what="a control reply")

    async def open_control_inbox(self) -> KafkaInbox:
        await self._prepare()
        address = new_inbox()
        inbox = KafkaInbox(
            self._reader(self.replies),
            decode_reply,
            keep=lambda record, reply: record.key == address.encode(),
        )
        inbox.address = address
        await inbox.start()
        return inbox

    def _reader(self, topic: str) -> Reader:
        return Reader(self._client, topic)


class Reader:
    """A consumer of no group assigned every partition of ``topic``; Kafka errors come out
    as broker errors."""

    def __init__(self, client: KafkaClient, topic: str) -> None:
        self._client = client
        self.topic = topic
        self._consumer: AIOKafkaConsumer | None = None
        self.partitions: list[TopicPartition] = []

    async def __aenter__(self) -> Reader:
        s = self._client.settings
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False, fetch_max_wait_ms=_POLL_MS, **s.client_options()
        )
        try:
            async with asyncio.timeout(s.op_timeout):
                await consumer.start()
                count = await self._client.partitions_of(self.topic)
                self.partitions = [TopicPartition(self.topic, p) for p in range(count)]
                consumer.assign(self.partitions)
        except (KafkaError, OSError, TimeoutError) as exc:
            await consumer.stop()
            raise translate(exc, self._client.url, f"read {self.topic}") from exc
        self._consumer = consumer
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "the reader is not open"
        return self._consumer

    async def from_end(self) -> None:
        """Read from the current end on (resolved now, before this returns)."""
        c = self.consumer
        async with self._translated("find the end of"):
            await c.seek_to_end(*self.partitions)
            for tp in self.partitions:
                await c.position(tp)

    async def read_window(self, since_ms: int) -> list[Record]:
        """Every record from the first one at or after ``since_ms`` to the current end."""
        c = self.consumer
        out: list[Record] = []
        async with self._translated("read"):
            ends = await c.end_offsets(self.partitions)
            starts = await c.offsets_for_times(dict.fromkeys(self.partitions, since_ms))
            for tp in self.partitions:
                found = starts.get(tp)
                c.seek(tp, found.offset if found is not None else ends[tp])
            while missing := [tp for tp in self.partitions if await c.position(tp) < ends[tp]]:
                batch = await c.getmany(*missing, timeout_ms=_POLL_MS)
                out.extend(r for records in batch.values() for r in records)
        return out

    async def poll(self) -> list[Record]:
        async with self._translated("poll"):
            batch = await self.consumer.getmany(timeout_ms=_POLL_MS)
        return [r for records in batch.values() for r in records]

    @contextlib.asynccontextmanager
    async def _translated(self, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._client.settings.op_timeout):
                yield
        except (KafkaError, OSError, TimeoutError) as exc:
            raise translate(exc, self._client.url, f"{what} {self.topic}") from exc


class KafkaListener(Generic[T]):
    """Decoded records of a :class:`Reader` from its end on, those ``keep`` accepts."""

    def __init__(
        self,
        reader: Reader,
        decode: Callable[[bytes], T],
        *,
        keep: Callable[[Record, T], bool],
    ) -> None:
        self._reader = reader
        self._decode = decode
        self._keep = keep
        self._buffer: list[T] = []
        self._open = False

    async def start(self) -> None:
        await self._reader.__aenter__()
        self._open = True
        try:
            await self._reader.from_end()
        except BaseException:
            await self.aclose()
            raise

    def __aiter__(self) -> KafkaListener[T]:
        return self

    async def __anext__(self) -> T:
        while not self._buffer:
            if not self._open:
                raise StopAsyncIteration
            for record in await self._reader.poll():
                self._take(record)
        return self._buffer.pop(0)

    def _take(self, record: Record) -> None:
        try:
            item = self._decode(record.value or b"")
        except EnvelopeError as exc:
            log.warning("dropped a record on %s: %s", self._reader.topic, exc)
            return
        if self._keep(record, item):
            self._buffer.append(item)

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            await self._reader.__aexit__()


class KafkaInbox(KafkaListener[ControlReply]):
    address = ""


def _fold(record: Record, latest: dict[str, WorkerStatus]) -> None:
    key = (record.key or b"").decode(errors="replace")
    if record.value is None:
        latest.pop(key, None)
        return
    try:
        status = decode_status(record.value)
    except EnvelopeError as exc:
        log.warning("dropped a worker status that is not valid: %s", exc)
        return
    if status.id == key:
        latest[key] = status
    else:
        log.warning("dropped a worker status keyed %r for worker %r", key[:100], status.id)
