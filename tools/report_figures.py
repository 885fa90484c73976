"""Pull the orbit renders out of a report.html into one PNG strip (for notes and bench/results).

    python tools/report_figures.py outbox/<job>/report.html out.png
"""
from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main(report: Path, out: Path, height: int = 256) -> None:
    html = report.read_text()
    start = html.find('id="renders"')
    section = html[start:html.find("</section>", start)] if start >= 0 else html
    uris = re.findall(r'src="data:image/(?:jpeg|png);base64,([A-Za-z0-9+/=]+)"', section)[:12]
    if not uris:
        raise SystemExit(f"no inline images in {report}")
    ims = []
    for u in uris:
        im = Image.open(io.BytesIO(base64.b64decode(u))).convert("RGB")
        ims.append(np.asarray(im.resize((max(1, round(im.width * height / im.height)), height))))
    Image.fromarray(np.hstack(ims)).save(out)
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
