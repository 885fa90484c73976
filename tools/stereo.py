"""Experiment (not in the pipeline; measured, not adopted): hull-bounded multi-view stereo that carves cavities.

A visual hull fills every cavity that is open only towards the cameras (a helmet's inside seen through the neck, a
cup's inside): each silhouette is full there. The photos do show what is behind the opening, though. For each
view, every masked pixel's depth is searched *inside the hull only*, between where its ray enters the hull and
where it first leaves it (the hull contains the object, so the surface is there), by winner-takes-all normalised
cross-correlation (NCC) of a small window against the best few of its neighbouring views, coarse then fine.
Depths that at least ``min_consistent`` other views' depth maps confirm are fused into a truncated signed distance
over the hull's voxels (Curless & Levoy); voxels the fusion puts clearly in front of the seen surface are free
space and are cut out of the hull (``combine_fused``), specks removed.

Why not per-voxel photo-consistency (tools/photocarve.py): thresholding colour agreement either carved nothing
inside the helmet or cut into spot. Picking the best depth along each ray is more discriminative than an absolute
threshold, and the cross-view depth check removes much of what remains wrong.

Measured on the H100 (bench/results/stereo-trial-h100.log, stereo-{carve,fused,off}*-h100.json):
- hull only, 192 voxels, 512 px: helmet F@1 % 0.760 -> 0.801 (carve) / 0.815 (fused surface); spot, bob,
  armadillo +0.000 to +0.004; bunny +0.03. The fused surface everywhere pits tight hulls (spot F@0.2 % 0.90 -> 0.84).
- whole jobs (refined): helmet F@0.2 % 0.707 (off) -> 0.683 (carve) / 0.685 (fused); armadillo unchanged; the
  geometry stage +8 to +14 s. So it is not in the pipeline.
- Why it cannot open the helmet: its inside is near-black (8-bit values ~2-15, a blocky low-frequency texture), so
  the NCC finds no reliable depth there; only 0.8 % of the hull's voxels were carved. With the GT's depths at the
  same pixels the same fusion reaches F@1 % 0.96 (CPU trial, 128 voxels): the depths, not the fusion, are missing.

Depth is camera z (world units) throughout, so the results do not depend on the scene's units beyond the voxel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


@dataclass(frozen=True)
class StereoSettings:
    max_side: int = 384  # views are matched at this long side (px)
    hypotheses: int = 64  # depth samples per pixel between hull entry and first exit
    refine_hypotheses: int = 9  # then this many within one coarse step either side of the best
    sources: int = 8  # neighbouring views matched against each reference view
    top_k: int = 3  # a depth's score: mean NCC of its best top_k sources (the others may be occluded)
    min_angle_deg: float = 4.0  # sources closer in viewing direction than this give no baseline
    max_angle_deg: float = 60.0
    window: int = 7  # NCC window (px)
    batch: int = 8  # depth hypotheses matched at once (memory: ~ batch x sources x 12 bytes a pixel, x5)
    min_ncc: float = 0.6  # a depth is a candidate only where its score reaches this
    min_std: float = 0.02  # ... and the reference window is textured (std of [0, 1] intensities)
    consistency_voxels: float = 1.5  # depth agreement tolerance between views, in voxels
    min_consistent: int = 3  # other views whose depth maps must confirm a depth
    truncation_voxels: float = 3.0  # signed-distance truncation of the fusion
    min_fuse_views: int = 3  # views whose depths must reach a voxel before the fusion overrides the hull there
    carve_voxels: float = 1.5  # free space: fused distance in front of the seen surface above this
    min_region_voxels: int = 64  # free regions smaller than this are noise
    blend_voxels: float = 2.0  # around free space, the fused surface replaces the hull's
    fused_surface: bool = False  # the fused surface wherever enough views see it (not only around free space)
    margin_voxels: float = 1.5  # a kept depth this far behind the hull's surface counts as "deeper" (statistics)
    march_step_voxels: float = 0.5  # hull sampling step along the rays
    chunk_pixels: int = 1 << 16


@dataclass(frozen=True)
class DepthMaps:
    depth: list[torch.Tensor]  # N (h, w) float32, camera z in world units, 0 where no depth
    front: list[torch.Tensor]  # N (h, w) float32, camera z where the ray enters the hull, 0 where it misses
    score: list[torch.Tensor]  # N (h, w) float32, best NCC score
    Ks: np.ndarray  # (N, 3, 3) at the matching resolution


@dataclass(frozen=True)
class StereoResult:
    field: np.ndarray  # (X, Y, Z) float32, world units, negative inside: the hull with the free space carved
    carved_voxels: int
    hull_voxels: int
    depth_pixels: int  # pixels with a depth candidate
    kept_pixels: int  # ... confirmed by other views
    deeper_pixels: int  # ... lying deeper than the hull's surface by more than margin_voxels


def view_sources(w2cs: np.ndarray, center: np.ndarray, n: int, min_deg: float, max_deg: float) -> list[np.ndarray]:
    """For each view, the indices of up to ``n`` other views whose direction to ``center`` is closest to its own,
    between ``min_deg`` and ``max_deg`` apart. w2cs: (N, 4, 4) OpenCV; center: (3,) world."""
    R, t = w2cs[:, :3, :3], w2cs[:, :3, 3]
    eyes = -np.einsum("nji,nj->ni", R, t)
    d = eyes - center
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    ang = np.degrees(np.arccos(np.clip(d @ d.T, -1, 1)))
    out = []
    for i in range(len(w2cs)):
        ok = np.nonzero((ang[i] >= min_deg) & (ang[i] <= max_deg))[0]
        out.append(ok[np.argsort(ang[i, ok])][:n])
    return out


def ncc_windows(ref: torch.Tensor, src: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised cross-correlation over ``window`` x ``window`` windows, all channels pooled.

    ref: (C, h, w); src: (B, C, h, w) -> NCC (B, h, w) in [-1, 1] and the reference's window std (h, w)."""
    pad = window // 2

    def box(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, window, stride=1, padding=pad, count_include_pad=False)

    r = ref[None]
    mr, ms = box(r), box(src)
    var_r = (box(r * r) - mr * mr).sum(1)
    var_s = (box(src * src) - ms * ms).sum(1)
    cov = (box(r * src) - mr * ms).sum(1)
    ncc = cov / (var_r * var_s).clamp(min=1e-12).sqrt()
    std_r = (var_r[0].clamp(min=0) / ref.shape[0]).sqrt()
    return ncc.clamp(-1, 1), std_r


