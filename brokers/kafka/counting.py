"""Counting the deliveries a subscription is about to hand out: one in-flight write per batch.

Every record is counted in its group's in-flight set (:mod:`brokers.kafka.inflight`), and that
write confirmed, before it is handed out. Written per record, that was one produce round trip
(``acks=all``) per delivery, in the subscription's hand-out loop: a serial wait and ~1 ms of
CPU per task (the set of a partition - every record in flight - written again each time).
:class:`AheadCounts` counts every record that is due now in one write, then the subscription
hands them out one by one: each has its count confirmed before it leaves, as before.

Records counted but then not handed out - dropped by a rebalance or a close - have their count
taken back (:meth:`AheadCounts.drop`): only a delivery that happened is counted. A worker killed
between the write and the hand-out counts the records due then once more: the batch it was
handing out (the worker takes due records at once), no more than the prefetch.
"""

from __future__ import annotations

from collections.abc import Iterable

from brokers.kafka.inflight import InflightLog
from brokers.kafka.member import Pending
from brokers.kafka.records import retry_info
from pixfleet.errors import EnvelopeError


class AheadCounts:
    """The delivery counts of one subscription (``inflight`` None: a reply channel, nothing is
    counted; ``limit``: its delivery limit)."""

    def __init__(self, inflight: InflightLog | None, limit: int) -> None:
        self._inflight = inflight
        self._limit = limit
        self._unconfirmed: set[Pending] = set()

    def deliveries(self, entry: Pending) -> int:
        """How often ``entry`` was delivered, this time included: its attempt (retry copies)
        plus the times it was handed out before unsettled. Known once, then kept on the entry;
        raises :class:`EnvelopeError` for a bad attempt header."""
        if not entry.deliveries:
            prior = self._inflight.prior(entry.tp, entry.record.offset) if self._inflight else 0
            entry.deliveries = retry_info(entry.record).attempt + prior
        return entry.deliveries

    async def count(self, due: Iterable[Pending]) -> None:
        """Count one delivery of each record of ``due`` that will be handed out (headers
        readable, within the delivery limit) and write the in-flight set once; raises
        (keeping the counts to write) if the broker does not confirm."""
        if self._inflight is None:
            return
        for entry in due:
            if entry.counted:
                continue
            try:
                if self.deliveries(entry) > self._limit:
                    continue  # dead-lettered, never handed out
            except EnvelopeError:
                continue  # dead-lettered with the reason
            self._inflight.handed_out(entry.tp, entry.record.offset)
            entry.counted = True
            self._unconfirmed.add(entry)
        if self._unconfirmed:
            await self._inflight.flush()
            self._unconfirmed.clear()

    def confirmed(self, entry: Pending) -> bool:
        """Whether ``entry`` may be handed out: its delivery is counted and written."""
        return self._inflight is None or (entry.counted and entry not in self._unconfirmed)

    def drop(self, entries: Iterable[Pending]) -> None:
        """``entries`` leave the buffer without being handed out: take their counts back."""
        if self._inflight is None:
            return
        for entry in entries:
            if entry.counted:
                self._inflight.uncount(entry.tp, entry.record.offset)
                entry.counted = False
            self._unconfirmed.discard(entry)
