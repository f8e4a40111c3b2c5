"""The Fleet role on every transport, in process: roster, leave, control routing, inboxes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from brokers import Transport, open_transport
from brokers.contract import Subscription
from pixfleet.fleet import ControlReply, ControlRequest, ControlTarget, WorkerStatus, new_inbox
from tests.conftest import BrokerUnderTest
from tests.fleet.raw import HOSTILE, inject


def status(worker_id: str, *, groups: tuple[str, ...] = ("thumbs",), ok: int = 0) -> WorkerStatus:
    now = datetime.now(UTC)
    return WorkerStatus(
        id=worker_id, host="h", pid=1, groups=groups, ok=ok, started_at=now, last_seen=now
    )


@contextlib.asynccontextmanager
async def connected(broker: BrokerUnderTest) -> AsyncIterator[Transport]:
    async with open_transport(broker.url) as transport:
        yield transport


async def next_within(sub: Subscription[ControlRequest], seconds: float) -> ControlRequest | None:
    try:
        async with asyncio.timeout(seconds):
            return await anext(sub)
    except TimeoutError:
        return None


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def ours(t: Transport, *ids: str) -> list[str]:
    """The ids of ``ids`` in the roster (a shared broker lists other tests' workers too)."""
    return sorted(s.id for s in await t.roster() if s.id in ids)


async def test_roster_keeps_the_latest_status_per_worker_and_forgets_who_left(
    broker: BrokerUnderTest,
) -> None:
    one, two = unique("w-1"), unique("w-2")
    async with connected(broker) as t:
        await t.heartbeat(status(one, ok=1))
        await t.heartbeat(status(two, groups=("a", "b")))
        await t.heartbeat(status(one, ok=7))
        roster = {s.id: s for s in await t.roster()}
        assert {one, two} <= set(roster)
        assert roster[one].ok == 7
        assert roster[two].groups == ("a", "b")
        age = (datetime.now(UTC) - roster[one].last_seen).total_seconds()
        assert -2 < age < 10
        await t.leave(one)
        assert await ours(t, one, two) == [two]
    async with connected(broker) as other:  # another client sees the same roster
        assert await ours(other, one, two) == [two]


async def test_control_reaches_its_targets_only_and_replies_reach_the_inbox(
    broker: BrokerUnderTest,
) -> None:
    async with connected(broker) as worker_side, connected(broker) as client:
        one = await worker_side.open_commands("w-1", ("thumbs",))
        two = await worker_side.open_commands("w-2", ("other",))
        inbox = await client.open_control_inbox()
        try:
            sent = {}
            for target in (
                ControlTarget(kind="worker", name="w-1"),
                ControlTarget(kind="group", name="other"),
                ControlTarget(kind="all"),
            ):
                sent[target.kind] = ControlRequest.new("ping", target, inbox.address)
                await client.send_control(sent[target.kind])
            got_one = [await next_within(one, 10), await next_within(one, 10)]
            got_two = [await next_within(two, 10), await next_within(two, 10)]
            assert [r.id for r in got_one if r] == [sent["worker"].id, sent["all"].id]
            assert [r.id for r in got_two if r] == [sent["group"].id, sent["all"].id]
            assert await next_within(one, 0.5) is None
            for wid, request in (("w-1", sent["all"]), ("w-2", sent["all"])):
                reply = ControlReply(request_id=request.id, worker=wid, command="ping")
                await worker_side.reply_control(reply, request.reply_to)
            async with asyncio.timeout(10):
                replies = [await anext(inbox), await anext(inbox)]
            assert sorted(r.worker for r in replies) == ["w-1", "w-2"]
            # A reply to an inbox that does not exist is dropped, never raised.
            stray = ControlReply(request_id="x", worker="w-1", command="ping")
            await worker_side.reply_control(stray, new_inbox())
        finally:
            await one.aclose()
            await two.aclose()
            await inbox.aclose()


async def test_a_worker_gets_only_requests_sent_after_it_subscribed(
    broker: BrokerUnderTest,
) -> None:
    async with connected(broker) as t:
        old = ControlRequest.new("ping", ControlTarget(kind="all"), new_inbox())
        await t.send_control(old)
        sub = await t.open_commands("late", ("thumbs",))
        try:
            new = ControlRequest.new("stats", ControlTarget(kind="all"), new_inbox())
            await t.send_control(new)
            got = await next_within(sub, 10)
            assert got is not None and got.id == new.id
        finally:
            await sub.aclose()


async def test_hostile_bodies_are_dropped_and_the_fleet_goes_on(broker: BrokerUnderTest) -> None:
    async with connected(broker) as t:
        good_id = unique("w-good")
        await t.heartbeat(status(good_id))  # makes the roster's topic / stream / table
        sub = await t.open_commands("w-1", ("thumbs",))
        try:
            for body in HOSTILE:
                await inject(broker.url, "control", body)
                await inject(broker.url, "roster", body)
            good = ControlRequest.new("ping", ControlTarget(kind="all"), new_inbox())
            await t.send_control(good)
            got = await next_within(sub, 15)
            assert got is not None and got.id == good.id
            roster = await t.roster()
            assert good_id in {s.id for s in roster}
            assert not {"w", "w-hostile"} & {s.id for s in roster}  # no hostile one listed
        finally:
            await sub.aclose()