def _rays(K: np.ndarray, w2c: np.ndarray, h: int, w: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera centre (3,) and per-pixel world directions scaled to unit camera z: (h*w, 3)."""
    R = torch.as_tensor(w2c[:3, :3], dtype=torch.float32, device=dev)
    t = torch.as_tensor(w2c[:3, 3], dtype=torch.float32, device=dev)
    Kt = torch.as_tensor(K, dtype=torch.float32, device=dev)
    ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float32) + 0.5,
                            torch.arange(w, device=dev, dtype=torch.float32) + 0.5, indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(-1, 3)
    d_cam = pix @ torch.linalg.inv(Kt).T  # z = 1
    return -R.T @ t, d_cam @ R


class HullSampler:
    """Trilinear lookups of a hull field (X, Y, Z), voxel (i, j, k) centred at origin + (i, j, k) * voxel."""

    def __init__(self, field: np.ndarray, origin: np.ndarray, voxel: float, dev: torch.device) -> None:
        self.f = torch.as_tensor(field, dtype=torch.float32, device=dev)[None, None]
        self.origin = torch.as_tensor(origin, dtype=torch.float32, device=dev)
        self.voxel = float(voxel)
        self.dims = torch.tensor(field.shape, dtype=torch.float32, device=dev)

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        """p: (..., 3) world -> (...) field value (outside the grid: positive)."""
        g = (p - self.origin) / self.voxel / (self.dims - 1) * 2 - 1
        v = F.grid_sample(self.f, g.reshape(1, 1, 1, -1, 3).flip(-1), mode="bilinear", padding_mode="border",
                          align_corners=True)
        outside = (g.abs() > 1).any(-1).reshape(-1)
        v = v.reshape(-1)
        return torch.where(outside, v.abs().clamp(min=self.voxel), v).reshape(p.shape[:-1])

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        lo = self.origin.cpu().numpy().astype(np.float64)
        return lo, lo + (self.dims.cpu().numpy() - 1) * self.voxel


def hull_span(hull: HullSampler, center: torch.Tensor, dirs: torch.Tensor, z_near: float, z_far: float,
              step: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera z where each ray (centre (3,), dirs (R, 3) at unit z) enters the hull and where it first leaves it
    again (both 0 where the ray misses). Sampled every ``step`` in z, refined linearly between samples."""
    n = max(2, int(np.ceil((z_far - z_near) / step)) + 1)
    zs = torch.linspace(z_near, z_far, n, device=dirs.device)
    f = hull(center + zs[None, :, None] * dirs[:, None, :])  # (R, n)
    inside = f < 0
    hit = inside.any(1)
    i0 = inside.float().argmax(1)
    after = inside | (torch.arange(n, device=dirs.device)[None] < i0[:, None])
    i1 = (~after).float().argmax(1)  # first outside sample after entry (0 if the hull reaches z_far)
    i1 = torch.where(after.all(1), torch.full_like(i1, n - 1), i1)

    def crossing(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa, fb = f.gather(1, a[:, None])[:, 0], f.gather(1, b[:, None])[:, 0]
        s = (fa / (fa - fb).where((fa - fb).abs() > 1e-12, torch.ones_like(fa))).clamp(0, 1)
        return zs[a] + s * (zs[b] - zs[a])

    front = crossing((i0 - 1).clamp(min=0), i0)
    back = crossing((i1 - 1).clamp(min=0), i1)
    zero = torch.zeros_like(front)
    return torch.where(hit, front, zero), torch.where(hit, back, zero)


def _z_range(hull: HullSampler, w2c: np.ndarray) -> tuple[float, float]:
    lo, hi = hull.box()
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    z = corners @ w2c[2, :3] + w2c[2, 3]
    return max(float(z.min()), 1e-6 * float(np.abs(z).max())), float(z.max())


def _sample_images(imgs: torch.Tensor, uv: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """imgs (B, C, h, w); uv (B, P, 2) pixels -> values (B, C, P) and in-image flags (B, P)."""
    h, w = size
    g = torch.stack([uv[..., 0] / w * 2 - 1, uv[..., 1] / h * 2 - 1], -1)[:, None]
    v = F.grid_sample(imgs, g, mode="bilinear", padding_mode="border", align_corners=False)[:, :, 0]
    ok = (uv[..., 0] >= 0) & (uv[..., 0] <= w) & (uv[..., 1] >= 0) & (uv[..., 1] <= h)
    return v, ok


def _warp(imgs: list[torch.Tensor], Ps: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Colours of world points X (B, M, 3) in the source images (3, h_j, w_j) with projections Ps (S, 3, 4):
    (S, B, 3, M), -1 where a point falls outside an image."""
    p = torch.einsum("sij,bmj->sbmi", Ps[:, :, :3], X) + Ps[:, None, None, :, 3]
    uv = p[..., :2] / p[..., 2:].clamp(min=1e-9)  # (S, B, M, 2)
    shapes = {tuple(im.shape) for im in imgs}
    if len(shapes) == 1:
        h, w = imgs[0].shape[1:]
        v, ok = _sample_images(torch.stack(imgs), uv.flatten(1, 2), (h, w))  # (S, 3, B*M)
        v = v.view(len(imgs), 3, *uv.shape[1:3]).permute(0, 2, 1, 3)
        ok = ok.view(uv.shape[:3])
    else:  # views of different sizes: one source at a time
        vs, oks = [], []
        for j, im in enumerate(imgs):
            vj, okj = _sample_images(im[None], uv[j].flatten(0, 1)[None], tuple(im.shape[1:]))
            vs.append(vj.view(3, *uv.shape[1:3]).permute(1, 0, 2))
            oks.append(okj.view(uv.shape[1:3]))
        v, ok = torch.stack(vs), torch.stack(oks)
    return torch.where(ok[:, :, None], v, torch.full_like(v, -1.0))


def _best_depth(ref: torch.Tensor, imgs: list[torch.Tensor], Ps: torch.Tensor, center: torch.Tensor,
                dirs: torch.Tensor, valid: torch.Tensor, settings: StereoSettings,
                hypotheses: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Winner-takes-all over per-pixel depth hypotheses, ``settings.batch`` hypotheses at a time.

    ref (3, h, w); imgs: S source images (3, h_j, w_j) with projections Ps (S, 3, 4); dirs (h*w, 3) at unit z;
    valid (h*w,); each hypothesis (h*w,) camera z. -> best score (h*w,), its depth (h*w,), the reference
    windows' std (h, w)."""
    _, h, w = ref.shape
    S = len(imgs)
    best = torch.full((h * w,), -2.0, device=ref.device)
    best_z = torch.zeros(h * w, device=ref.device)
    std_r = torch.zeros(h, w, device=ref.device)
    k_eff = min(settings.top_k, S)
    hyps = list(hypotheses)
    for s in range(0, len(hyps), settings.batch):
        z = torch.stack(hyps[s:s + settings.batch])  # (B, h*w)
        B = len(z)
        X = center + z[..., None] * dirs[None]  # (B, h*w, 3)
        ncc, std_r = ncc_windows(ref, _warp(imgs, Ps, X).reshape(S * B, 3, h, w), settings.window)
        score = ncc.view(S, B, -1).topk(k_eff, dim=0).values.mean(0)  # (B, h*w)
        top, arg = score.max(0)
        zb = z.gather(0, arg[None])[0]
        better = valid & (top > best)
        best = torch.where(better, top, best)
        best_z = torch.where(better, zb, best_z)
    return best, best_z, std_r


def sweep_depths(images: list[np.ndarray], masks: list[np.ndarray], Ks: np.ndarray, w2cs: np.ndarray,
                 hull: HullSampler, settings: StereoSettings, device: str = "cpu",
                 check: Callable[[float], None] = lambda f: None) -> DepthMaps:
    """Winner-takes-all NCC depth per masked pixel, searched between hull entry and first exit.

    images: N (H, W, 3) uint8; masks: N (H, W) bool; Ks (N, 3, 3); w2cs (N, 4, 4) OpenCV (world units)."""
    from pipeline.render import reduced_camera

    if not (len(images) == len(masks) == len(Ks) == len(w2cs)):
        raise ValueError("images, masks, Ks and w2cs must have the same length")
    if settings.hypotheses < 2 or settings.top_k < 1 or settings.window < 3 or settings.window % 2 == 0:
        raise ValueError("need hypotheses >= 2, top_k >= 1 and an odd window >= 3")
    dev = torch.device(device)
    n = len(images)
    small_K, ims, ms = [], [], []
    for img, m, K in zip(images, masks, Ks):
        H, W = m.shape
        k, w, h = reduced_camera(np.asarray(K), W, H, settings.max_side)
        small_K.append(k)
        ims.append(torch.as_tensor(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA), device=dev)
                   .permute(2, 0, 1).float() / 255.0)
        ms.append(torch.as_tensor(cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0,
                                  device=dev))
    Kr = np.array(small_K)
    lo, hi = hull.box()
    sources = view_sources(np.asarray(w2cs), 0.5 * (lo + hi), settings.sources, settings.min_angle_deg,
                           settings.max_angle_deg)
    P = [torch.as_tensor(Kr[i] @ w2cs[i][:3], dtype=torch.float32, device=dev) for i in range(n)]  # (3, 4)
    depths, fronts, scores = [], [], []
    step = settings.march_step_voxels * hull.voxel
    for r in range(n):
        h, w = ms[r].shape
        center, dirs = _rays(Kr[r], w2cs[r], h, w, dev)
        z0, z1 = _z_range(hull, w2cs[r])
        front = torch.zeros(h * w, device=dev)
        back = torch.zeros(h * w, device=dev)
        sel = ms[r].view(-1).nonzero()[:, 0]
        for s in range(0, len(sel), settings.chunk_pixels):
            idx = sel[s:s + settings.chunk_pixels]
            f, b = hull_span(hull, center, dirs[idx], z0, z1, step)
            front[idx], back[idx] = f, b
        valid = front > 0
        src = sources[r]
        best = torch.full((h * w,), -2.0, device=dev)
        best_z = torch.zeros(h * w, device=dev)
        std_r = torch.zeros(h, w, device=dev)
        if len(src) >= settings.top_k and bool(valid.any()):
            imgs_s = [ims[j] for j in src]
            Ps = torch.stack([P[j] for j in src])
            coarse = (back - front) / (settings.hypotheses - 1)
            best, best_z, std_r = _best_depth(
                ims[r], imgs_s, Ps, center, dirs, valid, settings,
                (front + k * coarse for k in range(settings.hypotheses)))
            if settings.refine_hypotheses > 1:
                # a finer search within one coarse step either side of the winner
                ts = torch.linspace(-1, 1, settings.refine_hypotheses, device=dev)
                best, best_z, std_r = _best_depth(
                    ims[r], imgs_s, Ps, center, dirs, valid, settings,
                    (torch.minimum(torch.maximum(best_z + t * coarse, front), back) for t in ts))
        ok = valid & (best >= settings.min_ncc) & (std_r.view(-1) >= settings.min_std)
        depths.append(torch.where(ok, best_z, torch.zeros_like(best_z)).view(h, w))
        fronts.append(front.view(h, w))
        scores.append(best.view(h, w))
        check(0.8 * (r + 1) / n)
    return DepthMaps(depth=depths, front=fronts, score=scores, Ks=Kr)


def consistent_depths(dm: DepthMaps, w2cs: np.ndarray, tol: float) -> list[torch.Tensor]:
    """Per view, how many other views' depth maps confirm each pixel's depth.

    A pixel's 3-D point is projected into every other view; that view confirms it when its own depth at the
    nearest pixel agrees within ``tol`` (world units). Returns N (h, w) int32 counts."""
    n = len(dm.depth)
    dev = dm.depth[0].device
    out = []
    for r in range(n):
        d = dm.depth[r]
        h, w = d.shape
        center, dirs = _rays(dm.Ks[r], w2cs[r], h, w, dev)
        sel = (d.view(-1) > 0).nonzero()[:, 0]
        count = torch.zeros(h * w, dtype=torch.int32, device=dev)
        if len(sel):
            X = center + d.view(-1)[sel, None] * dirs[sel]
            for j in range(n):
                if j == r:
                    continue
                dj = dm.depth[j]
                hj, wj = dj.shape
                Pj = torch.as_tensor(dm.Ks[j] @ w2cs[j][:3], dtype=torch.float32, device=dev)
                p = torch.cat([X, torch.ones_like(X[:, :1])], 1) @ Pj.T
                zj = p[:, 2]
                u = (p[:, 0] / zj.clamp(min=1e-9)).floor().long()
                v = (p[:, 1] / zj.clamp(min=1e-9)).floor().long()
                inimg = (zj > 0) & (u >= 0) & (u < wj) & (v >= 0) & (v < hj)
                dd = dj[v.clamp(0, hj - 1), u.clamp(0, wj - 1)]
                agree = inimg & (dd > 0) & ((dd - zj).abs() < tol)
                count[sel] += agree.int()
        out.append(count.view(h, w))
    return out


def fuse_depths(field: np.ndarray, origin: np.ndarray, voxel: float, dm: DepthMaps, keep: list[torch.Tensor],
                w2cs: np.ndarray, truncation: float, chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Truncated signed-distance fusion (Curless & Levoy) of the kept depths, over the hull's voxels only.

    For every voxel inside the hull (or within half a voxel of it) and every view whose kept depth map covers the
    voxel's projection: sdf = depth - z, positive in front of the seen surface, clamped to ``truncation``; views
    that see a surface more than ``truncation`` in front of the voxel say nothing about it (it is hidden from
    them). Returns (X, Y, Z) float32 mean sdf (world units) and (X, Y, Z) int32 view counts."""
    dev = dm.depth[0].device
    dims = field.shape
    ii = torch.as_tensor(np.argwhere(field < 0.5 * voxel), device=dev)
    P = torch.as_tensor(origin, dtype=torch.float32, device=dev) + ii.float() * voxel
    total = torch.zeros(len(P), device=dev)
    count = torch.zeros(len(P), dtype=torch.int32, device=dev)
    for r in range(len(dm.depth)):
        d = torch.where(keep[r], dm.depth[r], torch.zeros_like(dm.depth[r]))
        h, w = d.shape
        Pr = torch.as_tensor(dm.Ks[r] @ w2cs[r][:3], dtype=torch.float32, device=dev)
        for s in range(0, len(P), chunk):
            p = P[s:s + chunk] @ Pr[:, :3].T + Pr[:, 3]
            z = p[:, 2]
            u = (p[:, 0] / z.clamp(min=1e-9)).floor().long()
            v = (p[:, 1] / z.clamp(min=1e-9)).floor().long()
            ok = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
            dd = d[v.clamp(0, h - 1), u.clamp(0, w - 1)]
            sdf = dd - z
            use = ok & (dd > 0) & (sdf > -truncation)
            total[s:s + chunk] += torch.where(use, sdf.clamp(max=truncation), torch.zeros_like(sdf))
            count[s:s + chunk] += use.int()
    mean = torch.full(dims, 0.0, device=dev)
    cnt = torch.zeros(dims, dtype=torch.int32, device=dev)
    idx = (ii[:, 0], ii[:, 1], ii[:, 2])
    mean[idx] = total / count.clamp(min=1)
    cnt[idx] = count
    return mean.cpu().numpy(), cnt.cpu().numpy()


def combine_fused(field: np.ndarray, tsdf: np.ndarray, count: np.ndarray, voxel: float,
                  settings: StereoSettings) -> tuple[np.ndarray, np.ndarray]:
    """The hull field with the fusion's free space cut out, only where that is unambiguous.

    Why not simply max(hull, fused): where the hull is already tight (most of a convex-ish object), stereo noise
    of a voxel would pit its accurate surface. Free space is taken where the fused distance says a voxel lies more
    than ``carve_voxels`` in front of the seen surface; specks are removed (morphological opening, components
    under ``min_region_voxels``); within ``blend_voxels`` of what is left the fused surface replaces the hull's,
    for its sub-voxel position. field, tsdf: (X, Y, Z) float32 world units; count (X, Y, Z) int.
    -> (field (X, Y, Z) float32, carved (X, Y, Z) bool)."""
    known = count >= settings.min_fuse_views
    free = known & (tsdf > settings.carve_voxels * voxel) & (field < 0)
    ball = ndimage.generate_binary_structure(3, 1)
    free = ndimage.binary_opening(free, structure=ball)
    labels, n = ndimage.label(free)
    if n:
        sizes = np.bincount(labels.ravel())
        small = sizes < settings.min_region_voxels
        small[0] = False
        free[small[labels]] = False
    if not free.any():
        return field.copy(), free
    near = ndimage.binary_dilation(free, structure=ball, iterations=max(1, int(round(settings.blend_voxels))))
    out = np.where(near & known, np.maximum(field, tsdf), field)
    out = np.where(free, np.maximum(out, 0.5 * voxel), out)  # what was found free stays free
    return out.astype(np.float32), free


def fuse_free_space(field: np.ndarray, origin: np.ndarray, voxel: float, dm: DepthMaps, w2cs: np.ndarray,
                    settings: StereoSettings) -> StereoResult:
    """From depth maps (``sweep_depths``) to the carved hull: cross-view check, fusion, ``combine_fused`` (and the
    fused surface everywhere it is known, with ``settings.fused_surface``). field: (X, Y, Z) as in
    ``carve_free_space``; w2cs (N, 4, 4) OpenCV."""
    counts = consistent_depths(dm, w2cs, settings.consistency_voxels * voxel)
    keep = [(d > 0) & (c >= settings.min_consistent) for d, c in zip(dm.depth, counts)]
    tsdf, n = fuse_depths(field, origin, voxel, dm, keep, w2cs, settings.truncation_voxels * voxel)
    out, carved = combine_fused(field, tsdf, n, voxel, settings)
    if settings.fused_surface:
        out = np.where(n >= settings.min_fuse_views, np.maximum(out, tsdf), out).astype(np.float32)
    n_deeper = sum(int((k & (d - settings.margin_voxels * voxel > f)).sum())
                   for k, d, f in zip(keep, dm.depth, dm.front))
    return StereoResult(field=out, carved_voxels=int(carved.sum()),
                        hull_voxels=int((field < 0).sum()), depth_pixels=sum(int((d > 0).sum()) for d in dm.depth),
                        kept_pixels=sum(int(k.sum()) for k in keep), deeper_pixels=n_deeper)


def carve_free_space(field: np.ndarray, origin: np.ndarray, voxel: float, images: list[np.ndarray],
                     masks: list[np.ndarray], Ks: np.ndarray, w2cs: np.ndarray, settings: StereoSettings,
                     device: str = "cpu", check: Callable[[float], None] = lambda f: None) -> StereoResult:
    """The hull ``field`` (X, Y, Z) float32 (world units, negative inside; voxel (i, j, k) centred at
    origin + (i, j, k) * voxel) with the free space that confirmed stereo depths show cut out: the result only
    ever lies inside the hull.

    images: N (H, W, 3) uint8; masks: N (H, W) bool; Ks (N, 3, 3); w2cs (N, 4, 4) OpenCV."""
    if field.ndim != 3:
        raise ValueError(f"field must be (X, Y, Z), got {field.shape}")
    hull = HullSampler(field, origin, voxel, torch.device(device))
    dm = sweep_depths(images, masks, Ks, w2cs, hull, settings, device, lambda f: check(0.9 * f))
    res = fuse_free_space(field, origin, voxel, dm, np.asarray(w2cs), settings)
    check(1.0)
    return res
