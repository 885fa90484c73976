"""Quality numbers: mask IoU, masked PSNR, Chamfer-L1 and F-score against a ground-truth mesh."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh
from scipy.spatial import cKDTree


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """(H, W) bool x2 -> intersection over union (1.0 when both are empty)."""
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {gt.shape}")
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def psnr(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None) -> float:
    """PSNR in dB of (H, W, 3) float images in [0, 1], over ``region`` (H, W) bool when given."""
    if pred.shape != gt.shape:
        raise ValueError(f"image shapes differ: {pred.shape} vs {gt.shape}")
    diff = (pred.astype(np.float64) - gt.astype(np.float64)) ** 2
    if region is not None:
        if not region.any():
            return float("nan")
        diff = diff[region]
    mse = float(diff.mean())
    return float("inf") if mse == 0 else float(-10.0 * np.log10(mse))


@dataclass(frozen=True)
class GeometryScores:
    chamfer_l1: float  # mean of both directions' mean nearest-neighbour distance, world units
    chamfer_l1_rel: float  # the same, as a fraction of the GT bounding-box diagonal
    fscore: float  # at tau
    precision: float
    recall: float
    tau: float  # absolute threshold, world units
    tau_rel: float  # threshold as a fraction of the GT diagonal
    samples: int


def sample_points(mesh: trimesh.Trimesh, n: int, seed: int = 0) -> np.ndarray:
    """Area-uniform surface samples, (n, 3)."""
    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(pts)


def geometry_scores_multi(pred: trimesh.Trimesh, gt: trimesh.Trimesh, samples: int,
                          taus_rel: tuple[float, ...]) -> list[GeometryScores]:
    """Chamfer-L1 and F-score at several thresholds (fractions of the GT bounding-box diagonal), from one
    set of ``samples`` area-uniform points per mesh and one nearest-neighbour query each way."""
    diag = float(np.linalg.norm(gt.bounds[1] - gt.bounds[0]))
    p = sample_points(pred, samples, seed=1)
    g = sample_points(gt, samples, seed=2)
    d_pg, _ = cKDTree(g).query(p, workers=-1)
    d_gp, _ = cKDTree(p).query(g, workers=-1)
    return scores_from_distances(d_pg, d_gp, diag, samples, taus_rel)


def scores_from_distances(d_pg: np.ndarray, d_gp: np.ndarray, diag: float, samples: int,
                          taus_rel: tuple[float, ...]) -> list[GeometryScores]:
    """Chamfer-L1 and precision / recall / F at each threshold from nearest-neighbour distances:
    d_pg (P,) prediction samples -> GT, d_gp (G,) GT samples -> prediction, world units."""
    cd = 0.5 * (float(d_pg.mean()) + float(d_gp.mean()))
    out = []
    for tau_rel in taus_rel:
        tau = tau_rel * diag
        precision = float((d_pg < tau).mean())
        recall = float((d_gp < tau).mean()) if len(d_gp) else 0.0
        f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        out.append(GeometryScores(chamfer_l1=cd, chamfer_l1_rel=cd / diag, fscore=f, precision=precision,
                                  recall=recall, tau=tau, tau_rel=tau_rel, samples=samples))
    return out


def geometry_scores(pred: trimesh.Trimesh, gt: trimesh.Trimesh, samples: int = 200_000,
                    tau_rel: float = 0.01) -> GeometryScores:
    """Chamfer-L1 and F-score@tau (tau relative to the GT bounding-box diagonal) from surface samples."""
    return geometry_scores_multi(pred, gt, samples, (tau_rel,))[0]


def visible_mask(points: np.ndarray, mesh: trimesh.Trimesh, Ks: np.ndarray, w2cs: np.ndarray,
                 sizes: list[tuple[int, int]], tol: float, max_side: int = 256) -> np.ndarray:
    """Which of ``points`` (P, 3), lying on ``mesh``, are seen by at least one camera.

    Ks: (N, 3, 3) pixels; w2cs: (N, 4, 4) OpenCV; sizes: N (width, height). A point is seen when it projects
    inside the image, in front of the camera, and no nearer than ``tol`` (world units) behind the depth that the
    mesh itself shows at that pixel (ray-cast depth map, at most ``max_side`` px: enough to tell seen from hidden,
    far cheaper than the input size). -> (P,) bool."""
    from pipeline.imaging.render import reduced_camera, render

    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be (P, 3), got {points.shape}")
    if not (len(Ks) == len(w2cs) == len(sizes)):
        raise ValueError("Ks, w2cs and sizes must have the same length")
    seen = np.zeros(len(points), dtype=bool)
    for K0, w2c, (w0, h0) in zip(Ks, w2cs, sizes):
        K, w, h = reduced_camera(K0, w0, h0, max_side)
        depth = render(mesh, K, w2c, w, h).depth
        cam = points @ w2c[:3, :3].T + w2c[:3, 3]
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = (cam @ K.T)[:, 0] / z
            v = (cam @ K.T)[:, 1] / z
        inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        ui = np.clip(np.nan_to_num(u), 0, w - 1).astype(int)
        vi = np.clip(np.nan_to_num(v), 0, h - 1).astype(int)
        seen |= inside & (z <= depth[vi, ui] + tol)
    return seen


def cap_open_scan(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Close the holes of a single-body open scan (the Stanford bunny's base) by fanning each closed boundary loop
    around its centroid; anything else (several bodies, open sheets) is returned unchanged. For evaluation only:
    the photos of a capped and an open scan have the same silhouettes, so no method can tell them apart."""
    if mesh.is_watertight or len(mesh.split(only_watertight=False)) != 1:
        return mesh
    outline = mesh.outline()
    if not outline.entities.size or not all(e.closed for e in outline.entities):
        return mesh
    verts = [np.asarray(mesh.vertices)]
    faces = [np.asarray(mesh.faces)]
    n = len(mesh.vertices)
    # outline vertices index into outline.vertices; map back to the mesh's own vertices by position
    from scipy.spatial import cKDTree

    _, back = cKDTree(mesh.vertices).query(outline.vertices)
    for e in outline.entities:
        loop = back[np.asarray(e.points)]
        if loop[0] == loop[-1]:
            loop = loop[:-1]
        centre = mesh.vertices[loop].mean(0)
        verts.append(centre[None])
        fan = np.stack([loop, np.roll(loop, -1), np.full(len(loop), n)], axis=1)
        faces.append(fan)
        n += 1
    capped = trimesh.Trimesh(np.concatenate(verts), np.concatenate(faces), process=True)
    trimesh.repair.fix_normals(capped)
    return capped


