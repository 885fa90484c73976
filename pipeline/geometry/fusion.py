"""Depth-map fusion into a truncated signed distance field (Curless & Levoy 1996), and the closed field to mesh.

Every voxel centre is projected into every depth map; where the map has a depth there, the voxel's signed
distance along the viewing direction (measured depth minus voxel depth, positive in front of the surface) is
truncated to ``trunc`` and averaged over the views, weighted by the match score times cos^2 of the angle at which
the view sees the surface (:func:`facing`). Voxels in front of a measured surface collect positive values (free
space), voxels just behind it negative ones; voxels no depth map says anything about keep weight 0.
:func:`combined_field` closes the surface with a visual hull where the photos measured nothing, and lets measured
free space carve what the hull cannot (cavities).

Runs in torch on the job's device, in chunks of voxels with all views at once so that memory stays bounded
(:func:`fuse_tensors`); the fields can stay on the device for :func:`combined_field_tensor` and marching cubes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pipeline.geometry.mvs import DepthMap


# free-space evidence (summed weights) below which no view is taken to have seen through a voxel: a tenth of one
# frontal, confident view
SEEN_FREE = 0.1


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
    evidence; band: (X, Y, Z) float32, the part of it from views that measured a surface within trunc of the voxel;
    hidden: (X, Y, Z) float32 or None, the match score of views that measured a surface in front of the voxel, more
    than trunc and less than the fusion's ``solid_depth`` in front (the voxel lies inside a measured part)."""

    values: np.ndarray
    weight: np.ndarray
    band: np.ndarray
    grid: Grid
    trunc: float
    hidden: np.ndarray | None = None


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


@dataclass(frozen=True)
class ViewTable:
    """Every view's per-pixel evidence in one table, so that one gather serves all views of a chunk of voxels.

    rows: (T, 3) float32, per pixel of every view [depth, weight, free], each view's (H + 2, W + 2) image with a
    border of zeros that pixels outside the image are clamped to (row major from offset[v]); offset: (V,) int64;
    R: (V, 3, 3) and t: (V, 3) world-to-camera; focal: (V, 2) fx, fy; centre: (V, 2) cx, cy; size: (V, 2) W, H
    float32; far: (V,) float32, the depth up to which a background pixel vouches for free space."""

    rows: torch.Tensor
    offset: torch.Tensor
    R: torch.Tensor
    t: torch.Tensor
    focal: torch.Tensor
    centre: torch.Tensor
    size: torch.Tensor
    far: torch.Tensor

    @property
    def views(self) -> int:
        return int(self.offset.shape[0])


def view_table(depths: list[DepthMap], device: torch.device, plane_weight: bool = True) -> ViewTable | None:
    """The evidence of the depth maps that say anything (a depth or free space somewhere) on ``device``; None when
    none does. Weights are the match score (clipped to [0.05, 1]) times :func:`facing` squared; with
    ``plane_weight``, the support plane's pixels (``DepthMap.table``), whose depths are the plane's, weigh their
    whole score."""
    rows, offset, Rs, ts, focal, centre, size, far = [], [], [], [], [], [], [], []
    n = 0
    for dm in depths:
        if dm.depth.ndim != 2 or dm.score.shape != dm.depth.shape or (dm.free is not None
                                                                      and dm.free.shape != dm.depth.shape):
            raise ValueError(f"view_table: depth {dm.depth.shape}, score {dm.score.shape} and free "
                             f"{None if dm.free is None else dm.free.shape} must be one (H, W)")
        if not (np.isfinite(dm.K).all() and np.isfinite(dm.w2c).all()):
            raise ValueError("view_table: a camera (K or w2c) is not finite")
        if not (dm.depth > 0).any() and (dm.free is None or not (dm.free > 0).any()):
            continue
        H, W = dm.depth.shape
        depth = torch.as_tensor(dm.depth, dtype=torch.float32, device=device)
        K = torch.as_tensor(dm.K, dtype=torch.float32, device=device)
        w2c = torch.as_tensor(dm.w2c, dtype=torch.float32, device=device)
        conf = torch.as_tensor(np.clip(dm.score, 0.05, 1.0), dtype=torch.float32, device=device)
        cos2 = facing(depth, K) ** 2
        if plane_weight and dm.table is not None:
            # a depth from the support plane's hypothesis is the plane's own, exact at any angle: the grazing
            # angle that makes a stereo depth a poor distance to the voxels beside it does not apply, and the views
            # that see the table under a body at a grazing angle are the only ones that see through the gap
            cos2 = torch.where(torch.as_tensor(dm.table, device=device), torch.ones_like(cos2), cos2)
        conf = conf * cos2
        free = torch.zeros_like(depth) if dm.free is None else torch.as_tensor(dm.free, dtype=torch.float32,
                                                                               device=device)
        # the zero border: a voxel outside the image reads no depth, no weight and no free space without a test
        rows.append(torch.nn.functional.pad(torch.stack([depth, conf, free], 0), (1, 1, 1, 1)).permute(1, 2, 0)
                    .reshape(-1, 3))
        offset.append(n)
        n += (H + 2) * (W + 2)
        Rs.append(w2c[:3, :3])
        ts.append(w2c[:3, 3])
        focal.append(torch.stack([K[0, 0], K[1, 1]]))
        centre.append(torch.stack([K[0, 2], K[1, 2]]))
        size.append(torch.tensor([W, H], dtype=torch.float32, device=device))
        far.append(float(dm.far))
    if not rows:
        return None
    return ViewTable(rows=torch.cat(rows), offset=torch.tensor(offset, dtype=torch.int64, device=device),
                     R=torch.stack(Rs), t=torch.stack(ts), focal=torch.stack(focal), centre=torch.stack(centre),
                     size=torch.stack(size), far=torch.tensor(far, dtype=torch.float32, device=device))


