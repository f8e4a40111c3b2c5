"""``worker run``'s main options from ``PIXFLEET_*`` and the config file's ``[worker]`` table
(DESIGN: flag > env > config file > default), bounded like the flags (issue 14).

Real ``worker run --burst`` processes on an empty embedded SQLite broker: the worker's start line
says which concurrency and prefetch it serves with.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.cli import REPO


def _run(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env={"PIXFLEET_HOME": str(home), "PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_env_and_the_worker_table_set_worker_run_and_flags_win(tmp_path: Path) -> None:
    (tmp_path / "pixfleet.toml").write_text(
        '[worker]\ngroup = "cfgthumbs"\npipeline = "thumbs"\nconcurrency = 2\n'
    )
    served = _run(tmp_path, "consumers", "run", "--burst", PIXFLEET_PREFETCH="3")
    assert served.returncode == 0, served.stderr
    assert "serving group 'cfgthumbs' (concurrency 2, prefetch 3, burst)" in served.stderr
    flagged = _run(tmp_path, "consumers", "run", "--burst", "-c", "1", PIXFLEET_CONCURRENCY="4")
    assert flagged.returncode == 0, flagged.stderr
    assert "serving group 'cfgthumbs' (concurrency 1, prefetch 1, burst)" in flagged.stderr

    shown = _run(tmp_path, "producer", "config", "show", "--json", PIXFLEET_PREFETCH="3")
    settings = json.loads(shown.stdout)["settings"]
    assert settings["worker.prefetch"] == {"value": "3", "source": "env PIXFLEET_PREFETCH"}
    assert settings["worker.concurrency"] == {
        "value": "2",
        "source": f"file {tmp_path / 'pixfleet.toml'} [worker]",
    }
    assert settings["worker.timeout"]["source"] == "default"


def test_a_bad_worker_value_from_env_or_file_is_one_config_line(tmp_path: Path) -> None:
    (tmp_path / "pixfleet.toml").write_text('[worker]\ngroup = "thumbs"\ntimeout = -1\n')
    bad_file = _run(tmp_path, "consumers", "run", "--burst")
    assert bad_file.returncode == 1
    assert bad_file.stderr.splitlines() == [
        f"error[config.invalid]: timeout (file {tmp_path / 'pixfleet.toml'} [worker]) must be "
        "a number of seconds from 0.1 to 604800, got -1.0"
    ]
    bad_env = _run(tmp_path, "consumers", "run", "--burst", PIXFLEET_CONCURRENCY="many")
    assert bad_env.returncode == 1
    [line] = bad_env.stderr.splitlines()
    assert line.startswith("error[config.invalid]: concurrency (env PIXFLEET_CONCURRENCY): ")
