"""Whether a group member leads its group, and leaving the group without stranding it.

Found with the fault suite's "workers join, leave and are killed" row (issue 9): tansu 0.6, the
test broker, drops a member that sends LeaveGroup while the group is rebalancing, but keeps it
as the group's *leader* (its ``Forming`` state's ``leave`` never clears the leader; its
missed-heartbeat path does). Every later JoinGroup then names the departed member as leader, no
member performs the assignment, every SyncGroup ends in ``REBALANCE_IN_PROGRESS``, and the
group consumes nothing - until a race inside tansu happens to reload the group (a minute, three,
or never). Reproduced with raw aiokafka, without pixfleet: see ``docs/reliability.md``.

The leader therefore leaves *without* a LeaveGroup: the broker drops it when its session times
out (``session_timeout``), and that path elects a new leader on every broker, tansu included.
Only the leader pays: its partitions move on after the session timeout instead of at once.
That holds on every way aiokafka leaves (the consumer's stop, an unsubscribe, a member idle
past ``max.poll.interval``): :func:`guard` wraps the one call they share.
Every other member leaves at once, as before; a killed member never sent one anyway.
``kafka://...?leader_leave=true`` (for Apache Kafka, which elects a new leader after a
LeaveGroup) skips :func:`guard`: the leader's partitions then move on at once.

aiokafka does not say which member leads; the assignor does, since only the leader assigns:
:meth:`Leadership.assignor` is aiokafka's round-robin assignor that reports each call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer
from aiokafka.cluster import ClusterMetadata
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

log = logging.getLogger(__name__)


class Leadership:
    """Whether the member of one consumer leads its group (it assigned the partitions of the
    last rebalance it completed, or of the one it is in)."""

    def __init__(self) -> None:
        self._assigned = False  # assigned in the rebalance under way
        self._led = False  # assigned in the last rebalance completed
        self.rebalances = 0  # completed

    @property
    def leads(self) -> bool:
        return self._led or self._assigned

    def assigned(self) -> None:
        """This member performed the assignment (only the leader does)."""
        self._assigned = True

    def completed(self) -> None:
        """A rebalance completed (every member, leader or not, gets its assignment)."""
        self._led, self._assigned = self._assigned, False
        self.rebalances += 1

    def assignor(self) -> type[RoundRobinPartitionAssignor]:
        """aiokafka's round-robin assignor (same name and protocol: members of older pixfleet
        versions still agree with it) that tells this object when it runs."""
        watch = self

        class Watched(RoundRobinPartitionAssignor):  # type: ignore[misc]  # aiokafka is untyped
            @classmethod
            def assign(
                cls,
                cluster: ClusterMetadata,
                members: Mapping[str, ConsumerProtocolMemberMetadata],
            ) -> dict[str, ConsumerProtocolMemberAssignment]:
                watch.assigned()
                return super().assign(cluster, members)  # type: ignore[no-any-return]  # untyped

            @classmethod
            def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
                watch.completed()
                super().on_assignment(assignment)

        return Watched


def guard(consumer: AIOKafkaConsumer, leadership: Leadership, group_id: str) -> None:
    """From now on (``consumer`` started), a LeaveGroup of ``consumer`` - at its stop, at an
    unsubscribe, or when aiokafka finds it idle past ``max.poll.interval`` - goes out from a
    member, but not from the leader (see the module)."""
    coordinator: GroupCoordinator | None = getattr(consumer, "_coordinator", None)
    send = getattr(coordinator, "_maybe_leave_group", None)
    if coordinator is None or send is None:  # not a group member: nothing to leave
        return

    # aiokafka: no public way to leave without LeaveGroup. Every path goes through
    # _maybe_leave_group; from the leader this one only forgets the generation, as that one
    # does after its request.
    async def maybe_leave_group() -> None:
        if not leadership.leads:
            await send()
            return
        log.info("%s: this member leads the group: it leaves without LeaveGroup", group_id)
        coordinator.reset_generation()

    coordinator._maybe_leave_group = maybe_leave_group
