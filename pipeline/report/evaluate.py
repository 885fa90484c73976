"""Quality of a finished mesh: held-out views (mask IoU, PSNR) and, when given, a ground-truth mesh."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import trimesh

from pipeline.geometry.meshing import handle_count
from pipeline.report.metrics import geometry_scores, mask_iou, psnr
from pipeline.imaging.render import RenderOut, render


@dataclass(frozen=True)
class ViewScore:
    name: str
    mask_iou: float | None  # None where the view has no given mask (nothing independent to compare with)
    psnr: float  # dB over the union of both silhouettes (the render's own where there is no mask), on black
    ssim: float  # structural similarity over the union's bounding box, both composited on black
    # dB over the whole frame on black, the NeRF-synthetic convention. Higher than ``psnr`` by about
    # 10 log10(frame / union area): the background, right by construction, is counted
    psnr_frame: float = float("nan")


@dataclass(frozen=True)
class HeldOut:
    views: tuple[ViewScore, ...]
    renders: tuple[np.ndarray, ...]  # (H, W, 3) uint8 composited on black, for the report
    heatmaps: tuple[np.ndarray, ...] = ()  # (H, W, 3) uint8 absolute colour error (inferno), for the report

    @property
    def mean_iou(self) -> float | None:
        vals = [v.mask_iou for v in self.views if v.mask_iou is not None]
        return float(np.mean(vals)) if vals else None

    @property
    def mean_psnr(self) -> float | None:
        vals = [v.psnr for v in self.views if np.isfinite(v.psnr)]
        return float(np.mean(vals)) if vals else None

    @property
    def mean_psnr_frame(self) -> float | None:
        vals = [v.psnr_frame for v in self.views if np.isfinite(v.psnr_frame)]
        return float(np.mean(vals)) if vals else None

    @property
    def mean_ssim(self) -> float | None:
        return float(np.mean([v.ssim for v in self.views])) if self.views else None

    def to_dict(self) -> dict:
        return {"views": len(self.views), "mask_iou_mean": self.mean_iou, "psnr_mean": self.mean_psnr,
                "psnr_frame_mean": self.mean_psnr_frame, "ssim_mean": self.mean_ssim,
                "per_view": [asdict(v) for v in self.views]}


def ssim_union(pred: np.ndarray, gt: np.ndarray, union: np.ndarray) -> float:
    """SSIM of two (H, W, 3) float images in [0, 1] over the bounding box of ``union`` (H, W) bool."""
    from skimage.metrics import structural_similarity

    ys, xs = np.nonzero(union)
    if len(ys) == 0:
        return float("nan")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    if min(y1 - y0, x1 - x0) < 7:
        return float("nan")
    return float(structural_similarity(pred[y0:y1, x0:x1], gt[y0:y1, x0:x1], channel_axis=2, data_range=1.0))


def error_heatmap(pred: np.ndarray, gt: np.ndarray, union: np.ndarray, vmax: float = 0.3) -> np.ndarray:
    """Mean absolute colour error per pixel, 0..vmax mapped to the inferno colour map; black outside. -> uint8."""
    import cv2

    err = np.abs(pred - gt).mean(-1) / vmax
    img = cv2.applyColorMap((np.clip(err, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
    return np.where(union[..., None], img, 0).astype(np.uint8)


def held_out_scores(mesh: trimesh.Trimesh, colors: np.ndarray, names: list[str], images: list[np.ndarray],
                    masks: list[np.ndarray | None], Ks: np.ndarray, w2cs: np.ndarray,
                    check: Callable[[float], None] = lambda f: None,
                    textured: tuple[trimesh.Trimesh, np.ndarray, np.ndarray] | None = None,
                    render: Callable[..., RenderOut] = render) -> HeldOut:
    """Render the mesh into views it was not fitted to. images: (H, W, 3) uint8; masks: (H, W) bool, or None for a
    photo without a mask: its colours are compared where the mesh covers it, and no IoU is given.
    With ``textured`` = (mesh, uv, texture) the textured mesh is what gets rendered (as users load it).
    ``render``: :func:`pipeline.imaging.render.render` or a renderer of its signature (on the GPU)."""
    scores, renders, heat = [], [], []
    for i, (name, img, m, K, w2c) in enumerate(zip(names, images, masks, Ks, w2cs)):
        h, w = img.shape[:2]
        if textured is not None:
            out: RenderOut = render(textured[0], K, w2c, w, h, uv=textured[1], texture=textured[2])
        else:
            out = render(mesh, K, w2c, w, h, colors)
        region = out.mask if m is None else m
        gt = img.astype(np.float32) / 255.0 * region[..., None]
        pred = out.rgb * out.mask[..., None]
        union = out.mask | region
        scores.append(ViewScore(name=name, mask_iou=None if m is None else mask_iou(out.mask, m),
                                psnr=psnr(pred, gt, union), ssim=ssim_union(pred, gt, union),
                                psnr_frame=float("nan") if m is None else psnr(pred, gt)))
        renders.append((np.clip(pred, 0, 1) * 255).astype(np.uint8))
        heat.append(error_heatmap(pred, gt, union))
        check((i + 1) / len(names))
    return HeldOut(views=tuple(scores), renders=tuple(renders), heatmaps=tuple(heat))


def gt_scores(mesh: trimesh.Trimesh, gt: trimesh.Trimesh, samples: int, tau_rel: float) -> dict:
    s = geometry_scores(mesh, gt, samples=samples, tau_rel=tau_rel)
    return asdict(s)


def mesh_stats(mesh: trimesh.Trimesh) -> dict:
    """Numbers read off the mesh as written to disk."""
    lo, hi = mesh.bounds
    handles, pieces = handle_count(mesh)
    return {
        "vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
        "watertight": bool(mesh.is_watertight), "winding_consistent": bool(mesh.is_winding_consistent),
        # every edge shared by exactly two faces <=> trimesh's watertight test
        "edge_manifold": bool(mesh.is_watertight), "euler_characteristic": int(mesh.euler_number),
        "genus": int(round(1 - mesh.euler_number / 2)) if mesh.is_watertight else None,
        "volume": float(mesh.volume) if mesh.is_watertight else None, "area": float(mesh.area),
        "handles": handles, "components": pieces,
        "bbox_min": [float(x) for x in lo], "bbox_max": [float(x) for x in hi],
        "extent": [float(x) for x in hi - lo], "diagonal": float(np.linalg.norm(hi - lo)),
    }
