"""The one RabbitMQ connection of a transport, reconnected on demand.

pixfleet reconnects itself (no ``connect_robust``): whoever needs a channel asks
:meth:`AmqpConnection.open_channel`, which reconnects with :data:`brokers.policy.RECONNECT`
backoff if the connection was lost. Each new connection bumps :attr:`AmqpConnection.generation`
so holders of long-lived channels know theirs belong to a dead one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Self

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from brokers.amqp.failures import RETRYABLE, Patience, describe, untrusted_certificate
from brokers.amqp.settings import AmqpSettings
from pixfleet.errors import BrokerAuthFailed, BrokerUnavailable, TransportClosed

log = logging.getLogger(__name__)


class AmqpConnection:
    """Holds the live connection. The first connect is bounded by ``connect_timeout``, every
    reconnect after :meth:`open` by ``reconnect_timeout``; wrong credentials and untrusted
    certificates raise :class:`BrokerAuthFailed` at once, since retrying cannot fix them."""

    def __init__(self, settings: AmqpSettings) -> None:
        self.settings = settings
        self.generation = 0  # bumped on every new connection
        self._conn: AbstractConnection | None = None
        self._lock = asyncio.Lock()
        self._opened = False
        self._closed = False

    @property
    def url(self) -> str:
        return self.settings.safe_url

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def alive(self) -> bool:
        """Connected right now (a lost connection is replaced on the next request)."""
        return self._conn is not None and not self._conn.is_closed

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect for the first time (raises :class:`BrokerUnavailable` after
        ``connect_timeout``)."""
        await self.connection()
        self._opened = True

    async def close(self, *, first: Callable[[], Awaitable[None]] | None = None) -> None:
        """Refuse new channels, run ``first`` (channels still usable), then disconnect.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        if first is not None:
            await first()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed:
            await conn.close()

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
                self.generation += 1
            return self._conn

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

    async def _connect(self, budget: float) -> AbstractConnection:
        patience = Patience(budget)
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
                self._refuse_untrusted(exc)
                wait = patience.next_wait()
                if wait is None:
                    raise BrokerUnavailable(f"cannot reach {self.url} ({describe(exc)})") from exc
                log.warning(
                    "cannot reach %s (%s); retrying in %.1fs", self.url, describe(exc), wait
                )
                await asyncio.sleep(wait)

    def _refuse_untrusted(self, exc: BaseException) -> None:
        """Retrying cannot make an untrusted certificate trusted: fail at once."""
        tls = untrusted_certificate(exc)
        if tls is not None:
            raise BrokerAuthFailed(
                f"TLS: the certificate of {self.url} is not trusted ({tls.verify_message});"
                " pass cafile=... in the URL"
            ) from exc
