"""``uploader enqueue DIR`` streams its files (issue 15.4): memory stays about one file, not the
whole directory (it was 453 MB for 40 x 10 MB), and the size limit holds for a growing file."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from pixfleet.errors import InputTooLarge
from producer import inspect
from tests.helpers.cli import REPO
from tests.helpers.images import png_bytes

MB = 1 << 20
FILES, SIZE = 16, 8 * MB

_MEASURED = """
import resource, runpy, sys
sys.argv = ["uploader", *sys.argv[1:]]
try:
    runpy.run_module("producer", run_name="__main__")
finally:
    print("maxrss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def _enqueue_rss_mb(home: Path, directory: Path) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURED, "enqueue", str(directory), "-g", "thumbs"],
        cwd=REPO,
        env={"PIXFLEET_HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    line = [x for x in done.stderr.splitlines() if x.startswith("maxrss_kb")][-1]
    return int(line.split()[1]) / 1024


def _images(directory: Path, count: int) -> None:
    """``count`` distinct, valid PNGs of SIZE bytes each (a header the vetting reads, then
    padding it never decodes)."""
    directory.mkdir()
    head = png_bytes(32, 32)
    for i in range(count):
        (directory / f"{i:02}.png").write_bytes(head + os.urandom(SIZE - len(head)))


def test_enqueue_holds_about_one_file_at_a_time(tmp_path: Path) -> None:
    _images(tmp_path / "one", 1)
    _images(tmp_path / "many", FILES)
    one = _enqueue_rss_mb(tmp_path / "h1", tmp_path / "one")
    many = _enqueue_rss_mb(tmp_path / "h2", tmp_path / "many")
    print(f"enqueue RSS: 1 x 8 MB {one:.0f} MB, {FILES} x 8 MB {many:.0f} MB")
    assert many - one < 4 * SIZE / MB, (one, many)  # all of them would be 120 MB more


def test_a_file_growing_past_the_limit_mid_read_is_refused(tmp_path: Path) -> None:
    """The size is checked, then the file grows to 3 GiB (sparse) before the read: at most
    max_bytes + 1 bytes are read and it is refused, in bounded memory."""
    path = tmp_path / "grows.png"
    path.write_bytes(png_bytes(8, 8))
    limit = path.stat().st_size + 10
    real_fstat = os.fstat

    def fstat_then_grow(fd: int) -> os.stat_result:
        result = real_fstat(fd)
        os.truncate(path, 3 << 30)  # swapped/grown right after the check
        return result

    tracemalloc.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(os, "fstat", fstat_then_grow)
            with pytest.raises(InputTooLarge, match="grew past"):
                inspect.read_file(path, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MB
