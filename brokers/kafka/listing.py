"""Which topics the broker lists: one shared listing at a time, and a short memory of it.

A worker asks, before each reply, whether the reply topic still exists (a deleted one means
the waiter left: the reply goes to ``results`` instead). A listing is a metadata request for
*every* topic - 1.5 ms of CPU with 47 topics, more with more - and was made once per reply: at
256 replies in flight, 256 listings at once. :class:`TopicListing` makes one listing serve
every caller waiting for one (single flight), and takes a topic seen in a listing started less
than :data:`SEEN_FOR` seconds ago to exist still (:meth:`TopicListing.seen`).

What that memory costs: a reply sent within :data:`SEEN_FOR` of its channel's deletion by
*another* process goes to the deleted topic (which the broker may re-create) instead of
``results`` - the race a reply sent between a listing and its produce always had, now up to
:data:`SEEN_FOR` wide. A topic deleted through this process is forgotten at once
(:meth:`TopicListing.forget`). Absence is never remembered: every "not listed" is a fresh
listing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

#: Seconds a topic seen in a listing is taken to exist without another listing.
SEEN_FOR = 0.5


class TopicListing:
    """Listings made by ``fetch`` (a fresh metadata request, raising the caller's errors)."""

    def __init__(self, fetch: Callable[[], Awaitable[list[str]]]) -> None:
        self._fetch = fetch
        self._running: asyncio.Future[frozenset[str]] | None = None
        self._last: tuple[float, frozenset[str]] = (float("-inf"), frozenset())
        self._deleted: dict[str, float] = {}  # topic -> when it was deleted here

    def seen(self, topic: str) -> bool:
        """Whether a listing started less than :data:`SEEN_FOR` seconds ago - and after any
        deletion of ``topic`` here - had ``topic``."""
        started, topics = self._last
        return (
            topic in topics
            and time.monotonic() - started < SEEN_FOR
            and self._deleted.get(topic, float("-inf")) < started
        )

    def forget(self, topic: str) -> None:
        """``topic`` was deleted here: no listing started before now counts for it."""
        now = time.monotonic()
        self._deleted = {t: at for t, at in self._deleted.items() if now - at < SEEN_FOR}
        self._deleted[topic] = now

    async def fresh(self) -> frozenset[str]:
        """The topics of a listing started now - or of the one already running, which every
        caller waiting meanwhile shares."""
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._list(time.monotonic()))
            self._running.add_done_callback(_retrieve)
        return await asyncio.shield(self._running)

    async def _list(self, started: float) -> frozenset[str]:
        topics = frozenset(await self._fetch())
        if started >= self._last[0]:
            self._last = (started, topics)
        return topics


def _retrieve(done: asyncio.Future[frozenset[str]]) -> None:
    """Mark a failed listing's error as seen: its callers may all have been cancelled (each
    caller that waited got the error itself)."""
    if not done.cancelled():
        done.exception()
