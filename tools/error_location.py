"""Where a mesh misses its ground truth: the share of surface samples farther than tau (fraction of the GT
bounding-box diagonal) from the other surface, in both directions, and how those misses spread along each axis of
the GT's box (5 bins from min to max).

    python tools/error_location.py MESH GT [--tau 0.01] [--samples 300000]

For example, with a mesh kept by ``bench/run_bench.py --keep DIR``, to see whether misses cluster (an open base, a
cavity) or spread evenly (noise, smoothing).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.metrics import sample_points  # noqa: E402


def miss_histograms(mesh: trimesh.Trimesh, gt: trimesh.Trimesh, tau_rel: float, samples: int,
                    bins: int = 5) -> dict[str, dict]:
    """{"precision"|"recall": {"fraction": share of samples beyond tau, "bins": (3, bins) counts per GT-box axis}}."""
    if tau_rel <= 0:
        raise ValueError(f"tau must be positive, got {tau_rel}")
    diag = float(np.linalg.norm(gt.extents))
    p = sample_points(mesh, samples, seed=1)
    q = sample_points(gt, samples, seed=2)
    dp, _ = cKDTree(q).query(p, workers=-1)
    dq, _ = cKDTree(p).query(q, workers=-1)
    lo, hi = gt.bounds
    out = {}
    for name, pts, d in (("precision", p, dp), ("recall", q, dq)):
        far = d > tau_rel * diag
        rel = (pts[far] - lo) / (hi - lo)
        out[name] = {"fraction": float(far.mean()),
                     "bins": np.stack([np.histogram(np.clip(rel[:, a], 0, 1), bins=bins, range=(0, 1))[0]
                                       for a in range(3)])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mesh", type=Path)
    ap.add_argument("gt", type=Path)
    ap.add_argument("--tau", type=float, default=0.01)
    ap.add_argument("--samples", type=int, default=300_000)
    args = ap.parse_args()
    mesh = trimesh.load(args.mesh, process=False, force="mesh")
    gt = trimesh.load(args.gt, force="mesh")
    for name, r in miss_histograms(mesh, gt, args.tau, args.samples).items():
        print(f"{name} misses (> {args.tau:g} of the diagonal): {100 * r['fraction']:.1f} % of the samples")
        for axis, counts in zip("xyz", r["bins"]):
            share = counts / max(1, counts.sum())
            print(f"  along {axis}, min -> max: " + " ".join(f"{100 * x:4.0f}%" for x in share))


if __name__ == "__main__":
    main()
