"""Render the evaluation sets of the geometry benchmark from the ground-truth meshes in ../shared/data/meshes.

    python bench/make_eval_sets.py OUT_DIR [--views 60] [--size 512] [--meshes DIR]

Objects: spot (textured, genus 0), bob (textured, genus 1), armadillo (thin ears and fingers, untextured),
bunny (untextured), damaged_helmet (PBR base colour, concave visor). Random views on a sphere, RGBA +
transforms.json + gt.ply; the pipeline holds out every 10th view (images.holdout_every = 10).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("HOTMESH_TEST_DATA", REPO.parent / "shared" / "data"))

OBJECTS = {  # name: (path under meshes/, extra render_set flags)
    "spot": ("spot_cow_pytorch3d/cow.obj", ["--zup"]),
    "bob": ("bob_nvdiffrec/bob_tri.obj", ["--zup"]),
    "armadillo": ("instant_ngp_sdf/armadillo.obj", ["--zup"]),
    "bunny": ("instant_ngp_sdf/bunny.obj", ["--zup"]),
    "helmet": ("damaged_helmet/DamagedHelmet.glb", ["--zup"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--views", type=int, default=60)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--meshes", type=Path, default=DATA / "meshes")
    ap.add_argument("--only", nargs="*", default=list(OBJECTS))
    ap.add_argument("--min-z", type=float, default=-0.6,
                    help="lowest camera direction z: -0.6 (default) the upper 80%% of the sphere, -1 all of it")
    args = ap.parse_args()
    for i, name in enumerate(args.only):
        rel, flags = OBJECTS[name]
        src = args.meshes / rel
        if not src.exists():
            print(f"skip {name}: {src} missing", flush=True)
            continue
        subprocess.run([sys.executable, str(REPO / "tools" / "render_set.py"), str(src), str(args.out / name),
                        "--views", str(args.views), "--size", str(args.size), "--seed", str(i),
                        "--min-z", str(args.min_z), *flags], check=True)


if __name__ == "__main__":
    main()
