"""The README's examples are copy-paste correct: its runnable blocks are run as written.

* every ```sh block not preceded by ``<!-- readme-test: skip (reason) -->`` runs in bash
  (``set -e``) in a fresh directory, with a fresh ``PIXFLEET_HOME`` (the embedded SQLite broker)
  and ``.venv/bin/activate`` putting ``uploader`` and ``worker`` - real console scripts of this
  checkout - on ``PATH``; what a block starts in the background (``worker run ... &``) is a real
  worker;
* every ```console block is a session: each ``$ command`` runs in the same place, and the lines
  below it must be what it prints (a line ending in ``...`` is a prefix);
* every ```toml block is a valid ``pixfleet.toml``; the output key layout the README states is
  where the outputs really are.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pixfleet.config import load
from tests.helpers.cli import REPO

README = REPO / "README.md"
SKIP = re.compile(r"<!-- readme-test: skip \((.+)\) -->\n$")


def blocks(language: str) -> list[tuple[str, str | None]]:
    """``(body, skip reason)`` of every fenced block in ``language``."""
    text = README.read_text()
    found = []
    for match in re.finditer(rf"^```{language}\n(.*?)^```$", text, re.S | re.M):
        before = text[: match.start()].rsplit("\n", 2)
        marker = SKIP.search(before[-2] + "\n") if len(before) > 1 else None
        found.append((match.group(1), marker.group(1) if marker else None))
    return found


@pytest.fixture
def place(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A working directory with a ``.venv`` whose scripts run this checkout, and its env."""
    work = tmp_path / "work"
    bin_dir = work / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, module in (("uploader", "producer.cli"), ("worker", "consumers.cli")):
        script = bin_dir / name
        script.write_text(  # what pip writes for a console script
            f"#!{sys.executable}\nimport sys\nfrom {module} import main\n"
            'if __name__ == "__main__":\n    sys.exit(main())\n'
        )
        script.chmod(0o755)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path / "user"),
        "PYTHONPATH": str(REPO),
        "PIXFLEET_HOME": str(tmp_path / "pixfleet"),
    }
    return work, env


def bash(script: str, work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``script``; then stop whatever it left running (its whole process group)."""
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_the_shell_blocks_run_as_written(place: tuple[Path, dict[str, str]]) -> None:
    work, env = place
    runnable = [body for body, skip in blocks("sh") if skip is None]
    assert runnable, "the README has no runnable ```sh block"
    for body in runnable:
        done = bash("set -e\n" + body + "\nwait\n", work, env)
        assert done.returncode == 0, f"{body}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        assert "Traceback" not in done.stderr
    # The README says where outputs land: outputs/<first two characters of the task id>/<task
    # id>/<first 16 hex digits of the image's sha256>/<group>/<name>. The six photos and the
    # -p task are there, as stated.
    outputs = Path(env["PIXFLEET_HOME"]) / "blobs" / "outputs"
    tasks = [p for p in outputs.glob("*/*/*/thumbs") if p.is_dir()]
    assert len(tasks) == 7
    for task in tasks:
        source, task_id, prefix = task.parent.name, task.parents[1].name, task.parents[2].name
        assert (prefix, len(source)) == (task_id[:2], 16), task
    names = sorted(sorted(f.name for f in task.iterdir()) for task in tasks)
    assert names.count(["1024.jpg", "1024.webp", "256.jpg", "256.webp"]) == 6
    assert ["128.webp", "512.webp"] in names
    fetched = work / "out" / "thumbs"  # uploader fetch first --to out/
    assert sorted(f.name for f in fetched.iterdir()) == ["128.webp", "512.webp"]


def test_the_console_sessions_print_what_they_show(place: tuple[Path, dict[str, str]]) -> None:
    work, env = place
    env = {**env, "PATH": f"{work / '.venv' / 'bin'}:{env['PATH']}"}
    sessions = [body for body, skip in blocks("console") if skip is None]
    assert sessions
    for body in sessions:
        for command, expected in _steps(body):
            done = bash(command, work, env)
            got = (done.stdout + done.stderr).splitlines()
            assert len(got) == len(expected), f"$ {command}\n{done.stdout}{done.stderr}"
            for line, want in zip(got, expected, strict=True):
                if want.endswith("..."):
                    assert line.startswith(want.removesuffix("...")), f"$ {command}\n{line}"
                else:
                    assert line == want, f"$ {command}"


def _steps(session: str) -> list[tuple[str, list[str]]]:
    steps: list[tuple[str, list[str]]] = []
    for line in session.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps


def test_the_toml_blocks_are_valid_config_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIXFLEET_HOME", str(tmp_path))
    for name in ("PIXFLEET_BROKER", "PIXFLEET_BLOBS", "PIXFLEET_LOG_LEVEL", "PIXFLEET_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    configs = [body for body, skip in blocks("toml") if skip is None]
    assert configs
    for body in configs:
        path = tmp_path / "pixfleet.toml"
        path.write_text(body)
        effective = load(config=path)
        assert set(effective.sources.values()) - {"default", "env PIXFLEET_HOME"}, body
