"""The connections one Kafka transport shares with its subscriptions.

:class:`KafkaClient` owns the producer (``acks=all``, idempotent when enabled), the admin
client, the cache of topics known to exist and the set of open subscriptions, so that closing
the transport closes them first. Subscriptions reach it through the small protocol they
declare (:class:`brokers.kafka.subscription.Host`), never through the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError

from brokers import names
from brokers.kafka.records import Headers, Record, dead_headers, retry_headers
from brokers.kafka.settings import KafkaSettings
from pixfleet.errors import BrokerError, BrokerUnavailable, PublishFailed, TransportClosed


class Closable(Protocol):
    async def force_close(self) -> None: ...


class KafkaClient:
    """Producer, admin client and topic cache of one transport (not connected until
    :meth:`start`)."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._topics: set[str] = set()
        self._subs: set[Closable] = set()

    @property
    def url(self) -> str:
        return self.settings.safe_url

    def unavailable(self, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(f"cannot reach {self.url} ({exc or type(exc).__name__})")

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the admin client and the producer; raises :class:`BrokerUnavailable`."""
        s = self.settings
        admin = AIOKafkaAdminClient(**s.client_options())
        producer = AIOKafkaProducer(
            acks="all", enable_idempotence=s.idempotence, **s.client_options()
        )
        try:
            async with asyncio.timeout(s.op_timeout):
                await admin.start()
                await producer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            await producer.stop()
            await admin.close()
            raise self.unavailable(exc) from exc
        self._admin, self._producer = admin, producer

    async def close(self) -> None:
        """Close every open subscription, then the producer and the admin client."""
        for sub in list(self._subs):
            await sub.force_close()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    def track(self, sub: Closable) -> None:
        """Remember an open subscription, so :meth:`close` closes it."""
        self._subs.add(sub)

    def untrack(self, sub: Closable) -> None:
        self._subs.discard(sub)

    @property
    def admin(self) -> AIOKafkaAdminClient:
        """The admin client; raises :class:`TransportClosed` when not connected."""
        if self._admin is None:
            raise TransportClosed(f"transport {self.url} is not open")
        return self._admin

    # -- topics ----------------------------------------------------------------------------

    async def prepare_topics(self, topics: list[str], partitions: int = 1) -> None:
        """Create missing topics (idempotent)."""
        missing = [t for t in topics if t not in self._topics]
        if not missing:
            return
        new = [NewTopic(t, partitions, self.settings.replication) for t in missing]
        try:
            await self.admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass
        except KafkaError as exc:
            raise BrokerError(f"cannot create topics {missing} on {self.url}: {exc}") from exc
        self._topics.update(missing)

    async def topic_exists(self, topic: str) -> bool:
        return topic in set(await self.admin.list_topics())

    async def delete_topic(self, topic: str) -> None:
        """Delete ``topic`` and what is in it (a missing topic is fine)."""
        with contextlib.suppress(UnknownTopicOrPartitionError):
            await self.admin.delete_topics([topic])
        self._topics.discard(topic)

    # -- producing -------------------------------------------------------------------------

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: Headers, what: str
    ) -> None:
        """Produce one record and wait for ``acks=all``; raises :class:`PublishFailed`."""
        if self._producer is None:
            raise TransportClosed(f"transport {self.url} is not open")
        try:
            async with asyncio.timeout(self.settings.op_timeout):
                await self._producer.send_and_wait(topic, value, key=key, headers=headers)
        except (KafkaError, TimeoutError) as exc:
            raise PublishFailed(
                f"Kafka did not accept {what}: {exc or type(exc).__name__}"
            ) from exc

    async def retry(self, group: str, record: Record, attempt: int, delay: float) -> None:
        """Copy ``record`` to ``group``'s retry topic, due in ``delay`` seconds."""
        topic = self.settings.name(names.kafka_retry_topic(group))
        headers = retry_headers(group, attempt, delay)
        await self.prepare_topics([topic])
        await self.send(topic, record.value or b"", key=record.key, headers=headers, what="a retry")

    async def dead_letter(self, group: str, record: Record, reason: str) -> None:
        """Copy ``record`` to ``group``'s dead-letter topic with ``reason``."""
        topic = self.settings.name(names.kafka_dead_topic(group))
        await self.prepare_topics([topic])
        await self.send(
            topic,
            record.value or b"",
            key=record.key,
            headers=dead_headers(reason),
            what="a dead letter",
        )
