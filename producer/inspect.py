"""Checking upload candidates before anything is stored or published.

What can be known at enqueue is refused here, one typed error per file: missing, unreadable,
empty, too many bytes, not an image (magic bytes), too many pixels (header only - no decode).
Corruption deeper in the data can only be found by decoding; the worker reports that as an error
result.
"""

from __future__ import annotations

import io
import os
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
from pixfleet.images import MAX_BYTES, MAX_PIXELS, ImageTooLarge

DEFAULT_MAX_BYTES = MAX_BYTES
DEFAULT_MAX_PIXELS = MAX_PIXELS

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
    path: Path
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


def expand(paths: Iterable[Path]) -> Iterator[Path]:
    """Files as given, directories recursively (sorted, hidden entries skipped)."""
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield Path(root) / name
        else:
            yield path


def check(
    path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Candidate:
    """Read and vet one file. Raises an :class:`InputError` (or ``ImageTooLarge``)."""
    data = _read(path, max_bytes)
    content_type = sniff(data[:16])
    if content_type is None:
        raise InputNotImage(f"{path}: not an image (no JPEG/PNG/GIF/WebP/TIFF/BMP signature)")
    width, height = _dimensions(path, data)
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
            " (decompression bomb?)"
        )
    return Candidate(path, data, content_type, width, height)


def _read(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise InputUnreadable(f"{path}: not a regular file")
        if size == 0:
            raise InputEmpty(f"{path}: file is empty (0 bytes)")
        if size > max_bytes:
            raise InputTooLarge(f"{path}: {size} bytes exceeds the limit of {max_bytes}")
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise InputMissing(f"{path}: no such file") from exc
    except PermissionError as exc:
        raise InputUnreadable(f"{path}: permission denied") from exc
    except OSError as exc:
        raise InputUnreadable(f"{path}: {exc.strerror or exc}") from exc


def _dimensions(path: Path, data: bytes) -> tuple[int, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                return int(width), int(height)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{path}: decompression bomb refused ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputNotImage(f"{path}: image header is unreadable ({exc})") from exc
