"""Replay the dense method's silhouette step on a job's cameras and score it against the true silhouettes.

    hotmesh process SET_COPY --out /tmp/out --state /tmp/st --device cpu    # any job: its cameras checkpoint
    python bench/silhouette_replay.py --state /tmp/st/jobs/JOB/stages --set SET \\
        --variant before:keep_measured=false --variant after:keep_measured=true --tag silhouettes-cpu

The depth maps are computed once with the CPU settings (``dense.cpu_max_side``, ``dense.cpu_planes``) and cached
(``--cache``); each variant (fields of ``SilhouetteSettings`` changed from a job's defaults, ``dense.FIELD`` for the
fusion) then runs ``photo_silhouettes`` on the training views as ``dense_geometry`` does, and every view's precision
and recall against the silhouettes of the set's ``gt.ply`` in its true cameras (``bench/true_masks.py``), with the
recall per band of height above the table (``recall_by_height``: the lowest 5 %, 5-10 %, 10-20 % and the rest of the
object's height), are written to ``bench/results/<tag>.json``. It isolates the silhouettes from fusion and
refinement: seconds a variant, where a whole job takes minutes. ``--state`` may also be a state that
``run_bench.py --keep`` kept (extracted from its tarball): it has no photos, so they are read from ``--set``, with
the kept cameras (``poses.npz``), and the training views are those with a silhouette (a GPU job's state, replayed
with the CPU's depth maps).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.run_bench import card  # noqa: E402
from bench.true_masks import precision_recall, recall_by_height, true_heights, true_masks  # noqa: E402
from pipeline.geometry.dense import DenseSettings, photo_depth_maps, surroundings  # noqa: E402
from pipeline.geometry.mvs import DepthMap, MvsSettings, backproject  # noqa: E402
from pipeline.geometry.scene import ObjectRegion  # noqa: E402
from pipeline.geometry.silhouettes import SilhouetteSettings, footprint, photo_silhouettes  # noqa: E402
from pipeline.settings import DenseConfig  # noqa: E402
from pipeline.stages.geometry import silhouette_settings  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Replay:
    """The training views of a job and what the dense method knows before its silhouette step."""

    names: list[str]
    rgbs: list[np.ndarray]
    Ks: np.ndarray
    w2cs: np.ndarray
    dms: list[DepthMap]
    planes: list[tuple[np.ndarray, float]]
    lo: np.ndarray
    hi: np.ndarray


def training_views(stages: Path, set_dir: Path | None = None) -> tuple[list[str], list[np.ndarray], np.ndarray,
                                                                       np.ndarray, list[int]]:
    """(stems, rgbs (H, W, 3) uint8, Ks (N, 3, 3), w2cs (N, 4, 4), their indices among the job's views) of a job's
    training views: from the cameras checkpoint's ``views.npz`` where it is there (a job's own stages folder), else
    (a state kept by ``run_bench.py --keep``, which leaves the photos out) the views that have a silhouette in
    ``geometry/silhouettes.npz``, with ``poses.npz``'s cameras and the photos read from ``set_dir/images``."""
    meta = json.loads((stages / "cameras" / "views.json").read_text())
    if (stages / "cameras" / "views.npz").exists():
        z = np.load(stages / "cameras" / "views.npz")
        idx = [i for i in range(len(meta["names"])) if not z["holdout"][i]]
        rgbs = [z[f"rgb_{i}"] for i in idx]
        Ks, w2cs = z["K"][idx], z["w2c"][idx]
    else:
        if set_dir is None:
            raise SystemExit(f"{stages}: no cameras/views.npz (a kept state): the photos are read from --set")
        import cv2

        with np.load(stages / "geometry" / "silhouettes.npz") as sil:
            idx = sorted(int(k.split("_")[1]) for k in sil.files if k.startswith("mask_"))
        with np.load(stages / "cameras" / "poses.npz") as z:
            Ks, w2cs = z["K"][idx], z["w2c"][idx]
        rgbs = [cv2.imread(str(set_dir / "images" / Path(meta["names"][i]).name))[..., ::-1].copy() for i in idx]
    return [Path(meta["names"][i]).stem for i in idx], rgbs, Ks, w2cs, idx


