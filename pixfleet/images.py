"""Images as untrusted input: the limits every side enforces and the errors of image data.

The same limits apply at the ingress (header check, before anything is stored) and in the worker
(before and while decoding), so they are defined once, here. This module imports no imaging
library: the uploader reads headers with Pillow, the worker decodes with it, both raise these.

Pixels and bytes bound what an image costs in memory; :func:`check_jpeg_scans` bounds what a
progressive JPEG costs in time. Every scan of a progressive JPEG is a pass over the whole
image's coefficients, and a scan header with no data is 10 bytes: a 100 KB file of empty scans
holds a decoder for minutes. Encoders write about 10 scans (libjpeg, mozjpeg); the limit of
:data:`MAX_SCANS` keeps the worst case under half a second at :data:`MAX_PIXELS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pixfleet.bounds import check_count, check_seconds
from pixfleet.errors import PixfleetError

#: Largest source image in bytes (50 MiB).
MAX_BYTES = 50 * 1024 * 1024
#: Largest source image in pixels, width * height (50 megapixels).
MAX_PIXELS = 50_000_000
#: Seconds of pipeline time per task.
TIMEOUT = 60.0
#: Most scans (``SOS`` markers) of a JPEG; libjpeg's progressive default writes 10.
MAX_SCANS = 100


@dataclass(frozen=True)
class Limits:
    """Per-task limits on untrusted input, enforced by the uploader, the worker and pipelines.
    Out-of-range values (``inf``, ``nan``, 0, negative) are a ``config.invalid`` error."""

    max_pixels: int = MAX_PIXELS  # width * height of the source image
    max_bytes: int = MAX_BYTES  # size of the source blob
    timeout: float = TIMEOUT  # seconds of pipeline time per task
    max_scans: int = MAX_SCANS  # scans of a (progressive) JPEG

    def __post_init__(self) -> None:
        check_count("max_pixels", self.max_pixels, low=1, high=1 << 40)
        check_count("max_bytes", self.max_bytes, low=1, high=1 << 40)
        check_seconds("timeout", self.timeout, low=0.001)
        check_count("max_scans", self.max_scans, low=1, high=1 << 20)


class ImageError(PixfleetError):
    code = "image.error"


class ImageInvalid(ImageError):
    """Corrupt, truncated or undecodable image data."""

    code = "image.invalid"


class ImageTooLarge(ImageError):
    """Too many pixels (decompression bomb) or too many bytes."""

    code = "image.too_large"


class ImageTooCostly(ImageError):
    """Small, but too costly to decode: a JPEG with more scans than the limit."""

    code = "image.too_costly"


class UnsupportedFormat(ImageError):
    code = "image.unsupported"


def check_jpeg_scans(data: bytes, limits: Limits) -> None:
    """Refuse a JPEG with more than ``limits.max_scans`` scans (:class:`ImageTooCostly`),
    before any decoding. Other data passes (it is not a JPEG, or the decoder will refuse it)."""
    if not data.startswith(b"\xff\xd8"):
        return
    # A cheap upper bound first: entropy-coded data never holds FF DA (an FF there is always
    # followed by 00 or a restart marker), so only marker payloads can add false ones.
    if data.count(b"\xff\xda") <= limits.max_scans:
        return
    scans = jpeg_scans(data, stop_after=limits.max_scans)
    if scans > limits.max_scans:
        raise ImageTooCostly(f"JPEG has over {limits.max_scans} scans (the limit); not decoded")


#: In entropy-coded data: an FF that starts a marker (not a stuffed FF 00, a restart marker or
#: a fill byte).
_MARKER_IN_DATA = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def jpeg_scans(data: bytes, *, stop_after: int) -> int:
    """The scans of the first image of a JPEG, counted by walking its markers; a count over
    ``stop_after`` (or a stream with over ``16 * stop_after + 1024`` markers) is returned as
    ``stop_after + 1`` at once. Stops quietly where the structure is broken."""
    pos, scans, markers = 2, 0, 0
    budget = 16 * stop_after + 1024
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        markers += 1
        if scans > stop_after or markers > budget:
            return stop_after + 1
        marker = data[pos + 1]
        if marker == 0xD9:  # end of image
            break
        if marker == 0xFF or marker in _STANDALONE:
            pos += 1 if marker == 0xFF else 2  # fill byte / marker without a length
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            break
        pos += 2 + length
        if marker == 0xDA:  # start of scan: its entropy-coded data follows the header
            scans += 1
            found = _MARKER_IN_DATA.search(data, pos)
            pos = found.start() if found else len(data)
    return min(scans, stop_after + 1)
