"""The transport contract, as small roles that every broker adapter implements.

A *task* is published once and routed to every targeted consumer *group* (fan-out across groups);
inside a group each task is handed to one consumer at a time (competing consumers). A *reply
channel* is a named queue of results with a single reader group.

Callers are typed against the roles they use: the worker against :class:`TaskQueue` and
:class:`ReplyChannels`, ``uploader status`` against :class:`Inspector`, ``uploader dlq`` against
:class:`Inspector` and :class:`Admin`. :class:`Transport` is all roles plus the connection
lifecycle; :func:`brokers.open_transport` builds one from a URL.

Guarantees every implementation gives (the contract tests in ``tests/contract`` check them):

* ``publish`` returns only once the broker has durably stored the task for every target group
  (publisher confirm / ``acks=all`` / committed transaction); otherwise it raises.
* A delivery that is neither acked nor nacked - the consumer crashed, the connection died - is
  delivered again (at-least-once). ``Delivery.attempt`` counts deliveries, 1 on the first.
* ``consume`` never has more than ``prefetch`` unsettled deliveries outstanding.
* Bodies that are not valid envelopes are dead-lettered with the reason by the transport itself;
  consumers only ever see validated envelopes.
* ``Subscription.aclose`` and ``close`` release unsettled deliveries back to the broker;
  nothing is left half-acknowledged.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, Self, TypeVar, runtime_checkable

from pixfleet.envelope import Result, Task
from pixfleet.fleet import ControlReply, ControlRequest, WorkerStatus

M_co = TypeVar("M_co", Task, Result, covariant=True)
D_co = TypeVar("D_co", covariant=True)


@runtime_checkable
class Delivery(Protocol[M_co]):
    """One delivered, validated message and the means to settle it."""

    @property
    def message(self) -> M_co: ...

    @property
    def attempt(self) -> int:
        """How many times this message has been delivered to this group (1 on the first)."""
        ...

    @property
    def held(self) -> bool:
        """False once the broker is known to have taken the message back unsettled (its
        channel closed, its partition revoked): it is or will be delivered again, and a settle
        of this delivery no longer counts. True while it is held or the transport cannot tell."""
        ...

    async def ack(self) -> None:
        """Mark the message done. Idempotent. Call only after its effects are durable."""
        ...

    async def nack(self, *, requeue: bool, delay: float = 0.0, reason: str = "") -> None:
        """Give the message back: ``requeue=True`` retries it after ``delay`` seconds (subject
        to the transport's delivery limit), ``requeue=False`` dead-letters it with ``reason``."""
        ...


class Subscription(Protocol[D_co]):
    """An open subscription: iterate it for deliveries, ``aclose`` it to leave.

    ``__anext__`` is cancellation-safe: cancelling a wait for the next delivery loses nothing.
    ``aclose`` gives unsettled deliveries back and frees the subscription's resources; it is
    idempotent, so ``contextlib.aclosing(subscription)`` is the way to hold one.
    """

    def __aiter__(self) -> Subscription[D_co]: ...

    async def __anext__(self) -> D_co: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class GroupStats:
    """A group's (or reply channel's) backlog as the broker sees it."""

    group: str
    ready: int  # waiting for a consumer, delayed retries included
    in_flight: int | None  # delivered and not yet settled; None: the broker cannot tell
    dead: int  # dead-lettered
    consumers: int  # live consumers


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered message of one group, as :meth:`Inspector.dead_letters` shows it.

    ``body`` is the message as stored (it may be no task at all: a hostile body), ``reason``
    why it died. The rest is filled when known (``None`` else): ``task_id`` (from the body, or
    the broker's message key), ``attempts`` (deliveries before it died), ``last_error`` (the
    last error it met: for the delivery limit the reason's ``last error`` part, else the
    reason) and ``dead_at`` (when it was dead-lettered, timezone-aware)."""

    body: bytes
    reason: str
    task_id: str | None = None
    attempts: int | None = None
    last_error: str = ""
    dead_at: datetime | None = None


class Connected(Protocol):
    """What every role has: a safe URL and an async lifecycle."""

    @property
    def url(self) -> str:
        """The broker URL with any password removed (safe to log)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...


class TaskQueue(Protocol):
    """Publishing tasks and consuming a group's share of them."""

    async def publish(self, task: Task) -> None:
        """Durably store ``task`` for each of ``task.groups`` (empty: every subscribed group).

        A named group that has no subscription yet gets one, so its tasks wait for its first
        worker. Raises :class:`~pixfleet.errors.Unroutable` if the task would reach no group.
        """
        ...

    def consume(
        self, group: str, *, prefetch: int = 16, until_empty: bool = False
    ) -> Subscription[Delivery[Task]]:
        """Subscribe ``group`` and yield its tasks. With ``until_empty`` the iterator ends once
        the group has nothing ready and nothing delayed (``worker run --burst``)."""
        ...


class ReplyChannels(Protocol):
    """Result channels: workers reply, clients wait on private or shared channels."""

    async def reply(self, reply_to: str, result: Result) -> str:
        """Durably publish ``result`` to the channel ``reply_to``; if that channel no longer
        exists (its waiter left), to the default results channel. Returns the channel used."""
        ...

    async def open_reply_channel(self) -> str:
        """Create a private reply channel and return its name."""
        ...

    async def close_reply_channel(self, channel: str) -> None:
        """Delete a private reply channel and whatever is still in it."""
        ...

    def replies(
        self, channel: str, *, prefetch: int = 64, until_empty: bool = False
    ) -> Subscription[Delivery[Result]]:
        """Yield the results sent to ``channel``; ack each once it has been handled."""
        ...


class Inspector(Protocol):
    """Read-only views of the broker for operators and autoscalers."""

    async def stats(self, group: str) -> GroupStats:
        """Backlog, in-flight, dead and live consumers of one group."""
        ...

    async def groups(self) -> tuple[str, ...]:
        """Every group that has a subscription."""
        ...

    async def dead_letters(self, group: str, *, limit: int = 100) -> list[DeadLetter]:
        """Look at (without removing) a group's dead-lettered messages and their reasons."""
        ...


class Admin(Protocol):
    """Operator actions on a group's queues (``uploader dlq``, ``uploader purge``).

    Replay never loses a dead letter: each task is re-published (and confirmed) before its
    dead letter is removed, so a crash in between can only duplicate it, which the completion
    records make harmless. Only bodies that are valid tasks are replayed; the others stay.
    """

    async def replay_dead_letters(self, group: str, task_ids: Collection[str] | None = None) -> int:
        """Re-publish ``group``'s dead tasks (those of ``task_ids``, or all) to ``group`` only,
        same task id, delivery count reset to a first delivery, and remove them from the dead
        letters. Returns how many were re-published. A replayed task whose completion record
        holds an error is dead-lettered again unless that record is removed first
        (``uploader dlq replay`` does; see docs/reliability.md)."""
        ...

    async def purge_dead_letters(self, group: str) -> int:
        """Remove every dead letter of ``group``; returns how many."""
        ...

    async def purge(self, group: str) -> int:
        """Remove ``group``'s tasks that wait for a worker (delayed retries included; tasks a
        worker holds are left alone). Other groups keep their copies. Returns how many."""
        ...


class ControlInbox(Subscription[ControlReply], Protocol):
    """A requester's private inbox of control replies: iterate it, ``aclose`` it when done."""

    @property
    def address(self) -> str:
        """What a :class:`~pixfleet.fleet.ControlRequest` carries as ``reply_to``."""
        ...


class Fleet(Protocol):
    """The worker registry and the control plane (docs/operations.md, "The fleet").

    Only workers of this deployment (same file / vhost / namespace) see each other. Bodies
    that are not valid fleet messages are dropped with a log line, never raised.
    """

    async def heartbeat(self, status: WorkerStatus) -> None:
        """Announce ``status`` (the latest one per worker id wins)."""
        ...

    async def leave(self, worker_id: str) -> None:
        """The worker stopped on purpose: drop it from the roster now."""
        ...

    async def roster(self) -> list[WorkerStatus]:
        """The latest status of every worker heard within ``ROSTER_WINDOW`` that did not
        leave, with ``last_seen`` = when that status was written."""
        ...

    async def open_commands(
        self, worker_id: str, groups: tuple[str, ...]
    ) -> Subscription[ControlRequest]:
        """Control requests sent from now on to this worker, to one of its groups or to all.
        Returns once the subscription is in place (a request sent after that reaches it)."""
        ...

    async def send_control(self, request: ControlRequest) -> None:
        """Broadcast ``request``; every worker it targets gets it (once per subscription)."""
        ...

    async def reply_control(self, reply: ControlReply, reply_to: str) -> None:
        """Send ``reply`` to the inbox ``reply_to`` (lost quietly if the inbox is gone)."""
        ...

    async def open_control_inbox(self) -> ControlInbox:
        """A private inbox for the replies to one's requests, ready before it returns."""
        ...


class Transport(Connected, TaskQueue, ReplyChannels, Inspector, Admin, Fleet, Protocol):
    """Every role of one broker connection. Build one with :func:`brokers.open_transport`."""
