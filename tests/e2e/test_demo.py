"""`make demo` - the README's first command - really runs the whole path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IN_CI

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"


@pytest.mark.e2e
def test_make_demo_prints_a_result_per_sample(tmp_path: Path) -> None:
    installed = (VENV / ".installed").exists() and Path(sys.prefix).resolve() == VENV.resolve()
    if not installed:
        if IN_CI:
            pytest.fail("make test must run the suite from the repo's .venv")
        pytest.skip("runs only from the repo's own .venv (make test)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXFLEET_")}
    done = subprocess.run(
        ["make", "--no-print-directory", "demo", f"DEMO_HOME={tmp_path / 'demo'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("ok ")]
    assert len(lines) == 6, done.stdout
    for line in lines:
        assert "256.jpg" in line and "1024.webp" in line and f"{tmp_path}/demo/blobs" in line
    assert "6 ok, 0 failed" in done.stderr
