"""The ``thumbs`` pipeline: several sizes, WebP and JPEG, from ONE decode.

Params (all optional; unknown keys are refused with ``params.invalid``)::

    sizes    list of long-edge sizes in px, 16..8192   default [256, 1024]
    formats  subset of ["jpeg", "webp"]                 default both
    quality  1..95                                      default 82

Outputs are named ``<size>.<ext>`` (``256.jpg``, ``1024.webp``), upright (EXIF orientation
applied), in sRGB, without EXIF/GPS/XMP/ICC/comments, never upscaled. The parameter model,
:class:`~pixfleet.params.ThumbParams`, lives in the kernel: the uploader checks ``-p`` with it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from PIL import Image

from consumers.imaging import Decoded, decode, fit_long_edge
from consumers.pipelines.base import PipelineOutput, Rendition
from consumers.pipelines.progress import report_progress
from pixfleet.images import Limits
from pixfleet.params import ThumbParams, parse

_EXT = {"jpeg": "jpg", "webp": "webp"}
#: Shrinks by this factor or more start with an integer ``reduce()`` (box average) down to at
#: most this factor above the target, then LANCZOS: 1024 -> 256 px is reduce(2) + LANCZOS 2x.
#: Measured against a full-resolution LANCZOS reference, 2.0 loses nothing visible in PSNR.
REDUCING_GAP = 2.0
#: Outputs of more pixels than this are WebP-encoded with ``WEBP_FAST_METHOD``, smaller ones
#: with libwebp's default effort 4 (see :func:`_webp_method`).
WEBP_FAST_ABOVE = 300_000
WEBP_FAST_METHOD = 1


def parse_params(params: Mapping[str, Any]) -> ThumbParams:
    return parse(ThumbParams, params, "thumbs")


def run(data: bytes, params: Mapping[str, Any], limits: Limits) -> PipelineOutput:
    """Decode once, then resize and encode every (size, format) pair, largest size first:
    each smaller size is resized from the previous one (256 px from the 1024 px result). A
    progress report after each."""
    p = parse_params(params)
    sizes = sorted(set(p.sizes), reverse=True)
    decoded = decode(data, limits, longest_needed=sizes[0])
    formats = tuple(dict.fromkeys(p.formats))
    renditions: list[Rendition] = []
    image = decoded.image
    for size in sizes:
        image = _resize(image, size)
        for fmt in formats:
            renditions.append(_encode(image, size, fmt, p.quality))
            report_progress(len(renditions), len(sizes) * len(formats), renditions[-1].name)
    return PipelineOutput(renditions=tuple(renditions), meta=_meta(decoded))


def _resize(image: Image.Image, size: int) -> Image.Image:
    """``image`` fitted to ``size`` (never upscaled; itself when it already fits). A shrink by
    ``REDUCING_GAP`` or more first averages integer blocks (``reduce()``), then LANCZOS."""
    width, height = fit_long_edge(image.width, image.height, size)
    if (width, height) == image.size:
        return image
    out = image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
    out.info = {}
    return out


def _encode(image: Image.Image, size: int, fmt: str, quality: int) -> Rendition:
    buf = io.BytesIO()
    if fmt == "jpeg":
        if image.mode == "RGBA":  # JPEG has no alpha: flatten onto white
            flat = Image.new("RGB", image.size, (255, 255, 255))
            flat.paste(image, mask=image.getchannel("A"))
            image = flat
        image.save(buf, "JPEG", quality=quality, optimize=True, progressive=True)
    else:
        image.save(buf, "WEBP", quality=quality, method=_webp_method(image))
    return Rendition(
        name=f"{size}.{_EXT[fmt]}",
        data=buf.getvalue(),
        width=image.width,
        height=image.height,
        format=fmt,
    )


def _webp_method(image: Image.Image) -> int:
    """libwebp's effort for this output, by measured cost and size (docs/benchmarks.md): on a
    1024x768 photo method 1 takes a third of the time of 4 for a file 2 % smaller and 0.1 dB
    lower PSNR; on small outputs effort 4 costs a few ms, and its PSNR is kept."""
    return WEBP_FAST_METHOD if image.width * image.height > WEBP_FAST_ABOVE else 4


def _meta(decoded: Decoded) -> dict[str, Any]:
    return {
        "source": {
            "width": decoded.source_width,
            "height": decoded.source_height,
            "format": decoded.source_format,
        },
        "orientation": decoded.orientation,
        "draft_scale": decoded.draft_scale,
        "icc_converted": decoded.icc_converted,
    }
