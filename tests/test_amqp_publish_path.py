"""The RabbitMQ publish path's guard against a blocked connection (:class:`_BlockedWatch`): it
runs in the publisher's own task (no task or wait per publish), cancels the operation only when
RabbitMQ blocks the connection after the grace, and never swallows the caller's own
cancellation. The real alarm is in tests/e2e/test_rabbitmq_faults.py (disk alarm)."""

from __future__ import annotations

import asyncio

import pytest

from brokers.amqp import channels
from brokers.amqp.channels import _BlockedWatch


class _Connection:
    def __init__(self, blocked: bool) -> None:
        self.is_blocked = blocked
        self.asked = 0

    async def blocked(self) -> bool:
        self.asked += 1
        return self.is_blocked


async def _guarded(connection: _Connection) -> str:
    watch = _BlockedWatch(connection)  # type: ignore[arg-type]  # reason: only blocked() is used
    try:
        await asyncio.sleep(5)
        return "done"
    except asyncio.CancelledError:
        if watch.cancelled_it():
            return "blocked"
        raise
    finally:
        watch.stop()


@pytest.fixture(autouse=True)
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channels, "BLOCKED_GRACE", 0.05)


async def test_a_blocked_connection_ends_the_operation_after_the_grace() -> None:
    connection = _Connection(blocked=True)
    async with asyncio.timeout(2):
        assert await _guarded(connection) == "blocked"
    assert connection.asked == 1


async def test_an_unblocked_connection_lets_a_slow_operation_go_on() -> None:
    connection = _Connection(blocked=False)
    op = asyncio.create_task(_guarded(connection))
    await asyncio.sleep(0.2)
    assert connection.asked == 1 and not op.done()
    op.cancel()  # the caller's own cancellation stays one
    with pytest.raises(asyncio.CancelledError):
        await op


async def test_a_fast_operation_leaves_no_probe_behind() -> None:
    connection = _Connection(blocked=True)
    watch = _BlockedWatch(connection)  # type: ignore[arg-type]  # reason: only blocked() is used
    watch.stop()
    await asyncio.sleep(0.1)
    assert connection.asked == 0
