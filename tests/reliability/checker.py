"""The fault suite's checker: from the witnesses to one :class:`Report` per row.

* **lost** = confirmed - completed, where *completed* means a result arrived on the reply
  channel or the task is among the group's dead letters (a task that kills its worker every
  time ends there without a result);
* **unexpected** = completed - sent (nothing may come out that was not put in);
* **duplicate results** = raw results beyond the first per (task id, group) - read without any
  dedupe, straight from the reply channel;
* **extra executions** = ledger executions beyond what each task should take (1, or the
  delivery limit for a task that fails on purpose every time);
* **stuck** = what the broker still holds once the fleet drained: ready, in flight, and dead
  letters beyond the injected ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from brokers import GroupStats
from pixfleet.envelope import Result


@dataclass(frozen=True)
class Report:
    """The measured figures of one row; :meth:`assert_clean` holds them to the row's bounds."""

    row: str
    transport: str
    n: int  # tasks sent
    confirmed: int
    completed: int
    lost: int
    unexpected: int
    duplicate_results: int
    executions: int
    extra_executions: int
    ready: int
    in_flight: int
    dead: int
    expected_dead: int
    faults: int = 0  # kills, SIGTERMs, injected failures ... as the row counts them
    runtime_s: float = 0.0
    sample: str = ""  # a few offending task ids, for the assertion message

    @property
    def stuck(self) -> int:
        # A negative ``ready`` (a lag below zero: a commit past the end offset, an inspection
        # anomaly of the transport) is shown in ``ready`` but is no stuck work.
        return max(0, self.ready) + self.in_flight + max(0, self.dead - self.expected_dead)

    def assert_clean(self, *, max_duplicates: int = 0, max_extra: int = 0) -> None:
        """lost = unexpected = stuck = 0, dead == expected, duplicates and extra executions
        within the row's bounds (0 unless the row injects crashes)."""
        assert (self.lost, self.unexpected, self.stuck) == (0, 0, 0), self
        assert self.dead == self.expected_dead, self
        assert self.duplicate_results <= max_duplicates, self
        assert self.extra_executions <= max_extra, self

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "stuck": self.stuck}


def check(
    *,
    row: str,
    transport: str,
    sent: Iterable[str],
    confirmed: Iterable[str],
    results: Iterable[Result],
    dead_ids: Iterable[str],
    runs: Mapping[str, int],
    stats: GroupStats,
    expected_runs: Mapping[str, int] | None = None,
    expected_dead: int = 0,
    faults: int = 0,
    runtime_s: float = 0.0,
) -> Report:
    """Compare what was sent, confirmed, answered, dead-lettered and run (see the module)."""
    sent_ids, confirmed_ids = set(sent), set(confirmed)
    results = list(results)
    completed = {r.task_id for r in results} | set(dead_ids)
    lost = confirmed_ids - completed
    unexpected = completed - sent_ids
    pairs = Counter((r.task_id, r.group) for r in results)
    expected = expected_runs or {}
    extra = {t: n - expected.get(t, 1) for t, n in runs.items() if n > expected.get(t, 1)}
    doubled = sorted(t for (t, _), n in pairs.items() if n > 1)
    offenders = sorted(lost)[:3] + sorted(unexpected)[:3] + sorted(extra)[:3] + doubled[:3]
    return Report(
        row=row,
        transport=transport,
        n=len(sent_ids),
        confirmed=len(confirmed_ids),
        completed=len(completed & sent_ids),
        lost=len(lost),
        unexpected=len(unexpected),
        duplicate_results=sum(n - 1 for n in pairs.values()),
        executions=sum(runs.values()),
        extra_executions=sum(extra.values()),
        ready=stats.ready,
        in_flight=stats.in_flight or 0,
        dead=stats.dead,
        expected_dead=expected_dead,
        faults=faults,
        runtime_s=round(runtime_s, 1),
        sample=" ".join(offenders),
    )
