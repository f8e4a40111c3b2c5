"""Read-only views of RabbitMQ (:class:`brokers.contract.Inspector`), each on a private channel.

AMQP 0-9-1 reports ready messages and consumers of a queue, not unacknowledged ones (only the
management plugin does), so :attr:`GroupStats.in_flight` is ``None``. Peeking gets messages
unacked on a private channel and closes it, which puts them back.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, Protocol

import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from brokers import names
from brokers.amqp.settings import AmqpSettings
from brokers.contract import DeadLetter, GroupStats
from brokers.deadletters import dead_letter

#: Seconds a peek or replay waits for RabbitMQ to take back the messages it left unacked.
SETTLE_TIMEOUT = 2.0

#: Seconds a peek waits for the next streamed message before it asks whether any is left.
PEEK_IDLE = 0.1

#: A peeked message: body, headers, message id, timestamp property.
_Peeked = tuple[bytes, dict[str, Any], str | None, datetime | None]


class _Opener(Protocol):
    settings: AmqpSettings

    async def open_channel(self) -> AbstractChannel: ...


class AmqpInspector:
    """Queue counts, groups and dead letters; a missing queue reads as empty."""

    def __init__(self, opener: _Opener) -> None:
        self._opener = opener
        self._timeout = opener.settings.op_timeout

    async def queue_counts(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) of a queue; (0, 0) if it does not exist."""
        [counts] = await self.counts_of([queue])
        return counts

    async def counts_of(self, queues: list[str]) -> list[tuple[int, int]]:
        """(ready messages, consumers) of each queue, (0, 0) for a missing one, on one channel
        (a missing queue closes it: the next one gets a fresh channel)."""
        out: list[tuple[int, int]] = []
        channel: AbstractChannel | None = None
        try:
            for queue in queues:
                if channel is None or channel.is_closed:
                    channel = await self._opener.open_channel()
                try:
                    declared = await channel.declare_queue(
                        queue, passive=True, timeout=self._timeout
                    )
                except aiormq.exceptions.ChannelNotFoundEntity:
                    out.append((0, 0))
                    continue
                result = declared.declaration_result
                out.append((int(result.message_count or 0), int(result.consumer_count or 0)))
        finally:
            if channel is not None and not channel.is_closed:
                await channel.close()
        return out

    async def waiting(self, queue: str, group: str | None) -> int:
        """Messages waiting for a subscription of ``queue``: ready ones, plus the delayed
        retries of ``group``."""
        delayed = (
            [names.amqp_retry_queue(group, s) for s in names.AMQP_RETRY_DELAYS] if group else []
        )
        return sum(ready for ready, _ in await self.counts_of([queue, *delayed]))

    async def stats(self, group: str) -> GroupStats:
        retries = [names.amqp_retry_queue(group, s) for s in names.AMQP_RETRY_DELAYS]
        queues = [names.amqp_group_queue(group), names.amqp_dead_queue(group), *retries]
        [(ready, consumers), (dead, _), *delayed] = await self.counts_of(queues)
        waiting = ready + sum(n for n, _ in delayed)
        return GroupStats(group, ready=waiting, in_flight=None, dead=dead, consumers=consumers)

    async def groups(self) -> tuple[str, ...]:
        bodies = await self._peek(names.AMQP_GROUP_REGISTRY, limit=10_000)
        return tuple(sorted({peeked[0].decode() for peeked in bodies}))

    async def dead_letters(self, group: str, *, limit: int = 100) -> list[DeadLetter]:
        found = await self._peek(names.amqp_dead_queue(group), limit=limit)
        return [
            dead_letter(
                body,
                _reason(headers),
                key=message_id,
                dead_at=_dead_at(headers, stamp, group),
            )
            for body, headers, message_id, stamp in found
        ]

    async def _peek(self, queue: str, *, limit: int) -> list[_Peeked]:
        """Read up to ``limit`` messages without removing them: take them unacked on a
        private channel, then close it so RabbitMQ puts them back (:meth:`settle`). They are
        streamed to a consumer with that prefetch (one round trip, not a ``basic.get`` each):
        reading stops once as many arrived as the queue held, or none is left."""
        channel = await self._opener.open_channel()
        out: list[_Peeked] = []
        try:
            declared = await channel.declare_queue(queue, passive=True)
            before = int(declared.declaration_result.message_count or 0)
            want = min(before, limit)
            if want:
                await channel.set_qos(prefetch_count=min(want, 65535))
                await self._stream(declared, want, out)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return []
        finally:
            if not channel.is_closed:
                await channel.close()
        await self.settle(queue, before)
        return out

    async def _stream(self, queue: AbstractQueue, want: int, out: list[_Peeked]) -> None:
        """Consume up to ``want`` messages into ``out``. When none arrives for
        :data:`PEEK_IDLE` seconds, a ``basic.get`` asks whether any is left (another peek may
        hold some): an empty answer ends the read, as the ``basic.get`` loop this replaces
        did."""
        arrived = asyncio.Event()

        def keep(message: AbstractIncomingMessage) -> None:
            if len(out) < want:
                headers = dict(message.headers or {})
                out.append((message.body, headers, message.message_id, message.timestamp))
            arrived.set()

        async def on_message(message: AbstractIncomingMessage) -> None:
            keep(message)

        await queue.consume(on_message, no_ack=False)
        async with asyncio.timeout(self._timeout):
            while len(out) < want:
                arrived.clear()
                try:
                    async with asyncio.timeout(PEEK_IDLE):
                        await arrived.wait()
                except TimeoutError:
                    left = await queue.get(no_ack=False, fail=False, timeout=self._timeout)
                    await asyncio.sleep(0)  # deliveries read before the answer are kept first
                    if left is None:
                        return
                    keep(left)

    async def settle(self, queue: str, expected: int) -> None:
        """Wait (at most :data:`SETTLE_TIMEOUT` s) until ``queue`` holds ``expected`` ready
        messages again: a quorum queue takes back a closed channel's unacked messages a moment
        after the close, and a count, purge or replay must not miss them."""
        deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT
        while (await self.queue_counts(queue))[0] < expected:
            if asyncio.get_running_loop().time() >= deadline:
                return
            await asyncio.sleep(0.02)


def _reason(headers: dict[str, Any]) -> str:
    reason = headers.get(names.AMQP_HEADER_REASON)
    if reason:
        return str(reason.decode() if isinstance(reason, bytes) else reason)
    first = headers.get("x-first-death-reason")
    if isinstance(first, bytes):
        first = first.decode()
    return f"dead-lettered by RabbitMQ: {first or 'unknown reason'}"


def _dead_at(headers: dict[str, Any], stamp: datetime | None, group: str) -> datetime | None:
    """When a dead message died: the timestamp of pixfleet's copy, else RabbitMQ's ``x-death``
    entry for the group queue."""
    if names.AMQP_HEADER_REASON in headers:
        return stamp.replace(tzinfo=stamp.tzinfo or UTC) if stamp is not None else None
    for death in headers.get("x-death") or ():
        if isinstance(death, dict) and _text(death.get("queue")) == names.amqp_group_queue(group):
            when = death.get("time")
            if isinstance(when, datetime):
                return when.replace(tzinfo=when.tzinfo or UTC)
    return None


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
