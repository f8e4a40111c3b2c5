"""The connections one Kafka transport shares with its subscriptions.

:class:`KafkaClient` owns the producer (``acks=all``, idempotent when enabled), the admin
client, the cache of topics known to exist and the set of open subscriptions, so that closing
the transport closes them first. Subscriptions reach it through the small protocol they
declare (:class:`brokers.kafka.subscription.Host`), never through the transport.

A group's retry topic has as many partitions as the task topic (retries of one group spread
over all its members, keyed by task id); its in-flight topic two per task partition
(:mod:`brokers.kafka.inflight`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError

from brokers import names
from brokers.kafka.failures import producer_start_failed, translate
from brokers.kafka.listing import TopicListing
from brokers.kafka.records import Headers, Record, dead_headers, retry_headers
from brokers.kafka.settings import KafkaSettings
from pixfleet.errors import BrokerUnavailable, PublishFailed, TransportClosed

#: A reply topic is taken as gone only after this many listings without it ...
GONE_CHECKS = 3
#: ... the first two this many seconds apart, doubling (0.3 s, then 0.6 s).
GONE_PAUSE = 0.3


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
        self._listing = TopicListing(self._list_topics)

    @property
    def url(self) -> str:
        return self.settings.safe_url

    def unavailable(self, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(f"cannot reach {self.url} ({exc or type(exc).__name__})")

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the admin client and the producer; raises :class:`BrokerUnavailable`."""
        s = self.settings
        started = False  # the admin client: the broker is reachable
        admin = AIOKafkaAdminClient(**s.client_options())
        producer = AIOKafkaProducer(
            acks="all", enable_idempotence=s.idempotence, **s.client_options()
        )
        try:
            async with asyncio.timeout(s.op_timeout):
                await admin.start()
                started = True
                await producer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            await producer.stop()
            await admin.close()
            if isinstance(exc, KafkaError) and started:
                raise producer_start_failed(exc, self.url, idempotence=s.idempotence) from exc
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

    async def prepare_topics(
        self, topics: list[str], partitions: int = 1, configs: dict[str, str] | None = None
    ) -> None:
        """Create missing topics (idempotent); raises ``broker.unavailable`` while the broker
        cannot be reached, ``broker.error`` if it refuses the topics for good."""
        missing = [t for t in topics if t not in self._topics]
        if not missing:
            return
        new = [
            NewTopic(t, partitions, self.settings.replication, topic_configs=configs or {})
            for t in missing
        ]
        try:
            await self.admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass
        except (KafkaError, OSError) as exc:
            raise translate(exc, self.url, f"create topics {missing}") from exc
        self._topics.update(missing)

    async def partitions_of(self, topic: str) -> int:
        """How many partitions ``topic`` has (1 if the broker does not say)."""
        if self._producer is None:
            raise TransportClosed(f"transport {self.url} is not open")
        try:
            async with asyncio.timeout(self.settings.op_timeout):
                found = await self._producer.partitions_for(topic)
        except (KafkaError, TimeoutError) as exc:
            raise translate(exc, self.url, f"describe {topic}") from exc
        return max(len(found or ()), 1)

    async def prepare_retry_topic(self, topic: str) -> None:
        """Create a retry topic with as many partitions as the task topic."""
        if topic not in self._topics:
            task_topic = self.settings.name(names.KAFKA_TASK_TOPIC)
            await self.prepare_topics([topic], await self.partitions_of(task_topic))

    async def _list_topics(self) -> list[str]:
        try:
            async with asyncio.timeout(self.settings.op_timeout):
                topics: list[str] = await self.admin.list_topics()
        except (KafkaError, OSError, TimeoutError) as exc:
            raise translate(exc, self.url, "list topics") from exc
        return topics

    async def topic_exists(self, topic: str) -> bool:
        """Whether the broker lists ``topic`` now (a fresh metadata request - or the one running
        now, shared - never a cache; listing all topics never auto-creates one, as a request
        for the topic itself may)."""
        return topic in await self._listing.fresh()

    async def topic_gone(self, topic: str) -> bool:
        """Whether ``topic`` is gone for good: not listed by :data:`GONE_CHECKS` fresh metadata
        requests over about a second (each to a broker picked at random). A topic created a
        moment ago may be missing from one broker's - or tansu's - view for a little while;
        only an absence that lasts counts. A topic listed less than
        :data:`~brokers.kafka.listing.SEEN_FOR` s ago is not gone, without a request
        (:mod:`brokers.kafka.listing`). Raises ``broker.unavailable`` if the broker does not
        answer (then nothing is decided)."""
        if self._listing.seen(topic):
            return False
        for check in range(GONE_CHECKS):
            if await self.topic_exists(topic):
                return False
            if check + 1 < GONE_CHECKS:
                await asyncio.sleep(GONE_PAUSE * 2**check)
        return True

    async def delete_topic(self, topic: str) -> None:
        """Delete ``topic`` and what is in it (a missing topic is fine)."""
        with contextlib.suppress(UnknownTopicOrPartitionError):
            await self.admin.delete_topics([topic])
        self._topics.discard(topic)
        self._listing.forget(topic)

    # -- producing -------------------------------------------------------------------------

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        headers: Headers,
        what: str,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        """Produce one record and wait for ``acks=all``; raises :class:`PublishFailed`."""
        if self._producer is None:
            raise TransportClosed(f"transport {self.url} is not open")
        try:
            async with asyncio.timeout(self.settings.op_timeout):
                await self._producer.send_and_wait(
                    topic,
                    value,
                    key=key,
                    headers=headers,
                    partition=partition,
                    timestamp_ms=timestamp_ms,
                )
        except (KafkaError, TimeoutError) as exc:
            raise PublishFailed(
                f"Kafka did not accept {what}: {exc or type(exc).__name__}"
            ) from exc

    async def retry(self, group: str, record: Record, attempt: int, delay: float) -> None:
        """Copy ``record`` to ``group``'s retry topic, made after ``attempt`` deliveries, due
        ``delay`` seconds after it is made."""
        topic = self.settings.name(names.kafka_retry_topic(group))
        headers, made_at = retry_headers(group, attempt, delay)
        await self.prepare_retry_topic(topic)
        await self.send(
            topic,
            record.value or b"",
            key=record.key,
            headers=headers,
            what="a retry",
            timestamp_ms=made_at,
        )

    async def dead_letter(self, topic: str, record: Record, reason: str) -> None:
        """Copy ``record`` to the dead-letter topic ``topic`` (namespaced) with ``reason``."""
        await self.prepare_topics([topic])
        await self.send(
            topic,
            record.value or b"",
            key=record.key,
            headers=dead_headers(reason),
            what="a dead letter",
        )
