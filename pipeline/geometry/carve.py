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

import cv2
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
    if m.all():
        # no background pixel: scipy's convention (as before) rather than OpenCV's "infinitely far"
        return (-ndimage.distance_transform_edt(m)).astype(np.float32)
    # OpenCV's exact Euclidean transform gives scipy's distances (to float32 rounding, tested) about 8x faster
    # (measured: 0.045 s against 0.35 s for a 1600 x 1200 mask): a full-size silhouette per photo adds up
    u8 = m.astype(np.uint8)
    outside = cv2.distanceTransform(1 - u8, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    inside = cv2.distanceTransform(u8, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
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

    All views at once per chunk of points: one projection and one k-th largest over the views instead of one per
    view, the same values. (views x points) intermediates of 4 * settings.chunk entries on a GPU, 2^18 on the CPU,
    where chunks that stay in the caches are faster (measured, one thread: 0.74 s against the per-view loop's 1.1 s
    for 655k points and 19 views; 1.5 s with 8M-entry chunks)."""
    n_views = len(sdfs)
    if n_views == 0 or len(Ks) != n_views or len(w2cs) != n_views:
        raise ValueError(f"hull_field needs one K and pose per silhouette, got {len(Ks)}, {len(w2cs)}, {n_views}")
    k = min(settings.outlier_views + 1, n_views)
    out = torch.empty(points.shape[0], dtype=torch.float32, device=points.device)
    min_seen = max(1, int(np.ceil(settings.min_seen_fraction * n_views)))
    step = max(1024, (4 * settings.chunk if points.is_cuda else 1 << 18) // n_views)
    R, t = w2cs[:, :3, :3], w2cs[:, :3, 3]
    focal = torch.stack([Ks[:, 0, 0], Ks[:, 1, 1]], -1)[:, None, :]  # (N, 1, 2)
    centre = torch.stack([Ks[:, 0, 2], Ks[:, 1, 2]], -1)[:, None, :]
    size = torch.tensor([[s.shape[1], s.shape[0]] for s in sdfs], dtype=torch.float32, device=points.device)
    W, H = size[:, 0:1], size[:, 1:2]
    # silhouettes of one size (the usual case) are sampled in one call
    stacked = torch.stack(sdfs)[:, None] if len({tuple(d.shape) for d in sdfs}) == 1 else None
    n_chunks = (points.shape[0] + step - 1) // step
    for ci, start in enumerate(range(0, points.shape[0], step)):
        pts = points[start:start + step]
        cam = torch.einsum("mc,vdc->vmd", pts, R) + t[:, None, :]
        z = cam[..., 2]
        zc = z.clamp(min=1e-9)
        uv = (cam[..., :2] / zc[..., None]) * focal + centre  # (N, M, 2)
        inimg = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] <= W) & (uv[..., 1] >= 0) & (uv[..., 1] <= H)
        # grid_sample's align_corners=False maps -1/+1 to the outer pixel edges, as our pixel coords do
        grid = uv / size[:, None, :] * 2 - 1
        if stacked is not None:
            d_px = F.grid_sample(stacked, grid[:, None], mode="bilinear", padding_mode="border",
                                 align_corners=False).view(n_views, -1)
        else:
            d_px = torch.empty_like(z)
            for v in range(n_views):  # one sample per view: the silhouettes differ in size
                d_px[v] = F.grid_sample(sdfs[v][None, None], grid[v].view(1, 1, -1, 2), mode="bilinear",
                                        padding_mode="border", align_corners=False).view(-1)
        d_world = d_px * zc / Ks[:, 0, 0, None]
        # views that do not see the point give no evidence either way
        d_world = torch.where(inimg, d_world, torch.full_like(d_world, -float("inf")))
        seen = inimg.sum(0)
        val = torch.topk(d_world, k, dim=0).values[k - 1]
        val = torch.where(seen >= min_seen, val, val.abs().clamp(min=1e-6))
        out[start:start + pts.shape[0]] = torch.nan_to_num(val, neginf=-1e3)
        check((ci + 1) / n_chunks)
    return out


def _grid(lo: np.ndarray, hi: np.ndarray, voxel: float, device: torch.device) -> tuple[torch.Tensor, tuple[int, int, int]]:
    dims = tuple(int(np.ceil((hi[i] - lo[i]) / voxel)) + 1 for i in range(3))
    axes = [torch.arange(d, dtype=torch.float32, device=device) * voxel + float(lo[i]) for i, d in enumerate(dims)]
    gx, gy, gz = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([gx, gy, gz], dim=-1).view(-1, 3), dims  # type: ignore[return-value]


def carve(Ks: np.ndarray, w2cs: np.ndarray, masks: list[np.ndarray], settings: CarveSettings,
          device: str = "cpu", check: Callable[[float], None] = lambda f: None,
          bounds: tuple[np.ndarray, np.ndarray] | None = None,
          support: tuple[np.ndarray, float] | None = None,
          sdfs: list[np.ndarray] | None = None) -> CarveResult:
    """Coarse-to-fine visual hull.

    Ks: (N, 3, 3) float64; w2cs: (N, 4, 4) float64 (OpenCV); masks: N bool arrays (H_i, W_i).
    The object box is found on a 64^3 grid around the point the optical axes converge to, grown until the
    hull no longer touches the grid border; the fine grid then spans that box at ``settings.resolution``.
    ``bounds`` (lo (3,), hi (3,)), when known from SfM points, caps that box: silhouettes that touch the image
    border leave the hull open there. ``support`` (unit normal n, offset d): nothing lies behind the surface the
    object rests on or hangs from (n·x < d is outside). ``sdfs``: the masks' :func:`mask_sdf`, where the caller has
    them already (a distance transform per full-size photo is not free).
    """
    if len(masks) != len(Ks) or len(Ks) != len(w2cs):
        raise ValueError(f"need one K, pose and mask per view; got {len(Ks)}, {len(w2cs)}, {len(masks)}")
    if len(masks) < 2:
        raise InputError("visual hull needs at least 2 views with masks")
    dev = torch.device(device)
    if sdfs is not None and [d.shape for d in sdfs] != [m.shape for m in masks]:
        raise ValueError("carve: sdfs must be the masks' mask_sdf, one (H_i, W_i) per mask")
    sdf_t = [torch.from_numpy(d if sdfs is not None else mask_sdf(m)).to(dev) for d, m in
             zip(sdfs if sdfs is not None else masks, masks)]
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
        field = hull_field(pts, Kt, Wt, sdf_t, settings, lambda f: check(0.1 * f)).view(*dims)
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
    field = hull_field(pts, Kt, Wt, sdf_t, settings, lambda f: check(0.1 + 0.9 * f)).view(*dims)
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
