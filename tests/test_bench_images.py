"""The image rows' PSNR: every implementation against the same references, the thumbs - pyvips
gap per output and per photo (no pyvips needed: the implementations here are stand-ins)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from bench import quality
from bench.images import Impl, gap_rows, make_photo, psnr_table


def _resized(fmt: str, resample: Image.Resampling) -> Callable[[bytes], dict[str, bytes]]:
    def impl(data: bytes) -> dict[str, bytes]:
        with Image.open(io.BytesIO(data)) as src:
            buf = io.BytesIO()
            src.convert("RGB").resize((64, 48), resample).save(buf, fmt, quality=40)
            return {"64.out": buf.getvalue()}

    return impl


def test_psnr_table_scores_each_output_against_one_lanczos_reference_per_photo() -> None:
    photos = [make_photo(160, 120, seed) for seed in (1, 2)]
    impls = {
        "lanczos png": _resized("PNG", Image.Resampling.LANCZOS),
        "bicubic png": _resized("PNG", Image.Resampling.BICUBIC),
        "lanczos jpeg q40": _resized("JPEG", Image.Resampling.LANCZOS),
    }
    table = psnr_table(impls, photos)
    exact, bicubic, jpeg = (table[n]["64.out"] for n in impls)
    assert exact == [99.0, 99.0]  # the reference: LANCZOS of the full decode, one per photo
    assert all(40 < v < 99 for v in bicubic)
    assert all(25 < v < b for v, b in zip(jpeg, bicubic, strict=True))


def test_gap_rows_give_the_mean_its_range_over_photos_and_each_output() -> None:
    vips = {"1024.jpg": [30.0, 31.0], "256.webp": [32.0, 32.0]}
    thumbs = {"1024.jpg": [30.2, 30.8], "256.webp": [31.9, 32.3]}
    rows = {r.name: r for r in gap_rows(thumbs, vips)}
    total = rows["PSNR thumbs - pyvips"]
    assert total.value == pytest.approx(0.05)  # (0.2 - 0.2 - 0.1 + 0.3) / 4
    assert total.met is True
    assert total.note == "2 photos: +0.050 to +0.050 dB each"
    assert rows["PSNR thumbs - pyvips, 1024.jpg"].value == pytest.approx(0.0)
    assert rows["PSNR thumbs - pyvips, 256.webp"].value == pytest.approx(0.1)
    worse = {r.name: r for r in gap_rows({**thumbs, "1024.jpg": [29.0, 30.0]}, vips)}
    assert worse["PSNR thumbs - pyvips"].met is False
    assert worse["PSNR thumbs - pyvips"].note == "2 photos: -0.550 to -0.350 dB each"


def test_quality_compares_thumbs_per_photo_at_both_geometries(tmp_path: Path) -> None:
    photo = tmp_path / "p.jpg"
    photo.write_bytes(make_photo(390, 260, 3))

    def impls_at(sizes: tuple[int, int]) -> dict[str, Impl]:
        def stand_in(data: bytes) -> dict[str, bytes]:  # pyvips' place: same sizes, plain JPEG
            with Image.open(io.BytesIO(data)) as src:
                out = {}
                for size in sizes:
                    im = src.copy()
                    im.thumbnail((size, size), Image.Resampling.LANCZOS)
                    buf = io.BytesIO()
                    im.save(buf, "JPEG", quality=82)
                    out[f"{size}.jpg"] = buf.getvalue()
                return out

        return {"thumbs": quality.thumbs_at(sizes), "pyvips": stand_in}

    lines = quality.compare([photo], impls_at)
    assert lines[0].startswith("p.jpg") and "default" in lines[0] and "256.jpg" in lines[0]
    assert "bench ratio" in lines[1] and "100.jpg" in lines[1] and "25.jpg" in lines[1]
    assert [line.split()[1:3] for line in lines[2:4]] == [["large", "jpg"], ["small", "jpg"]]
    assert lines[-1].startswith("mean, all outputs")
