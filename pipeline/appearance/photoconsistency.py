"""Multi-view photo-consistency for the refinement: where a view sees the mesh, the neighbouring photo, warped onto
the view through the mesh, must look like the view's own photo (zero-mean NCC over small windows, so exposure and
white balance drop out).

This is the data term of OpenMVS's mesh refinement (Vu et al. 2012, "High accuracy and visibility-consistent dense
multiview stereo"), here differentiated by autograd through the rasteriser's interpolated surface points instead of
by hand. The photometric loss against per-vertex colours can only pull the surface as sharply as the mesh's own
vertices carry colour; this term compares photo with photo at the photos' resolution, so texture finer than the
triangles places the surface too. Pure functions; the refinement renders the points and calls :func:`pair_loss`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def pair_neighbours(w2cs: np.ndarray, centre: np.ndarray, k: int = 4, angle_deg: float = 15.0,
                    min_deg: float = 3.0, max_deg: float = 60.0) -> np.ndarray:
    """For each view, the ``k`` views whose direction to ``centre`` makes an angle with its own closest to
    ``angle_deg`` (the triangulation angle stereo likes), among those between ``min_deg`` (too little baseline to
    tell depths apart) and ``max_deg`` (too little of the same surface seen alike).

    w2cs (N, 4, 4) OpenCV; centre (3,) the object's centre in the same frame. A view with fewer candidates repeats
    its best; one with none gets -1. -> (N, k) int64."""
    w2cs = np.asarray(w2cs, dtype=np.float64)
    if w2cs.ndim != 3 or w2cs.shape[1:] != (4, 4):
        raise ValueError(f"pair_neighbours needs (N, 4, 4) w2cs, got {w2cs.shape}")
    if k < 1:
        raise ValueError(f"pair_neighbours: k must be at least 1, got {k}")
    R, t = w2cs[:, :3, :3], w2cs[:, :3, 3]
    centres = -np.einsum("nji,nj->ni", R, t)  # camera centres: -R^T t
    d = np.asarray(centre, dtype=np.float64)[None] - centres
    d /= np.linalg.norm(d, axis=1, keepdims=True).clip(1e-12)
    ang = np.degrees(np.arccos(np.clip(d @ d.T, -1.0, 1.0)))
    out = np.full((len(w2cs), k), -1, dtype=np.int64)
    for i in range(len(w2cs)):
        ok = np.flatnonzero((ang[i] >= min_deg) & (ang[i] <= max_deg))
        ok = ok[ok != i]
        if not len(ok):
            continue
        best = ok[np.argsort(np.abs(ang[i, ok] - angle_deg), kind="stable")][:k]
        out[i] = np.resize(best, k)
    return out


def project(points: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World points (B, H, W, 3) seen by B cameras (K (B, 3, 3) pixels, w2c (B, 4, 4) OpenCV) -> pixel coordinates
    (B, H, W, 2) (pixel corners at integers: pixel (0, 0) spans [0, 1)) and camera depth (B, H, W)."""
    cam = torch.einsum("bij,bhwj->bhwi", w2c[:, :3, :3], points) + w2c[:, None, None, :3, 3]
    z = cam[..., 2]
    zs = z.clamp_min(1e-9)
    u = cam[..., 0] / zs * K[:, 0, 0, None, None] + K[:, 0, 2, None, None]
    v = cam[..., 1] / zs * K[:, 1, 1, None, None] + K[:, 1, 2, None, None]
    return torch.stack([u, v], dim=-1), z