def load(stages: Path, cache: Path | None, mvs: dict[str, Any] | None = None, set_dir: Path | None = None) -> Replay:
    """``mvs``: MvsSettings fields that differ from the CPU settings (give each its own ``cache``); ``set_dir``: where
    a kept state's photos are (:func:`training_views`)."""
    meta = json.loads((stages / "cameras" / "views.json").read_text())
    names, rgbs, Ks, w2cs, idx = training_views(stages, set_dir)
    if cache is not None and cache.exists():
        dms, planes, lo, hi = pickle.loads(cache.read_bytes())
        return Replay(names, rgbs, Ks, w2cs, dms, planes, lo, hi)
    sp = np.load(stages / "cameras" / "sparse.npz")
    region = ObjectRegion(center=sp["center"], radius=float(sp["radius"]), up=sp["up"],
                          ground=(sp["support_n"], float(sp["support_d"])) if "support_n" in sp else None,
                          object_points=sp["object_points"])
    cfg = DenseConfig()
    s = DenseSettings(mvs=MvsSettings(max_side=cfg.cpu_max_side, planes=cfg.cpu_planes, neighbours=cfg.neighbours,
                                      best_k=cfg.best_k, window=cfg.window, refine_rounds=cfg.refine_rounds,
                                      min_score=cfg.min_score, min_consistent=cfg.min_consistent,
                                      **({"sparse_near": cfg.sparse_near,
                                          "support_hypothesis": cfg.support_hypothesis,
                                          "support_min_score": cfg.support_min_score} | (mvs or {}))))
    # the SfM observations of the training views, numbered as they are (as the geometry stage passes them)
    remap = np.full(len(meta["names"]), -1)
    remap[idx] = np.arange(len(idx))
    seen = remap[sp["obs_view"]] >= 0
    sparse = (sp["points"], remap[sp["obs_view"][seen]], sp["obs_point"][seen])
    dms, _ = photo_depth_maps(rgbs, [None] * len(rgbs), Ks, w2cs, region, s, "cpu", sparse)
    points = np.concatenate([backproject(dm, table=False)[0] for dm in dms])  # as dense_geometry takes them
    support, _, walls, lo, hi = surroundings(points, region, w2cs, sparse, s.box_margin)
    planes = ([] if support is None else [support]) + walls
    if cache is not None:
        cache.write_bytes(pickle.dumps((dms, planes, lo, hi)))
    return Replay(names, rgbs, Ks, w2cs, dms, planes, lo, hi)


