"""Sample photos for the demo and for trying pixfleet out (``uploader samples DIR``).

Synthetic but realistic enough: JPEGs of a few sizes, one stored sideways with EXIF orientation 6
as a camera does, some with GPS tags (outputs must come out upright and without them), one PNG
with transparency.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw


def _scene(width: int, height: int, seed: int) -> Image.Image:
    im = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(im)
    for i in range(8):
        x = (seed * 131 + i * 97) % max(width - 60, 1)
        y = (seed * 71 + i * 53) % max(height - 60, 1)
        colour = ((seed * 40 + i * 30) % 255, (i * 70) % 255, (200 - i * 20) % 255)
        draw.ellipse([x, y, x + width // 6, y + height // 6], fill=colour)
    draw.text((10, 10), f"pixfleet sample {seed}", fill=(255, 255, 255))
    return im


def _exif(orientation: int, gps: bool) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "pixfleet"  # Make
    exif[0x0112] = orientation
    if gps:
        exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 7.0)}
    return exif.tobytes()


def write_samples(directory: Path, count: int = 6) -> list[Path]:
    """Write ``count`` sample images into ``directory`` and return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    sizes = [(1600, 1200), (1200, 1600), (2400, 1600), (800, 600), (3000, 2000)]
    paths: list[Path] = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        image = _scene(width, height, i)
        buf = io.BytesIO()
        if i % 6 == 5:
            path = directory / f"sample-{i:02d}.png"
            image.putalpha(200)
            image.save(buf, "PNG")
        else:
            path = directory / f"sample-{i:02d}.jpg"
            orientation = 6 if i % 6 == 1 else 1
            if orientation == 6:
                # Like a camera held upright: the sensor image is stored turned 90 degrees
                # counter-clockwise and tagged "rotate 90 clockwise to display".
                image = image.transpose(Image.Transpose.ROTATE_90)
            image.save(buf, "JPEG", quality=88, exif=_exif(orientation, gps=i % 3 == 0))
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths
