"""Depth-map fusion into a truncated signed distance field (Curless & Levoy 1996), and the closed field to mesh.

Every voxel centre is projected into every depth map; where the map has a depth there, the voxel's signed
distance along the viewing direction (measured depth minus voxel depth, positive in front of the surface) is
truncated to ``trunc`` and averaged over the views, weighted by the match score times cos^2 of the angle at which
the view sees the surface (:func:`facing`). Voxels in front of a measured surface collect positive values (free
space), voxels just behind it negative ones; voxels no depth map says anything about keep weight 0.
:func:`combined_field` closes the surface with a visual hull where the photos measured nothing, and lets measured
free space carve what the hull cannot (cavities).

Runs in torch on the job's device, in slabs of voxels so that memory stays bounded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pipeline.geometry.mvs import DepthMap


@dataclass(frozen=True)
class Grid:
    """A regular grid: voxel (i, j, k) has its centre at origin + (i, j, k) * voxel. dims: (X, Y, Z)."""

    origin: np.ndarray
    voxel: float
    dims: tuple[int, int, int]

    @classmethod
    def over_box(cls, lo: np.ndarray, hi: np.ndarray, resolution: int) -> "Grid":
        """``resolution`` voxels along the box's longest side. lo, hi: (3,) world."""
        lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        if (hi <= lo).any() or resolution < 4:
            raise ValueError(f"Grid.over_box needs lo < hi and resolution >= 4, got {lo}, {hi}, {resolution}")
        voxel = float((hi - lo).max()) / resolution
        dims = tuple(int(np.ceil((hi[i] - lo[i]) / voxel)) + 1 for i in range(3))
        return cls(origin=lo, voxel=voxel, dims=dims)  # type: ignore[arg-type]

    def points(self, x0: int, x1: int, device: torch.device) -> torch.Tensor:
        """Centres of the slab x0 <= i < x1, (M, 3) float32 in (i, j, k) order."""
        X, Y, Z = self.dims
        ax = [torch.arange(x0, x1, device=device, dtype=torch.float32),
              torch.arange(Y, device=device, dtype=torch.float32), torch.arange(Z, device=device, dtype=torch.float32)]
        g = torch.stack(torch.meshgrid(*ax, indexing="ij"), -1).reshape(-1, 3)
        return g * self.voxel + torch.as_tensor(self.origin, dtype=torch.float32, device=device)


@dataclass(frozen=True)
class Tsdf:
    """values: (X, Y, Z) float32 in [-1, 1] (units of trunc, positive outside); weight: (X, Y, Z) float32, all
    evidence; band: (X, Y, Z) float32, the part of it from views that measured a surface within trunc of the voxel."""

    values: np.ndarray
    weight: np.ndarray
    band: np.ndarray
    grid: Grid
    trunc: float


def facing(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """|cos| of the angle between each pixel's viewing ray and the surface normal of the depth map there (from its
    neighbours' back-projections); 0 where a neighbour is missing or the surface jumps. depth (H, W) -> (H, W).

    A depth seen at a grazing angle is a poor measure of the distance along the ray to voxels beside it: weighting
    by cos^2 keeps such views from pulling the surface out at the object's outline (the classic TSDF bulge)."""
    H, W = depth.shape
    ys, xs = torch.meshgrid(torch.arange(H, device=depth.device, dtype=torch.float32) + 0.5,
                            torch.arange(W, device=depth.device, dtype=torch.float32) + 0.5, indexing="ij")
    rays = torch.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], torch.ones_like(xs)], -1)
    X = rays * depth[..., None]
    out = torch.zeros_like(depth)
    du = X[1:-1, 2:] - X[1:-1, :-2]
    dv = X[2:, 1:-1] - X[:-2, 1:-1]
    n = torch.linalg.cross(du, dv, dim=-1)
    n = n / n.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    r = rays[1:-1, 1:-1] / rays[1:-1, 1:-1].norm(dim=-1, keepdim=True)
    cos = (n * r).sum(-1).abs()
    d = depth
    ok = (d[1:-1, 2:] > 0) & (d[1:-1, :-2] > 0) & (d[2:, 1:-1] > 0) & (d[:-2, 1:-1] > 0) & (d[1:-1, 1:-1] > 0)
    out[1:-1, 1:-1] = torch.where(ok, cos, torch.zeros_like(cos))
    return out


def fuse(depths: list[DepthMap], grid: Grid, trunc: float, device: str = "cpu", slab_voxels: int = 1 << 22,
         check: Callable[[float], None] = lambda f: None) -> Tsdf:
    """Weighted TSDF of the depth maps over ``grid``; ``trunc`` in world units."""
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
    step = max(1, slab_voxels // (Y * Z))
    for x0 in range(0, X, step):
        x1 = min(X, x0 + step)
        pts = grid.points(x0, x1, dev)
        acc = torch.zeros(len(pts), device=dev)
        wsum = torch.zeros(len(pts), device=dev)
        bsum = torch.zeros(len(pts), device=dev)
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
        vals = torch.where(wsum > 0, acc / wsum.clamp(min=1e-9), torch.ones_like(acc))
        values[x0:x1] = vals.reshape(x1 - x0, Y, Z).cpu().numpy()
        weight[x0:x1] = wsum.reshape(x1 - x0, Y, Z).cpu().numpy()
        band[x0:x1] = bsum.reshape(x1 - x0, Y, Z).cpu().numpy()
        check(x1 / X)
    return Tsdf(values=values, weight=weight, band=band, grid=grid, trunc=trunc)


def combined_field(tsdf: Tsdf, hull: np.ndarray, min_band: float, min_free: float, hull_slack: float,
                   planes: list[tuple[np.ndarray, float]] = (), support_margin: float = 0.0,
                   override_band: float | None = None) -> np.ndarray:
    """The field of the final closed surface, negative inside, in units of trunc. (X, Y, Z) float32.

    hull: (X, Y, Z) float32 visual-hull distance on the same grid, world units, negative inside. The hull gives the
    shape where the photos measured nothing (textureless surfaces); where at least ``min_band`` of match score
    measured a surface near a voxel, the TSDF's sub-voxel zero crossing replaces it; where ``min_free`` of evidence
    saw clear free space, the voxel is outside even inside the hull (a cup's inside, the gap under an armrest).
    Nothing lies more than ``hull_slack`` (world units) outside the hull, except, when ``override_band`` is given,
    where at least that much match score measured a surface: estimated silhouettes miss thin or dark parts (horns,
    feet on a dark table) that the photos did measure. ``planes`` (unit normal n, offset d,
    cameras on the side n·x > d: the table the object stands on, a wall right behind it): everything within
    ``support_margin`` of one or behind it is outside, so they are cut off and the object's base closed flat."""
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
