"""Hostile JPEGs for tests: a progressive JPEG with very many (empty) scans."""

from __future__ import annotations

import io
import re

from tests.helpers.images import photo

_SOS = re.compile(rb"\xff\xda")


def many_scans(width: int, height: int, scans: int) -> bytes:
    """A valid progressive JPEG (Pillow writes 10 scans) with ``scans`` more scan headers
    without data before its end: each costs the decoder a pass over the whole image, the
    file only 14 bytes more."""
    buf = io.BytesIO()
    photo(width, height).save(buf, "JPEG", progressive=True, quality=85)
    data = buf.getvalue()
    last = list(_SOS.finditer(data))[-1].start()
    length = int.from_bytes(data[last + 2 : last + 4], "big")
    header = data[last : last + 2 + length]
    assert data.endswith(b"\xff\xd9")
    return data[:-2] + header * scans + b"\xff\xd9"


def progressive(width: int = 640, height: int = 480) -> bytes:
    buf = io.BytesIO()
    photo(width, height).save(buf, "JPEG", progressive=True, quality=85)
    return buf.getvalue()
