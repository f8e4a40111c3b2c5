"""Kafka's part of :mod:`bench.cleanup`: the topics a bench row's groups and reply channels
made (the shared task topic stays)."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient

from brokers import names
from brokers.kafka.settings import KafkaSettings


def kafka_topics(
    settings: KafkaSettings, groups: Iterable[str], channels: Iterable[str]
) -> set[str]:
    """Every topic the Kafka transport may make for ``groups`` and reply ``channels``."""
    topics = set()
    for group in groups:
        topics |= {
            names.kafka_retry_topic(group),
            names.kafka_dead_topic(group),
            names.kafka_inflight_topic(group),
        }
    for channel in channels:
        topics |= {names.kafka_reply_topic(channel), names.kafka_reply_dead_topic(channel)}
    return {settings.name(t) for t in topics}


async def delete_kafka(url: str, groups: Iterable[str], channels: Iterable[str]) -> None:
    """Delete the topics of ``groups`` and ``channels`` that exist."""
    settings = KafkaSettings.from_url(url)
    admin = AIOKafkaAdminClient(**settings.client_options())
    await admin.start()
    try:
        present = kafka_topics(settings, groups, channels) & set(await admin.list_topics())
        if present:
            await admin.delete_topics(sorted(present))
    finally:
        await admin.close()
