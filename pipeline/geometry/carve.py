"""Visual hull as a signed-distance field: sub-voxel accurate, tolerant to a few bad masks.

For each view the silhouette's 2-D signed distance (pixels, negative inside) is sampled at the projection of
every voxel centre and turned into world units (``* depth / focal``). A point is inside the visual hull when
it is inside every silhouette, i.e. when the *largest* per-view value is < 0. Taking the k-th largest value
instead lets k-1 views disagree (a bad mask no longer bites a hole into the object). Marching cubes on this
field gives a closed surface in world units whatever the input's scale, since the grid is sized from the
object's own bounding box.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from pipeline.context import InputError

if TYPE_CHECKING:
    import trimesh


@dataclass(frozen=True)
class CarveSettings:
    resolution: int = 192  # voxels along the longest side of the object's box
    outlier_views: int = 1  # views allowed to say "outside" for a point that is kept
    min_seen_fraction: float = 0.5  # seen by fewer views: outside (else regions behind the object, seen
    # only from one side, survive as "shadow cones")
    chunk: int = 1 << 21  # points per batch (memory bound)


@dataclass(frozen=True)
class CarveResult:
    field: np.ndarray  # (X, Y, Z) float32, world units, negative inside
    origin: np.ndarray  # (3,) world position of voxel (0, 0, 0)
    voxel: float  # voxel edge length, world units
    occupied_fraction: float


def mask_sdf(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W) float32 signed distance in pixels to the silhouette edge, negative inside."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {mask.shape}")
    m = mask.astype(bool)
    if not m.any():
        return np.full(m.shape, float(max(m.shape)), dtype=np.float32)
    outside = ndimage.distance_transform_edt(~m)
    inside = ndimage.distance_transform_edt(m)
    return (outside - inside).astype(np.float32)


def axes_convergence(w2c: np.ndarray) -> np.ndarray:
    """Least-squares point closest to all optical axes. w2c: (N, 4, 4) -> (3,)."""
    R, t = w2c[:, :3, :3], w2c[:, :3, 3]
    centers = -np.einsum("nji,nj->ni", R, t)
    dirs = R[:, 2, :]
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, d in zip(centers, dirs):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c
    return np.linalg.lstsq(A, b, rcond=None)[0]


def _project(points: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """points (M, 3) -> pixel coords (M, 2) and depth (M,)."""
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    uv = (cam[:, :2] / z.clamp(min=1e-9)[:, None]) * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])
    return uv, z


def hull_field(points: torch.Tensor, Ks: torch.Tensor, w2cs: torch.Tensor, sdfs: list[torch.Tensor],
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
            if k == 1:  # the usual case (given masks, no outlier allowed): a running maximum, no sort per view
                torch.maximum(top[:, 0], d_world, out=top[:, 0])
            else:
                top = torch.topk(torch.cat([top, d_world[:, None]], dim=1), k, dim=1).values
            check((ci + (v + 1) / n_views) / n_chunks)
        val = top[:, k - 1]
        val = torch.where(seen >= min_seen, val, val.abs().clamp(min=1e-6))
        out[start:start + pts.shape[0]] = torch.nan_to_num(val, neginf=-1e3)
    return out


def _grid(lo: np.ndarray, hi: np.ndarray, voxel: float, device: torch.device) -> tuple[torch.Tensor, tuple[int, int, int]]:
    dims = tuple(int(np.ceil((hi[i] - lo[i]) / voxel)) + 1 for i in range(3))
    axes = [torch.arange(d, dtype=torch.float32, device=device) * voxel + float(lo[i]) for i, d in enumerate(dims)]
    gx, gy, gz = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([gx, gy, gz], dim=-1).view(-1, 3), dims  # type: ignore[return-value]


def carve(Ks: np.ndarray, w2cs: np.ndarray, masks: list[np.ndarray], settings: CarveSettings,
          device: str = "cpu", check: Callable[[float], None] = lambda f: None,
          bounds: tuple[np.ndarray, np.ndarray] | None = None,
          support: tuple[np.ndarray, float] | None = None) -> CarveResult:
    """Coarse-to-fine visual hull.

    Ks: (N, 3, 3) float64; w2cs: (N, 4, 4) float64 (OpenCV); masks: N bool arrays (H_i, W_i).
    The object box is found on a 64^3 grid around the point the optical axes converge to, grown until the
    hull no longer touches the grid border; the fine grid then spans that box at ``settings.resolution``.
    ``bounds`` (lo (3,), hi (3,)), when known from SfM points, caps that box: silhouettes that touch the image
    border leave the hull open there. ``support`` (unit normal n, offset d): nothing lies behind the surface the
    object rests on or hangs from (n·x < d is outside).
    """
    if len(masks) != len(Ks) or len(Ks) != len(w2cs):
        raise ValueError(f"need one K, pose and mask per view; got {len(Ks)}, {len(w2cs)}, {len(masks)}")
    if len(masks) < 2:
        raise InputError("visual hull needs at least 2 views with masks")
    dev = torch.device(device)
    sdfs = [torch.from_numpy(mask_sdf(m)).to(dev) for m in masks]
    Kt = torch.from_numpy(np.asarray(Ks, dtype=np.float32)).to(dev)
    Wt = torch.from_numpy(np.asarray(w2cs, dtype=np.float32)).to(dev)

    center = axes_convergence(np.asarray(w2cs))
    # radius from the silhouettes: the farthest mask pixel from the projected centre, back-projected
    radii = []
    for K, w2c, m in zip(Ks, w2cs, masks):
        ys, xs = np.nonzero(m)
        if len(xs) == 0:
            continue
        z = (w2c[:3, :3] @ center + w2c[:3, 3])[2]
        if z <= 0:
            continue
        c_px = K[:2, :2] @ ((w2c[:3, :3] @ center + w2c[:3, 3])[:2] / z) + K[:2, 2]
        r_px = np.sqrt(((xs - c_px[0]) ** 2 + (ys - c_px[1]) ** 2).max())
        radii.append(r_px * z / K[0, 0])
    if not radii:
        raise InputError("every mask is empty: there is no object to reconstruct")
    half = float(np.median(radii)) * 1.5
    lo = hi = None
    for _attempt in range(4):
        c_lo, c_hi = center - half, center + half
        voxel = 2 * half / 63
        pts, dims = _grid(c_lo, c_hi, voxel, dev)
        field = hull_field(pts, Kt, Wt, sdfs, settings, lambda f: check(0.1 * f)).view(*dims)
        occ = (field < 0).nonzero()
        if occ.numel() == 0:
            raise InputError("the masks have no common region in 3-D: check that poses and masks belong together "
                             "(camera convention: transform_matrix is camera-to-world with OpenGL axes)")
        imin = occ.min(0).values.cpu().numpy()
        imax = occ.max(0).values.cpu().numpy()
        lo = c_lo + (imin - 2) * voxel
        hi = c_lo + (imax + 2) * voxel
        touches = (imin <= 0).any() or (imax >= np.array(dims) - 1).any()
        if not touches:
            break
        half *= 1.8
    if lo is None or hi is None:  # unreachable: the loop body runs at least once
        raise RuntimeError('object box was not found')
    if bounds is not None:
        lo, hi = np.maximum(lo, bounds[0]), np.minimum(hi, bounds[1])
        if (hi <= lo).any():
            lo, hi = np.asarray(bounds[0], float), np.asarray(bounds[1], float)
    extent = float((hi - lo).max())
    voxel = extent / settings.resolution
    lo, hi = lo - 2 * voxel, hi + 2 * voxel
    pts, dims = _grid(lo, hi, voxel, dev)
    field = hull_field(pts, Kt, Wt, sdfs, settings, lambda f: check(0.1 + 0.9 * f)).view(*dims)
    f = field.cpu().numpy()
    if support is not None:
        n, d = np.asarray(support[0], dtype=np.float64), float(support[1])
        behind = (pts.cpu().numpy().astype(np.float64) @ n - d).reshape(dims)
        f = np.maximum(f, -behind.astype(np.float32))  # positive (outside) behind the support surface
    # close the surface: the border layer is always outside
    f[0, :, :] = f[-1, :, :] = f[:, 0, :] = f[:, -1, :] = f[:, :, 0] = f[:, :, -1] = abs(voxel)
    return CarveResult(field=f, origin=lo.astype(np.float64), voxel=voxel,
                       occupied_fraction=float((f < 0).mean()))


def mask_coverage(mesh: trimesh.Trimesh, Ks: np.ndarray, w2cs: np.ndarray, masks: list[np.ndarray], max_side: int = 128) -> np.ndarray:
    """Per view, the fraction of the mask that the mesh's silhouette covers. -> (N,) float in [0, 1].

    A strict visual hull covers every consistent mask almost fully; one mask that misses part of the object cuts
    that part from the hull, so the *other* views' masks are then no longer covered.
    Ks (N, 3, 3); w2cs (N, 4, 4) OpenCV; masks N (H, W) bool. Rendered at ``max_side`` px (Embree) for speed."""
    import cv2

    from pipeline.imaging.render import reduced_camera, render

    if not (len(Ks) == len(w2cs) == len(masks)):
        raise ValueError("need one K, pose and mask per view")
    out = np.ones(len(masks))
    for i, (K, w2c, m) in enumerate(zip(Ks, w2cs, masks)):
        H, W = m.shape
        k, w, h = reduced_camera(K, W, H, max_side)
        sil = render(mesh, k, w2c, w, h).mask
        small = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_AREA) > 0
        # one pixel of slack: both silhouettes are sampled at pixel centres on a coarse grid
        sil = cv2.dilate(sil.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        if small.any():
            out[i] = float((small & sil).sum() / small.sum())
    return out
