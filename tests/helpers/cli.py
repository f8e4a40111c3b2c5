"""Running the CLIs as a user would: a fresh process, a clean environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m <args>`` with only PIXFLEET_HOME and PATH set."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env={"PIXFLEET_HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
