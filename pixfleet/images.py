"""Images as untrusted input: the limits every side enforces and the errors of image data.

The same limits apply at the ingress (header check, before anything is stored) and in the worker
(before and while decoding), so they are defined once, here. This module imports no imaging
library: the uploader reads headers with Pillow, the worker decodes with it, both raise these.
"""

from __future__ import annotations

from dataclasses import dataclass

from pixfleet.errors import PixfleetError

#: Largest source image in bytes (50 MiB).
MAX_BYTES = 50 * 1024 * 1024
#: Largest source image in pixels, width * height (50 megapixels).
MAX_PIXELS = 50_000_000
#: Seconds of pipeline time per task.
TIMEOUT = 60.0


@dataclass(frozen=True)
class Limits:
    """Per-task limits on untrusted input, enforced by the uploader, the worker and pipelines."""

    max_pixels: int = MAX_PIXELS  # width * height of the source image
    max_bytes: int = MAX_BYTES  # size of the source blob
    timeout: float = TIMEOUT  # seconds of pipeline time per task


class ImageError(PixfleetError):
    code = "image.error"


class ImageInvalid(ImageError):
    """Corrupt, truncated or undecodable image data."""

    code = "image.invalid"


class ImageTooLarge(ImageError):
    """Too many pixels (decompression bomb) or too many bytes."""

    code = "image.too_large"


class UnsupportedFormat(ImageError):
    code = "image.unsupported"
