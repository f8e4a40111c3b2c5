"""One RabbitMQ connection, reconnected on demand.

pixfleet reconnects itself (no ``connect_robust``): whoever needs a channel asks
:meth:`AmqpConnection.open_channel`, which reconnects with :data:`brokers.policy.RECONNECT`
backoff if the connection was lost. Each new connection bumps :attr:`AmqpConnection.generation`
so holders of long-lived channels know theirs belong to a dead one. A transport holds two: one
that publishes and one that consumes (RabbitMQ blocks publishing connections during a memory or
disk alarm, and acks must keep flowing).
"""

from __future__ import annotations

import asyncio
import contextlib
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

#: Seconds a close may take before the socket is simply dropped (a blocked connection is not
#: read by RabbitMQ, so its close handshake would never finish).
CLOSE_TIMEOUT = 2.0
#: ... and when it is known to be blocked: the uploader that got ``broker.blocked`` exits
#: without waiting out :data:`CLOSE_TIMEOUT` (issue 9: the error within 5 s).
BLOCKED_CLOSE_TIMEOUT = 0.1


class AmqpConnection:
    """Holds the live connection. Until it first succeeds, connecting is retried for
    ``connect_timeout``, afterwards for ``reconnect_timeout`` (``patient=False``: one try).
    Wrong credentials, an unknown vhost and untrusted certificates raise
    :class:`BrokerAuthFailed` at once, since retrying cannot fix them. Logs one line when the
    broker is lost and one when it is back."""

    def __init__(self, settings: AmqpSettings, role: str = "") -> None:
        self.settings = settings
        self.role = role  # shown in the connection name (RabbitMQ's list_connections)
        self.generation = 0  # bumped on every new connection
        self._conn: AbstractConnection | None = None
        self._lock = asyncio.Lock()
        self._connected_once = False
        self._down = False  # the last attempt failed (logged once)
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
        """Connect (raises :class:`BrokerUnavailable` after ``connect_timeout``)."""
        await self.connection()

    async def close(self, *, first: Callable[[], Awaitable[None]] | None = None) -> None:
        """Refuse new channels, run ``first`` (channels still usable), then disconnect within
        :data:`CLOSE_TIMEOUT` (:data:`BLOCKED_CLOSE_TIMEOUT` if RabbitMQ blocks it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if first is not None:
            await first()
        # A blocked connection is not read by RabbitMQ: its handshake cannot finish, drop it.
        limit = BLOCKED_CLOSE_TIMEOUT if await self.blocked() else CLOSE_TIMEOUT
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed:
            return
        try:
            async with asyncio.timeout(limit):
                await conn.close()
        except RETRYABLE as exc:
            log.debug("closing %s: %s (the socket is dropped)", self.url, describe(exc))

    async def connection(self, *, patient: bool = True) -> AbstractConnection:
        """The live connection, reconnecting (with backoff, bounded) if it was lost."""
        if self._closed:
            raise TransportClosed(f"transport {self.url} is closed")
        async with self._lock:
            if self._conn is None or self._conn.is_closed:
                s = self.settings
                budget = s.reconnect_timeout if self._connected_once else s.connect_timeout
                self._conn = await self._connect(budget if patient else 0.0)
                self._connected_once = True
                self.generation += 1
            return self._conn

    async def open_channel(self, *, patient: bool = True, **kwargs: Any) -> AbstractChannel:
        """A new channel on the live connection, opened within ``op_timeout``. A connection the
        broker has just dropped makes aiormq raise a bare RuntimeError; it becomes a retryable
        ConnectionError and the dead connection is discarded so the next attempt reconnects."""
        conn = await self.connection(patient=patient)
        try:
            async with asyncio.timeout(self.settings.op_timeout):
                return await conn.channel(**kwargs)
        except RuntimeError as exc:
            if self._conn is conn:
                self._conn = None
            raise ConnectionError(f"connection lost while opening a channel ({exc})") from exc

    async def blocked(self) -> bool:
        """Whether RabbitMQ blocks this connection right now (a memory or disk alarm; it sends
        ``connection.blocked`` once the connection publishes during one)."""
        conn = self._conn
        underlay = None if conn is None or conn.is_closed else conn.transport
        if underlay is None:
            return False
        probe = asyncio.ensure_future(underlay.connection.ready())
        try:
            done, _ = await asyncio.wait({probe}, timeout=0.05)
        finally:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError, *RETRYABLE):
                await probe
        return not done

    async def _connect(self, budget: float) -> AbstractConnection:
        patience = Patience(budget)
        while True:
            try:
                conn = await self._connect_once()
            except RETRYABLE as exc:
                self._refuse_untrusted(exc)
                if not self._down:
                    self._down = True
                    log.warning("cannot reach %s (%s); retrying", self.url, describe(exc))
                wait = patience.next_wait()
                if wait is None:
                    raise BrokerUnavailable(f"cannot reach {self.url} ({describe(exc)})") from exc
                log.debug("cannot reach %s (%s); retrying in %.1fs", self.url, describe(exc), wait)
                await asyncio.sleep(wait)
            else:
                if self._down:
                    self._down = False
                    log.info("connected to %s again", self.url)
                return conn

    async def _connect_once(self) -> AbstractConnection:
        name = " ".join(("pixfleet", f"{socket.gethostname()}:{os.getpid()}", self.role)).strip()
        try:
            return await aio_pika.connect(
                self.settings.url,
                timeout=self.settings.op_timeout,
                client_properties={"connection_name": name},
            )
        except aiormq.exceptions.ProbableAuthenticationError as exc:
            raise BrokerAuthFailed(f"{self.url} refused the credentials") from exc
        except aiormq.exceptions.InvalidFrameError as exc:
            if "Connection.Close" not in str(exc):
                raise
            # RabbitMQ answers connection.open for a vhost that is missing (or not ours)
            # with connection.close, which aiormq reports as an unexpected frame.
            raise BrokerAuthFailed(
                f"{self.url} refused access to the vhost (does it exist? may this user use it?)"
            ) from exc

    def _refuse_untrusted(self, exc: BaseException) -> None:
        """Retrying cannot make an untrusted certificate trusted: fail at once."""
        tls = untrusted_certificate(exc)
        if tls is not None:
            raise BrokerAuthFailed(
                f"TLS: the certificate of {self.url} is not trusted ({tls.verify_message});"
                " pass cafile=... in the URL"
            ) from exc
