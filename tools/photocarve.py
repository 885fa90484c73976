"""Experiment (not in the pipeline): photo-consistency space carving of a visual hull (Kutulakos & Seitz style).

A visual hull cannot see a cavity that is open only towards the cameras (a helmet's inside seen through the neck):
every silhouette is full there. But the hull's surface voxels across such an opening are seen by different views
as different surface points behind them, so their colours disagree. Each pass casts every masked pixel's ray into
the occupancy grid; the first occupied voxel along it collects the pixel's colour. Voxels seen by enough views
whose colours disagree are carved, and the pass repeats on what is left until nothing more is carved.

Safeguards: a voxel is never carved where a ray that sees it crosses fewer than ``min_thickness`` occupied voxels
(thin parts would otherwise be cut through, and the silhouettes with them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class PhotoCarveSettings:
    threshold: float = 0.12  # carve where the colour standard deviation across views exceeds this (RGB in [0, 1])
    min_views: int = 3  # a voxel needs this many views' samples to be judged
    min_thickness: int = 4  # voxels a ray must cross inside the solid for its first voxel to be carvable
    max_passes: int = 60
    pixel_stride: int = 2  # every n-th pixel in x and y
    chunk: int = 8192  # rays marched at once


@dataclass(frozen=True)
class PhotoCarveResult:
    occupied: np.ndarray  # (X, Y, Z) bool
    carved: int  # voxels removed
    passes: int


def _first_hits(occ: torch.Tensor, origin: torch.Tensor, voxel: float, o: torch.Tensor, d: torch.Tensor,
                chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """March rays (origin o (3,), directions d (R, 3) unit) through the grid ``occ`` (X, Y, Z) bool whose voxel
    (i, j, k) is centred at origin + (i, j, k) * voxel. Returns the flat index of the first occupied voxel per ray
    (-1: none) and the number of occupied samples (half-voxel steps) along the ray."""
    dims = torch.tensor(occ.shape, device=occ.device)
    lo = origin - 0.5 * voxel
    hi = origin + (dims.float() - 0.5) * voxel
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t0 = (lo - o) * inv
    t1 = (hi - o) * inv
    t_near = torch.minimum(t0, t1).amax(1).clamp(min=0)
    t_far = torch.maximum(t0, t1).amin(1)
    step = 0.5 * voxel
    n_steps = int(torch.ceil(((t_far - t_near).clamp(min=0).max()) / step).item()) + 1 if len(d) else 1
    flat_occ = occ.reshape(-1)
    strides = torch.tensor([occ.shape[1] * occ.shape[2], occ.shape[2], 1], device=occ.device)
    hits, thick = [], []
    ks = torch.arange(n_steps, device=occ.device, dtype=torch.float32)
    for s in range(0, len(d), chunk):
        dd, tn, tf = d[s:s + chunk], t_near[s:s + chunk], t_far[s:s + chunk]
        t = tn[:, None] + (ks[None] + 0.5) * step  # (r, n)
        p = o + t[..., None] * dd[:, None, :]
        idx = torch.round((p - origin) / voxel).long()
        inside = (t < tf[:, None]) & (idx >= 0).all(-1) & (idx < dims).all(-1)
        lin = (idx.clamp(min=0) * strides).sum(-1).clamp(max=flat_occ.numel() - 1)
        filled = inside & flat_occ[lin]
        any_hit = filled.any(1)
        first = filled.float().argmax(1)
        hit = torch.where(any_hit, lin.gather(1, first[:, None])[:, 0], torch.full_like(first, -1))
        hits.append(hit)
        thick.append(filled.sum(1))
    return torch.cat(hits), torch.cat(thick)


def photo_carve(occupied: np.ndarray, origin: np.ndarray, voxel: float, images: list[np.ndarray],
                masks: list[np.ndarray], Ks: np.ndarray, w2cs: np.ndarray, settings: PhotoCarveSettings,
                device: str = "cpu", check: Callable[[float], None] = lambda f: None) -> PhotoCarveResult:
    """occupied: (X, Y, Z) bool, voxel (i, j, k) centred at origin + (i, j, k) * voxel (world units);
    images: N (H, W, 3) uint8; masks: N (H, W) bool; Ks (N, 3, 3); w2cs (N, 4, 4) OpenCV."""
    if occupied.ndim != 3:
        raise ValueError(f"occupied must be (X, Y, Z), got {occupied.shape}")
    if not (len(images) == len(masks) == len(Ks) == len(w2cs)):
        raise ValueError("images, masks, Ks and w2cs must have the same length")
    dev = torch.device(device)
    occ = torch.as_tensor(occupied, device=dev).clone()
    org = torch.as_tensor(origin, dtype=torch.float32, device=dev)
    start = int(occ.sum())
    rays = []
    st = settings.pixel_stride
    for img, m, K, w2c in zip(images, masks, Ks, w2cs):
        ys, xs = np.nonzero(np.asarray(m)[::st, ::st])
        ys, xs = ys * st, xs * st
        R, t = w2c[:3, :3], w2c[:3, 3]
        centre = -R.T @ t
        pix = np.stack([xs + 0.5, ys + 0.5, np.ones_like(xs, dtype=np.float64)], 1)
        d = (pix @ np.linalg.inv(K).T) @ R
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        col = np.asarray(img)[ys, xs].astype(np.float32) / 255.0
        rays.append((torch.as_tensor(centre, dtype=torch.float32, device=dev),
                     torch.as_tensor(d, dtype=torch.float32, device=dev), torch.as_tensor(col, device=dev)))
    passes = 0
    for passes in range(1, settings.max_passes + 1):
        n = occ.numel()
        cnt = torch.zeros(n, device=dev)
        s1 = torch.zeros((n, 3), device=dev)
        s2 = torch.zeros(n, device=dev)
        thin = torch.zeros(n, dtype=torch.bool, device=dev)
        for o, d, col in rays:
            hit, thick = _first_hits(occ, org, voxel, o, d, settings.chunk)
            ok = hit >= 0
            h = hit[ok]
            cnt.index_add_(0, h, torch.ones(len(h), device=dev))
            s1.index_add_(0, h, col[ok])
            s2.index_add_(0, h, (col[ok] ** 2).sum(1))
            thin[h[thick[ok] < 2 * settings.min_thickness]] = True  # two samples per voxel
        judged = cnt >= settings.min_views
        mean = s1 / cnt.clamp(min=1)[:, None]
        var = (s2 / cnt.clamp(min=1) - (mean ** 2).sum(1)).clamp(min=0) / 3.0
        carve = judged & ~thin & (var.sqrt() > settings.threshold)
        n_carve = int(carve.sum())
        if n_carve == 0:
            break
        occ.view(-1)[carve] = False
        check(passes / settings.max_passes)
    return PhotoCarveResult(occupied=occ.cpu().numpy(), carved=start - int(occ.sum()), passes=passes)
