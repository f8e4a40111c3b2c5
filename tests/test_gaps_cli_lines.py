"""Every refused input file is one line with its code and a hint, and ``uploader samples``
piped into ``head -1`` ends quietly with exit 0 (issue 14). Real CLI processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.cli import REPO, run_cli


def test_refused_files_each_get_one_line_with_a_hint(tmp_path: Path) -> None:
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    done = run_cli(
        "producer", "enqueue", str(notes), str(empty), str(tmp_path / "gone.jpg"), home=tmp_path
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert [line.split("]")[0] for line in lines] == [
        "error[input.not_image",
        "error[input.empty",
        "error[input.missing",
        "error[input.none",
    ], done.stderr
    assert all(line.count("(hint: ") == 1 and line.endswith(")") for line in lines), lines
    assert lines[0].endswith("(hint: give JPEG, PNG, GIF, WebP, TIFF or BMP files)")


def test_samples_into_head_exits_0_quietly(tmp_path: Path) -> None:
    piped = subprocess.run(
        f"{sys.executable} -m producer samples {tmp_path / 's'} --count 20 | head -1; "
        'exit "${PIPESTATUS[0]}"',
        shell=True, executable="/bin/bash", cwd=REPO, capture_output=True, text=True,
        env={"PIXFLEET_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=120, check=False,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""
    assert piped.stdout == f"{tmp_path / 's' / 'sample-00.jpg'}\n"
