"""The RabbitMQ transport (aio-pika): ``amqp://`` and ``amqps://``.

Topology (names in :mod:`brokers.names`; see ``docs/rabbitmq.md``):

* ``pixfleet.tasks`` - headers exchange. A task carries ``pixfleet-group-<g>: 1`` per target
  group, or ``pixfleet-all: 1`` when untargeted; each group queue is bound with ``x-match: any``
  on its own header and the ``all`` header, so one publish reaches every target.
* ``pixfleet.group.<g>`` - durable quorum queue with ``x-delivery-limit`` and at-least-once
  dead-lettering to ``pixfleet.dead`` (routing key ``<g>``) -> ``pixfleet.dead.<g>``.
* ``pixfleet.retry.<g>`` - delayed retries: per-message TTL, then dead-lettered back into the
  group queue (RabbitMQ has no native delay).
* ``pixfleet.reply.<channel>`` - reply queues; ``results`` is durable, private ones expire.

Delivery: persistent messages, publisher confirms, ``mandatory`` publishing (unroutable or nacked
publishes raise), manual acks, ``basic.qos`` = prefetch. Connections: one per transport, a
channel for publishing and one per subscription. pixfleet reconnects itself (no
``connect_robust``) and re-subscribes, so a broker that drops every connection cannot leave a
worker connected with zero consumers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Self, TypeVar

import aio_pika
import aiormq
from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from brokers import names
from brokers.amqp.settings import AmqpSettings
from brokers.amqp.subscription import RETRYABLE, AmqpSubscription
from brokers.contract import DeadLetter, GroupStats
from pixfleet.envelope import Result, Task, decode_result, decode_task, encode
from pixfleet.errors import (
    BrokerAuthFailed,
    BrokerError,
    BrokerUnavailable,
    PublishFailed,
    TransportClosed,
    Unroutable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _tls_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification error inside ``exc`` (aiormq may wrap it), if any."""
    seen: list[BaseException] = [exc]
    while seen:
        current = seen.pop()
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.extend(a for a in current.args if isinstance(a, BaseException))
        if current.__cause__ is not None:
            seen.append(current.__cause__)
    return None


