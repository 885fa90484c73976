"""The unseen-surface fill (:func:`pipeline.geometry.unseen.settle_unseen`) replayed on a kept job's dense mesh with
other settings, each result scored against the set's ground truth (fused surface, no refinement).

    python bench/unseen_replay.py STATE.tar.gz|STATE_DIR SET --variant down:rim_max_down=0.5,island_vertices=50 ...

STATE is what ``run_bench.py --keep`` keeps of a job (``geometry/mesh.ply`` and ``silhouettes.npz``, the cameras'
``poses.npz`` and ``views.json``); SET the photo set with its true poses beside it (``<set>.poses.json``). The kept
mesh has had the job's own fill already: a variant frees what the job's settings held. Keys: facing, rim_views,
rim_max_down, island_vertices. Up is the true up (+z of the set) in the job's frame.
"""
from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import trimesh

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.scoring import TrueCameras, alignment, moved, read_nerf_cameras, score  # noqa: E402
from pipeline.geometry.unseen import settle_unseen  # noqa: E402

KEYS = {"facing": float, "rim_views": int, "rim_max_down": float, "island_vertices": int}


def parse(text: str) -> tuple[str, dict[str, float | int]]:
    name, _, rest = text.partition(":")
    out: dict[str, float | int] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in KEYS:
            raise SystemExit(f"--variant keys are {', '.join(KEYS)}, got {key!r}")
        out[key] = KEYS[key](value)
    return name, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("state", type=Path)
    ap.add_argument("set", type=Path)
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=value,...")
    ap.add_argument("--samples", type=int, default=300_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = args.state
        if state.is_file():
            with tarfile.open(state) as tar:
                tar.extractall(tmp, filter="data")
            state = Path(tmp)
        mesh = trimesh.load(state / "geometry" / "mesh.ply", process=False)
        with np.load(state / "cameras" / "poses.npz") as z:
            K, w2c = z["K"], z["w2c"]
        names = json.loads((state / "cameras" / "views.json").read_text())["names"]
        with np.load(state / "geometry" / "silhouettes.npz") as s:
            idx = sorted(int(k.split("_")[1]) for k in s.files if k.startswith("mask_"))
            masks = [s[f"mask_{i}"] for i in idx]
    truth = read_nerf_cameras(Path(f"{args.set}.poses.json"), args.set / "images")
    al = alignment(TrueCameras(tuple(Path(n).name for n in names), K, w2c, tuple((1, 1) for _ in names)), truth)
    gt = trimesh.load(args.set / "gt.ply", force="mesh")
    up = al.sim.R.T @ np.array([0.0, 0.0, 1.0])
    sizes = [(m.shape[1], m.shape[0]) for m in masks]
    rows = [("kept", mesh, None)]
    for text in args.variant:
        name, kw = parse(text)
        r = settle_unseen(mesh, K[idx], w2c[idx], sizes, kw.pop("facing", 0.45), masks, kw.pop("rim_views", 1),
                          up=up, **kw)
        rows.append((name, trimesh.Trimesh(r.vertices, mesh.faces, process=False), r.unseen_share))
    for name, m, share in rows:
        sc = score(moved(m, al.sim), gt, truth, args.samples)
        print(json.dumps({"variant": name, "free_share": share,
                          **{k: round(v, 4) for k, v in sc.items() if k.startswith(("fscore", "chamfer"))}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
