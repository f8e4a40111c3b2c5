"""Refusing a message that cannot become a delivery: undecodable, oversize, hostile headers.

Nothing on the wire may stop a consumer (issue 15): whatever fails while a raw message is
decoded or wrapped, the message is dead-lettered with the reason and the subscription goes on.
On a group queue that is a confirmed copy to ``pixfleet.dead.<g>`` carrying the reason, then an
ack; if the copy cannot be made, a reject, which the quorum queue dead-letters itself (RabbitMQ
records ``rejected``; the reason is logged). Reply queues have no dead-letter place: the message
is rejected (dropped) and logged.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from aio_pika.abc import AbstractIncomingMessage

from brokers.amqp.failures import CONNECTION_ERRORS, COPY_FAILURES, describe
from pixfleet.errors import PixfleetError

log = logging.getLogger(__name__)


class _DeadLetters(Protocol):
    async def dead_letter(
        self, group: str, body: bytes, headers: dict[str, Any], reason: str
    ) -> None: ...


def refusal_reason(exc: BaseException) -> str:
    """The dead-letter reason for a message that failed with ``exc``."""
    if isinstance(exc, PixfleetError):
        return exc.one_line()
    return f"error[envelope.invalid]: unreadable message ({type(exc).__name__}: {exc})"[:500]


async def refuse(
    raw: AbstractIncomingMessage,
    group: str | None,
    copies: _DeadLetters,
    reason: str,
    queue: str,
) -> None:
    """Dead-letter ``raw`` with ``reason`` (see the module docstring). Never raises for a
    broker failure: if even the settle fails, the channel is gone and RabbitMQ redelivers it."""
    log.warning("dead-lettering an unreadable message on %s: %s", queue, reason)
    try:
        if group is None or not await _copied(raw, group, copies, reason):
            await raw.reject(requeue=False)
        else:
            await raw.ack()
    except CONNECTION_ERRORS as exc:
        log.warning("refusing a message on %s failed (%s); it comes back", queue, describe(exc))


async def _copied(
    raw: AbstractIncomingMessage, group: str, copies: _DeadLetters, reason: str
) -> bool:
    """Whether a dead-letter copy was confirmed (without the original headers if those
    cannot be encoded again)."""
    for headers in (dict(raw.headers or {}), {}):
        try:
            await copies.dead_letter(group, raw.body, headers, reason)
        except COPY_FAILURES as exc:
            log.warning("no dead-letter copy (%s); rejecting it instead", describe(exc))
            return False
        except (TypeError, ValueError) as exc:  # headers that cannot be sent again
            log.warning("no dead-letter copy with its headers (%s)", describe(exc))
        else:
            return True
    return False
