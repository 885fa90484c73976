"""Where a mesh has surface that the object lacks: its samples farther than a threshold from the ground truth,
counted by height band (the ground truth's up axis, z for the rendered sets) and by the way their faces point.

    python bench/far_surface.py MESH GT [MESH GT ...] [--tau 0.005] [--samples 400000]

MESH must be in the ground truth's frame (``run_bench.py --keep`` writes it so). Precision is measured against the
whole ground truth (capped where it is an open scan), as :func:`pipeline.report.metrics.observable_scores` does.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def far_by_band(mesh_path: Path, gt_path: Path, tau: float, samples: int, bands: int = 10) -> dict:
    """-> {"precision", "bands": [{"from", "to", "share_of_mesh", "far_in_band", "share_of_far", "facing_down"}]}
    with heights as fractions of the ground truth's height and ``tau`` a fraction of its diagonal."""
    import trimesh
    from scipy.spatial import cKDTree

    from pipeline.report.metrics import cap_open_scan

    mesh = trimesh.load(mesh_path, force="mesh")
    gt = trimesh.load(gt_path, force="mesh")
    lo, hi = gt.bounds
    diag = float(np.linalg.norm(hi - lo))
    g, _ = trimesh.sample.sample_surface(cap_open_scan(gt), samples, seed=2)
    p, face = trimesh.sample.sample_surface(mesh, samples, seed=1)
    d, _ = cKDTree(g).query(p, workers=-1)
    far = d > tau * diag
    h = np.clip((p[:, 2] - lo[2]) / (hi[2] - lo[2]), 0.0, 1.0 - 1e-9)
    down = mesh.face_normals[face][:, 2] < -0.7
    band = (h * bands).astype(int)
    rows = []
    for b in range(bands):
        sel = band == b
        rows.append({"from": b / bands, "to": (b + 1) / bands, "share_of_mesh": float(sel.mean()),
                     "far_in_band": float(far[sel].mean()) if sel.any() else 0.0,
                     "share_of_far": float((far & sel).sum() / max(1, far.sum())),
                     "facing_down": float(down[far & sel].mean()) if (far & sel).any() else 0.0})
    return {"precision": float(1.0 - far.mean()), "bands": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", type=Path, help="MESH GT, repeated")
    ap.add_argument("--tau", type=float, default=0.005, help="threshold, a fraction of the GT's diagonal")
    ap.add_argument("--samples", type=int, default=400_000)
    args = ap.parse_args()
    if len(args.pairs) % 2:
        ap.error("give the meshes and ground truths in pairs: MESH GT [MESH GT ...]")
    for mesh_path, gt_path in zip(args.pairs[::2], args.pairs[1::2]):
        r = far_by_band(mesh_path, gt_path, args.tau, args.samples)
        print(f"{mesh_path.name}: precision at {100 * args.tau:g} % {r['precision']:.3f}")
        for b in r["bands"]:
            print(f"  height {b['from']:.1f}-{b['to']:.1f}: {b['share_of_mesh']:.3f} of the mesh, "
                  f"{b['far_in_band']:.3f} of it far, {b['share_of_far']:.3f} of all far, "
                  f"{b['facing_down']:.2f} of those facing down")


if __name__ == "__main__":
    main()
