"""Frozen copies of the implementations the dense path's device code replaced (as of commit 509382e): TSDF fusion
in slabs, one view at a time; the field combination in numpy; the visual-hull field (carve.hull_field) one view at a
time. The tests compare the pipeline's implementations with them."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.geometry.carve import CarveSettings
from pipeline.geometry.fusion import Grid, Tsdf, facing
from pipeline.geometry.mvs import DepthMap


def fuse_reference(depths: list[DepthMap], grid: Grid, trunc: float, device: str = "cpu", slab_voxels: int = 1 << 22,
         check: Callable[[float], None] = lambda f: None, solid_depth: float = 0.0) -> Tsdf:
    """Weighted TSDF of the depth maps over ``grid``; ``trunc`` in world units. hidden (added later): the weights of
    views whose measured surface lies between trunc and ``solid_depth`` in front of the voxel."""
    if trunc <= 0:
        raise ValueError(f"fuse: trunc must be > 0, got {trunc}")
    dev = torch.device(device)
    X, Y, Z = grid.dims
    maps = []
    for dm in depths:
        if not (dm.depth > 0).any() and (dm.free is None or not (dm.free > 0).any()):
            continue
        free = np.zeros_like(dm.depth) if dm.free is None else dm.free
        depth_t = torch.as_tensor(dm.depth, dtype=torch.float32, device=dev)
        conf = torch.as_tensor(np.clip(dm.score, 0.05, 1.0), dtype=torch.float32, device=dev)
        conf = conf * facing(depth_t, torch.as_tensor(dm.K, dtype=torch.float32, device=dev)) ** 2
        maps.append((depth_t, conf,
                     torch.as_tensor(dm.K, dtype=torch.float32, device=dev),
                     torch.as_tensor(dm.w2c, dtype=torch.float32, device=dev),
                     torch.as_tensor(free, dtype=torch.float32, device=dev), float(dm.far)))
    values = np.zeros((X, Y, Z), dtype=np.float32)
    weight = np.zeros((X, Y, Z), dtype=np.float32)
    band = np.zeros((X, Y, Z), dtype=np.float32)
    hidden = np.zeros((X, Y, Z), dtype=np.float32)
    step = max(1, slab_voxels // (Y * Z))
    for x0 in range(0, X, step):
        x1 = min(X, x0 + step)
        pts = grid.points(x0, x1, dev)
        acc = torch.zeros(len(pts), device=dev)
        wsum = torch.zeros(len(pts), device=dev)
        bsum = torch.zeros(len(pts), device=dev)
        hsum = torch.zeros(len(pts), device=dev)
        for depth, score, K, w2c, free, far in maps:
            H, W = depth.shape
            cam = pts @ w2c[:3, :3].T + w2c[:3, 3]
            z = cam[:, 2]
            u = cam[:, 0] / z.clamp(min=1e-9) * K[0, 0] + K[0, 2]
            v = cam[:, 1] / z.clamp(min=1e-9) * K[1, 1] + K[1, 2]
            xi, yi = u.floor().long(), v.floor().long()
            inside = (z > 0) & (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
            flat = (yi.clamp(0, H - 1) * W + xi.clamp(0, W - 1))
            d = torch.where(inside, depth.reshape(-1)[flat], torch.zeros_like(z))
            sdf = d - z
            use = (d > 0) & (sdf > -trunc)
            w = torch.where(use, score.reshape(-1)[flat], torch.zeros_like(z))
            # a pixel that sees only background beyond the far depth: free space up to there
            fw = torch.where(inside & (z < far), free.reshape(-1)[flat], torch.zeros_like(z))
            acc += w * (sdf / trunc).clamp(-1, 1) + fw
            wsum += w + fw
            bsum += torch.where(sdf < trunc, w, torch.zeros_like(w))
            behind = (d > 0) & (sdf <= -trunc) & (sdf > -solid_depth)
            hsum += torch.where(behind, score.reshape(-1)[flat], torch.zeros_like(z))
        vals = torch.where(wsum > 0, acc / wsum.clamp(min=1e-9), torch.ones_like(acc))
        values[x0:x1] = vals.reshape(x1 - x0, Y, Z).cpu().numpy()
        weight[x0:x1] = wsum.reshape(x1 - x0, Y, Z).cpu().numpy()
        band[x0:x1] = bsum.reshape(x1 - x0, Y, Z).cpu().numpy()
        hidden[x0:x1] = hsum.reshape(x1 - x0, Y, Z).cpu().numpy()
        check(x1 / X)
    return Tsdf(values=values, weight=weight, band=band, grid=grid, trunc=trunc, hidden=hidden)


def combined_field_reference(tsdf: Tsdf, hull: np.ndarray, min_band: float, min_free: float, hull_slack: float,
                   planes: list[tuple[np.ndarray, float]] = (), support_margin: float = 0.0,
                   override_band: float | None = None, solid_hidden: float | None = None) -> np.ndarray:
    """The field of the final closed surface, negative inside, in units of trunc. (X, Y, Z) float32.

    hull: (X, Y, Z) float32 visual-hull distance on the same grid, world units, negative inside. The hull gives the
    shape where the photos measured nothing (textureless surfaces); where at least ``min_band`` of match score
    measured a surface near a voxel, the TSDF's sub-voxel zero crossing replaces it; where ``min_free`` of evidence
    saw clear free space, the voxel is outside even inside the hull (a cup's inside, the gap under an armrest).
    Nothing lies more than ``hull_slack`` (world units) outside the hull, except, when ``override_band`` is given,
    where at least that much match score measured a surface: estimated silhouettes miss thin or dark parts (horns,
    feet on a dark table) that the photos did measure. ``planes`` (unit normal n, offset d,
    cameras on the side n·x > d: the table the object stands on, a wall right behind it): everything within
    ``support_margin`` of one or behind it is outside, so they are cut off and the object's base closed flat.
    solid_hidden (added later): voxels with that much hidden evidence and no free-space evidence (< 0.1) and no
    measured band are inside."""
    if hull.shape != tsdf.values.shape:
        raise ValueError(f"combined_field: hull {hull.shape} and TSDF {tsdf.values.shape} differ")
    t = tsdf.trunc
    f = np.clip(hull / t, -1.0, 1.0).astype(np.float32)
    measured = tsdf.band >= min_band
    f = np.where(measured, tsdf.values, f)
    free = (tsdf.weight - tsdf.band >= min_free) & (tsdf.values > 0.9)
    f = np.where(free, np.maximum(f, tsdf.values), f)
    cap = np.clip((hull - hull_slack) / t, -1.0, 1.0)
    if override_band is not None:
        cap = np.where(tsdf.band >= override_band, -1.0, cap)
    if solid_hidden is not None:
        solid = (tsdf.hidden >= solid_hidden) & (tsdf.weight - tsdf.band < 0.1) & ~measured
        f = np.where(solid, -1.0, f)
        cap = np.where(solid, -1.0, cap)
    f = np.maximum(f, cap)
    for n, d in planes:
        n, d = np.asarray(n, dtype=np.float64), float(d)
        g = tsdf.grid
        ax = [g.origin[i] + np.arange(g.dims[i]) * g.voxel for i in range(3)]
        height = (ax[0][:, None, None] * n[0] + ax[1][None, :, None] * n[1] + ax[2][None, None, :] * n[2]) - d
        # signed distance to the cut plane, in units of trunc: a sub-voxel accurate flat base
        f = np.maximum(f, np.clip(((support_margin - height) / t).astype(np.float32), -1.0, 1.0))
    f[0, :, :] = f[-1, :, :] = f[:, 0, :] = f[:, -1, :] = f[:, :, 0] = f[:, :, -1] = 1.0
    return f


def _project(points: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """points (M, 3) -> pixel coords (M, 2) and depth (M,)."""
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    uv = (cam[:, :2] / z.clamp(min=1e-9)[:, None]) * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])
    return uv, z


def hull_field_reference(points: torch.Tensor, Ks: torch.Tensor, w2cs: torch.Tensor, sdfs: list[torch.Tensor],
               settings: CarveSettings, check: Callable[[float], None] = lambda f: None) -> torch.Tensor:
    """Signed hull distance at ``points``.

    points: (M, 3) world units; Ks: (N, 3, 3); w2cs: (N, 4, 4); sdfs: N tensors (H_i, W_i) from mask_sdf.
    Returns (M,) float32, world units, negative inside the (outlier-tolerant) visual hull.
    """
    n_views = len(sdfs)
    k = min(settings.outlier_views + 1, n_views)
    out = torch.empty(points.shape[0], dtype=torch.float32, device=points.device)
    min_seen = max(1, int(np.ceil(settings.min_seen_fraction * n_views)))
    n_chunks = (points.shape[0] + settings.chunk - 1) // settings.chunk
    for ci, start in enumerate(range(0, points.shape[0], settings.chunk)):
        pts = points[start:start + settings.chunk]
        top = torch.full((pts.shape[0], k), -float("inf"), device=pts.device)
        seen = torch.zeros(pts.shape[0], dtype=torch.int32, device=pts.device)
        for v in range(n_views):
            sdf = sdfs[v]
            H, W = sdf.shape
            uv, z = _project(pts, Ks[v], w2cs[v])
            inimg = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= W) & (uv[:, 1] >= 0) & (uv[:, 1] <= H)
            # grid_sample's align_corners=False maps -1/+1 to the outer pixel edges, as our pixel coords do
            grid = torch.stack([uv[:, 0] / W * 2 - 1, uv[:, 1] / H * 2 - 1], dim=-1).view(1, 1, -1, 2)
            d_px = F.grid_sample(sdf[None, None], grid, mode="bilinear", padding_mode="border",
                                 align_corners=False).view(-1)
            d_world = d_px * z.clamp(min=1e-9) / Ks[v, 0, 0]
            # views that do not see the point give no evidence either way
            d_world = torch.where(inimg, d_world, torch.full_like(d_world, -float("inf")))
            seen += inimg.int()
            top = torch.topk(torch.cat([top, d_world[:, None]], dim=1), k, dim=1).values
            check((ci + (v + 1) / n_views) / n_chunks)
        val = top[:, k - 1]
        val = torch.where(seen >= min_seen, val, val.abs().clamp(min=1e-6))
        out[start:start + pts.shape[0]] = torch.nan_to_num(val, neginf=-1e3)
    return out
