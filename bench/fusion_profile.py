"""Where the dense path's time goes after the depth maps: cProfile of ``dense_geometry`` on a rendered test scene.

    python -m bench.fusion_profile [--size 400x300] [--resolution 192] [--planes 64] [--device cpu] [--top 30]
                                   [--save inputs.pkl]
    python -m bench.fusion_profile --load inputs.pkl [--resolution 192] [--device cpu] [--repeat 2] [--threads 1]

The scene is tests/scenes.py's object on a table before a wall, posed with its true cameras; the object region is
the one SfM would find (centre, radius, the table as support). Prints the stats' seconds and the functions with
the most cumulative time. ``--save`` keeps the inputs of :func:`pipeline.geometry.dense.fused_surface` (depth maps,
silhouettes, box, planes), ``--load`` times only that step on them (fusion and meshing without the minutes of
depth maps).
"""
from __future__ import annotations

import argparse
import pickle
import time
import cProfile
import json
import pstats
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pipeline.geometry.dense as dense  # noqa: E402
from pipeline.geometry.dense import DenseSettings, dense_geometry  # noqa: E402
from pipeline.geometry.mvs import MvsSettings  # noqa: E402
from pipeline.geometry.scene import ObjectRegion  # noqa: E402
from tests.scenes import SceneSpec, render_scene  # noqa: E402


def scene_inputs(size: tuple[int, int], folder: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, ObjectRegion]:
    """Rendered photos (N (H, W, 3) uint8), Ks (N, 3, 3), OpenCV w2cs (N, 4, 4) and the object's region."""
    out = render_scene(folder, SceneSpec(size=size))
    meta = json.loads((out / "transforms.json").read_text())
    K = np.array([[meta["fl_x"], 0, meta["cx"]], [0, meta["fl_y"], meta["cy"]], [0, 0, 1.0]])
    images, w2cs = [], []
    for fr in meta["frames"]:
        images.append(np.asarray(Image.open(out / fr["file_path"]).convert("RGB")))
        c2w = np.array(fr["transform_matrix"]) @ np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL -> OpenCV axes
        w2cs.append(np.linalg.inv(c2w))
    region = ObjectRegion(center=np.array([0.15, 0.0, 0.5]), radius=0.8, up=np.array([0, 0, 1.0]),
                          ground=(np.array([0, 0, 1.0]), 0.0), object_points=np.zeros(0, bool))
    return images, np.array([K] * len(images)), np.array(w2cs), region


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="400x300")
    ap.add_argument("--resolution", type=int, default=192)
    ap.add_argument("--planes", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--save", type=Path)
    ap.add_argument("--load", type=Path)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    a = ap.parse_args()
    W, H = (int(x) for x in a.size.split("x"))
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.load:
        with a.load.open("rb") as f:
            args, kwargs = pickle.load(f)
        kwargs["s"] = DenseSettings(resolution=a.resolution, max_faces=kwargs["s"].max_faces)
        kwargs["device"] = a.device
        for _ in range(a.repeat):
            t0, c0 = time.monotonic(), time.process_time()
            surf = dense.fused_surface(*args, **kwargs)
            print(f"fused_surface {time.monotonic() - t0:.2f} s ({time.process_time() - c0:.2f} s CPU), "
                  f"grid {surf.grid.dims}, raw faces "
                  f"{len(surf.raw.faces)}, faces {len(surf.mesh.faces)}, watertight {surf.mesh.is_watertight}",
                  json.dumps({k: round(v, 2) for k, v in surf.seconds.items()}))
        return
    if a.save:
        inner = dense.fused_surface

        def keep(*args_, **kwargs_):  # type: ignore[no-untyped-def]
            with a.save.open("wb") as f:
                pickle.dump((args_, {k: v for k, v in kwargs_.items() if k != "check"}), f)
            return inner(*args_, **kwargs_)

        dense.fused_surface = keep  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        images, Ks, w2cs, region = scene_inputs((W, H), Path(tmp) / "scene")
    s = DenseSettings(mvs=MvsSettings(max_side=max(W, H), planes=a.planes, neighbours=4), resolution=a.resolution)
    prof = cProfile.Profile()
    prof.enable()
    res = dense_geometry(images, [None] * len(images), Ks, w2cs, region, s, device=a.device)
    prof.disable()
    print(json.dumps(res.stats["seconds"]), res.stats["grid"], res.stats["raw_faces"], res.stats["faces"])
    pstats.Stats(prof).sort_stats("cumulative").print_stats(a.top)


if __name__ == "__main__":
    main()