def sample(image: torch.Tensor, uv: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """image (B, H, W, C) at pixel coordinates uv (B, h, w, 2) (corners at integers) -> (B, h, w, C); outside: 0."""
    H, W = image.shape[1:3]
    grid = torch.stack([2 * uv[..., 0] / W - 1, 2 * uv[..., 1] / H - 1], dim=-1)
    out = F.grid_sample(image.permute(0, 3, 1, 2), grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out.permute(0, 2, 3, 1)


def local_ncc(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, radius: int, eps: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-mean NCC of a and b (B, H, W) over the valid (B, H, W) bool pixels of each (2 radius + 1)^2 window.

    -> ncc (B, H, W) in [-1, 1] and the share of the window that is valid (B, H, W). ``eps`` is added to both
    variances, so a plain window (variance far below eps) scores near 0 with a small gradient, not noise."""
    w = valid.to(a.dtype)[:, None]
    a, b = a[:, None] * w, b[:, None] * w
    size = 2 * radius + 1

    def pool(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, size, stride=1, padding=radius, count_include_pad=True)

    n = pool(w)
    ns = n.clamp_min(1e-6)
    ma, mb = pool(a) / ns, pool(b) / ns
    va = (pool(a * a) / ns - ma * ma).clamp_min(0)
    vb = (pool(b * b) / ns - mb * mb).clamp_min(0)
    cov = pool(a * b) / ns - ma * mb
    ncc = cov / torch.sqrt((va + eps) * (vb + eps))
    return ncc[:, 0], n[:, 0]


def gray(rgb: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) -> (B, H, W) luma (Rec. 601); (B, H, W, 1) -> (B, H, W)."""
    if rgb.shape[-1] == 1:
        return rgb[..., 0]
    return rgb @ rgb.new_tensor([0.299, 0.587, 0.114])


def blurred_gray(rgb: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, H, W, 3) -> (N, H, W, 1) luma blurred by a Gaussian of ``sigma`` pixels (none at 0). Bilinear sampling's
    derivative jumps at every pixel edge; on a blurred image the warp's gradient varies smoothly instead of
    following the pixel grid into noise on the surface."""
    g = gray(rgb)[:, None]
    if sigma > 0:
        r = max(1, int(round(3 * sigma)))
        x = torch.arange(-r, r + 1, dtype=g.dtype, device=g.device)
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        k = k / k.sum()
        g = F.conv2d(F.pad(g, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        g = F.conv2d(F.pad(g, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return g[:, 0, ..., None]


def pair_loss(points: torch.Tensor, cover: torch.Tensor, target: torch.Tensor, image_j: torch.Tensor,
              K_j: torch.Tensor, w2c_j: torch.Tensor, depth_j: torch.Tensor, radius: int = 2,
              depth_tol: float = 0.01, eps: float = 1e-4, min_support: float = 0.75,
              object_j: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """1 - NCC between each view's photo and its neighbour's photo warped onto it through the mesh.

    points (B, H, W, 3): the mesh's surface point at each pixel of view i (differentiable in the vertices);
    cover (B, H, W) bool: where view i sees the mesh (and, where known, the object); target (B, H, W, 3): view i's
    photo at those pixels (or (B, H, W, 1) grey); image_j (B, Hj, Wj, 3 or 1), K_j (B, 3, 3), w2c_j (B, 4, 4): the neighbour's photo and
    camera; depth_j (B, Hj, Wj): the mesh's camera depth in the neighbour (0 where it sees no mesh), so that a point
    hidden there (its depth more than ``depth_tol`` relative behind what the neighbour sees) is not compared;
    object_j (B, Hj, Wj) bool, optional: the neighbour's pixels that show the object (its silhouette, and where it
    sees the mesh). A point is compared only where the neighbour's 3x3 pixels around it all do: bilinear sampling at
    a silhouette blends in the background, and a surface drawn inwards samples less of it, which biased the term
    inwards by about a fifth of a pixel at the truth (spot's true surface, 96 px, CPU).
    -> (loss: the mean of 1 - NCC over the pixels whose window is at least ``min_support`` compared, 0 where none;
    share of view i's covered pixels compared)."""
    if points.shape[:3] != cover.shape or points.shape[:3] != target.shape[:3]:
        raise ValueError(f"pair_loss: points {tuple(points.shape)}, cover {tuple(cover.shape)} and target "
                         f"{tuple(target.shape)} must share (B, H, W)")
    if image_j.shape[:3] != depth_j.shape:
        raise ValueError(f"pair_loss: image_j {tuple(image_j.shape)} and depth_j {tuple(depth_j.shape)} differ")
    uv, z = project(points, K_j, w2c_j)
    with torch.no_grad():
        Hj, Wj = depth_j.shape[1:]
        inside = (uv[..., 0] >= 0) & (uv[..., 0] < Wj) & (uv[..., 1] >= 0) & (uv[..., 1] < Hj) & (z > 0)
        seen = sample(depth_j[..., None], uv.detach(), mode="nearest")[..., 0]
        visible = inside & (seen > 0) & ((z - seen).abs() <= depth_tol * seen)
        if object_j is not None:
            if object_j.shape != depth_j.shape:
                raise ValueError(f"pair_loss: object_j {tuple(object_j.shape)} and depth_j {tuple(depth_j.shape)} "
                                 "differ")
            core = -F.max_pool2d(-object_j[:, None].float(), 3, stride=1, padding=1)
            visible = visible & (sample(core.permute(0, 2, 3, 1), uv.detach(), mode="nearest")[..., 0] > 0.5)
        valid = cover & visible
    warped = sample(image_j, uv)
    ncc, support = local_ncc(gray(target), gray(warped), valid, radius, eps)
    use = (valid & (support >= min_support)).to(ncc.dtype)
    # no branch on the count: reading it would wait for the GPU at every step
    n_use = use.sum()
    return ((1.0 - ncc) * use).sum() / n_use.clamp_min(1.0), n_use / cover.sum().clamp_min(1)
