"""Kafka transport (aiokafka): one task topic, consumer group per pipeline group."""

from brokers.kafka.settings import KafkaSettings
from brokers.kafka.transport import KafkaTransport

__all__ = ["KafkaSettings", "KafkaTransport"]
