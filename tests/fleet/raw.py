"""Raw bytes onto the fleet's control channel and roster, as any client of the broker could."""

from __future__ import annotations

import sqlite3
from urllib.parse import urlsplit

from brokers import names
from brokers.sqlite.settings import SqliteSettings
from tests.helpers.raw import inject_kafka_record

HOSTILE: tuple[bytes, ...] = (
    b"",
    b"not json",
    b"\xff\xfe\x00",
    b"[]",
    b'"a string"',
    b'{"v": 2}',
    b'{"v": 1}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"v": 1, "pad": "' + b"x" * 70_000 + b'"}',
    b'{"v": 1, "id": "r1", "command": "reboot", "target": {"kind": "all"}, '
    b'"reply_to": "0123456789abcdef0123456789abcdef", "sent_at": "2026-01-01T00:00:00Z"}',
    b'{"v": 1, "id": "r2", "command": "ping", "target": {"kind": "worker"}, '
    b'"reply_to": "0123456789abcdef0123456789abcdef", "sent_at": "2026-01-01T00:00:00Z"}',
    b'{"v": 1, "id": "r3", "command": "ping", "target": {"kind": "all"}, '
    b'"reply_to": "../../etc/passwd", "sent_at": "2026-01-01T00:00:00Z"}',
    b'{"v": 1, "id": "w", "host": "h", "pid": -1, "started_at": "x", "last_seen": "y"}',
)


async def inject(url: str, where: str, body: bytes) -> None:
    """Put ``body`` on the control channel (``where="control"``) or the roster ("roster")."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        _sqlite(url, where, body)
    elif scheme == "kafka":
        topic = names.KAFKA_CONTROL_TOPIC if where == "control" else names.KAFKA_WORKERS_TOPIC
        await inject_kafka_record(url, topic, body, key=b"w-hostile")
    else:
        await _amqp(url, where, body)


def _sqlite(url: str, where: str, body: bytes) -> None:
    db = sqlite3.connect(SqliteSettings.from_url(url).path, isolation_level=None)
    try:
        if where == "control":
            db.execute("INSERT INTO fleet_control (body, created_at) VALUES (?, 1e12)", (body,))
        else:
            sql = "INSERT INTO fleet_workers (id, body, last_seen) VALUES (?, ?, 1e12)"
            db.execute(sql, (f"w-{hash(body)}", body))
    finally:
        db.close()


async def _amqp(url: str, where: str, body: bytes) -> None:
    import aio_pika  # noqa: PLC0415 - only for amqp runs

    connection = await aio_pika.connect(url.split("?", maxsplit=1)[0])
    try:
        channel = await connection.channel()
        if where == "control":
            exchange = await channel.get_exchange(names.AMQP_CONTROL_EXCHANGE)
            await exchange.publish(aio_pika.Message(body), routing_key="all")
        else:
            message = aio_pika.Message(body, type=names.AMQP_TYPE_STATUS)
            await channel.default_exchange.publish(message, routing_key=names.AMQP_WORKERS_STREAM)
    finally:
        await connection.close()
