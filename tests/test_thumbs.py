"""The thumbs pipeline on real encoded images."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageCms

from consumers.pipelines.base import Limits
from consumers.pipelines.thumbs import run
from pixfleet.errors import ParamsInvalid
from pixfleet.images import ImageInvalid, ImageTooLarge
from tests.helpers import images

LIMITS = Limits()


def open_output(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_default_sizes_and_formats_without_upscaling() -> None:
    out = run(images.jpeg_bytes(800, 600), {}, LIMITS)
    got = {(r.name, r.width, r.height, r.format) for r in out.renditions}
    assert got == {
        ("256.jpg", 256, 192, "jpeg"),
        ("256.webp", 256, 192, "webp"),
        ("1024.jpg", 800, 600, "jpeg"),  # never upscaled
        ("1024.webp", 800, 600, "webp"),
    }
    for r in out.renditions:
        decoded = open_output(r.data)
        assert decoded.format == r.format.upper()
        assert decoded.size == (r.width, r.height)
    assert out.meta["source"] == {"width": 800, "height": 600, "format": "jpeg"}


def test_params_choose_sizes_formats_and_quality() -> None:
    out = run(images.jpeg_bytes(2000, 1000), {"sizes": [100, 500], "formats": ["webp"]}, LIMITS)
    assert sorted((r.name, r.width, r.height) for r in out.renditions) == [
        ("100.webp", 100, 50),
        ("500.webp", 500, 250),
    ]


def test_large_jpeg_is_decoded_in_draft_mode_once() -> None:
    out = run(images.jpeg_bytes(4000, 3000), {"sizes": [256]}, LIMITS)
    # 4000 -> 500 (1/8 DCT scaling) is still >= 256, so the decode is 8x smaller.
    assert out.meta["draft_scale"] == 0.125
    assert {(r.width, r.height) for r in out.renditions} == {(256, 192)}


def test_exif_orientation_6_comes_out_upright() -> None:
    # Stored landscape with a red block at the stored top-left; orientation 6 means "rotate 90
    # degrees clockwise to display", so upright the image is portrait with red at the top-right.
    stored = Image.new("RGB", (400, 200), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 100, 100))
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=images.exif_with(orientation=6))
    out = run(buf.getvalue(), {"sizes": [200], "formats": ["jpeg"]}, LIMITS)
    [r] = out.renditions
    im = open_output(r.data).convert("RGB")
    assert im.size == (100, 200)
    top_right, bottom_left = im.getpixel((90, 10)), im.getpixel((10, 190))
    assert isinstance(top_right, tuple) and isinstance(bottom_left, tuple)  # RGB pixels
    red_r, red_g, _ = top_right
    blue_r, _, blue_b = bottom_left
    assert red_r > 200 and red_g < 60
    assert blue_b > 200 and blue_r < 60
    assert out.meta["orientation"] == 6


def test_outputs_carry_no_exif_gps_icc_or_comments() -> None:
    src = io.BytesIO()
    images.photo(600, 400).save(
        src,
        "JPEG",
        exif=images.exif_with(orientation=1, gps=True),
        comment=b"secret comment",
        icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
    )
    assert b"TestCam" in src.getvalue()  # the source really has metadata
    out = run(src.getvalue(), {}, LIMITS)
    assert out.meta["icc_converted"] is True
    for r in out.renditions:
        im = open_output(r.data)
        assert len(im.getexif()) == 0, r.name
        assert not {"exif", "icc_profile", "comment", "xmp"} & set(im.info), (r.name, im.info)
        assert b"TestCam" not in r.data and b"secret comment" not in r.data


def test_alpha_png_flattens_for_jpeg_and_keeps_alpha_in_webp() -> None:
    src = io.BytesIO()
    Image.new("RGBA", (300, 300), (255, 0, 0, 0)).save(src, "PNG")
    out = run(src.getvalue(), {"sizes": [64]}, LIMITS)
    by_name = {r.name: open_output(r.data) for r in out.renditions}
    assert by_name["64.jpg"].mode == "RGB"
    assert by_name["64.jpg"].getpixel((5, 5)) == (255, 255, 255)  # transparent -> white
    assert by_name["64.webp"].mode == "RGBA"


@pytest.mark.parametrize(
    ("data", "error", "fragment"),
    [
        (b"", ImageInvalid, "empty"),
        (b"hello, this is plain text\n" * 4, ImageInvalid, "not a recognised image"),
        (images.jpeg_bytes(800, 600)[:3000], ImageInvalid, "truncated"),
        (images.bomb_png(), ImageTooLarge, "pixels"),
    ],
    ids=["zero-bytes", "text", "truncated-jpeg", "decompression-bomb"],
)
def test_bad_images_raise_classified_errors(data: bytes, error: type, fragment: str) -> None:
    with pytest.raises(error) as info:
        run(data, {}, LIMITS)
    assert fragment in str(info.value)


def test_byte_limit_is_enforced_before_decoding() -> None:
    with pytest.raises(ImageTooLarge) as info:
        run(images.jpeg_bytes(), {}, Limits(max_bytes=1000))
    assert info.value.code == "image.too_large"


@pytest.mark.parametrize(
    "params",
    [{"sizes": [8]}, {"sizes": []}, {"formats": ["gif"]}, {"quality": 0}, {"colour": "red"}],
)
def test_bad_params_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ParamsInvalid):
        run(images.jpeg_bytes(), params, LIMITS)
