"""Every number a CLI takes is bounded at the edge: ``inf``, ``nan``, negative and absurd
durations and counts are refused with one typed line and exit 1, before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from consumers.cli import app as worker_app
from producer.cli import app as uploader_app
from tests.helpers.cli import REPO, run_cli

BAD_SECONDS = ["inf", "-inf", "nan", "-1", "604801", "1e300"]


def _refused(app: typer.Typer, args: list[str], option: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error[config.invalid]: {option} must be"), line


@pytest.mark.parametrize("value", BAD_SECONDS)
@pytest.mark.parametrize("option", ["--timeout", "--retry-backoff", "--drain-timeout"])
def test_worker_durations_are_bounded(option: str, value: str) -> None:
    _refused(worker_app, ["run", "-g", "thumbs", "--burst", f"{option}={value}"], option)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--concurrency", "0"),
        ("--concurrency", "257"),
        ("--prefetch", "-1"),
        ("--prefetch", "10001"),
        ("--memory-limit", "100"),
        ("--memory-limit", "-1"),
        ("--delivery-limit", "0"),
        ("--max-pixels", str(1 << 41)),
    ],
)
def test_worker_counts_are_bounded(option: str, value: str) -> None:
    _refused(worker_app, ["run", "-g", "thumbs", "--burst", f"{option}={value}"], option)


def test_the_memory_limit_comes_from_the_environment_too() -> None:
    result = CliRunner().invoke(
        worker_app, ["run", "-g", "thumbs"], env={"PIXFLEET_MEMORY_LIMIT": "12"}
    )
    assert result.exit_code == 1
    assert result.output.startswith(
        "error[config.invalid]: memory_limit (env PIXFLEET_MEMORY_LIMIT) must be 0 (no cap)"
    )


@pytest.mark.parametrize("value", ["inf", "nan", "-5", "1e9"])
@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("enqueue", "--timeout"),
        ("enqueue", "--ttl"),
        ("serve", "--request-timeout"),
        ("serve", "--drain-timeout"),
        ("status", "--interval"),
    ],
)
def test_uploader_durations_are_bounded(
    command: str, option: str, value: str, tmp_path: Path
) -> None:
    args = [command, f"{option}={value}"] + ([str(tmp_path)] if command == "enqueue" else [])
    _refused(uploader_app, args, option)


def test_a_worker_refuses_an_infinite_timeout_as_a_process(tmp_path: Path) -> None:
    done = run_cli("consumers", "run", "-g", "thumbs", "--timeout", "inf", home=tmp_path)
    assert done.returncode == 1
    assert done.stderr == (
        "error[config.invalid]: --timeout must be a number of seconds from 0.1 to 604800, got inf\n"
    )
    assert not (tmp_path / "broker.db").exists()  # refused before anything started


def test_the_default_concurrency_is_the_cpu_affinity() -> None:
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
        "from consumers.settings import default_concurrency; print(default_concurrency())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "1"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////tmp/pixfleet-bounds.db?lease=inf",
        "sqlite:////tmp/pixfleet-bounds.db?poll=nan",
        "amqp://localhost/?op_timeout=1e12",
        "amqp://localhost/?connect_timeout=-1",
        "kafka://localhost:9092?session_timeout=inf",
    ],
)
def test_broker_url_durations_are_bounded(url: str) -> None:
    result = CliRunner().invoke(worker_app, ["run", "-g", "thumbs", "--broker", url])
    assert result.exit_code == 1, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("error[config.invalid_url]: ") and "must be seconds from 0 to" in line
