"""Trial of hull-bounded stereo carving (tools/stereo.py) on a posed set with GT: the hull against the carved
hull, F-scores at 1 / 0.5 / 0.2 % of the GT diagonal (300k samples), full GT and observable GT ("oF").

Each ``--sweep`` (matching settings) runs the depth search once; each ``--fuse`` (fusion settings) is then scored
on its depth maps. ``--dump DIR`` keeps the hull and depth maps (npz) for offline work.

    python tools/stereo_trial.py SET RESOLUTION DEVICE --sweep max_side=512 --fuse carve_voxels=1.0 ...
"""
from __future__ import annotations

import argparse
import dataclasses
import re
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
from pipeline.metrics import geometry_scores_multi, observable_scores  # noqa: E402
from pipeline.stages.views import Views, load_masks  # noqa: E402
from tools.stereo import HullSampler, StereoSettings, fuse_free_space, sweep_depths  # noqa: E402


def parse(text: str, base: StereoSettings | None = None) -> StereoSettings:
    kw: dict[str, float | int] = {}
    types = {f.name: f.type for f in dataclasses.fields(StereoSettings)}
    for part in filter(None, text.split(",")):
        k, v = part.split("=")
        kw[k] = float(v) if "float" in str(types[k]) else int(v)
    return dataclasses.replace(base or StereoSettings(), **kw)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("set", type=Path)
    ap.add_argument("resolution", type=int)
    ap.add_argument("device", choices=["cpu", "cuda"])
    ap.add_argument("--sweep", action="append", default=[])
    ap.add_argument("--fuse", action="append", default=[])
    ap.add_argument("--dump", type=Path, default=None)
    args = ap.parse_args()
    ctx = prepare(args.set, Path(tempfile.mkdtemp()), args.device, stop="geometry")
    views, masks = Views.load(ctx), load_masks(ctx)
    idx = [i for i in views.train if masks[i] is not None]
    imgs, ms = [views.rgb[i] for i in idx], [masks[i] for i in idx]
    Ks, w2cs = views.K[idx], views.w2c[idx]
    t0 = time.monotonic()
    hull = carve(Ks, w2cs, ms, CarveSettings(resolution=args.resolution, outlier_views=0), device=args.device)
    print("hull", round(time.monotonic() - t0, 2), hull.field.shape, flush=True)
    gt = trimesh.load(args.set / "gt.ply", force="mesh")
    sizes = [im.shape[:2][::-1] for im in views.rgb]

    def score(field: np.ndarray, name: str, extra: str = "") -> None:
        mesh = clean_mesh(marching_cubes(field, hull.origin, hull.voxel),
                          MeshingSettings(smoothing_iterations=10, max_faces=200_000))
        f = {f"F@{s.tau_rel * 100:g}": round(s.fscore, 4)
             for s in geometry_scores_multi(mesh, gt, 300_000, (0.01, 0.005, 0.002))}
        obs = {f"oF@{s.tau_rel * 100:g}": round(s.fscore, 4)
               for s in observable_scores(mesh, gt, views.K, views.w2c, sizes, 300_000, (0.01, 0.002))}
        print(args.set.name, name, f, obs, extra, flush=True)

    score(hull.field, "hull")
    for sw in args.sweep or [""]:
        st = parse(sw)
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.monotonic()
        dm = sweep_depths(imgs, ms, Ks, w2cs, HullSampler(hull.field, hull.origin, hull.voxel,
                                                          torch.device(args.device)), st, args.device)
        if args.device == "cuda":
            torch.cuda.synchronize()
        t_sweep = time.monotonic() - t0
        if args.dump:
            args.dump.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(args.dump / (args.set.name + "-" + re.sub(r"[^A-Za-z0-9]+", "_", sw or "default") + ".npz"), field=hull.field,
                                origin=hull.origin, voxel=hull.voxel, Ks=dm.Ks, w2cs=w2cs,
                                depth=np.stack([d.cpu().numpy() for d in dm.depth]),
                                front=np.stack([d.cpu().numpy() for d in dm.front]),
                                score=np.stack([d.cpu().numpy() for d in dm.score]).astype(np.float16))
        for fu in args.fuse or [""]:
            fs = parse(fu, st)
            t0 = time.monotonic()
            res = fuse_free_space(hull.field, hull.origin, hull.voxel, dm, w2cs, fs)
            t_fuse = time.monotonic() - t0
            score(res.field, f"sweep[{sw}] fuse[{fu}]", f"carved={res.carved_voxels}/{res.hull_voxels} "
                  f"kept={res.kept_pixels} sweep {t_sweep:.1f}s fuse {t_fuse:.1f}s")
            # the fused surface wherever it is known, for comparison ("plain-max" in the committed logs)
            if fu == (args.fuse or [""])[0]:
                plain = fuse_free_space(hull.field, hull.origin, hull.voxel, dm, w2cs,
                                        dataclasses.replace(fs, fused_surface=True))
                score(plain.field, f"sweep[{sw}] plain-max")


if __name__ == "__main__":
    main()
