"""Scoring a published job against a set's ground truth, posed or not.

An unposed job works in its own normalised frame. Its published cameras (``transforms.json`` in the outbox) are
aligned to the set's true poses (``<set>.poses.json`` beside the folder, or the set's own transforms.json) by a
similarity on the camera centres (Umeyama); the mesh is moved by the same similarity and compared with ``gt.ply`` on
its observable part: GT points that at least one true camera sees (:func:`pipeline.report.metrics.observable_scores`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from pipeline.cameras.cameras import c2w_gl_to_w2c_cv, camera_centers
from pipeline.geometry.scene import Similarity, umeyama

TAUS = (0.01, 0.005, 0.002)


@dataclass(frozen=True)
class TrueCameras:
    names: tuple[str, ...]  # image file names (no folders)
    Ks: np.ndarray  # (N, 3, 3)
    w2cs: np.ndarray  # (N, 4, 4) OpenCV
    sizes: tuple[tuple[int, int], ...]


def read_nerf_cameras(path: Path, images: Path | None = None) -> TrueCameras:
    """Cameras of a NeRF-convention file (transforms.json / *.poses.json): c2w, OpenGL axes, intrinsics shared or
    per frame. Where the file gives no image size, it is read from the image under ``images`` (default: the file's
    folder)."""
    d = json.loads(path.read_text())
    names, Ks, w2cs, sizes = [], [], [], []
    for fr in d["frames"]:
        w, h = fr.get("w", d.get("w")), fr.get("h", d.get("h"))
        if w is None or h is None:
            from PIL import Image

            f = (images or path.parent) / fr["file_path"]
            if not f.suffix:
                f = f.with_suffix(".png")
            with Image.open(f) as im:
                w, h = im.size
        w, h = int(w), int(h)
        if "fl_x" in fr or "fl_x" in d:
            fx, fy = fr.get("fl_x", d.get("fl_x")), fr.get("fl_y", d.get("fl_y", d.get("fl_x")))
            cx, cy = fr.get("cx", d.get("cx", w / 2)), fr.get("cy", d.get("cy", h / 2))
        else:
            fx = fy = 0.5 * w / np.tan(0.5 * d["camera_angle_x"])
            cx, cy = w / 2, h / 2
        Ks.append(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]))
        w2cs.append(c2w_gl_to_w2c_cv(np.array(fr["transform_matrix"], dtype=np.float64)))
        names.append(Path(fr["file_path"]).name)
        sizes.append((w, h))
    return TrueCameras(tuple(names), np.array(Ks), np.array(w2cs), tuple(sizes))


@dataclass(frozen=True)
class Alignment:
    """sim takes the job's frame to the true frame; residual: RMS distance of the agreeing camera centres after
    alignment, as a fraction of the true cameras' spread; misplaced: cameras SfM put elsewhere (left out of the fit)."""

    sim: Similarity
    residual: float
    misplaced: tuple[str, ...]


def alignment(published: TrueCameras, truth: TrueCameras, outlier: float = 0.05) -> Alignment:
    """Similarity from the cameras both name (Umeyama on the centres). A camera further than ``outlier`` of the
    spread from its true place after the fit is misplaced (SfM registered it wrongly): it is named and the fit is
    repeated without it, so that one bad camera does not shift the whole mesh in the scoring."""
    index = {n: i for i, n in enumerate(truth.names)}
    pairs = [(i, index[n]) for i, n in enumerate(published.names) if n in index]
    if len(pairs) < 3:
        raise ValueError(f"only {len(pairs)} published cameras match the true poses by name")
    a = camera_centers(published.w2cs[[p[0] for p in pairs]])
    b = camera_centers(truth.w2cs[[p[1] for p in pairs]])
    spread = float(np.linalg.norm(b - b.mean(0), axis=1).mean())
    keep = np.ones(len(pairs), dtype=bool)
    while True:  # drop the worst camera while it is off, at most half of them
        sim = umeyama(a[keep], b[keep])
        rel = np.linalg.norm(sim.points(a) - b, axis=1) / spread
        worst = int(np.argmax(np.where(keep, rel, -1.0)))
        if rel[worst] < outlier or keep.sum() - 1 < max(3, (len(pairs) + 1) // 2):
            break
        keep[worst] = False
    off = rel >= outlier
    agreeing = rel[~off] if (~off).any() else rel
    return Alignment(sim=sim, residual=float(np.sqrt((agreeing ** 2).mean())),
                     misplaced=tuple(published.names[pairs[k][0]] for k in np.flatnonzero(off)))


def moved(mesh: trimesh.Trimesh, sim: Similarity) -> trimesh.Trimesh:
    out = mesh.copy()
    out.vertices = sim.points(np.asarray(mesh.vertices))
    return out


def score(mesh: trimesh.Trimesh, gt: trimesh.Trimesh, truth: TrueCameras, samples: int) -> dict[str, float]:
    """F-score at 1 / 0.5 / 0.2 % of the GT diagonal and Chamfer-L1 (relative), on the GT's observable part."""
    from pipeline.report.metrics import observable_scores

    return _flat(observable_scores(mesh, gt, truth.Ks, truth.w2cs, list(truth.sizes), samples, TAUS))


def score_points(points: np.ndarray, gt: trimesh.Trimesh, truth: TrueCameras, samples: int) -> dict[str, float]:
    """:func:`score` of a point cloud (P, 3), e.g. a peer's fused stereo points before meshing."""
    from pipeline.report.metrics import observable_point_scores

    return _flat(observable_point_scores(np.asarray(points, dtype=np.float64), gt, truth.Ks, truth.w2cs,
                                         list(truth.sizes), samples, TAUS))


def _flat(scores: list) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in scores:
        pct = f"{s.tau_rel * 100:g}%"
        out[f"fscore@{pct}"] = round(s.fscore, 4)
        out[f"precision@{pct}"] = round(s.precision, 4)
        out[f"recall@{pct}"] = round(s.recall, 4)
        out["chamfer_l1_rel"] = round(s.chamfer_l1_rel, 6)
    return out
