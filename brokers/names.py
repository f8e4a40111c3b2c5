"""Every name pixfleet puts on a broker, on one screen.

Transports import their names from here; nothing else in the code base knows broker names.
"""

from __future__ import annotations

from pixfleet.envelope import DEFAULT_REPLY_TO

#: Reply channel that receives every result nobody waits for (durable); the envelope's default.
DEFAULT_RESULTS = DEFAULT_REPLY_TO
#: Prefix of private reply channels made by ``uploader enqueue --wait``.
PRIVATE_REPLY_PREFIX = "reply."
#: Default pipeline group targeted by the uploader.
DEFAULT_GROUP = "thumbs"

# -- sqlite: logical topics inside the one database file --------------------------------------
SQLITE_TASKS = "tasks"
SQLITE_REPLIES = "replies"

# -- amqp (RabbitMQ) ------------------------------------------------------------------------
#: Headers exchange; a task carries one header per target group (or the "all" header).
AMQP_TASK_EXCHANGE = "pixfleet.tasks"
#: Direct exchange of dead letters, routing key = group.
AMQP_DEAD_EXCHANGE = "pixfleet.dead"
#: Durable queue listing every group ever subscribed (one message per group).
AMQP_GROUP_REGISTRY = "pixfleet.groups"
AMQP_HEADER_ALL = "pixfleet-all"
AMQP_HEADER_REASON = "x-pixfleet-reason"
AMQP_HEADER_DELIVERIES = "x-pixfleet-deliveries"  # deliveries before a delayed retry copy
#: AMQP ``type`` property of task and result messages (versioned with the envelope schema).
AMQP_TYPE_TASK = "pixfleet.task.v1"
AMQP_TYPE_RESULT = "pixfleet.result.v1"


#: The fleet: a stream of heartbeats, a direct exchange of control requests (routing keys
#: ``all``, ``worker:<id>``, ``group:<g>``) and the requesters' exclusive reply queues.
AMQP_WORKERS_STREAM = "pixfleet.workers"
AMQP_CONTROL_EXCHANGE = "pixfleet.control"
AMQP_TYPE_STATUS = "pixfleet.worker-status.v1"
AMQP_TYPE_LEFT = "pixfleet.worker-left.v1"
AMQP_TYPE_MARK = "pixfleet.roster-mark.v1"


def amqp_control_inbox(address: str) -> str:
    return f"pixfleet.control-reply.{address}"


def amqp_group_header(group: str) -> str:
    return f"pixfleet-group-{group}"


def amqp_group_queue(group: str) -> str:
    return f"pixfleet.group.{group}"


#: Delays (seconds) of the per-delay retry queues; a retry waits for the next one up (capped).
AMQP_RETRY_DELAYS = (1, 2, 5, 10, 30, 60, 300, 900, 3600)


def amqp_retry_queue(group: str, seconds: int) -> str:
    """Delayed retries of ``group`` due after ``seconds`` (one of :data:`AMQP_RETRY_DELAYS`)."""
    return f"pixfleet.retry.{group}.{seconds}s"


def amqp_dead_queue(group: str) -> str:
    return f"pixfleet.dead.{group}"


def amqp_reply_queue(channel: str) -> str:
    return f"pixfleet.reply.{channel}"


# -- kafka (every name below is prefixed with the URL's ``namespace`` option) ----------------
KAFKA_TASK_TOPIC = "pixfleet.tasks"
KAFKA_HEADER_GROUPS = "pixfleet-groups"  # comma-separated targets; empty = every group
KAFKA_HEADER_ATTEMPT = "pixfleet-attempt"  # deliveries before this retry copy was made
KAFKA_HEADER_NOT_BEFORE = "pixfleet-not-before"  # retry copies: epoch milliseconds
KAFKA_HEADER_REASON = "pixfleet-reason"  # dead letters
KAFKA_HEADER_CORRELATION = "correlation_id"  # results: the task's correlation id


#: The fleet (heartbeats keyed by worker id, compacted; control requests; control replies).
KAFKA_WORKERS_TOPIC = "pixfleet.workers"
KAFKA_CONTROL_TOPIC = "pixfleet.control"
KAFKA_CONTROL_REPLIES_TOPIC = "pixfleet.control-replies"
KAFKA_HEADER_INBOX = "pixfleet-inbox"  # control replies: the requester's inbox address


def kafka_retry_topic(group: str) -> str:
    return f"pixfleet.retry.{group}"


def kafka_dead_topic(group: str) -> str:
    return f"pixfleet.dead.{group}"


def kafka_dead_group(group: str) -> str:
    """Consumer group id whose committed offsets mark where ``group``'s dead letters begin:
    replayed and purged ones lie before it (never joined; see docs/kafka.md)."""
    return f"pixfleet.dead.{group}"


def kafka_reply_topic(channel: str) -> str:
    return f"pixfleet.reply.{channel}"


def kafka_reply_dead_topic(channel: str) -> str:
    """Dead letters of a reply channel (results that are no envelope)."""
    return f"pixfleet.dead-reply.{channel}"


def kafka_inflight_topic(group: str) -> str:
    """Group ``group``'s deliveries not yet settled, per partition (crash redeliveries count)."""
    return f"pixfleet.inflight.{group}"
