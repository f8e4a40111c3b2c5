"""A consumer of small, unacknowledged messages on a channel of its own, as an async iterator:
the fleet's control requests (one exclusive queue per worker) and control replies (one
exclusive queue per requester).

Messages are consumed with ``no_ack`` (a lost control message is re-sent by its operator, never
redelivered) and decoded by the caller's ``decode``; a body that does not decode is dropped with
a log line. If the channel or its connection dies, :meth:`Listener.__anext__` raises
:class:`~pixfleet.errors.BrokerUnavailable` (its exclusive queue died with it: the owner opens a
new listener); after :meth:`Listener.aclose` it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from brokers.amqp.failures import RETRYABLE
from pixfleet.errors import BrokerUnavailable, EnvelopeError

log = logging.getLogger(__name__)

T = TypeVar("T")

_CLOSED = object()


class Listener(Generic[T]):
    """Consumes ``queue`` on ``channel`` (both owned: closing the listener closes them)."""

    def __init__(
        self,
        channel: AbstractChannel,
        queue: AbstractQueue,
        decode: Callable[[bytes], T],
        *,
        keep: Callable[[T], bool] = lambda _: True,
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._decode = decode
        self._keep = keep
        self._items: asyncio.Queue[Any] = asyncio.Queue()
        self._closed = False
        channel.close_callbacks.add(self._on_channel_closed)

    async def start(self) -> None:
        await self._queue.consume(self._on_message, no_ack=True)

    def _on_channel_closed(self, *_: object) -> None:
        self._items.put_nowait(_CLOSED)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            item = self._decode(message.body)
        except EnvelopeError as exc:
            log.warning("dropped a message on %s: %s", self._queue.name, exc)
            return
        if self._keep(item):
            self._items.put_nowait(item)

    def __aiter__(self) -> Listener[T]:
        return self

    async def __anext__(self) -> T:
        if self._closed:
            raise StopAsyncIteration
        item = await self._items.get()
        if item is _CLOSED:
            if self._closed:
                raise StopAsyncIteration
            raise BrokerUnavailable(f"lost the channel of {self._queue.name}")
        got: T = item
        return got

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(*RETRYABLE, RuntimeError):
            if not self._channel.is_closed:
                async with asyncio.timeout(5):
                    await self._queue.delete(if_unused=False, if_empty=False)
                    await self._channel.close()
        self._items.put_nowait(_CLOSED)