def scores(masks: list[np.ndarray], names: list[str], truth: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per-view precision and recall of ``masks`` (N (H, W) bool) against the true silhouettes, and their means."""
    pairs = [precision_recall(m, truth[name])[:2] for m, name in zip(masks, names)]
    p, r = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    iou = p * r / np.maximum(p + r - p * r, 1e-9)
    return {"precision": round(float(p.mean()), 4), "recall": round(float(r.mean()), 4),
            "iou": round(float(iou.mean()), 4), "precision_min": round(float(p.min()), 4),
            "recall_min": round(float(r.min()), 4), "views": len(masks)}


def parse_variant(text: str, kind: type = SilhouetteSettings) -> tuple[str, dict[str, Any]]:
    """"NAME:field=value,..." -> (NAME, fields of ``kind`` with values of their defaults' types). For the
    silhouettes, ``dense.FIELD`` names a field of ``DenseSettings`` (for ``--fuse``), kept as "dense.FIELD"."""
    name, _, rest = text.partition(":")
    out: dict[str, Any] = {}
    for kv in filter(None, rest.split(",")):
        key, _, value = kv.partition("=")
        owner, field_name = kind, key
        if kind is SilhouetteSettings and key.startswith("dense."):
            owner, field_name = DenseSettings, key[len("dense."):]
        if field_name not in {f.name for f in dataclasses.fields(owner)}:
            raise SystemExit(f"silhouette_replay: {owner.__name__} has no field {field_name!r}")
        default = getattr(owner(), field_name)
        out[key] = value.lower() in ("1", "true", "yes") if isinstance(default, bool) else type(default)(value)
    return name, out


def fuse_and_score(rp: Replay, masks: list[np.ndarray], s: SilhouetteSettings, dense: dict[str, Any],
                   set_dir: Path, samples: int, true_sil: dict[str, np.ndarray], foot: Any = None) -> dict[str, Any]:
    """The CPU job's fusion (``dense.cpu_resolution``) of the replay's depth maps with ``masks``, scored as
    ``run_bench.py`` scores a job (the cameras aligned to the true ones, the observable ground truth), with the
    fused surface's gap above the table (its lowest point over the object's height) and F@1 % per band of height,
    and the silhouettes with the fused surface's thin parts added scored against ``true_sil`` (stem -> (H, W) bool)."""
    import trimesh

    from bench.scoring import TrueCameras, alignment, moved, read_nerf_cameras, score
    from bench.true_masks import poses_file
    from pipeline.geometry.dense import fused_surface

    cfg = DenseConfig()
    ds = DenseSettings(resolution=cfg.cpu_resolution, field_blur=cfg.field_blur, close_size=cfg.close_size,
                       silhouettes=s, **{"foot_dissent": cfg.foot_dissent} | dense)
    support = rp.planes[0] if rp.planes else None
    surf = fused_surface(rp.dms, masks, [True] * len(masks), rp.Ks, rp.w2cs, (rp.lo, rp.hi), support, rp.planes,
                         s=ds, device="cpu", foot=foot)
    truth = read_nerf_cameras(poses_file(set_dir), set_dir)
    by_stem = {Path(n).stem: n for n in truth.names}
    names = tuple(by_stem.get(n, n) for n in rp.names)
    job = TrueCameras(names, rp.Ks, rp.w2cs, tuple((m.shape[1], m.shape[0]) for m in masks))
    al = alignment(job, truth)
    mesh = moved(surf.mesh, al.sim)
    gt = trimesh.load(set_dir / "gt.ply", force="mesh")
    z0, z1 = float(gt.bounds[0, 2]), float(gt.bounds[1, 2])
    row: dict[str, Any] = {k: round(v, 4) for k, v in score(mesh, gt, truth, samples).items()}
    row["fused_gap"] = round((float(mesh.vertices[:, 2].min()) - z0) / (z1 - z0), 4)
    from scipy.spatial import cKDTree

    pts = trimesh.sample.sample_surface(gt, samples // 10, seed=0)[0]
    dist = cKDTree(trimesh.sample.sample_surface(mesh, samples, seed=1)[0]).query(pts)[0]
    rel = (pts[:, 2] - z0) / (z1 - z0)
    diag = float(np.linalg.norm(gt.bounds[1] - gt.bounds[0]))
    row["fused_recall_by_height"] = {f"{a:.2f}-{min(b, 1.0):.2f}": round(float(
        (dist[(rel >= a) & (rel < b)] < 0.01 * diag).mean()), 4) for a, b in ((0, .05), (.05, .1), (.1, .2),
                                                                                       (.2, 1.01))}
    # the silhouettes the refinement gets: the fused surface's thin parts added, as dense_geometry adds them (with
    # the photos, so that on a GPU's settings their edge is cut again at the photo's size)
    from pipeline.geometry.silhouettes import add_thin_parts

    grown, views = add_thin_parts(masks, np.asarray(surf.mesh.vertices), np.asarray(surf.mesh.faces), rp.Ks,
                                  rp.w2cs, s, "cpu", rgbs=rp.rgbs)
    row["with_thin_parts"] = scores(grown, rp.names, true_sil) | {"views_gained": views}
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", type=Path, required=True,
                    help="a job's stages folder (cameras/views.npz, sparse.npz), or a state kept by run_bench.py --keep")
    ap.add_argument("--set", type=Path, required=True, help="the photo-like set, gt.ply inside, poses beside")
    ap.add_argument("--cache", type=Path, default=None, help="depth maps cached here (pickle)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:field=value,...")
    ap.add_argument("--mvs", default="", metavar="field=value,...",
                    help="MvsSettings fields for the depth maps (rows are named <mvs>/<variant>)")
    ap.add_argument("--masks", type=Path, default=None, help="save each variant's masks here (<set>-<variant>.npz)")
    ap.add_argument("--fuse", action="store_true",
                    help="also fuse each variant's silhouettes as the CPU job does and score the fused surface")
    ap.add_argument("--samples", type=int, default=200_000, help="ground-truth samples for --fuse's scores")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    t = time.monotonic()
    mvs = parse_variant(":" + args.mvs, MvsSettings)[1]
    rp = load(args.state, args.cache, mvs, args.set)
    print(f"{len(rp.names)} views, depth maps {time.monotonic() - t:.0f} s")
    truth = true_masks(args.set)
    heights = true_heights(args.set)
    rows = []
    for name, fields in [parse_variant(v) for v in args.variant] or [("default", {})]:
        t = time.monotonic()
        dense = {k[len("dense."):]: v for k, v in fields.items() if k.startswith("dense.")}
        # a variant's fields change the job's own silhouette settings (those of the default config on a GPU, whose
        # silhouettes these are, edge step included; only the depth maps are the CPU's)
        s = dataclasses.replace(silhouette_settings(DenseConfig(), gpu=True),
                                **{k: v for k, v in fields.items() if not k.startswith("dense.")})
        # the footprint as the job finds it, once for the silhouettes and the fusion
        foot = footprint([backproject(dm)[0] for dm in rp.dms], rp.lo, rp.hi, rp.planes[0], s) if (
            rp.planes and s.base_open) else None
        masks = photo_silhouettes(rp.rgbs, rp.dms, rp.Ks, rp.w2cs, rp.lo, rp.hi, rp.planes, s, "cpu", foot=foot)
        if mvs:
            name = f"{args.mvs}/{name}"
        row = {"set": args.set.name, "variant": name, "settings": fields, "mvs": mvs, **scores(masks, rp.names, truth),
               "recall_by_height": recall_by_height(masks, rp.names, heights),
               "seconds": round(time.monotonic() - t, 1)}
        if args.fuse:
            row["fused"] = fuse_and_score(rp, masks, s, dense, args.set, args.samples, truth, foot)
        print(json.dumps(row))
        if args.masks:
            args.masks.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(args.masks / f"{args.set.name}-{name.replace('/', '_')}.npz",
                                **{stem: m for stem, m in zip(rp.names, masks)})
        rows.append(row)
    if args.tag:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{args.tag}.json"
        old = json.loads(path.read_text())["results"] if path.exists() else []
        keep = [r for r in old if (r["set"], r["variant"]) not in {(x["set"], x["variant"]) for x in rows}]
        path.write_text(json.dumps({"card": card(), "date": time.strftime("%Y-%m-%d"), "results": keep + rows},
                                   indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
