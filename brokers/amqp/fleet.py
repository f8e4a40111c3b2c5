"""The fleet on RabbitMQ (:class:`brokers.contract.Fleet`).

* **Roster**: workers publish their status to the stream queue ``pixfleet.workers`` (kept
  ``STREAM_MAX_AGE``, small segments so old ones are really deleted), and a ``leave`` record
  when they stop on purpose. A lister publishes a *mark* (a random nonce) to the same stream,
  then reads it from ``x-stream-offset`` = now - ``ROSTER_WINDOW`` until it meets its mark:
  everything published before the mark has been read, with no guess about "the end". The
  latest status per worker id wins; a leave removes it. A worker killed with ``-9`` simply
  stops publishing, so its last status ages into ``lost`` and then out of the window.
* **Control**: requests go to the direct exchange ``pixfleet.control`` with routing key
  ``all``, ``worker:<id>`` or ``group:<g>``; each worker consumes an exclusive, server-named
  queue bound to ``all``, its id and its groups (it dies with the worker's connection; requests
  expire after ``CONTROL_TTL`` seconds). Requests for nobody are dropped by RabbitMQ.
* **Replies**: each requester consumes an exclusive queue ``pixfleet.control-reply.<address>``;
  a worker publishes its reply there through the default exchange (mandatory: a requester that
  left makes the reply unroutable, which is dropped with a debug line).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from brokers import names
from brokers.amqp.channels import AmqpChannels
from brokers.amqp.failures import RETRYABLE, confirmed
from brokers.amqp.listener import Listener
from pixfleet.errors import BrokerUnavailable, EnvelopeError, Unroutable
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

STREAM_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "stream",
    "x-max-age": "15m",
    "x-stream-max-segment-size-bytes": 1_000_000,
}
#: Seconds a control request waits in a worker's queue before RabbitMQ drops it.
CONTROL_TTL = 60


def routing_key(request: ControlRequest) -> str:
    target = request.target
    return "all" if target.kind == "all" else f"{target.kind}:{target.name}"


class AmqpFleet:
    """The fleet role of one :class:`~brokers.amqp.transport.AmqpTransport`."""

    def __init__(self, channels: AmqpChannels) -> None:
        self._channels = channels

    @property
    def _timeout(self) -> float:
        return self._channels.settings.op_timeout

    async def _to_stream(self, body: bytes, kind: str, message_id: str) -> None:
        message = Message(
            body,
            delivery_mode=DeliveryMode.PERSISTENT,
            content_type="application/json",
            type=kind,
            message_id=message_id,
            timestamp=datetime.now(UTC),
        )

        async def op(channel: AbstractChannel) -> None:
            await channel.declare_queue(
                names.AMQP_WORKERS_STREAM, durable=True, arguments=STREAM_ARGUMENTS
            )
            publishing = channel.default_exchange.publish(
                message, routing_key=names.AMQP_WORKERS_STREAM
            )
            await confirmed(publishing, what="a worker status")

        await self._channels.with_channel(op)

    async def heartbeat(self, status: WorkerStatus) -> None:
        await self._to_stream(encode_fleet(status), names.AMQP_TYPE_STATUS, status.id)

    async def leave(self, worker_id: str) -> None:
        await self._to_stream(worker_id.encode(), names.AMQP_TYPE_LEFT, worker_id)

    async def roster(self) -> list[WorkerStatus]:
        mark = secrets.token_hex(16)
        channel = await self._channels.open_channel()
        try:
            await self._to_stream(mark.encode(), names.AMQP_TYPE_MARK, mark)
            async with asyncio.timeout(self._timeout):
                return await self._read_stream(channel, mark)
        except RETRYABLE as exc:
            raise BrokerUnavailable(f"cannot read the worker roster: {exc!r}") from exc
        finally:
            if not channel.is_closed:
                await channel.close()

    async def _read_stream(self, channel: AbstractChannel, mark: str) -> list[WorkerStatus]:
        """Fold the stream from ``ROSTER_WINDOW`` ago up to ``mark``. A callback consumer,
        acking each record: streams refuse nacks, which an iterator sends for what it buffered
        when it stops (RabbitMQ closes the connection for that)."""
        await channel.set_qos(prefetch_count=500)
        queue = await channel.declare_queue(
            names.AMQP_WORKERS_STREAM, durable=True, arguments=STREAM_ARGUMENTS
        )
        since = datetime.now(UTC) - timedelta(seconds=ROSTER_WINDOW)
        latest: dict[str, WorkerStatus] = {}
        found = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            if not found.is_set():
                await message.ack()
                if _apply(message, latest) == mark:
                    found.set()

        await queue.consume(on_message, arguments={"x-stream-offset": since})
        await found.wait()
        return [s for s in latest.values() if s.last_seen >= since]

    async def open_commands(
        self, worker_id: str, groups: tuple[str, ...]
    ) -> Listener[ControlRequest]:
        channel = await self._channels.open_channel()
        try:
            exchange = await self._control_exchange(channel)
            queue = await channel.declare_queue(
                exclusive=True, auto_delete=True, arguments={"x-message-ttl": CONTROL_TTL * 1000}
            )
            for key in ("all", f"worker:{worker_id}", *(f"group:{g}" for g in groups)):
                await queue.bind(exchange, routing_key=key)
            listener = Listener(
                channel,
                queue,
                decode_request,
                keep=lambda request: request.target.reaches(worker_id, groups),
            )
            await listener.start()
        except BaseException:
            await channel.close()
            raise
        return listener

    async def _control_exchange(self, channel: AbstractChannel) -> AbstractExchange:
        return await channel.declare_exchange(
            names.AMQP_CONTROL_EXCHANGE, ExchangeType.DIRECT, durable=True
        )

    async def send_control(self, request: ControlRequest) -> None:
        message = Message(
            encode_fleet(request),
            content_type="application/json",
            message_id=request.id,
            expiration=CONTROL_TTL,
        )

        async def op(channel: AbstractChannel) -> None:
            exchange = await self._control_exchange(channel)
            publishing = exchange.publish(message, routing_key=routing_key(request))
            await confirmed(publishing, what="a control request")

        try:
            await self._channels.with_channel(op)
        except Unroutable:
            log.info("control request %s reached no worker", request.id)

    async def reply_control(self, reply: ControlReply, reply_to: str) -> None:
        message = Message(encode_fleet(reply), content_type="application/json")
        queue = names.amqp_control_inbox(reply_to)

        async def op(channel: AbstractChannel) -> None:
            publishing = channel.default_exchange.publish(message, routing_key=queue)
            await confirmed(publishing, what="a control reply")

        try:
            await self._channels.with_channel(op)
        except Unroutable:
            log.debug("control inbox %s is gone; reply dropped", reply_to)

    async def open_control_inbox(self) -> AmqpInbox:
        address = new_inbox()
        channel = await self._channels.open_channel()
        try:
            queue = await channel.declare_queue(
                names.amqp_control_inbox(address), exclusive=True, auto_delete=True
            )
            inbox = AmqpInbox(channel, queue, decode_reply)
            inbox.address = address
            await inbox.start()
        except BaseException:
            await channel.close()
            raise
        return inbox


class AmqpInbox(Listener[ControlReply]):
    address = ""


def _apply(message: AbstractIncomingMessage, latest: dict[str, WorkerStatus]) -> str | None:
    """Fold one stream record into ``latest``; returns the nonce of a mark."""
    if message.type == names.AMQP_TYPE_MARK:
        return message.body.decode(errors="replace")
    if message.type == names.AMQP_TYPE_LEFT:
        latest.pop(message.body.decode(errors="replace"), None)
    elif message.type == names.AMQP_TYPE_STATUS:
        try:
            status = decode_status(message.body)
        except EnvelopeError as exc:
            log.warning("dropped a worker status that is not valid: %s", exc)
        else:
            latest[status.id] = status
    return None
