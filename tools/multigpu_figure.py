"""Timeline figure for bench/multigpu.py: per run, one lane per GPU with each job's span (from the ledger) over
the nvidia-smi utilisation trace. Pillow only (no plotting library in the image).

    python tools/multigpu_figure.py bench/results/multigpu-h100x2.json bench/results/multigpu-h100x2.png
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = [(66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88), (171, 71, 188), (0, 172, 193)]


def main(src: Path, dst: Path) -> None:
    res = json.loads(src.read_text())
    samples = list(csv.DictReader(open(src.with_name(src.stem + "-nvidia-smi.csv"))))
    runs = [k for k in ("single", "multi", "kill") if k in res]
    gpus = sorted({int(s["gpu"]) for s in samples}) or [0]
    span = max(res[k]["wall_seconds"] or 1 for k in runs)
    W, lane, left, top = 1100, 46, 150, 30
    trace_h = 70
    H = top + len(runs) * (len(gpus) * lane + 40) + 30 + len(gpus) * (trace_h + 10) + 20
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    sx = (W - left - 20) / span
    d.text((left, 8), f"{res['card']} x{len(gpus)}: job spans per GPU (bars) and nvidia-smi utilisation (line); "
           f"seconds after the drop", fill="black")
    y = top
    for run in runs:
        r = res[run]
        d.text((8, y + 4), f"{run}: --gpus {r['gpus_arg']}", fill="black")
        d.text((8, y + 18), f"{r['jobs']} jobs, {r['wall_seconds']} s", fill="black")
        rows = r["rows"]
        for gi, g in enumerate(gpus):
            y0 = y + gi * lane
            d.rectangle([left, y0, W - 20, y0 + lane - 6], outline=(200, 200, 200))
            d.text((left - 40, y0 + 14), f"gpu{g}", fill="black")
            for ji, row in enumerate(rows):
                if not row["slots"] or row["finished"] is None:
                    continue
                if row["slots"][-1] != f"gpu{g}":
                    continue
                x0, x1 = left + row["started"] * sx, left + row["finished"] * sx
                d.rectangle([x0, y0 + 4, x1, y0 + lane - 10], fill=COLORS[ji % len(COLORS)] + (0,))
                d.text((x0 + 3, y0 + 6), row["job"] + (f" (attempt {row['attempts']})" if row["attempts"] > 1 else ""),
                       fill="white")
        if run == "kill" and r.get("killed"):
            x = left + r["killed"]["at_seconds"] * sx
            d.line([x, y, x, y + len(gpus) * lane], fill="black", width=2)
            d.text((x + 3, y + len(gpus) * lane - 4), f"SIGKILL {r['killed']['worker']}", fill="black")
        y += len(gpus) * lane + 40
    # the whole nvidia-smi trace, one strip per GPU: the three runs show as bursts, side by side in time
    t0 = min(float(s["time"]) for s in samples)
    t1 = max(float(s["time"]) for s in samples)
    tx = (W - left - 20) / max(t1 - t0, 1)
    d.text((left, y), f"nvidia-smi utilisation.gpu over the whole bench ({t1 - t0:.0f} s: single, multi, kill runs)",
           fill="black")
    y += 16
    for g in gpus:
        d.rectangle([left, y, W - 20, y + trace_h], outline=(200, 200, 200))
        d.text((left - 40, y + trace_h // 2 - 6), f"gpu{g}", fill="black")
        pts = [(left + (float(s["time"]) - t0) * tx, y + trace_h - int(s["util_percent"]) * trace_h / 100)
               for s in samples if int(s["gpu"]) == g]
        if len(pts) > 1:
            d.line(pts, fill=COLORS[g % len(COLORS)], width=1)
        y += trace_h + 10
    img.save(dst)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
