"""Where the refinement's photo-consistency term (refine.pair) puts a surface it already has right.

    python bench/pair_bias.py SET [--size 96] [--views 12] [--offsets -0.4 -0.2 0 0.2 0.4] [--no-object-core]
                              [--out bench/results] [--tag pair-bias-cpu]

SET is a masked set with ``transforms.json`` and ``gt.ply`` (e.g. ``../shared/data/spot_render``). Its true surface,
moved along its vertex normals by each offset (% of the diagonal), is scored by the term over every view with each
of its 4 neighbours, as the refinement would at one level of ``--size`` pixels (whole photos, CPU rasteriser): the
mean loss and its derivative along the normals. An unbiased term has its lowest loss, and a derivative that changes
sign, at offset 0. ``--no-object-core`` leaves out the neighbour's silhouette core check (``pair_loss``'s
``object_j``), as the term was first written. Results: ``<out>/<tag>.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image

from pipeline.appearance.photoconsistency import blurred_gray, pair_loss, pair_neighbours, project
from pipeline.appearance.refine import _resize_stack, window_intrinsics
from pipeline.cameras.cameras import _resolve_frame_file, intrinsics_for_image, read_transforms
from pipeline.imaging.raster import Cameras, Pytorch3dRasterizer


def load_masked(folder: Path, views: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray,
                                                 trimesh.Trimesh]:
    """``views`` frames spread over a masked set's ``transforms.json``: photos (H, W, 3) uint8, masks (H, W) bool,
    K (N, 3, 3), w2c (N, 4, 4) OpenCV, and the set's ``gt.ply``."""
    src = read_transforms(folder / "transforms.json")
    gt = trimesh.load(folder / "gt.ply", force="mesh")
    frames = src.frames[::max(1, len(src.frames) // views)][:views]
    photos, masks, Ks, w2cs = [], [], [], []
    for f in frames:
        im = np.asarray(Image.open(_resolve_frame_file(folder, f.name)).convert("RGBA"))
        photos.append(im[..., :3].copy())
        masks.append(im[..., 3] > 127)
        Ks.append(intrinsics_for_image(f, im.shape[1], im.shape[0]))
        w2cs.append(f.w2c)
    return photos, masks, np.array(Ks), np.array(w2cs), gt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("set", type=Path)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--offsets", type=float, nargs="+", default=[-0.4, -0.2, 0.0, 0.2, 0.4])
    ap.add_argument("--no-object-core", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--tag", default="pair-bias-cpu")
    a = ap.parse_args()
    photos, masks, Ks, w2cs, gt = load_masked(a.set, a.views)
    H, W = photos[0].shape[:2]
    size = (round(H * a.size / max(H, W)), round(W * a.size / max(H, W)))
    win = np.array([[0, 0, W, H]] * len(photos))
    cpu = torch.device("cpu")
    K = torch.tensor(window_intrinsics(Ks, win, size), dtype=torch.float32)
    w2c = torch.tensor(w2cs, dtype=torch.float32)
    grey = blurred_gray(_resize_stack(photos, size, cpu, win) / 255.0, 0.0)
    sil = _resize_stack(masks, size, cpu, win)[..., 0] > 0.5
    nb = torch.from_numpy(pair_neighbours(w2cs, gt.vertices.mean(0)))
    r = Pytorch3dRasterizer()
    faces = torch.tensor(gt.faces, dtype=torch.int32)
    v0 = torch.tensor(gt.vertices, dtype=torch.float32)
    n0 = torch.tensor(np.asarray(gt.vertex_normals), dtype=torch.float32)
    diag = float(np.linalg.norm(gt.extents))
    rows = []
    t0 = time.monotonic()
    for off in a.offsets:
        v = (v0 + off / 100 * diag * n0).requires_grad_(True)
        total = torch.zeros(())
        with torch.no_grad():
            pts_all, cov_all = r.positions(v.detach(), faces, Cameras(K=K, w2c=w2c, size=size))
            depth_all = project(pts_all, K, w2c)[1] * cov_all
        pts, cover = r.positions(v, faces, Cameras(K=K, w2c=w2c, size=size))
        for k in range(nb.shape[1]):
            pj = nb[:, k].clamp_min(0)
            loss, _ = pair_loss(pts, cover & sil, grey, grey[pj], K[pj], w2c[pj], depth_all[pj],
                                object_j=None if a.no_object_core else cov_all[pj] & sil[pj])
            total = total + loss / nb.shape[1]
        total.backward()
        rows.append({"offset_pct": off, "loss": round(float(total.detach()), 5),
                     "d_loss_d_normal_offset": round(float((v.grad * n0).sum()), 4)})
        print(json.dumps(rows[-1]), flush=True)
    out = {"set": str(a.set), "size": a.size, "views": len(photos), "object_core": not a.no_object_core,
           "seconds": round(time.monotonic() - t0, 1), "rows": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.tag}.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out / (a.tag + '.json')}")


if __name__ == "__main__":
    main()
