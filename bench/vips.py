"""pyvips references for the image rows (the optional ``bench`` extra: ``pip install pyvips
pyvips-binary``, which brings its own libvips). Without pyvips these rows print as n/a.

libvips runs on one thread here (``VIPS_CONCURRENCY=1``), so images/s per core compares like
with like. Both variants auto-rotate, convert to sRGB, strip metadata and write JPEG q82
(optimized, progressive) + WebP q82 at libvips' default effort (4, like Pillow's ``method``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

NOTE = "pyvips not installed: pip install '.[bench]'"
SIZES = (1024, 256)
QUALITY = 82

Outputs = dict[str, bytes]


def _pyvips() -> Any | None:
    os.environ.setdefault("VIPS_CONCURRENCY", "1")
    try:
        import pyvips  # noqa: PLC0415 - optional (the bench extra), untyped: see pyproject
    except (ImportError, OSError):
        return None
    pyvips.concurrency_set(1)
    pyvips.cache_set_max(0)  # no cached decodes between images
    return pyvips


def version() -> str:
    vips = _pyvips()
    if vips is None:
        return "n/a"
    return f"{vips.__version__} (libvips {'.'.join(str(vips.version(i)) for i in range(3))})"


def _encode(image: Any, size: int, outputs: Outputs) -> None:
    outputs[f"{size}.jpg"] = image.jpegsave_buffer(
        Q=QUALITY, optimize_coding=True, interlace=True, keep="none"
    )
    outputs[f"{size}.webp"] = image.webpsave_buffer(Q=QUALITY, keep="none")


def per_size() -> Callable[[bytes], Outputs] | None:
    """``thumbnail_buffer`` once per size: a shrink-on-load decode for each."""
    vips = _pyvips()
    if vips is None:
        return None

    def run(data: bytes) -> Outputs:
        outputs: Outputs = {}
        for size in SIZES:
            image = vips.Image.thumbnail_buffer(data, size, size="down").copy_memory()
            _encode(image, size, outputs)
        return outputs

    return run


def one_decode(sizes: tuple[int, int] = SIZES) -> Callable[[bytes], Outputs] | None:
    """One shrink-on-load decode to the first size (kept in memory), the second from that."""
    vips = _pyvips()
    if vips is None:
        return None

    def run(data: bytes) -> Outputs:
        outputs: Outputs = {}
        big = vips.Image.thumbnail_buffer(data, sizes[0], size="down").copy_memory()
        _encode(big, sizes[0], outputs)
        small = big.thumbnail_image(sizes[1], size="down").copy_memory()
        _encode(small, sizes[1], outputs)
        return outputs

    return run
