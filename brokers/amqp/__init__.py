"""RabbitMQ transport (aio-pika): headers exchange, quorum queues per group."""

from brokers.amqp.settings import AmqpSettings
from brokers.amqp.transport import AmqpTransport

__all__ = ["AmqpSettings", "AmqpTransport"]
