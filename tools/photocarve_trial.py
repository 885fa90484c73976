"""Trial of the photo-carving experiment (tools/photocarve.py) on a posed set with GT: the hull against the
photo-carved hull, F-scores at 1 / 0.5 / 0.2 % of the GT diagonal (300k samples).

    python tools/photocarve_trial.py SET RESOLUTION DEVICE THRESHOLD:MIN_THICKNESS [...]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.tune_refine import prepare  # noqa: E402
from pipeline.carve import CarveSettings, carve  # noqa: E402
from pipeline.meshing import MeshingSettings, clean_mesh, marching_cubes  # noqa: E402
from pipeline.metrics import geometry_scores_multi  # noqa: E402
from pipeline.stages.views import Views, load_masks  # noqa: E402
from tools.photocarve import PhotoCarveSettings, photo_carve  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("set", type=Path)
    ap.add_argument("resolution", type=int)
    ap.add_argument("device", choices=["cpu", "cuda"])
    ap.add_argument("variants", nargs="+", metavar="THRESHOLD:MIN_THICKNESS")
    args = ap.parse_args()
    variants = [PhotoCarveSettings(threshold=float(t), min_thickness=int(th))
                for t, th in (v.split(":") for v in args.variants)]
    ctx = prepare(args.set, Path(tempfile.mkdtemp()), args.device, stop="geometry")
    views, masks = Views.load(ctx), load_masks(ctx)
    idx = [i for i in views.train if masks[i] is not None]
    imgs, ms = [views.rgb[i] for i in idx], [masks[i] for i in idx]
    t0 = time.monotonic()
    hull = carve(views.K[idx], views.w2c[idx], ms, CarveSettings(resolution=args.resolution, outlier_views=0),
                 device=args.device)
    print("hull", round(time.monotonic() - t0, 2), hull.field.shape)
    gt = trimesh.load(args.set / "gt.ply", force="mesh")

    def score(field: np.ndarray, name: str, extra: str = "") -> None:
        mesh = clean_mesh(marching_cubes(field, hull.origin, hull.voxel),
                          MeshingSettings(smoothing_iterations=10, max_faces=200_000))
        f = {f"F@{s.tau_rel * 100:g}": round(s.fscore, 4)
             for s in geometry_scores_multi(mesh, gt, 300_000, (0.01, 0.005, 0.002))}
        print(name, f, extra, flush=True)

    score(hull.field, "hull")
    for v in variants:
        t0 = time.monotonic()
        pc = photo_carve(hull.field < 0, hull.origin, hull.voxel, imgs, ms, views.K[idx], views.w2c[idx], v,
                         device=args.device)
        # carved voxels become just outside, so marching cubes puts the new surface half a voxel in
        field = np.where(pc.occupied, hull.field, np.maximum(hull.field, 0.5 * hull.voxel)).astype(np.float32)
        score(field, f"pc t={v.threshold} th={v.min_thickness}",
              f"carved={pc.carved} of {int((hull.field < 0).sum())} passes={pc.passes} "
              f"{time.monotonic() - t0:.1f}s")


if __name__ == "__main__":
    main()
