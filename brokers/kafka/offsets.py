"""Which offset is safe to commit, per partition, when several records of one partition are in
flight at once.

Kafka commits a single offset per partition: "everything below this is done". A worker that
processes offsets 5, 6 and 7 concurrently and finishes 6 and 7 first may commit only 5 - a bare
``commit()`` (position = 8) would mark the unfinished 5 done and lose it on a crash. The tracker
keeps the open offsets (fetched, not finished) of each partition; the safe commit point is the
lowest open offset, or one past the highest fetched when nothing is open.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


class OffsetTracker(Generic[P]):
    def __init__(self) -> None:
        self._open: dict[P, set[int]] = {}
        self._next: dict[P, int] = {}
        self._committed: dict[P, int] = {}

    def fetched(self, partition: P, offset: int) -> None:
        self._open.setdefault(partition, set()).add(offset)
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def done(self, partition: P, offset: int) -> None:
        self._open.get(partition, set()).discard(offset)

    def safe(self, partition: P) -> int | None:
        """The offset to commit for ``partition`` (None if nothing was fetched from it)."""
        still_open = self._open.get(partition)
        if still_open:
            return min(still_open)
        return self._next.get(partition)

    def to_commit(self) -> dict[P, int]:
        """Partitions whose safe offset moved past what was last committed."""
        out = {}
        for partition in self._next:
            safe = self.safe(partition)
            if safe is not None and safe > self._committed.get(partition, -1):
                out[partition] = safe
        return out

    def committed(self, offsets: dict[P, int]) -> None:
        for partition, offset in offsets.items():
            self._committed[partition] = max(offset, self._committed.get(partition, -1))

    def has_committed(self, partition: P) -> bool:
        return partition in self._committed

    def is_open(self, partition: P, offset: int) -> bool:
        return offset in self._open.get(partition, set())

    def forget(self, partitions: Iterable[P]) -> None:
        """Drop the bookkeeping of partitions this consumer no longer owns."""
        for partition in partitions:
            self._open.pop(partition, None)
            self._next.pop(partition, None)
            self._committed.pop(partition, None)
