"""Vetting upload candidates before anything is stored or published.

What can be known at enqueue is refused here, one typed error per file: missing, unreadable,
empty, too many bytes, not an image (magic bytes), too many pixels (header only - no decode).
Corruption deeper in the data can only be found by decoding; the worker reports that as an error
result.

:func:`vet` works on bytes and a file name, so the CLI (after :func:`read_file`) and an HTTP
ingress (on an uploaded body) refuse the same things with the same messages.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pixfleet.errors import (
    InputEmpty,
    InputMissing,
    InputNotImage,
    InputTooLarge,
    InputUnreadable,
)
from pixfleet.images import MAX_BYTES, ImageTooLarge, Limits

log = logging.getLogger(__name__)

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),  # after b"RIFF" + 4-byte size
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
    (b"BM", 0, "image/bmp"),
)


@dataclass(frozen=True)
class Candidate:
    """An image that passed :func:`vet`: ready to be stored and submitted.

    ``filename`` is a base name (what the task carries), never a client's directories."""

    filename: str
    data: bytes
    content_type: str
    width: int
    height: int


def sniff(head: bytes) -> str | None:
    """The image content type from magic bytes, or None."""
    for magic, offset, content_type in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            if content_type == "image/webp" and not head.startswith(b"RIFF"):
                continue
            return content_type
    return None


def expand(paths: Iterable[Path], *, follow_links: bool = False) -> Iterator[Path]:
    """Files as given, directories recursively (sorted, hidden entries skipped).

    Inside a directory, a symbolic link that leads out of it is skipped (with a warning) unless
    ``follow_links``: enqueueing a directory never reads files it does not hold."""
    for path in paths:
        if not path.is_dir():
            yield path
            continue
        top = path.resolve()
        for root, dirs, files in os.walk(path, followlinks=follow_links):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                entry = Path(root) / name
                if name.startswith("."):
                    continue
                if not follow_links and not entry.resolve().is_relative_to(top):
                    log.warning("%s: skipped, a symbolic link out of %s", entry, path)
                    continue
                yield entry


def vet(data: bytes, filename: str, *, limits: Limits | None = None) -> Candidate:
    """Vet one upload: not empty, within ``limits.max_bytes``, an image by its signature, and
    within ``limits.max_pixels`` by its header (nothing is decoded).

    ``filename`` may be a path: error messages name it as given, the candidate keeps its last
    component. Raises an :class:`~pixfleet.errors.InputError` or
    :class:`~pixfleet.images.ImageTooLarge`; each message starts with ``filename``.
    """
    limits = limits or Limits()
    if not data:
        raise InputEmpty(f"{filename}: file is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise InputTooLarge(
            f"{filename}: {len(data)} bytes exceeds the limit of {limits.max_bytes}"
        )
    content_type = sniff(data[:16])
    if content_type is None:
        raise InputNotImage(f"{filename}: not an image (no JPEG/PNG/GIF/WebP/TIFF/BMP signature)")
    width, height = _dimensions(filename, data)
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"{filename}: {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{limits.max_pixels} (decompression bomb?)"
        )
    return Candidate(_base_name(filename), data, content_type, width, height)


def vet_file(path: Path, limits: Limits) -> Candidate:
    """:func:`read_file` (bounded) then :func:`vet`: one file's candidate. The uploader keeps
    only paths between vetting and submitting, so it holds one file's bytes at a time."""
    return vet(read_file(path, limits.max_bytes), str(path), limits=limits)


def read_file(path: Path, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of a regular, non-empty file of at most ``max_bytes``, read safely: a FIFO or
    device is refused without blocking, the size is checked before reading, and at most
    ``max_bytes`` + 1 bytes are read (a file swapped or grown mid-read cannot get past it).

    Raises :class:`~pixfleet.errors.InputMissing`, :class:`~pixfleet.errors.InputUnreadable`,
    :class:`~pixfleet.errors.InputEmpty` or :class:`~pixfleet.errors.InputTooLarge`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise InputMissing(f"{path}: no such file") from exc
    except PermissionError as exc:
        raise InputUnreadable(f"{path}: permission denied") from exc
    except OSError as exc:
        raise InputUnreadable(f"{path}: {exc.strerror or exc}") from exc
    try:
        return _read_regular(path, fd, max_bytes)
    finally:
        os.close(fd)


def _read_regular(path: Path, fd: int, max_bytes: int) -> bytes:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise InputUnreadable(f"{path}: not a regular file")
    if st.st_size == 0:
        raise InputEmpty(f"{path}: file is empty (0 bytes)")
    if st.st_size > max_bytes:
        raise InputTooLarge(f"{path}: {st.st_size} bytes exceeds the limit of {max_bytes}")
    with os.fdopen(os.dup(fd), "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputTooLarge(f"{path}: grew past the limit of {max_bytes} bytes while being read")
    if not data:
        raise InputEmpty(f"{path}: file is empty (0 bytes)")
    return data


def _base_name(filename: str) -> str:
    return filename.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _dimensions(filename: str, data: bytes) -> tuple[int, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                return int(width), int(height)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{filename}: decompression bomb refused ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputNotImage(f"{filename}: image header is unreadable ({exc})") from exc
