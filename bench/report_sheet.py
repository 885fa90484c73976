"""A contact sheet of a report's renders for the docs: per viewing angle, the colour render, the shaded geometry and
the nearest input photo, side by side (they are the report's own images, read back from ``report.html``).

    python bench/report_sheet.py outbox/JOB/report.html docs/images/JOB.jpg [--angles 0 90 180 270] [--height 240]
"""
from __future__ import annotations

import argparse
import base64
import io
import re
import sys
from pathlib import Path

from PIL import Image

FIGURE = re.compile(r'<figure>\s*<div class="pair"><img src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)" '
                    r'alt="render (\d+)°"[^>]*><img src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"[^>]*></div>\s*'
                    r'<img (?:src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)" alt="nearest photo"[^>]*id="(near-\d+)"|'
                    r'alt="nearest photo"[^>]*data-same="(near-\d+)")')


def renders(html: str) -> dict[int, tuple[Image.Image, ...]]:
    """{angle in degrees: (colour render, shaded geometry, nearest photo)} from a report's Renders section. A photo
    nearest to several angles is stored once in the page; the later figures name the first (data-same)."""
    def image(b64: str) -> Image.Image:
        return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")

    found = list(FIGURE.finditer(html))
    photos = {m.group(5): m.group(4) for m in found if m.group(4)}
    return {int(m.group(2)): (image(m.group(1)), image(m.group(3)), image(m.group(4) or photos[m.group(6)]))
            for m in found}


def sheet(rows: list[tuple[Image.Image, ...]], height: int) -> Image.Image:
    """One row per angle, each image scaled to ``height`` px."""
    scaled = [[im.resize((max(1, round(im.width * height / im.height)), height)) for im in row] for row in rows]
    width = max(sum(im.width for im in row) for row in scaled)
    out = Image.new("RGB", (width, height * len(scaled)), "white")
    for r, row in enumerate(scaled):
        x = 0
        for im in row:
            out.paste(im, (x, r * height))
            x += im.width
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--angles", type=int, nargs="+", default=[0, 90, 180, 270])
    ap.add_argument("--height", type=int, default=240)
    a = ap.parse_args(argv)
    found = renders(a.report.read_text(encoding="utf-8"))
    missing = [x for x in a.angles if x not in found]
    if missing:
        print(f"{a.report} has no renders at {missing} degrees (it has {sorted(found)})", file=sys.stderr)
        return 1
    a.out.parent.mkdir(parents=True, exist_ok=True)
    sheet([found[x] for x in a.angles], a.height).save(a.out, quality=82)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
