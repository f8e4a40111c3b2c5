"""Reading and vetting inputs safely: FIFOs, oversize files and symlinks out of a directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pixfleet.errors import InputEmpty, InputTooLarge, InputUnreadable
from producer.inspect import expand, read_file
from tests.helpers import images


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(InputUnreadable, match="not a regular file"):
        read_file(fifo)
    assert time.monotonic() - started < 1


def test_size_is_checked_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    with open(big, "wb") as fh:
        fh.truncate(3 << 30)  # sparse: reading it would take 3 GiB
    started = time.monotonic()
    with pytest.raises(InputTooLarge):
        read_file(big, max_bytes=50 << 20)
    assert time.monotonic() - started < 1
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputEmpty):
        read_file(tmp_path / "empty.jpg")


def test_symlinks_out_of_a_directory_are_not_followed(tmp_path: Path) -> None:
    photos, outside = tmp_path / "photos", tmp_path / "secret"
    photos.mkdir()
    outside.mkdir()
    (outside / "private.jpg").write_bytes(images.jpeg_bytes())
    (photos / "a.jpg").write_bytes(images.jpeg_bytes())
    (photos / "leak.jpg").symlink_to(outside / "private.jpg")
    (photos / "alias.jpg").symlink_to(photos / "a.jpg")  # stays inside: fine
    assert [p.name for p in expand([photos])] == ["a.jpg", "alias.jpg"]
    assert [p.name for p in expand([photos], follow_links=True)] == [
        "a.jpg",
        "alias.jpg",
        "leak.jpg",
    ]
    # A link named on the command line is the user's explicit choice.
    assert list(expand([photos / "leak.jpg"])) == [photos / "leak.jpg"]
