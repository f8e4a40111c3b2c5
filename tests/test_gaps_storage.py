"""A data dir that fills up or turns read-only *while* a command runs is ``storage.*``, not an
unreachable broker or store (issue 14) - and still the adapter's ``*.unavailable`` class, so
every retry around it (a worker's, a subscription's) keeps working.

Real files on a small tmpfs (root only: mounting), the real SQLite broker and file blob store.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from brokers import open_transport
from pixfleet.blobs.file import FileBlobStore
from pixfleet.errors import BlobUnavailable, BrokerUnavailable, PixfleetError
from tests.helpers.tasks import make_task


@contextlib.contextmanager
def small_tmpfs(target: Path, size: str = "2m") -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


def fill(directory: Path) -> None:
    """Write zeros into ``directory`` until its file system is full."""
    with (directory / "filler").open("wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def remount_read_only(directory: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)


async def _publish_many(url: str, directory: Path, then: Callable[[Path], None]) -> PixfleetError:
    async with open_transport(url) as transport:
        await transport.publish(make_task("thumbs"))  # works while there is room
        then(directory)
        try:
            for _ in range(200):  # past any free pages sqlite kept
                await transport.publish(make_task("thumbs", pad="x" * 4000))
        except PixfleetError as exc:
            return exc
    raise AssertionError("every publish succeeded")


def test_the_sqlite_broker_reports_a_full_disk_as_storage(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "data") as data:
        error = asyncio.run(_publish_many(f"sqlite:///{data}/broker.db", data, fill))
    assert error.code == "storage.full", error.one_line()
    assert isinstance(error, BrokerUnavailable)  # still retried like an unavailable broker
    assert "broker.db" in str(error)


async def _publish_one(url: str) -> None:
    async with open_transport(url) as transport:
        await transport.publish(make_task("thumbs"))


def test_the_sqlite_broker_reports_a_read_only_disk_as_storage(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "data") as data:
        url = f"sqlite:///{data}/broker.db"
        asyncio.run(_publish_one(url))
        remount_read_only(data)  # between commands: a database no process holds open
        with pytest.raises(BrokerUnavailable) as raised:
            asyncio.run(_publish_one(url))
    assert raised.value.code == "storage.read_only", raised.value.one_line()


async def _put_many(
    store: FileBlobStore, directory: Path, then: Callable[[Path], None]
) -> PixfleetError:
    await store.put("records/before", b"ok")
    then(directory)
    try:
        for n in range(200):
            await store.put(f"records/after-{n}", os.urandom(65536))
    except PixfleetError as exc:
        return exc
    raise AssertionError("every put succeeded")


@pytest.mark.parametrize(
    ("then", "code"), [(fill, "storage.full"), (remount_read_only, "storage.read_only")]
)
def test_the_file_blob_store_reports_a_full_or_read_only_disk_as_storage(
    tmp_path: Path, then: Callable[[Path], None], code: str
) -> None:
    with small_tmpfs(tmp_path / "blobs") as blobs:
        error = asyncio.run(_put_many(FileBlobStore(blobs), blobs, then))
    assert error.code == code, error.one_line()
    assert isinstance(error, BlobUnavailable)
    assert error.one_line().startswith(f"error[{code}]: ")
