"""Markdown table of benchmark result files (bench/run_bench.py and bench/peer_colmap.py output), for the docs.

    python bench/table.py bench/results/photos-h200.json bench/results/peer-colmap-spot_scene-h200.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

COLS = [("set", "set"), ("variant", "variant"), ("posed", "posed"), ("fscore@1%", "F@1%"),
        ("fscore@0.5%", "F@0.5%"), ("fscore@0.2%", "F@0.2%"), ("chamfer_l1_rel", "CD-L1/diag"),
        ("heldout_iou", "IoU (held-out)"), ("heldout_psnr", "PSNR dB (held-out)"), ("faces", "faces"),
        ("geometry_s", "geometry s"), ("wall_seconds", "job s")]


def rows(path: Path) -> list[str]:
    d = json.loads(path.read_text())
    out = []
    for r in d["results"]:
        st = r.get("stage_seconds") or {}
        r = dict(r, geometry_s=round(st.get("geometry", 0) + st.get("refine", 0), 2) if st else None,
                 variant=r.get("variant") or r.get("method"))
        cells = ["" if r.get(k) is None else str(r.get(k)) for k, _ in COLS]
        out.append("| " + " | ".join(cells) + f" | {d['card']} |")
    return out


def main() -> None:
    print("| " + " | ".join(h for _, h in COLS) + " | card |")
    print("|" + "---|" * (len(COLS) + 1))
    for p in sys.argv[1:]:
        print("\n".join(rows(Path(p))))


if __name__ == "__main__":
    main()
