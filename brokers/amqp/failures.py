"""What failure looks like from aio-pika / aiormq, and how pixfleet waits it out.

Library exceptions are classified here (:data:`CONNECTION_ERRORS`, :data:`RETRYABLE`) and
translated into :mod:`pixfleet.errors` (:func:`confirmed`, :func:`untrusted_certificate`);
:class:`Patience` paces every retry after a lost connection with :data:`brokers.policy.RECONNECT`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable

import aiormq

from brokers.policy import RECONNECT
from pixfleet.errors import (
    BrokerAuthFailed,
    BrokerBlocked,
    BrokerError,
    BrokerUnavailable,
    PublishFailed,
    Unroutable,
)

#: What a lost connection or channel looks like from aio-pika / aiormq.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ConnectionClosed,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    OSError,
)

#: Worth retrying after a reconnect.
RETRYABLE: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, TimeoutError)

#: What a consumer waits out forever (anything else - credentials, vhost, a refused
#: declaration - is a configuration error and raised).
TRANSIENT: tuple[type[BaseException], ...] = (*RETRYABLE, BrokerUnavailable, BrokerBlocked)

#: A confirmed copy (dead letter, delayed retry) or a registration could not be made: the
#: transient trouble above, or RabbitMQ refusing it (unroutable, nacked, a declaration).
COPY_FAILURES: tuple[type[BaseException], ...] = (*TRANSIENT, BrokerError)

#: Seconds a publish may wait on a connection RabbitMQ has blocked (memory or disk alarm)
#: before it fails with :class:`BrokerBlocked`.
BLOCKED_GRACE = 1.0


#: Channel errors that retrying cannot fix: a declaration with other arguments than the
#: existing queue's (another ``delivery_limit``), or no permission on the vhost's resources.
REFUSALS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.ChannelPreconditionFailed,
    aiormq.exceptions.ChannelAccessRefused,
)


def refusal(exc: BaseException) -> BrokerError:
    """The configuration error a :data:`REFUSALS` exception means."""
    if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
        return BrokerAuthFailed(f"RabbitMQ refused access: {describe(exc)}")
    return BrokerError(f"RabbitMQ refused a declaration: {describe(exc)}")


def describe(exc: BaseException) -> str:
    """One line for a log or an error message (some library exceptions have no text)."""
    return str(exc) or type(exc).__name__


def untrusted_certificate(exc: BaseException) -> ssl.SSLCertVerificationError | None:
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


async def confirmed(publishing: Awaitable[object], *, what: str) -> None:
    """Await a mandatory, confirmed publish. Raises :class:`Unroutable` when RabbitMQ returned
    it (no queue bound) and :class:`PublishFailed` when it nacked it."""
    try:
        await publishing
    except aiormq.exceptions.PublishError as exc:
        raise Unroutable(f"{what} reached no queue (no group subscribed?)") from exc
    except aiormq.exceptions.DeliveryError as exc:
        raise PublishFailed(f"RabbitMQ did not accept {what}: {describe(exc)}") from exc


class Patience:
    """Retries after connection trouble within a time budget, paced by :data:`RECONNECT`."""

    def __init__(self, budget: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + budget
        self._attempt = 0

    def next_wait(self) -> float | None:
        """The pause before the next try, or ``None`` if that try would start past the budget."""
        self._attempt += 1
        wait = RECONNECT.delay(self._attempt)
        return None if self._loop.time() + wait > self._deadline else wait
