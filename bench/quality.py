"""``python -m bench.quality PHOTO.jpg ...``: the thumbs pipeline against pyvips (one decode) on
your own photos, by PSNR of each output against a LANCZOS resize of the full decode (as in the
image rows), at the pipeline's default sizes (1024 + 256) and at the bench's ratios (long edge
/ 3.9 and / 15.6, as 4000 px -> 1024 + 256: the draft decode's geometry on a small photo).

The bench's photos are synthetic; real ones differ (docs/benchmarks.md, "thumbs quality").
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from bench import vips
from bench.images import Impl, Psnrs, psnr_table
from consumers.pipelines.base import Limits
from consumers.pipelines.thumbs import run as thumbs_run

Sizes = tuple[int, int]
ImplsAt = Callable[[Sizes], dict[str, Impl]]


def thumbs_at(sizes: Sizes) -> Impl:
    def run(data: bytes) -> dict[str, bytes]:
        out = thumbs_run(data, {"sizes": list(sizes)}, Limits())
        return {r.name: r.data for r in out.renditions}

    return run


def with_pyvips(sizes: Sizes) -> dict[str, Impl]:
    pyvips = vips.one_decode(sizes)
    if pyvips is None:
        raise SystemExit(vips.NOTE)
    return {"thumbs": thumbs_at(sizes), "pyvips": pyvips}


def geometries(data: bytes) -> dict[str, Sizes]:
    with Image.open(io.BytesIO(data)) as im:
        long_edge = max(im.size)
    return {
        "default": (1024, 256),
        "bench ratio": (round(long_edge / 3.9), round(long_edge / 15.6)),
    }


def gaps(table: dict[str, Psnrs]) -> dict[str, float]:
    """thumbs - pyvips (dB) per output, on the one photo the table holds."""
    return {o: table["thumbs"][o][0] - table["pyvips"][o][0] for o in table["pyvips"]}


def compare(paths: Sequence[Path], impls_at: ImplsAt = with_pyvips) -> list[str]:
    """One line per photo and geometry, then the mean per kind of output and overall."""
    lines, kinds = [], dict[str, list[float]]()
    for path in paths:
        data = path.read_bytes()
        for label, sizes in geometries(data).items():
            by_output = gaps(psnr_table(impls_at(sizes), [data]))
            for output, gap in by_output.items():
                size, fmt = output.split(".")
                kind = f"{'large' if int(size) == sizes[0] else 'small'} {fmt}"
                kinds.setdefault(kind, []).append(gap)
            cells = "  ".join(f"{o} {g:+.3f}" for o, g in by_output.items())
            lines.append(f"{path.name:24} {label:11} {cells}")
    everything = [g for values in kinds.values() for g in values]
    for kind, values in sorted(kinds.items()):
        lines.append(f"mean {kind:14} {sum(values) / len(values):+.3f} dB ({len(values)} outputs)")
    lines.append(f"mean, all outputs      {sum(everything) / len(everything):+.3f} dB")
    return lines


def main(argv: Sequence[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    print("\n".join(compare([Path(a) for a in argv])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
