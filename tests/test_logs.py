"""``--log-format json`` (issue 12): one JSON object per line with the delivery's task, group and
worker from the context; an unknown format is one ``error[config.invalid]`` line, exit 2. (The
worker process's own stderr is parsed line by line in tests/test_worker_metrics.py.)"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pixfleet.logs import JsonFormatter, task_context
from tests.helpers.cli import run_cli


def _line(record: logging.LogRecord) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(JsonFormatter().format(record))
    return parsed


def test_a_record_carries_the_task_context_it_was_logged_in() -> None:
    record = logging.LogRecord(
        "consumers.handler", logging.WARNING, __file__, 1, "a %s", ("b",), None
    )
    plain = _line(record)
    assert plain.keys() == {"ts", "level", "logger", "message"} and plain["message"] == "a b"
    inside = task_context("t-1", "thumbs", "host:42").run(_line, record)
    assert (inside["task_id"], inside["group"], inside["worker_id"]) == ("t-1", "thumbs", "host:42")
    assert inside["level"] == "warning"
    assert "task_id" not in _line(record)  # the context stays with the delivery's task


def test_an_unknown_log_format_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = run_cli("producer", "--log-format", "yaml", "status", home=tmp_path)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error[config.invalid]: log format 'yaml'"), line
