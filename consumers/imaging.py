"""Safe decoding of untrusted images with Pillow.

* bytes and pixel limits are checked from the header, before any pixel is decoded, and so is
  the number of scans of a JPEG (:func:`~pixfleet.images.check_jpeg_scans`: a small progressive
  file of many scans would hold a pool process for minutes);
* Pillow's decompression-bomb warning is an error here;
* truncated or corrupt data raises :class:`~pixfleet.errors.ImageInvalid`, never a raw ``OSError``;
* JPEG sources are decoded in draft mode (DCT scaling) when a smaller size is enough;
* EXIF orientation is applied, colours converted to sRGB, and all metadata dropped.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from pixfleet.images import (
    ImageInvalid,
    ImageTooLarge,
    Limits,
    UnsupportedFormat,
    check_jpeg_scans,
)

#: Formats accepted from uploads. Anything else is refused before decoding.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")

_SRGB = ImageCms.createProfile("sRGB")


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # upright, RGB or RGBA, no metadata
    source_width: int
    source_height: int
    source_format: str
    orientation: int
    draft_scale: float
    icc_converted: bool


def probe(data: bytes, limits: Limits) -> Image.Image:
    """Open the header only; enforce byte, pixel and scan limits. The image is not decoded yet."""
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image has {len(data)} bytes, the limit is {limits.max_bytes}")
    if not data:
        raise ImageInvalid("image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageInvalid(
            "not a recognised image (allowed: jpeg, png, webp, gif, tiff, bmp)"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInvalid(f"cannot read image header: {exc}") from exc
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageInvalid(f"image has an empty canvas {width}x{height}")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels, the limit is {limits.max_pixels}"
        )
    check_jpeg_scans(data, limits)
    return im


def decode(data: bytes, limits: Limits, *, longest_needed: int) -> Decoded:
    """Decode once, at the smallest scale that still yields ``longest_needed`` on the long edge."""
    im = probe(data, limits)
    source_w, source_h = im.size
    source_format = im.format or "unknown"
    orientation = int(im.getexif().get(0x0112, 1) or 1)
    if im.format == "JPEG" and max(source_w, source_h) > longest_needed:
        ratio = longest_needed / max(source_w, source_h)
        im.draft("RGB", (math.ceil(source_w * ratio), math.ceil(source_h * ratio)))
    draft_scale = im.size[0] / source_w
    try:
        im.seek(0)  # first frame of animations
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageInvalid(f"image data is corrupt or truncated: {exc}") from exc
    icc = im.info.get("icc_profile")
    ImageOps.exif_transpose(im, in_place=True)  # no copy when already upright
    converted, icc_converted = _to_srgb(im, icc)
    converted.info = {}  # drop EXIF, GPS, XMP, comments, ICC: outputs carry no metadata
    return Decoded(
        image=converted,
        source_width=source_w,
        source_height=source_h,
        source_format=source_format.lower(),
        orientation=orientation,
        draft_scale=round(draft_scale, 4),
        icc_converted=icc_converted,
    )


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def _to_srgb(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bool]:
    """RGB or RGBA in sRGB. Embedded ICC profiles are honoured; a broken one is ignored."""
    target = "RGBA" if _has_alpha(im) else "RGB"
    if icc and im.mode in ("RGB", "RGBA", "CMYK", "L"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out = ImageCms.profileToProfile(im, source, _SRGB, outputMode=target)
        except (ImageCms.PyCMSError, OSError, ValueError):
            out = None
        if out is not None:
            return out, True
    if im.mode == target:
        return im, False  # convert() would only copy it
    try:
        if im.mode.startswith("I;16") or im.mode == "I":
            im = im.point(lambda v: v / 256).convert("L")
        return im.convert(target), False
    except (ValueError, OSError) as exc:
        raise UnsupportedFormat(f"cannot convert image mode {im.mode} to {target}: {exc}") from exc


def fit_long_edge(width: int, height: int, long_edge: int) -> tuple[int, int]:
    """Scale (width, height) so the long edge is ``long_edge``; never upscale."""
    longest = max(width, height)
    if longest <= long_edge:
        return width, height
    ratio = long_edge / longest
    return max(1, round(width * ratio)), max(1, round(height * ratio))
