"""Image factories for tests: real encoded files made with Pillow, no fixtures on disk."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw


def photo(width: int = 640, height: int = 480, *, seed: int = 0) -> Image.Image:
    """A deterministic, photo-like RGB image (gradient plus shapes)."""
    im = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(im)
    for i in range(6):
        x = (seed * 37 + i * 97) % max(width - 40, 1)
        y = (seed * 53 + i * 61) % max(height - 40, 1)
        draw.rectangle([x, y, x + width // 8, y + height // 8], fill=(40 * i % 255, 90, 200))
    return im


def jpeg_bytes(width: int = 640, height: int = 480, *, seed: int = 0, exif: bytes = b"") -> bytes:
    buf = io.BytesIO()
    kwargs = {"exif": exif} if exif else {}
    photo(width, height, seed=seed).save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def png_bytes(width: int = 320, height: int = 200) -> bytes:
    buf = io.BytesIO()
    photo(width, height).save(buf, "PNG")
    return buf.getvalue()


def exif_with(orientation: int | None = None, gps: bool = False) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    exif[0x0110] = "Model X"  # Model
    if orientation is not None:
        exif[0x0112] = orientation
    if gps:
        exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
    return exif.tobytes()


def bomb_png(width: int = 10000, height: int = 10000) -> bytes:
    """A tiny PNG whose header declares an enormous canvas (decompression bomb)."""
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def write_samples(directory: Path, count: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = directory / f"photo-{i:03d}.jpg"
        path.write_bytes(jpeg_bytes(800 + (i % 5) * 10, 600, seed=i))
        paths.append(path)
    return paths
