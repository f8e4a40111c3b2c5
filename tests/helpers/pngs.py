"""The "PNG of the worst kind": a ~143 KB file that decodes to 150 MB (50 megapixels of RGB,
within the pixel limit), built straight from zlib so that the test pays no encoder time."""

from __future__ import annotations

import functools
import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def worst_png(width: int = 7071, height: int = 7071) -> bytes:
    """A black ``width`` x ``height`` RGB PNG, as small as deflate makes it."""
    row = b"\x00" * (1 + width * 3)  # filter byte "none", then the pixels
    deflate = zlib.compressobj(9)
    block = row * 64
    parts = [deflate.compress(block) for _ in range(height // 64)]
    parts += [deflate.compress(row * (height % 64)), deflate.flush()]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )
