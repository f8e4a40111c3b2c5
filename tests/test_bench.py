"""``python -m bench all --smoke`` runs and prints every section (no timing is asserted: the
numbers live in docs/benchmarks.md, measured with ``--quick``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_all_smoke_prints_one_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run(
        [sys.executable, "-m", "bench", "all", "--smoke", "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    for heading in ("-- round trip: sqlite", "-- images", "-- system"):
        assert heading in run.stdout
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    for name in (
        "raw sqlite loop",
        "pixfleet sqlite",
        "thumbs pipeline",
        "fleet sqlite, 2 workers",
    ):
        assert rows[name]["value"] > 0, rows[name]
    assert rows["pixfleet sqlite"]["goal"] == ">= 2000 t/s"
    assert rows["fleet sqlite, 2 workers"]["ratio"] > 0
