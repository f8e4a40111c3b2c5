"""CLI failures are one line with a stable code and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helpers.cli import run_cli


def run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, home=home)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ("producer", "status", "--broker", "redis://guest:hunter2@localhost/"),
            "error[config.invalid_url]: unsupported broker URL 'redis://guest:***@localhost/'",
        ),
        (
            (
                "producer",
                "status",
                "--broker",
                "amqp://guest:hunter2@127.0.0.1:1/?connect_timeout=0.5",
            ),
            "error[broker.unavailable]: cannot reach amqp://guest:***@127.0.0.1:1/",
        ),
        (
            ("producer", "status", "--broker", "amqp://127.0.0.1/?prefetch_count=3"),
            "error[config.invalid_url]: unknown amqp URL option(s) ['prefetch_count']",
        ),
        (
            ("producer", "status", "--broker", "sqlite:///x.db?leese=3"),
            "error[config.invalid_url]: unknown sqlite URL option(s) ['leese']",
        ),
        (
            ("producer", "status", "--broker", "sqlite:////proc/forbidden/broker.db"),
            "error[broker.unavailable]: cannot ",
        ),
        (
            ("consumers", "run", "--group", "no-such-pipeline"),
            "error[pipeline.unknown]: no pipeline named 'no-such-pipeline'",
        ),
        (("consumers", "run", "--group", "Bad Name"), "error[config.invalid]: invalid group"),
        (
            ("consumers", "run", "--group", "thumbs", "--pipeline", "nope.mod:fn"),
            "error[pipeline.unknown]: cannot import pipeline module 'nope.mod'",
        ),
    ],
)
def test_errors_are_one_line(args: tuple[str, ...], line: str, tmp_path: Path) -> None:
    done = run(*args, home=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(line)
    assert "hunter2" not in done.stderr + done.stdout


def test_status_lists_groups(tmp_path: Path) -> None:
    samples = run("producer", "samples", str(tmp_path / "s"), "--count", "2", home=tmp_path)
    assert samples.returncode == 0
    queued = run(
        "producer", "enqueue", str(tmp_path / "s"), "-g", "thumbs", "-g", "other", home=tmp_path
    )
    assert queued.returncode == 0, queued.stderr
    assert len(queued.stdout.strip().splitlines()) == 2
    status = run("producer", "status", home=tmp_path)
    rows = {line.split()[0]: line.split()[1:] for line in status.stdout.splitlines()[1:]}
    assert rows["thumbs"][0] == "2" and rows["other"][0] == "2"


def test_wrong_amqp_credentials_are_one_line_without_the_password(
    amqp_session_url: str, tmp_path: Path
) -> None:
    parts = urlsplit(amqp_session_url)
    url = f"amqp://guest:hunter2@{parts.hostname}:{parts.port or 5672}{parts.path}"
    done = run("producer", "status", "--broker", url, home=tmp_path)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error[broker.auth_failed]: amqp://guest:***@")
    assert "hunter2" not in done.stderr + done.stdout
