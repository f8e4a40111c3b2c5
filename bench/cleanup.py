"""A bench run deletes what it declared on its broker, also when it fails half-way.

Each round-trip or fleet row makes a fresh group (``bench-rt-<hex>``, ``bench-sys-<hex>``) and
private reply channels. On RabbitMQ a group is two quorum queues (tasks, dead letters), up to
nine delayed-retry queues, a binding and an entry in the group registry; hundreds of groups
left behind by past runs once made the shared server's ``rabbitmqctl add_vhost`` take over
30 s. So a row names its group and channels through :func:`declared`, and on the way out they
are deleted by name (:mod:`brokers.names`) on a connection of their own::

    async with declared(url) as made:
        group = made.group("bench-rt")
        channel = made.channel(await transport.open_reply_channel())

Exchanges are shared by every group and stay. Kafka: the group's retry, dead-letter and
in-flight topics and the channels' reply topics are deleted (the shared task topic stays).
SQLite: the bench's database is a temporary file - nothing to do.

``python -m bench clean`` sweeps what earlier runs (or killed ones) left: every group named
``bench-...`` that the broker lists.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from brokers import open_transport

#: What bench groups are named (``<prefix>-<hex>``): a sweep deletes every group named so.
PREFIX = "bench-"


@dataclass
class Declared:
    """The groups and reply channels a bench row made on the broker at ``url``."""

    url: str
    groups: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)

    def group(self, prefix: str) -> str:
        """A fresh group ``<prefix>-<hex>``, deleted at the end."""
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.groups.append(name)
        return name

    def channel(self, channel: str) -> str:
        """``channel`` (a private reply channel just opened), deleted at the end."""
        self.channels.append(channel)
        return channel


@contextlib.asynccontextmanager
async def declared(url: str) -> AsyncIterator[Declared]:
    """Collect what a row declares; delete it afterwards, whatever happened. Leave the block
    only once the row's workers stopped: a deleted queue cancels its consumers."""
    made = Declared(url)
    try:
        yield made
    finally:
        await delete(made)


async def delete(made: Declared) -> None:
    """Delete what ``made`` lists on its broker."""
    if made.url.startswith(("amqp://", "amqps://")):
        from bench.cleanup_amqp import delete_amqp  # noqa: PLC0415 - aio-pika optional

        await delete_amqp(made.url, made.groups, made.channels)
    elif made.url.startswith("kafka://"):
        from bench.cleanup_kafka import delete_kafka  # noqa: PLC0415 - aiokafka optional

        await delete_kafka(made.url, made.groups, made.channels)


async def sweep(url: str) -> list[str]:
    """Delete every bench group the broker at ``url`` lists (on RabbitMQ: its registry);
    returns their names. Not while a bench runs against the same broker."""
    async with open_transport(url) as transport:
        groups = [g for g in await transport.groups() if g.startswith(PREFIX)]
    await delete(Declared(url, groups))
    return groups