class AmqpTransport:
    """:class:`brokers.contract.Transport` on RabbitMQ."""

    def __init__(self, settings: AmqpSettings) -> None:
        self.settings = settings
        self._conn: AbstractConnection | None = None
        self._pub: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._declared: set[str] = set()
        self._lock = asyncio.Lock()
        self._subs: set[AmqpSubscription[Any]] = set()
        self._opened = False
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> AmqpTransport:
        return cls(AmqpSettings.from_url(url))

    @property
    def url(self) -> str:
        return self.settings.safe_url

    # -- connection ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.connection()
        self._opened = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel subscriptions (their unacked deliveries return to the queue) and disconnect."""
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subs):
            await sub.force_close()
        if self._conn is not None and not self._conn.is_closed:
            await self._conn.close()
        self._conn = None

    async def connection(self) -> AbstractConnection:
        """The live connection, reconnecting (with backoff, bounded) if it was lost."""
        if self._closed:
            raise TransportClosed(f"transport {self.url} is closed")
        async with self._lock:
            if self._conn is None or self._conn.is_closed:
                budget = (
                    self.settings.reconnect_timeout
                    if self._opened
                    else self.settings.connect_timeout
                )
                self._conn = await self._connect(budget)
                self._pub = None
                self._exchanges.clear()
                self._declared.clear()
            return self._conn

    async def _connect(self, budget: float) -> AbstractConnection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        delay = 0.2
        name = f"pixfleet {socket.gethostname()}:{os.getpid()}"
        while True:
            try:
                return await aio_pika.connect(
                    self.settings.url,
                    timeout=self.settings.op_timeout,
                    client_properties={"connection_name": name},
                )
            except aiormq.exceptions.ProbableAuthenticationError as exc:
                raise BrokerAuthFailed(f"{self.url} refused the credentials") from exc
            except RETRYABLE as exc:
                tls = _tls_failure(exc)
                if tls is not None:  # retrying cannot make an untrusted certificate trusted
                    raise BrokerAuthFailed(
                        f"TLS: the certificate of {self.url} is not trusted ({tls.verify_message});"
                        " pass cafile=... in the URL"
                    ) from exc
                if loop.time() + delay > deadline:
                    raise BrokerUnavailable(f"cannot reach {self.url} ({_describe(exc)})") from exc
                log.warning(
                    "cannot reach %s (%s); retrying in %.1fs", self.url, _describe(exc), delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def open_channel(self, **kwargs: Any) -> AbstractChannel:
        """A new channel on the live connection. A connection the broker has just dropped
        makes aiormq raise a bare RuntimeError; it becomes a retryable ConnectionError and the
        dead connection is discarded so the next attempt reconnects."""
        conn = await self.connection()
        try:
            return await conn.channel(**kwargs)
        except RuntimeError as exc:
            if self._conn is conn:
                self._conn = None
            raise ConnectionError(f"connection lost while opening a channel ({exc})") from exc

    async def _publisher(self) -> AbstractChannel:
        if self._pub is None or self._pub.is_closed or self._conn is None or self._conn.is_closed:
            self._pub = await self.open_channel(publisher_confirms=True, on_return_raises=True)
            self._exchanges.clear()
            self._declared.clear()
        return self._pub

    async def run(self, op: Callable[[AbstractChannel], Awaitable[T]]) -> T:
        """Run ``op`` on the publisher channel; after a connection loss, reconnect and run it
        again until ``reconnect_timeout`` (a retried publish may duplicate: at-least-once)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.reconnect_timeout
        delay = 0.2
        while True:
            try:
                channel = await self._publisher()
                async with asyncio.timeout(self.settings.op_timeout):
                    return await op(channel)
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                raise BrokerError(f"RabbitMQ refused a declaration: {_describe(exc)}") from exc
            except RETRYABLE as exc:
                if self._closed or loop.time() + delay > deadline:
                    raise BrokerUnavailable(f"lost {self.url} ({_describe(exc)})") from exc
                log.warning(
                    "broker operation failed (%s); retrying in %.1fs", _describe(exc), delay
                )
                self._pub = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- topology --------------------------------------------------------------------------

    async def _exchange(self, channel: AbstractChannel, name: str, kind: ExchangeType) -> Any:
        if name not in self._exchanges:
            self._exchanges[name] = await channel.declare_exchange(name, kind, durable=True)
        return self._exchanges[name]

    async def declare_group(self, channel: AbstractChannel, group: str) -> None:
        """Declare a group's queues and bindings (idempotent; cached per connection)."""
        if group in self._declared:
            return
        tasks = await self._exchange(channel, names.AMQP_TASK_EXCHANGE, ExchangeType.HEADERS)
        dead = await self._exchange(channel, names.AMQP_DEAD_EXCHANGE, ExchangeType.DIRECT)
        dead_queue = await channel.declare_queue(
            names.amqp_dead_queue(group), durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead_queue.bind(dead, routing_key=group)
        queue = await channel.declare_queue(
            names.amqp_group_queue(group),
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": self.settings.delivery_limit,
                "x-dead-letter-exchange": names.AMQP_DEAD_EXCHANGE,
                "x-dead-letter-routing-key": group,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        await queue.bind(
            tasks,
            routing_key="",
            arguments={
                "x-match": "any",
                names.amqp_group_header(group): "1",
                names.AMQP_HEADER_ALL: "1",
            },
        )
        await channel.declare_queue(
            names.amqp_retry_queue(group),
            durable=True,
            arguments={
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": names.amqp_group_queue(group),
            },
        )
        self._declared.add(group)
        await self._register(channel, group)

    async def _register(self, channel: AbstractChannel, group: str) -> None:
        if group in await self.groups():
            return
        await channel.declare_queue(names.AMQP_GROUP_REGISTRY, durable=True)
        await channel.default_exchange.publish(
            Message(group.encode(), delivery_mode=DeliveryMode.PERSISTENT),
            routing_key=names.AMQP_GROUP_REGISTRY,
            mandatory=True,
        )

    async def _declare_results(self, channel: AbstractChannel) -> None:
        if names.DEFAULT_RESULTS not in self._declared:
            await channel.declare_queue(
                names.amqp_reply_queue(names.DEFAULT_RESULTS),
                durable=True,
                arguments={"x-queue-type": "quorum"},
            )
            self._declared.add(names.DEFAULT_RESULTS)

    # -- publish ---------------------------------------------------------------------------

    async def publish(self, task: Task) -> None:
        if task.groups:
            headers: dict[str, Any] = {names.amqp_group_header(g): "1" for g in task.groups}
        else:
            headers = {names.AMQP_HEADER_ALL: "1"}
        message = Message(
            encode(task),
            delivery_mode=DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=task.id,
            correlation_id=task.correlation_id,
            type="pixfleet.task.v1",
            headers=headers,
        )

        async def op(channel: AbstractChannel) -> None:
            for group in task.groups:
                await self.declare_group(channel, group)
            exchange = await self._exchange(channel, names.AMQP_TASK_EXCHANGE, ExchangeType.HEADERS)
            await self.confirm(exchange.publish(message, routing_key=""), what=f"task {task.id}")

        await self.run(op)

    async def confirm(self, publishing: Awaitable[object], *, what: str) -> None:
        """Await a mandatory, confirmed publish; map returns and nacks to pixfleet errors."""
        try:
            await publishing
        except aiormq.exceptions.PublishError as exc:
            raise Unroutable(f"{what} reached no queue (no group subscribed?)") from exc
        except aiormq.exceptions.DeliveryError as exc:
            raise PublishFailed(f"RabbitMQ did not accept {what}: {_describe(exc)}") from exc

    async def reply(self, reply_to: str, result: Result) -> str:
        message = Message(
            encode(result),
            delivery_mode=DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=f"{result.task_id}:{result.group}",
            correlation_id=result.correlation_id,
            type="pixfleet.result.v1",
        )

        async def op(channel: AbstractChannel) -> str:
            await self._declare_results(channel)
            exchange = channel.default_exchange
            try:
                await exchange.publish(message, routing_key=names.amqp_reply_queue(reply_to))
                return reply_to
            except aiormq.exceptions.PublishError:
                log.info(
                    "reply channel %s is gone; result goes to %s", reply_to, names.DEFAULT_RESULTS
                )
            fallback = names.amqp_reply_queue(names.DEFAULT_RESULTS)
            await self.confirm(exchange.publish(message, routing_key=fallback), what="result")
            return names.DEFAULT_RESULTS

        return await self.run(op)

    async def open_reply_channel(self) -> str:
        channel_name = f"{names.PRIVATE_REPLY_PREFIX}{uuid.uuid4().hex}"

        async def op(channel: AbstractChannel) -> None:
            await channel.declare_queue(
                names.amqp_reply_queue(channel_name),
                durable=False,
                arguments={"x-expires": int(self.settings.reply_ttl * 1000)},
            )

        await self.run(op)
        return channel_name

    async def close_reply_channel(self, channel: str) -> None:
        if channel == names.DEFAULT_RESULTS:
            raise ValueError("the default results channel cannot be closed")

        async def op(ch: AbstractChannel) -> None:
            await ch.queue_delete(names.amqp_reply_queue(channel))

        await self.run(op)

    # -- consume ---------------------------------------------------------------------------

    def consume(
        self, group: str, *, prefetch: int = 16, until_empty: bool = False
    ) -> AmqpSubscription[Task]:
        return self._subscribe(
            AmqpSubscription(
                self,
                queue=names.amqp_group_queue(group),
                group=group,
                decode=decode_task,
                prefetch=prefetch,
                until_empty=until_empty,
            )
        )

    def replies(
        self, channel: str, *, prefetch: int = 64, until_empty: bool = False
    ) -> AmqpSubscription[Result]:
        return self._subscribe(
            AmqpSubscription(
                self,
                queue=names.amqp_reply_queue(channel),
                group=None,
                decode=decode_result,
                prefetch=prefetch,
                until_empty=until_empty,
            )
        )

    def _subscribe(self, sub: AmqpSubscription[T]) -> AmqpSubscription[T]:  # type: ignore[type-var]
        self._subs.add(sub)
        return sub

    def forget(self, sub: AmqpSubscription[Any]) -> None:
        """A closed subscription stays tracked until its channel is closed (see close())."""

    async def prepare_queue(self, queue: str, group: str | None) -> None:
        """Make sure a subscription's queue exists before consuming from it."""

        async def op(channel: AbstractChannel) -> None:
            if group is not None:
                await self.declare_group(channel, group)
            elif queue == names.amqp_reply_queue(names.DEFAULT_RESULTS):
                await self._declare_results(channel)

        await self.run(op)

    async def dead_letter(
        self, group: str, body: bytes, headers: dict[str, Any], reason: str
    ) -> None:
        """Publish a copy to the group's dead queue with the reason (confirmed)."""
        message = Message(
            body,
            delivery_mode=DeliveryMode.PERSISTENT,
            content_type="application/json",
            headers={**headers, names.AMQP_HEADER_REASON: reason[:2000]},
        )

        async def op(channel: AbstractChannel) -> None:
            await self.declare_group(channel, group)
            exchange = await self._exchange(channel, names.AMQP_DEAD_EXCHANGE, ExchangeType.DIRECT)
            await self.confirm(exchange.publish(message, routing_key=group), what="dead letter")

        await self.run(op)

    async def delay(
        self, group: str, body: bytes, headers: dict[str, Any], delay: float, deliveries: int
    ) -> None:
        """Publish a copy to the group's retry queue; it returns to the group after ``delay``."""
        message = Message(
            body,
            delivery_mode=DeliveryMode.PERSISTENT,
            content_type="application/json",
            expiration=max(delay, 0.001),
            headers={**headers, names.AMQP_HEADER_DELIVERIES: deliveries},
        )

        async def op(channel: AbstractChannel) -> None:
            await self.declare_group(channel, group)
            await self.confirm(
                channel.default_exchange.publish(
                    message, routing_key=names.amqp_retry_queue(group)
                ),
                what="delayed retry",
            )

        await self.run(op)

    # -- inspection ------------------------------------------------------------------------

    async def queue_counts(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) of a queue; (0, 0) if it does not exist."""
        channel = await self.open_channel()
        try:
            declared = await channel.declare_queue(
                queue, passive=True, timeout=self.settings.op_timeout
            )
            result = declared.declaration_result
            return int(result.message_count or 0), int(result.consumer_count or 0)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return 0, 0
        finally:
            if not channel.is_closed:
                await channel.close()

    async def stats(self, group: str) -> GroupStats:
        ready, consumers = await self.queue_counts(names.amqp_group_queue(group))
        delayed, _ = await self.queue_counts(names.amqp_retry_queue(group))
        dead, _ = await self.queue_counts(names.amqp_dead_queue(group))
        # AMQP does not report unacknowledged messages (only the management plugin does).
        return GroupStats(
            group, ready=ready + delayed, in_flight=None, dead=dead, consumers=consumers
        )

    async def groups(self) -> tuple[str, ...]:
        bodies = await self._peek(names.AMQP_GROUP_REGISTRY, limit=10_000)
        return tuple(sorted({body.decode() for body, _ in bodies}))

    async def dead_letters(self, group: str, *, limit: int = 100) -> list[DeadLetter]:
        found = await self._peek(names.amqp_dead_queue(group), limit=limit)
        return [DeadLetter(body=body, reason=_reason(headers)) for body, headers in found]

    async def _peek(self, queue: str, *, limit: int) -> list[tuple[bytes, dict[str, Any]]]:
        """Read up to ``limit`` messages without removing them: get them unacked on a
        private channel, then close it so RabbitMQ puts them back."""
        channel = await self.open_channel()
        out: list[tuple[bytes, dict[str, Any]]] = []
        try:
            declared = await channel.declare_queue(queue, passive=True)
            while len(out) < limit:
                message = await declared.get(
                    no_ack=False, fail=False, timeout=self.settings.op_timeout
                )
                if message is None:
                    break
                out.append((message.body, dict(message.headers or {})))
        except aiormq.exceptions.ChannelNotFoundEntity:
            return []
        finally:
            if not channel.is_closed:
                await channel.close()
        return out


def _reason(headers: dict[str, Any]) -> str:
    reason = headers.get(names.AMQP_HEADER_REASON)
    if reason:
        return str(reason.decode() if isinstance(reason, bytes) else reason)
    first = headers.get("x-first-death-reason")
    if isinstance(first, bytes):
        first = first.decode()
    return f"dead-lettered by RabbitMQ: {first or 'unknown reason'}"
