"""Every name pixfleet puts on a broker, on one screen.

Transports import their names from here; nothing else in the code base knows broker names.
"""

from __future__ import annotations

#: Reply channel that receives every result nobody waits for (durable).
DEFAULT_RESULTS = "results"
#: Prefix of private reply channels made by ``uploader enqueue --wait``.
PRIVATE_REPLY_PREFIX = "reply."
#: Default pipeline group targeted by the uploader.
DEFAULT_GROUP = "thumbs"

# -- sqlite: logical topics inside the one database file --------------------------------------
SQLITE_TASKS = "tasks"
SQLITE_REPLIES = "replies"

# -- amqp (RabbitMQ) ------------------------------------------------------------------------
AMQP_TASK_EXCHANGE = "pixfleet.tasks"
AMQP_DEAD_EXCHANGE = "pixfleet.dead"
AMQP_REPLY_EXCHANGE = "pixfleet.replies"


def amqp_group_queue(group: str) -> str:
    return f"pixfleet.group.{group}"


def amqp_dead_queue(group: str) -> str:
    return f"pixfleet.dead.{group}"


def amqp_reply_queue(channel: str) -> str:
    return f"pixfleet.reply.{channel}"


# -- kafka ----------------------------------------------------------------------------------
KAFKA_TASK_TOPIC = "pixfleet.tasks"
KAFKA_RETRY_TOPIC = "pixfleet.tasks.retry"
KAFKA_DEAD_TOPIC = "pixfleet.tasks.dead"
KAFKA_RESULTS_TOPIC = "pixfleet.results"
