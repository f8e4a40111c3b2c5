"""Forwarding mixins for the roles a transport keeps in helper objects.

Each transport holds its fleet plane in ``self._fleet`` (``brokers.<t>.fleet``) and, where it has
one, its administration in ``self._admin`` (``brokers.<t>.admin``). The role methods only forward
to them; these mixins write the forwarding once instead of once per transport.
"""

from __future__ import annotations

from collections.abc import Collection

from brokers.contract import Admin, ControlInbox, Fleet, Subscription
from pixfleet.fleet import ControlReply, ControlRequest, WorkerStatus


class AdminDelegate:
    """The :class:`~brokers.contract.Admin` role, forwarded to ``self._admin``."""

    _admin: Admin

    async def replay_dead_letters(self, group: str, task_ids: Collection[str] | None = None) -> int:
        return await self._admin.replay_dead_letters(group, task_ids)

    async def purge_dead_letters(self, group: str) -> int:
        return await self._admin.purge_dead_letters(group)

    async def purge(self, group: str) -> int:
        return await self._admin.purge(group)


class FleetDelegate:
    """The :class:`~brokers.contract.Fleet` role, forwarded to ``self._fleet``."""

    _fleet: Fleet

    async def heartbeat(self, status: WorkerStatus) -> None:
        await self._fleet.heartbeat(status)

    async def leave(self, worker_id: str) -> None:
        await self._fleet.leave(worker_id)

    async def roster(self) -> list[WorkerStatus]:
        return await self._fleet.roster()

    async def open_commands(
        self, worker_id: str, groups: tuple[str, ...]
    ) -> Subscription[ControlRequest]:
        return await self._fleet.open_commands(worker_id, groups)

    async def send_control(self, request: ControlRequest) -> None:
        await self._fleet.send_control(request)

    async def reply_control(self, reply: ControlReply, reply_to: str) -> None:
        await self._fleet.reply_control(reply, reply_to)

    async def open_control_inbox(self) -> ControlInbox:
        return await self._fleet.open_control_inbox()
