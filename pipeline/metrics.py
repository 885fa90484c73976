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
    cd = 0.5 * (float(d_pg.mean()) + float(d_gp.mean()))
    out = []
    for tau_rel in taus_rel:
        tau = tau_rel * diag
        precision = float((d_pg < tau).mean())
        recall = float((d_gp < tau).mean())
        f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        out.append(GeometryScores(chamfer_l1=cd, chamfer_l1_rel=cd / diag, fscore=f, precision=precision,
                                  recall=recall, tau=tau, tau_rel=tau_rel, samples=samples))
    return out


def geometry_scores(pred: trimesh.Trimesh, gt: trimesh.Trimesh, samples: int = 200_000,
                    tau_rel: float = 0.01) -> GeometryScores:
    """Chamfer-L1 and F-score@tau (tau relative to the GT bounding-box diagonal) from surface samples."""
    return geometry_scores_multi(pred, gt, samples, (tau_rel,))[0]
