"""Image rows: the thumbs pipeline against pyvips and naive Pillow, on the same photos.

Each implementation makes the same outputs (256 and 1024 px long edge, JPEG q82 + WebP q82,
upright, metadata stripped) from one JPEG; the rate is images per CPU-second of this process
(so "per core", and steadier than wall time on a shared machine). Quality is the PSNR of every
output against a reference made from the full-resolution decode (LANCZOS, no reducing gap), on
up to ``PSNR_PHOTOS`` of the photos, with the thumbs - pyvips gap also given per output (a mean
can hide a trade between outputs) and its range per photo; memory is the peak RSS of a fresh
process running the pipeline once on a 48 MP JPEG.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageOps, ImageStat

from bench.report import Row, bounded, plain, versus
from consumers.pipelines.base import Limits
from consumers.pipelines.thumbs import run as thumbs_run

SIZES = (1024, 256)
QUALITY = 82
#: Photos the PSNR rows are measured on (all of --quick's 6; 2 gave gaps of +-0.01 dB by chance).
PSNR_PHOTOS = 6
REPO = Path(__file__).resolve().parents[1]
Outputs = dict[str, bytes]
Impl = Callable[[bytes], Outputs]


def make_photo(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG: smooth areas, edges and fine texture (encoders' cost depends on
    detail; a smooth synthetic image would flatter WebP)."""
    im = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(im)
    for i in range(12):
        x, y = (seed * 131 + i * 97) % (width - 80), (seed * 71 + i * 53) % (height - 80)
        box = [x, y, x + width // 5, y + height // 5]
        draw.ellipse(box, fill=(i * 20, 255 - i * 20, (seed * 37) % 255))
    grain = [Image.effect_noise((width // 10, height // 10), 60) for _ in range(3)]
    up = [g.resize((width, height), Image.Resampling.BICUBIC) for g in grain]
    texture = Image.merge("RGB", up)
    im = Image.blend(im, texture, 0.25)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def thumbs(data: bytes) -> Outputs:
    out = thumbs_run(data, {}, Limits())
    return {r.name: r.data for r in out.renditions}


def naive(data: bytes) -> Outputs:
    """Full decode, ``thumbnail`` per size from the full image, default encoders."""
    outputs: Outputs = {}
    with Image.open(io.BytesIO(data)) as src:
        src.load()
        for size in SIZES:
            im = src.copy()
            im.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=None)
            for fmt, ext in (("JPEG", "jpg"), ("WEBP", "webp")):
                buf = io.BytesIO()
                im.save(buf, fmt, quality=QUALITY)
                outputs[f"{size}.{ext}"] = buf.getvalue()
    return outputs


def per_core(impl: Impl, blobs: list[bytes]) -> float:
    """Images per CPU-second of this process (all its threads)."""
    cpu = time.process_time()
    for data in blobs:
        impl(data)
    return len(blobs) / (time.process_time() - cpu)


def psnr(a: Image.Image, b: Image.Image) -> float:
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB"))
    mse = sum(ImageStat.Stat(diff).sum2) / (3 * a.width * a.height)
    return 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)


Psnrs = dict[str, list[float]]  # output name -> PSNR (dB) on each photo


def psnr_table(impls: dict[str, Impl], blobs: list[bytes]) -> dict[str, Psnrs]:
    """PSNR of every output of every implementation against a LANCZOS resize of the photo's
    full-resolution decode; one decode per photo and one reference per size, shared by all."""
    table: dict[str, Psnrs] = {name: {} for name in impls}
    for data in blobs:
        with Image.open(io.BytesIO(data)) as src:
            full = ImageOps.exif_transpose(src).convert("RGB")
        refs: dict[tuple[int, int], Image.Image] = {}
        for name, impl in impls.items():
            for output, blob in impl(data).items():
                with Image.open(io.BytesIO(blob)) as out:
                    out.load()
                    if out.size not in refs:
                        refs[out.size] = full.resize(out.size, Image.Resampling.LANCZOS)
                    table[name].setdefault(output, []).append(psnr(out, refs[out.size]))
    return table


def mean(values: Psnrs) -> float:
    flat = [v for per_photo in values.values() for v in per_photo]
    return sum(flat) / len(flat)


def gap_rows(thumbs_q: Psnrs, vips_q: Psnrs) -> list[Row]:
    """thumbs - pyvips: the mean over all outputs (the goal), its range over the photos, and
    the mean of each output."""
    gap = mean(thumbs_q) - mean(vips_q)
    photos = len(next(iter(vips_q.values())))
    by_photo = [
        sum(thumbs_q[o][i] - vips_q[o][i] for o in vips_q) / len(vips_q) for i in range(photos)
    ]
    note = f"{photos} photos: {min(by_photo):+.3f} to {max(by_photo):+.3f} dB each"
    rows = [Row("images", "PSNR thumbs - pyvips", gap, "dB", goal=">= 0", met=gap >= 0, note=note)]
    for output in sorted(vips_q, key=lambda o: (-int(o.split(".")[0]), o)):
        diff = (sum(thumbs_q[output]) - sum(vips_q[output])) / photos
        rows.append(plain("images", f"PSNR thumbs - pyvips, {output}", diff, "dB"))
    return rows


_RSS_CODE = """
import sys
from consumers.pipelines.base import Limits
from consumers.pipelines.thumbs import run
data = open(sys.argv[1], "rb").read()
if sys.argv[2] == "run":
    run(data, {}, Limits(max_pixels=60_000_000, max_bytes=200_000_000))
status = open("/proc/self/status").read().split("VmHWM:")[1]
print(status.split()[0])  # kB; ru_maxrss would carry the parent's peak over exec
"""


def peak_rss_mb(path: Path, mode: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CODE, str(path), mode],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.split()[-1]) / 1024


def rss_rows(smoke: bool) -> list[Row]:
    width, height = (800, 600) if smoke else (8000, 6000)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.jpg"
        path.write_bytes(make_photo(width, height, 7))
        idle, peak = peak_rss_mb(path, "idle"), peak_rss_mb(path, "run")
    name = f"thumbs peak RSS, {width * height / 1e6:.1f} MP JPEG"
    return [
        plain("images", "process with the pipeline imported", idle, "MB"),
        bounded("images", name, peak, "MB", 100),
    ]


def image_rows(count: int, size: tuple[int, int], smoke: bool = False) -> list[Row]:
    from bench import vips  # noqa: PLC0415 - optional: pyvips may be missing

    blobs = [make_photo(*size, i) for i in range(count)]
    impls: dict[str, Impl | None] = {
        "naive pillow": naive,
        "pyvips, thumbnail per size": vips.per_size(),
        "pyvips, one decode": vips.one_decode(),
        "thumbs pipeline": thumbs,
    }
    rates = {n: per_core(f, blobs) if f else None for n, f in impls.items()}
    measured = {n: f for n, f in impls.items() if f is not None}
    quality = psnr_table(measured, blobs[:PSNR_PHOTOS])
    base = ("pyvips, one decode", rates["pyvips, one decode"])
    rows = [
        plain("images", n, r, "i/s", vips.NOTE if r is None else "")
        for n, r in rates.items()
        if n != "thumbs pipeline"
    ]
    rows.append(versus("images", "thumbs pipeline", rates["thumbs pipeline"], "i/s", base, 1.1))
    rows.append(versus("images", "thumbs / naive pillow", rates["thumbs pipeline"], "i/s",
                       ("naive pillow", rates["naive pillow"])))  # fmt: skip
    rows += [
        plain("images", f"PSNR {n}", mean(quality[n]) if n in quality else None, "dB")
        for n in impls
    ]
    if "pyvips, one decode" in quality:
        rows += gap_rows(quality["thumbs pipeline"], quality["pyvips, one decode"])
    return rows + rss_rows(smoke)