def grid_chunk(grid: Grid, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Centres of the voxels with flat (row-major over (X, Y, Z)) index start <= n < stop: (M, 3) float32, computed
    exactly as :meth:`Grid.points` computes them."""
    _, Y, Z = grid.dims
    n = torch.arange(start, stop, device=device, dtype=torch.int64)
    ijk = torch.stack([n // (Y * Z), (n // Z) % Y, n % Z], -1).to(torch.float32)
    return ijk * grid.voxel + torch.as_tensor(grid.origin, dtype=torch.float32, device=device)


def integrate(pts: torch.Tensor, views: ViewTable, trunc: float, solid_depth: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """TSDF sums of all views at ``pts`` (M, 3) world: (acc, weight, band, hidden), each (M,) float32.

    acc: the weighted sum of truncated signed distances (units of trunc) plus free-space evidence (+1 each);
    weight: all evidence; band: the part of it from surfaces measured within trunc; hidden: the weights of surfaces
    measured between trunc and ``solid_depth`` in front of the point (world units; 0: none). All views at once:
    (V, M) intermediates, so the caller sizes M."""
    cam = torch.einsum("mc,vdc->vmd", pts, views.R) + views.t[:, None, :]
    z = cam[..., 2]
    zc = z.clamp(min=1e-9)
    u = cam[..., 0] / zc * views.focal[:, 0:1] + views.centre[:, 0:1]
    v = cam[..., 1] / zc * views.focal[:, 1:2] + views.centre[:, 1:2]
    W, H = views.size[:, 0:1], views.size[:, 1:2]
    # pixel -1 and W (H) are the zero border; behind the camera reads it too
    xi = torch.minimum(u.floor().clamp_(min=-1), W).to(torch.int64)
    yi = torch.where(z > 0, torch.minimum(v.floor().clamp_(min=-1), H), -1.0).to(torch.int64)
    Wp = W.to(torch.int64) + 2
    flat = yi * Wp + xi + (views.offset[:, None] + Wp + 1)
    ev = views.rows.index_select(0, flat.reshape(-1)).reshape(*flat.shape, 3)  # (V, M, 3)
    d, score, free = ev[..., 0], ev[..., 1], ev[..., 2]
    sdf = d - z
    w = torch.where((d > 0) & (sdf > -trunc), score, torch.zeros_like(score))
    # a pixel that sees only background beyond the far depth: free space up to there
    fw = torch.where(z < views.far[:, None], free, torch.zeros_like(free))
    acc = (w * (sdf / trunc).clamp(-1, 1) + fw).sum(0)
    wsum = (w + fw).sum(0)
    band = torch.where(sdf < trunc, w, torch.zeros_like(w)).sum(0)
    hidden = torch.where((d > 0) & (sdf <= -trunc) & (sdf > -solid_depth), score, torch.zeros_like(score)).sum(0)
    return acc, wsum, band, hidden


def fuse_tensors(depths: list[DepthMap], grid: Grid, trunc: float, device: str = "cpu",
                 chunk_elements: int | None = None, check: Callable[[float], None] = lambda f: None,
                 solid_depth: float = 0.0, plane_weight: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted TSDF of the depth maps over ``grid`` on ``device``: (values, weight, band, hidden), each (X, Y, Z)
    float32 as in :class:`Tsdf`; ``trunc`` and ``solid_depth`` in world units.

    Voxels go in chunks, all views at once per chunk: (views x voxels) intermediates of ``chunk_elements`` entries
    (default 2^24 on a GPU: about 1.5 GB of temporaries; 2^18 on the CPU, where chunks that stay in the caches are
    faster, measured). The three fields stay on the device (a 512^3 grid: 1.6 GB)."""
    if trunc <= 0:
        raise ValueError(f"fuse: trunc must be > 0, got {trunc}")
    dev = torch.device(device)
    X, Y, Z = grid.dims
    total = X * Y * Z
    values = torch.ones(total, dtype=torch.float32, device=dev)
    weight = torch.zeros(total, dtype=torch.float32, device=dev)
    band = torch.zeros(total, dtype=torch.float32, device=dev)
    hidden = torch.zeros(total, dtype=torch.float32, device=dev)
    shaped = lambda: tuple(a.reshape(X, Y, Z) for a in (values, weight, band, hidden))  # noqa: E731
    views = view_table(depths, dev, plane_weight)
    if views is None:
        check(1.0)
        return shaped()
    if chunk_elements is None:
        chunk_elements = 1 << 24 if dev.type == "cuda" else 1 << 18
    step = max(1024, chunk_elements // views.views)
    for a in range(0, total, step):
        b = min(total, a + step)
        acc, wsum, bsum, hsum = integrate(grid_chunk(grid, a, b, dev), views, trunc, solid_depth)
        values[a:b] = torch.where(wsum > 0, acc / wsum.clamp(min=1e-9), torch.ones_like(acc))
        weight[a:b] = wsum
        band[a:b] = bsum
        hidden[a:b] = hsum
        check(b / total)
    del views
    return shaped()


def fuse(depths: list[DepthMap], grid: Grid, trunc: float, device: str = "cpu", chunk_elements: int | None = None,
         check: Callable[[float], None] = lambda f: None, solid_depth: float = 0.0, plane_weight: bool = True) -> Tsdf:
    """Weighted TSDF of the depth maps over ``grid``, computed on ``device`` (:func:`fuse_tensors`), as numpy
    arrays; ``trunc`` and ``solid_depth`` in world units."""
    values, weight, band, hidden = fuse_tensors(depths, grid, trunc, device, chunk_elements, check, solid_depth,
                                                plane_weight)
    return Tsdf(values=values.cpu().numpy(), weight=weight.cpu().numpy(), band=band.cpu().numpy(), grid=grid,
                trunc=trunc, hidden=hidden.cpu().numpy())


def combined_field(tsdf: Tsdf, hull: np.ndarray, min_band: float, min_free: float, hull_slack: float,
                   planes: list[tuple[np.ndarray, float]] = (), support_margin: float = 0.0,
                   override_band: float | None = None, solid_hidden: float | None = None) -> np.ndarray:
    """The field of the final closed surface, negative inside, in units of trunc. (X, Y, Z) float32.

    hull: (X, Y, Z) float32 visual-hull distance on the same grid, world units, negative inside. The hull gives the
    shape where the photos measured nothing (textureless surfaces); where at least ``min_band`` of match score
    measured a surface near a voxel, the TSDF's sub-voxel zero crossing replaces it; where ``min_free`` of evidence
    saw clear free space, the voxel is outside even inside the hull (a cup's inside, the gap under an armrest).
    Nothing lies more than ``hull_slack`` (world units) outside the hull, except, when ``override_band`` is given,
    where at least that much match score measured a surface: estimated silhouettes miss thin or dark parts (horns,
    feet on a dark table) that the photos did measure. With ``solid_hidden``, a voxel that at least that much match
    score measured a surface in front of (``tsdf.hidden``) and that no view saw free space at is inside: the core of
    such a measured part, beyond trunc from its surface, which the hull would otherwise leave hollow (a tube of an
    armchair's frame, wider than two truncations). ``planes`` (unit normal n, offset d,
    cameras on the side n·x > d: the table the object stands on, a wall right behind it): everything within
    ``support_margin`` of one or behind it is outside, so they are cut off and the object's base closed flat.
    Computed by :func:`combined_field_tensor` on the CPU."""
    if hull.shape != tsdf.values.shape:
        raise ValueError(f"combined_field: hull {hull.shape} and TSDF {tsdf.values.shape} differ")
    if solid_hidden is not None and tsdf.hidden is None:
        raise ValueError("combined_field: solid_hidden needs the TSDF's hidden evidence (fuse it with solid_depth)")
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return combined_field_tensor(as_t(tsdf.values), as_t(tsdf.weight), as_t(tsdf.band), as_t(hull), tsdf.grid,
                                 tsdf.trunc, min_band, min_free, hull_slack, planes, support_margin,
                                 override_band, hidden=None if tsdf.hidden is None else as_t(tsdf.hidden),
                                 solid_hidden=solid_hidden).numpy()


def combined_field_tensor(values: torch.Tensor, weight: torch.Tensor, band: torch.Tensor, hull: torch.Tensor,
                          grid: Grid, trunc: float, min_band: float, min_free: float, hull_slack: float,
                          planes: list[tuple[np.ndarray, float]] = (), support_margin: float = 0.0,
                          override_band: float | None = None, slab_voxels: int = 1 << 24,
                          hidden: torch.Tensor | None = None, solid_hidden: float | None = None) -> torch.Tensor:
    """:func:`combined_field` on tensors of one device: values, weight, band, hidden (the TSDF's; hidden only with
    ``solid_hidden``) and hull, each (X, Y, Z) float32 -> (X, Y, Z) float32 on that device, negative inside, units
    of ``trunc``. The plane cut is computed in float64 in x-slabs of ``slab_voxels`` (sub-voxel accuracy far from
    the origin; bounded memory)."""
    shape = tuple(grid.dims)
    if solid_hidden is not None and hidden is None:
        raise ValueError("combined_field: solid_hidden needs the TSDF's hidden evidence (fuse it with solid_depth)")
    fields = [("values", values), ("weight", weight), ("band", band), ("hull", hull)]
    if solid_hidden is not None:
        fields.append(("hidden", hidden))
    for name, a in fields:
        if tuple(a.shape) != shape:
            raise ValueError(f"combined_field: {name} {tuple(a.shape)} and the grid {shape} differ")
        if a.dtype != torch.float32 or a.device != values.device:
            raise ValueError(f"combined_field: {name} must be float32 on {values.device}, got {a.dtype} on {a.device}")
    if trunc <= 0:
        raise ValueError(f"combined_field: trunc must be > 0, got {trunc}")
    t = float(trunc)
    f = (hull / t).clamp_(-1.0, 1.0)
    f = torch.where(band >= min_band, values, f)
    free = ((weight - band) >= min_free) & (values > 0.9)
    f = torch.where(free, torch.maximum(f, values), f)
    del free
    cap = ((hull - hull_slack) / t).clamp_(-1.0, 1.0)
    if override_band is not None:
        cap = torch.where(band >= override_band, torch.full_like(cap, -1.0), cap)
    if solid_hidden is not None:
        # inside a measured part: behind its surface for some views, seen through by none (SEEN_FREE)
        solid = (hidden >= solid_hidden) & (weight - band < SEEN_FREE) & (band < min_band)
        f = torch.where(solid, torch.full_like(f, -1.0), f)
        cap = torch.where(solid, torch.full_like(cap, -1.0), cap)
        del solid
    f = torch.maximum(f, cap)
    del cap
    X, Y, Z = shape
    dev = values.device
    ax = [torch.as_tensor(grid.origin[i] + np.arange(grid.dims[i]) * grid.voxel, dtype=torch.float64, device=dev)
          for i in range(3)]
    step = max(1, slab_voxels // (Y * Z))
    for n, d in planes:
        n = np.asarray(n, dtype=np.float64)
        for x0 in range(0, X, step):
            x1 = min(X, x0 + step)
            height = (ax[0][x0:x1, None, None] * float(n[0]) + ax[1][None, :, None] * float(n[1])
                      + ax[2][None, None, :] * float(n[2])) - float(d)
            # signed distance to the cut plane, in units of trunc: a sub-voxel accurate flat base
            cut = ((support_margin - height) / t).to(torch.float32).clamp_(-1.0, 1.0)
            f[x0:x1] = torch.maximum(f[x0:x1], cut)
    f[0, :, :] = f[-1, :, :] = f[:, 0, :] = f[:, -1, :] = f[:, :, 0] = f[:, :, -1] = 1.0
    return f
