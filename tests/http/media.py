"""Images the ingress tests need beyond ``tests.helpers.images``: big ones, odd ones."""

from __future__ import annotations

import io
import random

from PIL import Image


def noise_jpeg(width: int, height: int, *, seed: int = 0, quality: int = 90) -> bytes:
    """A JPEG of random pixels: it barely compresses, so its size is about what one asks."""
    rng = random.Random(seed)
    im = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def jpeg_with_comment(jpeg: bytes, size: int) -> bytes:
    """``jpeg`` with COM segments of ``size`` bytes in all right after SOI (before its SOF)."""
    segments = b""
    left = size
    while left > 0:
        n = min(left, 65_000)
        segments += b"\xff\xfe" + (n + 2).to_bytes(2, "big") + b"x" * n
        left -= n
    return jpeg[:2] + segments + jpeg[2:]
