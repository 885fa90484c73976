"""What the estimated silhouettes cost: photo-like sets with their true silhouettes, and estimated ones scored.

    python bench/true_masks.py make SET OUT            # OUT: a copy of SET with masks/ rendered from gt.ply
    python bench/true_masks.py score STATE.tar.gz SET  # a kept job's silhouettes (run_bench --keep) against them
                                                       # (--fused: the kept fused surface's outline beside them;
                                                       # --edge-band B: also each one reduced to the working size and
                                                       # its edge cut again at the photo's size, as the job does)

``make`` renders the ground truth with the true poses (``<set>.poses.json`` beside the set) into
``OUT/masks/<image>.png``; run that copy unposed with ``geometry.method = dense`` and the job uses those masks
where it would estimate silhouettes, so the difference to the plain set is what the estimates cost
(``docs/benchmarks.md``, What the estimated silhouettes cost). ``score`` prints each training view's precision
and recall of the silhouettes a job fitted (``geometry/silhouettes.npz`` in the kept state) against the true
ones, with ``--pictures DIR`` drawing extra pixels red and missing ones blue.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import trimesh

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.run_bench import poses_file  # noqa: E402
from bench.scoring import read_nerf_cameras  # noqa: E402
from pipeline.imaging.render import render  # noqa: E402


def true_masks(set_dir: Path) -> dict[str, np.ndarray]:
    """Image stem -> (h, w) bool silhouette of the set's ``gt.ply`` in each of its true cameras
    (``<set>.poses.json`` beside it)."""
    poses = poses_file(set_dir)
    if poses is None:
        raise SystemExit(f"true_masks: {set_dir.name}.poses.json is not beside {set_dir}")
    cams = read_nerf_cameras(poses, set_dir)
    gt = trimesh.load(set_dir / "gt.ply", force="mesh")
    return {Path(name).stem: render(gt, K, w2c, w, h).mask.reshape(h, w)
            for name, K, w2c, (w, h) in zip(cams.names, cams.Ks, cams.w2cs, cams.sizes)}


def true_heights(set_dir: Path) -> dict[str, np.ndarray]:
    """Image stem -> (h, w) float32: the height of the ``gt.ply`` surface each pixel sees in its true camera, as a
    share of the ground truth's height above its lowest point (z is up in every set; NaN where it sees no ground
    truth). What a silhouette misses near the table is then read off per band of height."""
    poses = poses_file(set_dir)
    if poses is None:
        raise SystemExit(f"true_heights: {set_dir.name}.poses.json is not beside {set_dir}")
    cams = read_nerf_cameras(poses, set_dir)
    gt = trimesh.load(set_dir / "gt.ply", force="mesh")
    z0, z1 = float(gt.bounds[0, 2]), float(gt.bounds[1, 2])
    out = {}
    for name, K, w2c, (w, h) in zip(cams.names, cams.Ks, cams.w2cs, cams.sizes):
        r = render(gt, K, w2c, w, h)
        ys, xs = np.mgrid[0:h, 0:w]
        d = np.where(r.mask.reshape(h, w), r.depth.reshape(h, w), np.nan)
        cam = np.stack([(xs + 0.5 - K[0, 2]) / K[0, 0] * d, (ys + 0.5 - K[1, 2]) / K[1, 1] * d, d], -1)
        world = (cam - w2c[:3, 3]) @ w2c[:3, :3]
        out[Path(name).stem] = ((world[..., 2] - z0) / max(z1 - z0, 1e-12)).astype(np.float32)
    return out


def recall_by_height(masks: list[np.ndarray], names: list[str], heights: dict[str, np.ndarray],
                     bands: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 1.01)) -> dict[str, float]:
    """Share of the true silhouettes' pixels covered by ``masks`` (N (h, w) bool, resized to the truth's size) in
    each band of relative height (:func:`true_heights`), pooled over the views: {"0.00-0.05": recall, ...}."""
    hit = np.zeros(len(bands) - 1)
    tot = np.zeros(len(bands) - 1)
    for m, name in zip(masks, names):
        hgt = heights[name]
        if m.shape != hgt.shape:
            m = cv2.resize(m.astype(np.uint8), hgt.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
        band = np.digitize(np.nan_to_num(hgt, nan=-1.0), bands) - 1
        ok = ~np.isnan(hgt) & (band >= 0) & (band < len(bands) - 1)
        tot += np.bincount(band[ok], minlength=len(bands) - 1)[:len(bands) - 1]
        hit += np.bincount(band[ok & m], minlength=len(bands) - 1)[:len(bands) - 1]
    return {f"{bands[i]:.2f}-{min(bands[i + 1], 1.0):.2f}": round(float(hit[i] / max(tot[i], 1.0)), 4)
            for i in range(len(bands) - 1)}


def precision_recall(mask: np.ndarray, truth: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Precision and recall of ``mask`` against ``truth`` (both (h, w) bool; mask resized to truth's size first),
    and the resized mask."""
    if mask.shape != truth.shape:
        mask = cv2.resize(mask.astype(np.uint8), truth.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
    tp = float((mask & truth).sum())
    return tp / max(1.0, float(mask.sum())), tp / max(1.0, float(truth.sum())), mask


def make(set_dir: Path, out: Path) -> None:
    masks = true_masks(set_dir)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(set_dir, out)
    shutil.copy2(set_dir.parent / f"{set_dir.name}.poses.json", out.parent / f"{out.name}.poses.json")
    (out / "masks").mkdir()
    for stem, m in masks.items():
        cv2.imwrite(str(out / "masks" / f"{stem}.png"), m.astype(np.uint8) * 255)
    print(f"{out}: {len(masks)} true masks")


def fused_silhouettes(mesh: trimesh.Trimesh, K: np.ndarray, w2c: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: where ``mesh`` covers an image of ``size`` (w, h) from a camera K (3, 3), w2c (4, 4)."""
    return np.isfinite(render(mesh, np.asarray(K, np.float64), np.asarray(w2c, np.float64), *size).depth)


def recut(mask: np.ndarray, rgb: np.ndarray, band: float) -> np.ndarray:
    """A kept silhouette (H, W) bool reduced to the silhouettes' working size and brought back with its edge cut
    again at the photo rgb (H, W, 3) uint8 (``pipeline.geometry.automask.edge_at_size``, band ``band``)."""
    from pipeline.geometry.automask import AutoMaskSettings, edge_at_size, working_mask

    s = AutoMaskSettings(edge_band=band)
    return edge_at_size(rgb, working_mask(mask, s.work_size), s)


def score(state: Path, set_dir: Path, pictures: Path | None, fused: bool = False, edge_band: float = 0.0) -> None:
    truth = true_masks(set_dir)
    with tarfile.open(state) as tar:
        photos = json.load(tar.extractfile("cameras/photos.json"))  # type: ignore[arg-type]
        sil = np.load(io.BytesIO(tar.extractfile("geometry/silhouettes.npz").read()))  # type: ignore[union-attr]
        if fused:
            poses = np.load(io.BytesIO(tar.extractfile("cameras/poses.npz").read()))  # type: ignore[union-attr]
            ply = tar.extractfile("geometry/mesh.ply").read()  # type: ignore[union-attr]
            mesh = trimesh.load(io.BytesIO(ply), file_type="ply", process=False)
    if pictures:
        pictures.mkdir(parents=True, exist_ok=True)
    prec, rec, iou, mesh_scores, recut_iou = [], [], [], [], []
    disputes: list[tuple[float, float, float]] = []  # per view: disputed pixels, of which the outline has right, truth
    for key in (k for k in sil.files if k.startswith("mask_")):
        i = int(key[5:])
        name = Path(photos[i]["name"])
        gt = truth[name.stem]
        p, r, m = precision_recall(sil[key], gt)
        prec.append(p)
        rec.append(r)
        iou.append(float((m & gt).sum()) / max(1.0, float((m | gt).sum())))
        line = f"{name.name}: precision {prec[-1]:.3f} recall {rec[-1]:.3f}"
        if edge_band > 0:
            rgb = cv2.imread(str(set_dir / "images" / name.name))[..., ::-1]
            c = recut(m, rgb, edge_band)
            recut_iou.append(float((c & gt).sum()) / max(1.0, float((c | gt).sum())))
            line += f"; recut IoU {recut_iou[-1]:.3f} (was {iou[-1]:.3f})"
        if fused:
            # the fused surface's own outline in the same view (the job's cameras, at the photo's size)
            f = fused_silhouettes(mesh, poses["K"][i], poses["w2c"][i], (gt.shape[1], gt.shape[0]))
            fp, fr, f = precision_recall(f, gt)
            mesh_scores.append((fp, fr, float((f & gt).sum()) / max(1.0, float((f | gt).sum()))))
            line += f"; fused surface precision {fp:.3f} recall {fr:.3f}"
            # where the two disagree (refine.estimated_silhouettes = agree leaves those pixels to the photos)
            d = m != f
            disputes.append((float(d.sum()), float((d & (f == gt)).sum()), float(gt.sum())))
        print(line)
        if pictures:
            img = cv2.imread(str(set_dir / "images" / name.name))
            vis = img // 2
            vis[m & gt] = img[m & gt]
            vis[m & ~gt] = (0, 0, 255)
            vis[~m & gt] = (255, 0, 0)
            cv2.imwrite(str(pictures / f"{name.stem}.png"), vis)
    print(f"mean over {len(prec)} views: precision {np.mean(prec):.3f} recall {np.mean(rec):.3f} "
          f"IoU {np.mean(iou):.3f}")
    if recut_iou:
        print(f"recut at the photo's size (edge band {edge_band:g}): IoU {np.mean(recut_iou):.3f}")
    if mesh_scores:
        fp, fr, fi = np.mean(mesh_scores, axis=0)
        print(f"the fused surface's outline: precision {fp:.3f} recall {fr:.3f} IoU {fi:.3f}")
        n, right, area = np.sum(disputes, axis=0)
        print(f"where the two differ: {n / area:.3f} of the true silhouettes' area; the outline is right in "
              f"{right / max(n, 1.0):.3f} of those pixels, the estimated silhouettes in {1 - right / max(n, 1.0):.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("set", type=Path)
    m.add_argument("out", type=Path)
    s = sub.add_parser("score")
    s.add_argument("state", type=Path)
    s.add_argument("set", type=Path)
    s.add_argument("--pictures", type=Path, default=None)
    s.add_argument("--fused", action="store_true", help="also score the outline of the kept fused surface")
    s.add_argument("--edge-band", type=float, default=0.0,
                   help="also score each silhouette with its edge cut again at the photo's size")
    args = ap.parse_args(argv)
    if args.cmd == "make":
        make(args.set, args.out)
    else:
        score(args.state, args.set, args.pictures, args.fused, args.edge_band)
    return 0


if __name__ == "__main__":
    sys.exit(main())
