"""Seconds of the refinement's steps on one GPU, the step's draw done three ways, on a synthetic capture.

    python bench/refine_steps.py --out bench/results --tag refine-steps-h200

The capture: a unit sphere painted with a smooth pattern, 43 photos at 960x720 from two rings, the start mesh 5 %
too big with 30k faces; the refinement's GPU settings (two levels of 250 steps at 256 and 512 px, each photo's
window, the photo-consistency term on 4 photos a step, per-photo gains, the leash) with midpoint subdivision
between levels (so that the CPU remesh does not blur the loop's time). Variants, run in turn, twice each:

- ``readback``: clip planes read back to the host (``float()``) at every draw, and three rasterisations a step;
- ``planes``: clip planes computed on the device, still three rasterisations a step;
- ``one-draw``: both, and the render and the term's surface points from one rasterisation (the default).

Each row: the loop's seconds per level (the level's seconds less its setup), the mean radius error of the result.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def readback_clip_coords(verts, K, w2c, size):
    """The clip coordinates as drawn before: one near/far pair for the batch, read back to the host."""
    import torch

    from pipeline.imaging.raster import projection, to_camera

    cam = to_camera(verts, w2c)
    depth = cam[..., 2].detach()
    near = max(float(depth[depth > 0].min()) * 0.5, 1e-4) if (depth > 0).any() else 1e-3
    far = float(depth.max()) * 2.0 + near
    cam_h = torch.nn.functional.pad(cam, (0, 1), value=1.0)
    return torch.einsum("bij,bvj->bvi", projection(K, size, near, far), cam_h).contiguous()


class ThreeCalls:
    """A rasteriser that draws the step's render and the term's points in three calls, as before."""

    def __init__(self, inner) -> None:
        self.inner, self.name = inner, inner.name

    def render(self, *a):
        return self.inner.render(*a)

    def positions(self, *a):
        return self.inner.positions(*a)

    def render_with_points(self, verts, faces, colors, cams, first, more):
        from pipeline.imaging.raster import separate_render_with_points

        return separate_render_with_points(self, verts, faces, colors, cams, first, more)


def capture(n: int, width: int, height: int):
    import trimesh

    from pipeline.imaging.raster import mesh_renderer
    from pipeline.imaging.render import look_at

    target = trimesh.creation.icosphere(subdivisions=6, radius=1.0)
    p = target.vertices
    c = 0.5 + 0.25 * np.sin(17 * p[:, 0] + 1) * np.sin(13 * p[:, 1]) + 0.2 * np.sin(23 * p[:, 2] - 5 * p[:, 0])
    colors = np.clip(np.stack([c, 0.8 * c + 0.1, 1 - c], 1), 0, 1)
    K = np.array([[width * 1.2, 0, width / 2], [0, width * 1.2, height / 2], [0, 0, 1.0]])
    draw = mesh_renderer("cuda")
    Ks, w2cs, masks, photos = [], [], [], []
    for i in range(n):
        a = 2 * np.pi * i / n * 2
        w2c = look_at(np.array([3.2 * np.cos(a), 3.2 * np.sin(a), 0.6 + 1.2 * (i < n // 2)]), np.zeros(3),
                      np.array([0, 0, 1.0]))
        out = draw(target, K, w2c, width, height, colors=colors)
        Ks.append(K), w2cs.append(w2c), masks.append(out.mask)
        photos.append((out.rgb * 255).astype(np.uint8))
    return np.array(Ks), np.array(w2cs), masks, photos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--views", type=int, default=43)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--tag", default="refine-steps")
    args = ap.parse_args()

    import torch
    import trimesh

    import pipeline.imaging.raster as raster
    from pipeline.appearance.refine import RefineSettings, refine

    Ks, w2cs, masks, photos = capture(args.views, 960, 720)
    start = trimesh.creation.icosphere(subdivisions=4, radius=1.05)  # 5k faces, one midpoint step to 20k
    start = start.subdivide()  # 20k faces; 80k at the second level
    settings = RefineSettings(levels=((256, 250), (512, 250)), max_faces=250_000, start_faces=len(start.faces),
                              remesh="subdivide", lam=9.0, w_pair=0.2, pair_views=4, view_gains=True, max_move=0.1,
                              crop=True)
    fast = raster.NvdiffrastRasterizer()
    planes = raster.clip_coords
    rows = []
    for rep in range(args.repeats):
        for name in ("readback", "planes", "one-draw"):
            raster.clip_coords = readback_clip_coords if name == "readback" else planes
            r = fast if name == "one-draw" else ThreeCalls(fast)
            torch.cuda.synchronize()
            t0 = time.monotonic()
            res = refine(np.asarray(start.vertices), np.asarray(start.faces), photos, masks, Ks, w2cs, r, settings,
                         "cuda")
            torch.cuda.synchronize()
            loops = [round(a - b, 3) for a, b in zip(res.seconds_per_level, res.setup_seconds_per_level)]
            err = float(np.abs(np.linalg.norm(res.vertices, axis=1) - 1.0).mean())
            rows.append({"variant": name, "repeat": rep, "seconds": round(time.monotonic() - t0, 3),
                         "loop_seconds_per_level": loops,
                         "setup_seconds_per_level": [round(s, 3) for s in res.setup_seconds_per_level],
                         "radius_error_mean": round(err, 5), "faces": int(len(res.faces))})
            print(json.dumps(rows[-1]), flush=True)
    raster.clip_coords = planes
    from bench.host_probe import python_loop

    out = {"card": torch.cuda.get_device_name(0), "host": {"python_loop_s": round(python_loop(), 3)},
           "views": args.views, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
