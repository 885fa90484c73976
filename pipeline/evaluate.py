"""Quality of a finished mesh: held-out views (mask IoU, PSNR) and, when given, a ground-truth mesh."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import trimesh

from pipeline.metrics import geometry_scores, mask_iou, psnr
from pipeline.render import RenderOut, render


@dataclass(frozen=True)
class ViewScore:
    name: str
    mask_iou: float
    psnr: float  # dB over the union of both silhouettes, both composited on black


@dataclass(frozen=True)
class HeldOut:
    views: tuple[ViewScore, ...]
    renders: tuple[np.ndarray, ...]  # (H, W, 3) uint8 composited on black, for the report

    @property
    def mean_iou(self) -> float | None:
        return float(np.mean([v.mask_iou for v in self.views])) if self.views else None

    @property
    def mean_psnr(self) -> float | None:
        vals = [v.psnr for v in self.views if np.isfinite(v.psnr)]
        return float(np.mean(vals)) if vals else None

    def to_dict(self) -> dict:
        return {"views": len(self.views), "mask_iou_mean": self.mean_iou, "psnr_mean": self.mean_psnr,
                "per_view": [asdict(v) for v in self.views]}


def held_out_scores(mesh: trimesh.Trimesh, colors: np.ndarray, names: list[str], images: list[np.ndarray],
                    masks: list[np.ndarray], Ks: np.ndarray, w2cs: np.ndarray,
                    check: Callable[[float], None] = lambda f: None) -> HeldOut:
    """Render the mesh into views it was not fitted to. images: (H, W, 3) uint8; masks: (H, W) bool."""
    scores, renders = [], []
    for i, (name, img, m, K, w2c) in enumerate(zip(names, images, masks, Ks, w2cs)):
        h, w = m.shape
        out: RenderOut = render(mesh, K, w2c, w, h, colors)
        gt = img.astype(np.float32) / 255.0 * m[..., None]
        pred = out.rgb * out.mask[..., None]
        scores.append(ViewScore(name=name, mask_iou=mask_iou(out.mask, m), psnr=psnr(pred, gt, out.mask | m)))
        renders.append((np.clip(pred, 0, 1) * 255).astype(np.uint8))
        check((i + 1) / len(names))
    return HeldOut(views=tuple(scores), renders=tuple(renders))


def gt_scores(mesh: trimesh.Trimesh, gt: trimesh.Trimesh, samples: int, tau_rel: float) -> dict:
    s = geometry_scores(mesh, gt, samples=samples, tau_rel=tau_rel)
    return asdict(s)


def mesh_stats(mesh: trimesh.Trimesh) -> dict:
    """Numbers read off the mesh as written to disk."""
    lo, hi = mesh.bounds
    return {
        "vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
        "watertight": bool(mesh.is_watertight), "winding_consistent": bool(mesh.is_winding_consistent),
        # every edge shared by exactly two faces <=> trimesh's watertight test
        "edge_manifold": bool(mesh.is_watertight), "euler_characteristic": int(mesh.euler_number),
        "genus": int(round(1 - mesh.euler_number / 2)) if mesh.is_watertight else None,
        "volume": float(mesh.volume) if mesh.is_watertight else None, "area": float(mesh.area),
        "bbox_min": [float(x) for x in lo], "bbox_max": [float(x) for x in hi],
        "extent": [float(x) for x in hi - lo], "diagonal": float(np.linalg.norm(hi - lo)),
    }
