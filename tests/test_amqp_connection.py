"""Configuration errors are raised at once; only the broker being away is waited out."""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import urlsplit

import pytest

from brokers.amqp import AmqpTransport
from pixfleet.errors import BrokerAuthFailed, BrokerError
from tests.helpers.tasks import make_task, unique


def _unknown_vhost(amqp_session_url: str) -> str:
    parts = urlsplit(amqp_session_url)
    return f"{parts.scheme}://{parts.netloc}/no-such-vhost-{uuid.uuid4().hex[:8]}"


async def test_an_unknown_vhost_is_refused_at_once(amqp_session_url: str) -> None:
    url = _unknown_vhost(amqp_session_url) + "?connect_timeout=30"
    started = time.monotonic()
    with pytest.raises(BrokerAuthFailed, match="refused access to the vhost"):
        async with AmqpTransport.from_url(url):
            pass
    assert time.monotonic() - started < 5.0


async def test_a_subscription_on_an_unknown_vhost_raises_instead_of_waiting(
    amqp_session_url: str,
) -> None:
    transport = AmqpTransport.from_url(_unknown_vhost(amqp_session_url))
    sub = transport.consume(unique("cfg"))  # its connection is opened by the first anext
    try:
        async with asyncio.timeout(5):
            with pytest.raises(BrokerAuthFailed):
                await anext(sub)
    finally:
        await transport.close()


async def test_a_subscription_with_another_delivery_limit_raises_instead_of_waiting(
    amqp_session_url: str,
) -> None:
    """RabbitMQ refuses to redeclare a queue with other arguments: a configuration error."""
    group = unique("cfg")
    async with AmqpTransport.from_url(f"{amqp_session_url}?delivery_limit=3") as first:
        await first.publish(make_task(group))  # declares the group queue with limit 3
    async with AmqpTransport.from_url(f"{amqp_session_url}?delivery_limit=5") as other:
        sub = other.consume(group)
        async with asyncio.timeout(5):
            with pytest.raises(BrokerError, match="refused a declaration"):
                await anext(sub)
