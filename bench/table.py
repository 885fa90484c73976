"""Markdown table of benchmark result files (for the README).

    python bench/table.py bench/results/geometry-hull-h100.json bench/results/geometry-refined-h100.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

COLS = [("set", "set"), ("fscore@1%", "F@1%"), ("fscore@0.5%", "F@0.5%"), ("fscore@0.2%", "F@0.2%"),
        ("chamfer_l1_rel", "CD-L1/diag"), ("obs_fscore@0.2%", "obs. F@0.2%"),
        ("obs_chamfer_l1_rel", "obs. CD-L1/diag"), ("normal_consistency", "NC"), ("heldout_iou", "IoU (held-out)"),
        ("heldout_psnr", "PSNR dB"), ("heldout_psnr_frame", "PSNR dB (frame)"), ("heldout_ssim", "SSIM"), ("faces", "faces"), ("geometry_s", "geometry s"), ("wall_seconds", "job s"),
        ("peak_vram_mb", "peak VRAM MB")]


def rows(path: Path) -> list[str]:
    d = json.loads(path.read_text())
    out = []
    for r in d["results"]:
        st = r.get("stage_seconds", {})
        r = dict(r, geometry_s=round(st.get("geometry", 0) + st.get("refine", 0), 2) if st else None,
                 peak_vram_mb=round(r["peak_vram_mb"]) if r.get("peak_vram_mb") else None)
        cells = ["" if r.get(k) is None else str(r.get(k)) for k, _ in COLS]
        out.append(f"| {path.stem} | " + " | ".join(cells) + f" | {d['card']} |")
    return out


def main() -> None:
    print("| run | " + " | ".join(h for _, h in COLS) + " | card |")
    print("|---|" + "---|" * len(COLS) + "---|")
    for p in sys.argv[1:]:
        print("\n".join(rows(Path(p))))


if __name__ == "__main__":
    main()
