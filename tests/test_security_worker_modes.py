"""What pixfleet writes on disk is private, whatever the umask: the data dir and the blob tree
are 0700, the SQLite database (with its -wal and -shm files), uploads, outputs and records 0600.
Checked by mode and, as root, by another user (``nobody``) trying to read each of them."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from brokers.sqlite.db import SqliteQueue
from pixfleet.blobs import store_output, store_upload
from pixfleet.blobs.file import FileBlobStore
from pixfleet.records import record_task
from tests.helpers import images
from tests.helpers.cli import REPO
from tests.helpers.tasks import make_task

NOBODY = 65534


@pytest.fixture
def home() -> Iterator[Path]:
    """A data dir to be created under a directory every user may enter, with umask 022."""
    base = Path(tempfile.mkdtemp(prefix="pixfleet-modes-"))
    base.chmod(0o755)
    old = os.umask(0o022)
    try:
        yield base / "data"
    finally:
        os.umask(old)
        shutil.rmtree(base)


@contextmanager
def _filled(home: Path) -> Iterator[list[Path]]:
    """Open the broker database and a blob store in ``home`` and write to them as the CLIs
    would; yields every file pixfleet wrote while the database is open (its -wal and -shm
    files exist only then)."""
    queue = SqliteQueue(home / "broker.db", busy_timeout=5, synchronous="NORMAL")
    try:
        queue.publish("tasks", "k", b"{}", ("thumbs",))
        store = FileBlobStore(home / "blobs")

        async def write() -> None:
            ref = await store_upload(store, images.jpeg_bytes(), "image/jpeg")
            await store_output(store, "t1", "thumbs", "256.jpg", b"x", source_sha256=ref.sha256)
            await record_task(store, make_task("thumbs"))

        asyncio.run(write())
        files = sorted(p for p in home.rglob("*") if p.is_file())
        names = {p.name for p in files}
        assert {"broker.db", "broker.db-wal", "broker.db-shm", "256.jpg"} <= names, names
        yield files
    finally:
        queue.close()


def test_files_and_directories_are_created_private_under_umask_022(home: Path) -> None:
    with _filled(home) as files:
        assert len(files) >= 6
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        for path in [home, *(p for p in home.rglob("*") if p.is_dir())]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_another_user_cannot_read_the_database_uploads_or_outputs(home: Path) -> None:
    control = home.parent / "control"
    control.write_bytes(b"readable by all")
    control.chmod(0o644)
    assert _as_nobody("/bin/cat", control).returncode == 0  # nobody may read a 0644 file here
    with _filled(home) as files:
        for path in [*files, home]:
            denied = _as_nobody("/bin/cat" if path.is_file() else "/bin/ls", path)
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, path


def _as_nobody(command: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [command, str(path)], user=NOBODY, group=NOBODY, capture_output=True, text=True, check=False
    )


def test_the_uploader_creates_its_data_dir_private(home: Path) -> None:
    """The data dir, blob tree and database of a first ``uploader enqueue`` (pre-flight of the
    local storage included) under umask 022."""
    photo = home.parent / "photo.jpg"
    photo.write_bytes(images.jpeg_bytes())
    done = subprocess.run(
        [sys.executable, "-m", "producer", "enqueue", str(photo)],
        cwd=REPO,
        env={"PIXFLEET_HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        umask=0o022,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    made = [home, *home.rglob("*")]
    assert {p.name for p in made} >= {"data", "blobs", "uploads", "broker.db"}
    for path in made:
        want = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == want, path
