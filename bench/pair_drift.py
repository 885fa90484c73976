"""How far the refinement moves a surface that is already right, with and without the photo-consistency term.

    python bench/pair_drift.py SET [--size 160] [--views 24] [--steps 30] [--faces 6000] [--pair-weight 0.2]
                               [--out bench/results] [--tag pair-drift-cpu]

SET is a masked set with ``transforms.json`` and ``gt.ply`` (e.g. ``../shared/data/spot_render``). Its true surface,
decimated to at most ``--faces`` (spot's 5,856 are kept as they are), is refined on the CPU (pytorch3d, whole photos of ``--size`` pixels, one level, no
remeshing) by three variants: the term alone, the silhouettes and colours (the refinement without the term) and
both with the term at ``--pair-weight``. Each row gives the median and 90th percentile distance of the result to the
true surface (% of the diagonal; the start's row is the measure's floor, the spacing of the truth's 200,000
samples, where the surface is not decimated); a term that only adds information keeps the third at or below the
second.
Results: ``<out>/<tag>.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from bench.pair_bias import load_masked
from pipeline.appearance.refine import RefineSettings, refine
from pipeline.geometry.meshing import decimate
from pipeline.imaging.raster import Pytorch3dRasterizer


def distances(mesh: trimesh.Trimesh, truth: cKDTree, diag: float, n: int = 100_000) -> tuple[float, float]:
    """Median and 90th percentile distance of ``n`` samples of ``mesh`` to the truth's samples, % of ``diag``."""
    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=0)
    d, _ = truth.query(pts)
    return round(float(np.median(d)) / diag * 100, 4), round(float(np.percentile(d, 90)) / diag * 100, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("set", type=Path)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--faces", type=int, default=6000)
    ap.add_argument("--pair-weight", type=float, default=0.2)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--tag", default="pair-drift-cpu")
    a = ap.parse_args()
    photos, masks, Ks, w2cs, gt = load_masked(a.set, a.views)
    start = decimate(gt, a.faces)
    diag = float(np.linalg.norm(gt.extents))
    truth = cKDTree(trimesh.sample.sample_surface(gt, 200_000, seed=1)[0])
    rows = [{"variant": "start", **dict(zip(("median_pct", "p90_pct"), distances(start, truth, diag)))}]
    print(json.dumps(rows[-1]), flush=True)
    variants = {"term alone": dict(w_pair=1.0, w_photo=0.0, w_silhouette=0.0),
                "silhouettes and colours": dict(w_pair=0.0),
                "silhouettes, colours and the term": dict(w_pair=a.pair_weight)}
    for name, weights in variants.items():
        t0 = time.monotonic()
        s = RefineSettings(levels=((a.size, a.steps),), max_faces=a.faces, start_faces=a.faces, remesh="subdivide",
                           views_per_step=4, pair_views=4, **weights)
        res = refine(np.asarray(start.vertices), np.asarray(start.faces), photos, masks, Ks, w2cs,
                     Pytorch3dRasterizer(), s, "cpu")
        med, p90 = distances(trimesh.Trimesh(res.vertices, res.faces, process=False), truth, diag)
        rows.append({"variant": name, **weights, "median_pct": med, "p90_pct": p90,
                     "pair_share": list(res.pair_share_per_level), "seconds": round(time.monotonic() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    out = {"set": str(a.set), "size": a.size, "views": len(photos), "steps": a.steps, "faces": a.faces,
           "rows": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.tag}.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out / (a.tag + '.json')}")


if __name__ == "__main__":
    main()
