"""One table of benchmark rows, each a number with the baseline it is compared against.

Every goal of issue 13 is a ratio (or a bound) between two rows measured in the same run, so a
row carries its baseline's value and the goal it answers; :func:`print_table` prints them and
:func:`write_json` keeps them as build output (``bench/results/latest.json``, not committed).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    section: str  # "round trip", "images", "system"
    name: str
    value: float | None  # None: not measured (n/a, with ``note`` saying why)
    unit: str
    baseline: str = ""  # the row this one is compared with
    base_value: float | None = None
    goal: str = ""  # e.g. ">= 0.8x", "<= 1.5 ms"
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.base_value:
            return None
        return self.value / self.base_value


def versus(
    section: str,
    name: str,
    value: float | None,
    unit: str,
    baseline: tuple[str, float | None],
    minimum: float | None = None,
) -> Row:
    """A row compared with ``baseline``; ``minimum`` is the goal's lowest ratio, if any."""
    base_name, base_value = baseline
    ratio = value / base_value if value is not None and base_value else None
    met = None if minimum is None or ratio is None else ratio >= minimum
    goal = f">= {minimum:g}x" if minimum is not None else ""
    return Row(section, name, value, unit, base_name, base_value, goal, met)


def bounded(section: str, name: str, value: float | None, unit: str, limit: float) -> Row:
    """A row with an absolute upper bound (latency, memory)."""
    met = None if value is None else value <= limit
    return Row(section, name, value, unit, goal=f"<= {limit:g} {unit}", met=met)


def at_least(section: str, name: str, value: float | None, unit: str, floor: float) -> Row:
    met = None if value is None else value >= floor
    return Row(section, name, value, unit, goal=f">= {floor:g} {unit}", met=met)


def plain(section: str, name: str, value: float | None, unit: str, note: str = "") -> Row:
    return Row(section, name, value, unit, note=note)


def _num(v: float | None) -> str:
    if v is None:
        return "n/a"
    if abs(v) < 1:
        return f"{v:.3f}"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def format_table(rows: list[Row]) -> str:
    lines = [
        f"{'row':<38}{'value':>10} {'unit':<6}{'baseline':<28}{'ratio':>7}  {'goal':<13}met",
    ]
    section = ""
    for r in rows:
        if r.section != section:
            section = r.section
            lines.append(f"-- {section}")
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        met = "" if r.met is None else "yes" if r.met else "NO"
        base = r.baseline[:27]
        lines.append(
            f"{r.name[:37]:<38}{_num(r.value):>10} {r.unit:<6}{base:<28}{ratio:>7}  "
            f"{r.goal:<13}{met}" + (f"  ({r.note})" if r.note else "")
        )
    return "\n".join(lines)


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )


def write_json(rows: list[Row], path: Path, versions: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": machine(),
        "argv": sys.argv,
        "versions": versions,
        "rows": [asdict(r) | {"ratio": r.ratio} for r in rows],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