def observable_scores(pred: trimesh.Trimesh, gt: trimesh.Trimesh, Ks: np.ndarray, w2cs: np.ndarray,
                      sizes: list[tuple[int, int]], samples: int, taus_rel: tuple[float, ...]) -> list[GeometryScores]:
    """F-score / Chamfer against the part of the GT that the input views can observe: recall over GT samples seen
    by at least one view (hidden interiors excluded), precision against the GT with an open scan's holes capped
    (``cap_open_scan``). The thresholds stay fractions of the full GT's bounding-box diagonal."""
    return observable_point_scores(sample_points(pred, samples, seed=1), gt, Ks, w2cs, sizes, samples, taus_rel)


def observable_point_scores(p: np.ndarray, gt: trimesh.Trimesh, Ks: np.ndarray, w2cs: np.ndarray,
                            sizes: list[tuple[int, int]], samples: int,
                            taus_rel: tuple[float, ...]) -> list[GeometryScores]:
    """:func:`observable_scores` of a point set p (P, 3) (a fused stereo cloud) instead of a mesh's samples."""
    if p.ndim != 2 or p.shape[1] != 3 or len(p) == 0:
        raise ValueError(f"observable_point_scores needs (P, 3) points, P > 0, got {p.shape}")
    diag = float(np.linalg.norm(gt.bounds[1] - gt.bounds[0]))
    closed = cap_open_scan(gt)
    g_all = sample_points(closed, samples, seed=2)
    seen = visible_mask(g_all, closed, np.asarray(Ks), np.asarray(w2cs), sizes, tol=0.004 * diag)
    g = g_all[seen]
    # precision against the whole (capped) GT, so surface near hidden GT is not counted wrong
    d_pg_all, _ = cKDTree(g_all).query(p, workers=-1)
    d_gp, _ = cKDTree(p).query(g, workers=-1) if len(g) else (np.zeros(0), None)
    return scores_from_distances(d_pg_all, d_gp, diag, samples, taus_rel)
