"""The visual hull on the dense method's grid: the box to mesh, the hull's signed distance at every voxel, and its
recomputation under the object's footprint on the table, where one more view may dissent.

The per-point hull itself (each view's silhouette distance at the point's projection, the k-th largest over the
views) is :func:`pipeline.geometry.carve.hull_field`; these functions run it over grids in chunks on the job's device.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.context import JobError
from pipeline.geometry.carve import CarveSettings, hull_field, mask_sdf
from pipeline.geometry.fusion import Grid
from pipeline.geometry.scene import box_corners
from pipeline.geometry.silhouettes import Footprint


def reach_support(lo: np.ndarray, hi: np.ndarray, support: tuple[np.ndarray, float],
                  bounds: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The box (lo, hi) grown to hold its own shadow on the support plane (unit n, d; n·x = d, n pointing up), its
    eight corners dropped along n onto the plane, and clipped to ``bounds``. A box already down at the plane, or
    below it, is unchanged. lo, hi (3,) world."""
    n, d = np.asarray(support[0], dtype=np.float64), float(support[1])
    corners = box_corners(lo, hi)
    height = corners @ n - d
    dropped = corners - np.maximum(height, 0.0)[:, None] * n
    # lo and hi lie within the bounds already: only what the shadow adds is clipped
    return (np.maximum(np.minimum(lo, dropped.min(0)), np.minimum(lo, bounds[0])),
            np.minimum(np.maximum(hi, dropped.max(0)), np.maximum(hi, bounds[1])))


def hull_box(masks: list[np.ndarray], Ks: np.ndarray, w2cs: np.ndarray, bounds: tuple[np.ndarray, np.ndarray],
             support: tuple[np.ndarray, float] | None, margin: float, outlier_fraction: float,
             device: str, sdfs: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The box (lo, hi) around a coarse visual hull of ``masks`` inside ``bounds``, grown by ``margin`` of its
    size; ``bounds`` itself when the hull is empty. sdfs: the masks' mask_sdf where the caller has them."""
    from pipeline.geometry.carve import carve

    k = int(min(2, round(outlier_fraction * len(masks))))
    try:
        res = carve(Ks, w2cs, masks, CarveSettings(resolution=96, outlier_views=k), device=device, bounds=bounds,
                    support=support, sdfs=sdfs)
    except JobError:
        return bounds
    occ = np.argwhere(res.field < 0)
    if len(occ) == 0:
        return bounds
    lo = res.origin + (occ.min(0) - 1) * res.voxel
    hi = res.origin + (occ.max(0) + 1) * res.voxel
    grow = margin * float((hi - lo).max())
    return np.maximum(lo - grow, bounds[0]), np.minimum(hi + grow, bounds[1])


def hull_under_footprint(hull: torch.Tensor, grid: Grid, foot: Footprint, foot_height: float, Ks: np.ndarray,
                         w2cs: np.ndarray, sdfs: list[np.ndarray], outlier_views: int, device: str) -> int:
    """In place: ``hull`` (X, Y, Z) float32 (:func:`grid_hull_tensor`) recomputed letting ``outlier_views`` views
    dissent at the voxels whose drop onto the support lies in ``foot`` and that stand at most ``foot_height``
    margins above it (and no more than one margin below). Returns how many voxels that was."""
    dev = hull.device
    X, Y, Z = grid.dims
    n = torch.as_tensor(foot.n, dtype=torch.float32, device=dev)
    u = torch.as_tensor(foot.u, dtype=torch.float32, device=dev)
    v = torch.as_tensor(foot.v, dtype=torch.float32, device=dev)
    origin = torch.as_tensor(foot.origin, dtype=torch.float32, device=dev)
    occ = torch.as_tensor(foot.occupied, device=dev)
    U, V = foot.occupied.shape
    sdf_t = [torch.as_tensor(d, dtype=torch.float32, device=dev) for d in sdfs]
    Kt = torch.as_tensor(np.asarray(Ks), dtype=torch.float32, device=dev)
    Wt = torch.as_tensor(np.asarray(w2cs), dtype=torch.float32, device=dev)
    cs = CarveSettings(outlier_views=outlier_views)
    flat = hull.view(X, Y * Z)
    step = max(1, cs.chunk // (Y * Z))
    total = 0
    for x0 in range(0, X, step):
        x1 = min(X, x0 + step)
        pts = grid.points(x0, x1, dev)
        rel = pts - origin
        height = rel @ n  # the origin lies on the plane
        iu = torch.floor(rel @ u / foot.cell).long()
        iv = torch.floor(rel @ v / foot.cell).long()
        sel = ((height > -foot.margin) & (height <= foot_height * foot.margin)
               & (iu >= 0) & (iu < U) & (iv >= 0) & (iv < V))
        idx = torch.nonzero(sel).squeeze(1)
        if len(idx) == 0:
            continue
        idx = idx[occ[iu[idx], iv[idx]]]
        if len(idx) == 0:
            continue
        vals = hull_field(pts[idx], Kt, Wt, sdf_t, cs)
        slab = flat[x0:x1].view(-1)  # a view: written through into hull
        slab[idx] = torch.minimum(slab[idx], vals)
        total += len(idx)
    return total


def grid_hull(grid: Grid, Ks: np.ndarray, w2cs: np.ndarray, masks: list[np.ndarray], outlier_fraction: float,
              device: str) -> np.ndarray:
    """Visual-hull distance (world units, negative inside) at every voxel centre of ``grid``. (X, Y, Z) float32.
    Ks (N, 3, 3) and masks N (H_i, W_i) bool at the same resolution; w2cs (N, 4, 4)."""
    return grid_hull_tensor(grid, Ks, w2cs, [mask_sdf(m) for m in masks], outlier_fraction, device).cpu().numpy()


def grid_hull_tensor(grid: Grid, Ks: np.ndarray, w2cs: np.ndarray, sdfs: list[np.ndarray], outlier_fraction: float,
                     device: str) -> torch.Tensor:
    """:func:`grid_hull` from the silhouettes' :func:`mask_sdf` (N (H_i, W_i) float32), left on ``device``:
    (X, Y, Z) float32."""
    if not (len(sdfs) == len(Ks) == len(w2cs)):
        raise ValueError(f"grid_hull needs one K and pose per silhouette, got {len(Ks)}, {len(w2cs)}, {len(sdfs)}")
    dev = torch.device(device)
    sdf_t = [torch.as_tensor(d, dtype=torch.float32, device=dev) for d in sdfs]
    cs = CarveSettings(outlier_views=int(min(2, round(outlier_fraction * len(sdfs)))))
    X, Y, Z = grid.dims
    out = torch.empty((X, Y, Z), dtype=torch.float32, device=dev)
    Kt = torch.as_tensor(np.asarray(Ks), dtype=torch.float32, device=dev)
    Wt = torch.as_tensor(np.asarray(w2cs), dtype=torch.float32, device=dev)
    step = max(1, cs.chunk // (Y * Z))
    for x0 in range(0, X, step):
        x1 = min(X, x0 + step)
        out[x0:x1] = hull_field(grid.points(x0, x1, dev), Kt, Wt, sdf_t, cs).reshape(x1 - x0, Y, Z)
    return out
