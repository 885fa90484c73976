"""Multi-view stereo: one depth map per view by plane sweep with windowed NCC, then geometric consistency.

For a reference view, depth hypotheses are fronto-parallel planes sampled uniformly in inverse depth over the
object's depth range. Each source view is warped onto every plane (a homography per plane) and compared with the
reference by zero-mean normalised cross-correlation over a square window; per pixel and plane, the mean of the
``best_k`` source scores is the plane's score (robust to a source that is occluded there). The best plane is
refined to sub-plane precision with a parabola, then ``refine_rounds`` surface-following sweeps polish it: each
pixel tests small inverse-depth offsets around its own estimate, so a window follows the surface rather than a
fronto-parallel plane. Depths that at least ``min_consistent`` neighbouring depth maps reproduce (re-projection
within ``max_reproj_px`` and relative depth within ``max_rel_depth``) are kept.

Everything is torch and runs on the job's device; on a CPU the same code runs at a lower resolution. Pixel
coordinates put pixel centres at +0.5, as in :mod:`pipeline.imaging.render`. Shapes are given per function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.cameras.cameras import camera_centers
from pipeline.geometry.ncc import best_k_mean_, ncc, window_stats
from pipeline.imaging.render import reduced_camera


@dataclass(frozen=True)
class MvsSettings:
    max_side: int = 960  # long side of the depth maps
    neighbours: int = 8  # source views per reference view
    best_k: int = 3  # source scores averaged per hypothesis (the rest may be occluded)
    planes: int = 160  # inverse-depth hypotheses of the sweep
    window: int = 7  # NCC window side, pixels (odd)
    refine_rounds: int = 2  # surface-following sweeps after the plane sweep
    refine_steps: int = 7  # hypotheses per surface-following sweep (odd)
    min_score: float = 0.4  # mean NCC of the best_k sources at the chosen depth
    min_texture: float = 0.01  # window standard deviation (grey in [0, 1]) below which a pixel gets no depth
    # added to the product of the two windows' standard deviations under NCC's division: it pulls the score of a
    # faint window towards 0, so it must stay well under min_texture squared for faint texture to score at all
    ncc_eps: float = 1e-4
    min_consistent: int = 2  # neighbouring depth maps that must agree
    max_reproj_px: float = 1.0
    max_rel_depth: float = 0.01
    plane_chunk: int = 16  # hypotheses evaluated at once (memory bound)
    coarse: int = 2  # the sweep runs on images reduced this many times; full resolution only refines (1: off)
    # beyond the object's region: a coarse sweep out to background_factor x the far depth. A pixel whose best match
    # lies there (the table's far side, the room) sees nothing inside the region: its ray is free space there
    background_planes: int = 32
    background_factor: float = 12.0
    # the near end of a view's sweep is at least this fraction of the nearest depths of the SfM points it observes
    # inside the object's sphere (their 2nd percentile); 0: the sphere alone. A close-up inside the sphere otherwise
    # sweeps from 2 % of its radius, in inverse depth: its object got 1-4 of 64 planes, and no depth
    sparse_near: float = 0.5
    # the support plane (the table) as one more hypothesis per pixel, scored through the plane's own homography:
    # the fronto-parallel planes of the sweep do not match a table seen at a grazing angle (the gap under a body
    # seen from a low view), which then vouches neither for a depth nor for free space (docs/design.md, Depth maps).
    # The table wins a pixel where its score is at least ``support_min_score`` and the sweep's best, its window's
    # deviation at least ``support_min_texture``, and where ``support_open`` pixels of its neighbourhood won too
    # (an opening): the plane is the same for every view, so the depth maps' consistency check, which stops a chance
    # match of the sweep, always passes it, and a plain part of the object (spot's white face) then gets specks of
    # table depth by chance
    support_hypothesis: bool = False
    support_min_score: float = 0.8
    support_min_texture: float = 0.02
    support_open: int = 3

    def __post_init__(self) -> None:
        if self.window % 2 != 1 or self.window < 3:
            raise ValueError(f"MvsSettings.window must be odd and >= 3, got {self.window}")
        if self.refine_steps % 2 != 1:
            raise ValueError(f"MvsSettings.refine_steps must be odd, got {self.refine_steps}")
        if self.best_k < 1 or self.neighbours < 1:
            raise ValueError("MvsSettings.best_k and neighbours must be >= 1")


@dataclass(frozen=True)
class DepthMap:
    """depth: (H, W) float32 camera z (0 where unknown); score: (H, W) float32 NCC at that depth;
    K: (3, 3) float64 for this resolution; w2c: (4, 4) float64 OpenCV; free: (H, W) float32, the score of a match
    beyond the far depth where the pixel sees only background (0 elsewhere); far: that far depth; table: (H, W) bool,
    the pixels whose depth or background came from the support plane's hypothesis (None: none did)."""

    depth: np.ndarray
    score: np.ndarray
    K: np.ndarray
    w2c: np.ndarray
    free: np.ndarray | None = None
    far: float = 0.0
    table: np.ndarray | None = None


# ----------------------------------------------------------------------------------------------- small maths


def pixel_grid(height: int, width: int, device: torch.device) -> torch.Tensor:
    """Homogeneous pixel centres (3, H*W): x + 0.5, y + 0.5, 1."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32) + 0.5,
                            torch.arange(width, device=device, dtype=torch.float32) + 0.5, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(height * width, device=device)])


def relative_pose(w2c_ref: np.ndarray, w2c_src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R (3, 3), t (3,) with X_src = R X_ref + t for camera-frame points. Both (4, 4) OpenCV world-to-camera."""
    R = w2c_src[:3, :3] @ w2c_ref[:3, :3].T
    return R, w2c_src[:3, 3] - R @ w2c_ref[:3, 3]


def parabola_offset(c_minus: torch.Tensor, c0: torch.Tensor, c_plus: torch.Tensor) -> torch.Tensor:
    """Sub-sample position of a peak from three equally spaced scores (c0 the largest): in [-0.5, 0.5]."""
    denom = c_minus - 2 * c0 + c_plus
    off = 0.5 * (c_minus - c_plus) / torch.where(denom.abs() < 1e-9, torch.full_like(denom, -1e-9), denom)
    return off.clamp(-0.5, 0.5)


# ----------------------------------------------------------------------------------------------- view choice


def neighbour_views(w2cs: np.ndarray, points: np.ndarray | None, obs_view: np.ndarray | None,
                    obs_point: np.ndarray | None, count: int, center: np.ndarray,
                    best_angle_deg: float = 15.0) -> list[np.ndarray]:
    """Source views for every view: the ``count`` best by shared sparse points weighted by their triangulation
    angle (peaked at ``best_angle_deg``; near-zero angles give no depth resolution, wide ones match badly).
    Without sparse observations, the angle between the views' rays to ``center`` decides alone.

    w2cs (N, 4, 4); points (P, 3); obs_view/obs_point (M,) index pairs; center (3,). -> N arrays of indices."""
    n = len(w2cs)
    centers = camera_centers(w2cs)
    score = np.zeros((n, n))
    if points is not None and obs_view is not None and obs_point is not None and len(obs_view):
        seen = np.zeros((n, len(points)), dtype=bool)
        seen[obs_view, obs_point] = True
        for i in range(n):
            shared = seen[i][None, :] & seen  # (N, P)
            pi = np.nonzero(seen[i])[0]
            if len(pi) == 0:
                continue
            ri = points[pi] - centers[i]
            ri /= np.linalg.norm(ri, axis=1, keepdims=True) + 1e-12
            for j in range(n):
                if j == i:
                    continue
                m = shared[j, pi]
                if not m.any():
                    continue
                rj = points[pi[m]] - centers[j]
                rj /= np.linalg.norm(rj, axis=1, keepdims=True) + 1e-12
                ang = np.degrees(np.arccos(np.clip((ri[m] * rj).sum(1), -1, 1)))
                w = np.exp(-((ang - best_angle_deg) / (0.6 * best_angle_deg)) ** 2) * (ang > 1.0)
                score[i, j] = w.sum()
    rays = center[None] - centers
    rays /= np.linalg.norm(rays, axis=1, keepdims=True) + 1e-12
    ang = np.degrees(np.arccos(np.clip(rays @ rays.T, -1, 1)))
    geometric = np.exp(-((ang - best_angle_deg) / (0.8 * best_angle_deg)) ** 2) * (ang > 1.0)
    # the sparse score dominates where there is one; the geometric score orders views without shared points
    total = score + 1e-3 * geometric
    np.fill_diagonal(total, -np.inf)
    out = []
    for i in range(n):
        order = np.argsort(-total[i])
        out.append(order[:min(count, n - 1)][np.isfinite(total[i][order[:min(count, n - 1)]])])
    return out


def depth_range(w2c: np.ndarray, center: np.ndarray, radius: float) -> tuple[float, float]:
    """Nearest and farthest camera depth of a sphere (center (3,), radius) seen from camera w2c (4, 4); a camera
    inside or close to the sphere gets a small positive near depth instead of a negative one."""
    z = float((w2c[:3, :3] @ center + w2c[:3, 3])[2])
    dist = float(np.linalg.norm(w2c[:3, :3] @ center + w2c[:3, 3]))
    far = max(z, dist) + radius
    near = max(dist - radius, 0.02 * radius, 1e-3 * far)
    return near, far


def sparse_depth_range(w2c: np.ndarray, center: np.ndarray, radius: float, points: np.ndarray | None,
                       fraction: float, min_points: int = 20) -> tuple[float, float]:
    """:func:`depth_range`, with the near depth raised to ``fraction`` of the 2nd percentile of the camera depths
    of ``points`` (P, 3) world (the SfM points the view observes) inside the sphere, when there are at least
    ``min_points`` of them in front of the camera. Never beyond the far depth's half."""
    near, far = depth_range(w2c, center, radius)
    if points is None or fraction <= 0 or len(points) == 0:
        return near, far
    inside = np.linalg.norm(points - center, axis=1) <= radius
    z = points[inside] @ w2c[:3, :3].T[:, 2] + w2c[2, 3]
    z = z[z > 0]
    if len(z) < min_points:
        return near, far
    return max(near, min(fraction * float(np.percentile(z, 2)), 0.5 * far)), far


# ----------------------------------------------------------------------------------------------- the sweep


def _src_terms(K_ref: np.ndarray, w2c_ref: np.ndarray, K_src: np.ndarray, w2c_src: np.ndarray,
               pix: torch.Tensor, src_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A reference pixel p at depth d lands in the source view (``src_size`` (H, W)) at grid_sample's coordinates
    q[:2] / q[2], with q = d A p + b and q[2] its source depth. -> (A p (H*W, 3), b (3,)): the pixel-to-grid scaling
    (u / W * 2 - 1) is folded into both, so that the sweep's warp is one multiply-add and one division."""
    R, t = relative_pose(w2c_ref, w2c_src)
    Hs, Ws = src_size
    to_grid_ = np.array([[2.0 / Ws, 0.0, -1.0], [0.0, 2.0 / Hs, -1.0], [0.0, 0.0, 1.0]])
    A = torch.as_tensor(to_grid_ @ K_src @ R @ np.linalg.inv(K_ref), dtype=torch.float32, device=pix.device)
    b = torch.as_tensor(to_grid_ @ K_src @ t, dtype=torch.float32, device=pix.device)
    return (A @ pix).T.contiguous(), b


def _scores(ref: torch.Tensor, ref_mu: torch.Tensor, ref_sd: torch.Tensor,
            groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], depths: torch.Tensor,
            s: MvsSettings) -> torch.Tensor:
    """Mean of the best_k source NCCs for per-pixel depth hypotheses. depths: (B, H*W) -> (B, H, W).

    groups: the sources by image size, each (images (S, 1, H_s, W_s), A p (S, H*W, 3), b (S, 3)) as
    :func:`_src_terms` gives them. A group is warped and scored as one batch, one set of kernels for all its sources
    instead of one per source (the armchair's depth maps took 8.9 s against 9.4 s on an H100, docs/benchmarks.md)."""
    H, W = ref.shape[-2:]
    B = depths.shape[0]
    per = []
    for imgs, Ap, b in groups:
        S = imgs.shape[0]
        q = depths[None, :, :, None] * Ap[:, None] + b[:, None, None, :]  # (S, B, H*W, 3)
        z = q[..., 2]
        grid = q[..., :2] / z.clamp(min=1e-9)[..., None]
        # the B hypotheses stacked down the rows of each source's grid: one sample of each source image, no copies
        warped = F.grid_sample(imgs, grid.reshape(S, B * H, W, 2), mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        sc = ncc(ref, ref_mu, ref_sd, warped.reshape(S * B, 1, H, W), s.window, s.ncc_eps).reshape(S, B, H, W)
        # in front of the source camera and inside its image (grid coordinates within [-1, 1])
        inside = (z > 0).reshape(S, B, H, W) & (grid.abs() <= 1).all(-1).reshape(S, B, H, W)
        per.append(torch.where(inside, sc, torch.full_like(sc, -1.0)))
    stack = per[0] if len(per) == 1 else torch.cat(per)  # (sources, B, H, W), a temporary
    return best_k_mean_(stack, min(s.best_k, stack.shape[0]))


def _refine_peak(cost: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Fractional index of each pixel's peak: best (H, W) long into cost (P, H, W), parabola through its
    neighbours where both exist."""
    P = cost.shape[0]
    c0 = cost.gather(0, best[None])[0]
    lo = cost.gather(0, (best - 1).clamp(min=0)[None])[0]
    hi = cost.gather(0, (best + 1).clamp(max=P - 1)[None])[0]
    inner = (best > 0) & (best < P - 1)
    return best.float() + torch.where(inner, parabola_offset(lo, c0, hi), torch.zeros_like(c0))


def opening(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Morphological opening of a (H, W) bool mask by a ``size`` x ``size`` square: what survives an erosion and
    grows back; specks smaller than the square go. In torch, so that a depth map's masks stay on its device."""
    pad = size // 2
    m = mask[None, None].float()
    eroded = -F.max_pool2d(-F.pad(m, (pad, pad, pad, pad), value=1.0), size, stride=1)
    grown = F.max_pool2d(F.pad(eroded, (pad, pad, pad, pad), value=0.0), size, stride=1)
    return grown[0, 0] > 0.5


def plane_depths(K: np.ndarray, w2c: np.ndarray, plane: tuple[np.ndarray, float], height: int, width: int,
                 device: torch.device) -> torch.Tensor:
    """Camera depth at which each pixel's ray meets the world plane n . x = d (n (3,), d), 0 where it meets it behind
    the camera or not at all. K (3, 3) pixels of a (height, width) image; w2c (4, 4) OpenCV. -> (H, W) float32."""
    n = np.asarray(plane[0], dtype=np.float64)
    # n . x = d with x = R^T (x_c - t): (R n) . x_c = d + (R n) . t
    n_c = w2c[:3, :3] @ n
    d_c = float(plane[1]) + float(n_c @ w2c[:3, 3])
    rays = torch.as_tensor(np.linalg.inv(K), dtype=torch.float32, device=device) @ pixel_grid(height, width, device)
    denom = torch.as_tensor(n_c, dtype=torch.float32, device=device) @ rays
    z = d_c / torch.where(denom.abs() < 1e-12, torch.full_like(denom, 1e-12), denom)
    return torch.where(z > 0, z, torch.zeros_like(z)).reshape(height, width)


def sweep_view(ref_gray: np.ndarray, src_grays: list[np.ndarray], K_ref: np.ndarray, w2c_ref: np.ndarray,
               K_srcs: list[np.ndarray], w2c_srcs: list[np.ndarray], near: float, far: float, s: MvsSettings,
               device: str = "cpu", mask: np.ndarray | None = None,
               support: tuple[np.ndarray, float] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Depth and score for one reference view.

    ref_gray: (H, W) float32 in [0, 1]; src_grays: (H_j, W_j) float32; K_*: (3, 3) pixels of those images;
    w2c_*: (4, 4) OpenCV; near/far: the object's depth range (camera z); mask: optional (H, W) bool, depths only
    inside. Hypotheses run from ``near`` out to ``background_factor * far``: the best match along the whole ray wins,
    so a pixel of the room behind the object is recognised as such instead of being forced into the object's range.
    support: the world plane (n (3,), d) the object stands on, tested as one more hypothesis with
    ``s.support_hypothesis`` (no mask given): where it wins, the pixel's depth is the plane's (inside the range) or
    its background depth (beyond ``far``).
    Returns depth (H, W) float32 (0 = none), score (H, W) float32, background (H, W) float32: the depth of the
    winning match where it lies beyond ``far`` (0 elsewhere), and table (H, W) bool: where the support plane won."""
    dev = torch.device(device)
    f = max(1, int(s.coarse))
    ref = _device_views(ref_gray, K_ref, w2c_ref, f, dev)
    srcs = [_device_views(g, K, w, f, dev) for g, K, w in zip(src_grays, K_srcs, w2c_srcs)]
    return _sweep(ref, srcs, near, far, s, mask, support)


def _sweep(ref_views: tuple[_View, _View], src_views: list[tuple[_View, _View]], near: float, far: float,
           s: MvsSettings, mask: np.ndarray | None = None, support: tuple[np.ndarray, float] | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`sweep_view` on views already on the device, each (full, reduced ``s.coarse`` times) as
    :func:`_device_views` makes them."""
    if not src_views:
        raise ValueError("sweep_view needs at least one source view")
    if not 0 < near < far:
        raise ValueError(f"sweep_view needs 0 < near < far, got {near}, {far}")
    dev = ref_views[0].img.device
    K_ref, w2c_ref = ref_views[0].K, ref_views[0].w2c
    H, W = ref_views[0].img.shape[-2:]
    full = _Images.make(ref_views[0], [v[0] for v in src_views], s.window)
    # the sweep runs on images reduced by ``coarse``; the full resolution only refines around its answer
    f = max(1, int(s.coarse))
    sweep = full if f == 1 else _Images.make(ref_views[1], [v[1] for v in src_views], s.window)
    h, w = sweep.ref.shape[-2:]
    inv = torch.linspace(1.0 / near, 1.0 / far, s.planes, device=dev)
    n_bg = s.background_planes if mask is None else 0
    bg_inv = torch.linspace(1.0 / far, 1.0 / (far * s.background_factor), n_bg + 1, device=dev)[1:]
    hyp = torch.cat([inv, bg_inv])
    cost = torch.empty((len(hyp), h, w), device=dev)
    for c0 in range(0, len(hyp), s.plane_chunk):
        d = (1.0 / hyp[c0:c0 + s.plane_chunk])[:, None].expand(-1, h * w)
        cost[c0:c0 + s.plane_chunk] = sweep.scores(d, s)
    best = cost.argmax(0)
    background = best >= s.planes
    # the object's range: sub-plane peak, then surface-following refinement at full resolution
    region = cost[:s.planes]
    frac = _refine_peak(region, region.argmax(0))
    step = (inv[0] - inv[-1]) / max(1, s.planes - 1)
    inv_d = inv[0] - frac * step
    score = region.max(0).values
    bg_score = cost[s.planes:].max(0).values if n_bg else torch.zeros_like(score)
    bg_depth = 1.0 / bg_inv[(best - s.planes).clamp(min=0, max=max(0, n_bg - 1))] if n_bg else torch.zeros_like(score)
    if f > 1:
        inv_d = _upsample(inv_d, H, W, "bilinear")
        score = _upsample(score, H, W, "bilinear")
        bg_score = _upsample(bg_score, H, W, "nearest")
        bg_depth = _upsample(bg_depth, H, W, "nearest")
        background = _upsample(background.float(), H, W, "nearest") > 0.5
        if s.refine_rounds == 0:
            score = full.scores(1.0 / inv_d.reshape(1, -1), s)[0]
        else:
            score = torch.full_like(score, -1.0)  # rescored at full resolution below
    span = step.clone()
    for _ in range(s.refine_rounds):
        offs = torch.linspace(-1.0, 1.0, s.refine_steps, device=dev) * span
        cand = (inv_d.reshape(1, -1) + offs[:, None]).clamp(min=1.0 / (far * 4), max=1.0 / (near * 0.5))
        sc = full.scores(1.0 / cand, s)
        kf = _refine_peak(sc, sc.argmax(0))
        c_b = sc.max(0).values
        new_inv = cand[0].reshape(H, W) + kf * (2.0 * span / (s.refine_steps - 1))
        better = c_b >= score
        inv_d = torch.where(better, new_inv, inv_d)
        score = torch.where(better, c_b, score)
        span = span * 2.0 / (s.refine_steps - 1) * 1.5
    depth = 1.0 / inv_d.clamp(min=1e-9)
    textured = full.ref_sd[0, 0] >= s.min_texture
    table = torch.zeros_like(textured)
    if support is not None and s.support_hypothesis and n_bg:
        zp = plane_depths(K_ref, w2c_ref, support, H, W, dev)
        hit = zp > 0
        ps = full.scores(torch.where(hit, zp, torch.full_like(zp, far)).reshape(1, -1), s)[0]
        table = (hit & (full.ref_sd[0, 0] >= max(s.min_texture, s.support_min_texture))
                 & (ps >= max(s.min_score, s.support_min_score))
                 & (ps >= torch.where(background, bg_score, score)))
        if s.support_open > 1:
            table = opening(table, s.support_open)
        on = table & (zp >= near) & (zp <= far)
        beyond = table & (zp > far)
        depth = torch.where(on, zp, depth)
        score = torch.where(on, ps, score)
        bg_depth = torch.where(beyond, zp, bg_depth)
        bg_score = torch.where(beyond, ps, bg_score)
        background = (background & ~on) | beyond
        table = on | beyond
    if n_bg:
        bg_depth = torch.where(background & textured & (bg_score >= s.min_score), bg_depth, torch.zeros_like(depth))
    ok = (score >= s.min_score) & textured & (depth >= near) & (depth <= far) & ~background
    if mask is not None:
        ok &= torch.as_tensor(mask, device=dev)
    depth = torch.where(ok, depth, torch.zeros_like(depth))
    score = torch.where(background, bg_score, score)
    return (depth.cpu().numpy().astype(np.float32), score.cpu().numpy().astype(np.float32),
            bg_depth.cpu().numpy().astype(np.float32), table.cpu().numpy())


def _upsample(x: torch.Tensor, H: int, W: int, mode: str) -> torch.Tensor:
    """(h, w) -> (H, W); bilinear keeps pixel centres aligned (align_corners=False)."""
    return F.interpolate(x[None, None].float(), size=(H, W), mode=mode,
                         **({"align_corners": False} if mode == "bilinear" else {}))[0, 0]


@dataclass(frozen=True)
class _View:
    """A grey image on the device and its camera: img (1, 1, H, W) float32; K (3, 3) pixels of it; w2c (4, 4)."""

    img: torch.Tensor
    K: np.ndarray
    w2c: np.ndarray


def _device_views(gray: np.ndarray, K: np.ndarray, w2c: np.ndarray, factor: int,
                  dev: torch.device) -> tuple[_View, _View]:
    """A view at full resolution and reduced ``factor`` times (area average, intrinsics scaled to match), both on
    ``dev``; the same view twice for a factor of 1. gray (H, W) float32. Made once per view by :func:`depth_maps`, not
    once per reference view that uses it as a source."""
    import cv2

    full = _View(torch.as_tensor(gray, dtype=torch.float32, device=dev)[None, None], K, w2c)
    if factor <= 1:
        return full, full
    K2, w, h = reduced_camera(K, gray.shape[1], gray.shape[0], max(gray.shape) // factor)
    small = cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA)
    return full, _View(torch.as_tensor(small, dtype=torch.float32, device=dev)[None, None], K2, w2c)


@dataclass(frozen=True)
class _Images:
    """A reference view and its sources on the device, with what every score needs precomputed."""

    ref: torch.Tensor  # (1, 1, H, W)
    ref_mu: torch.Tensor
    ref_sd: torch.Tensor
    groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # sources by size, as :func:`_scores` takes them

    @classmethod
    def make(cls, ref: _View, srcs: list[_View], window: int, batch: bool | None = None) -> "_Images":
        """batch: score the sources of one size as one batch (None: on a GPU)."""
        H, W = ref.img.shape[-2:]
        dev = ref.img.device
        batch = dev.type == "cuda" if batch is None else batch
        ref_mu, ref_sd = window_stats(ref.img, window)
        pix = pixel_grid(H, W, dev)
        # on a GPU the sources of one size are scored as one batch; on a CPU one by one, which keeps each source's
        # arrays in the caches (batched, a CPU view took 10-20 % longer)
        by_size: dict[tuple[int, ...], list[_View]] = {}
        for j, v in enumerate(srcs):
            by_size.setdefault(tuple(v.img.shape[-2:]) if batch else (j,), []).append(v)
        groups = []
        for views in by_size.values():
            size = tuple(views[0].img.shape[-2:])
            terms = [_src_terms(ref.K, ref.w2c, v.K, v.w2c, pix, size) for v in views]
            groups.append((torch.cat([v.img for v in views]), torch.stack([a for a, _ in terms]),
                           torch.stack([b for _, b in terms])))
        return cls(ref.img, ref_mu, ref_sd, groups)

    def scores(self, depths: torch.Tensor, s: MvsSettings) -> torch.Tensor:
        return _scores(self.ref, self.ref_mu, self.ref_sd, self.groups, depths, s)


# ----------------------------------------------------------------------------------------------- consistency


def consistency_counts(depths: list[np.ndarray], Ks: np.ndarray, w2cs: np.ndarray, neighbours: list[np.ndarray],
                       max_reproj_px: float, max_rel_depth: float, device: str = "cpu") -> list[np.ndarray]:
    """For every depth map, how many of its neighbours' depth maps reproduce each pixel's depth.

    A pixel's 3-D point is projected into neighbour j, j's depth there is lifted back to 3-D and projected into the
    reference view: it counts when that lands within ``max_reproj_px`` of the pixel and its depth is within
    ``max_rel_depth`` (relative) of the pixel's depth. depths: N (H_i, W_i) float32 (0 = none);
    Ks (N, 3, 3); w2cs (N, 4, 4). -> N (H_i, W_i) int32."""
    dev = torch.device(device)
    out = []
    dts = [torch.as_tensor(d, dtype=torch.float32, device=dev) for d in depths]
    for i, d_i in enumerate(dts):
        H, W = d_i.shape
        pix = pixel_grid(H, W, dev)
        count = torch.zeros(H * W, dtype=torch.int32, device=dev)
        valid = d_i.reshape(-1) > 0
        Ki_inv = torch.as_tensor(np.linalg.inv(Ks[i]), dtype=torch.float32, device=dev)
        Ki = torch.as_tensor(Ks[i], dtype=torch.float32, device=dev)
        X = (Ki_inv @ pix) * d_i.reshape(1, -1)  # (3, HW) in camera i
        for j in neighbours[i]:
            d_j = dts[j]
            Hj, Wj = d_j.shape
            R, t = relative_pose(w2cs[i], w2cs[j])
            Rt = torch.as_tensor(R, dtype=torch.float32, device=dev)
            tt = torch.as_tensor(t, dtype=torch.float32, device=dev)
            Kj = torch.as_tensor(Ks[j], dtype=torch.float32, device=dev)
            Xj = Rt @ X + tt[:, None]
            zj = Xj[2]
            uvj = (Kj @ Xj)[:2] / zj.clamp(min=1e-9)
            xi, yi = uvj[0].floor().long(), uvj[1].floor().long()
            inside = valid & (zj > 0) & (xi >= 0) & (xi < Wj) & (yi >= 0) & (yi < Hj)
            dj = torch.zeros_like(zj)
            dj[inside] = d_j[yi[inside], xi[inside]]
            ok = inside & (dj > 0)
            # lift j's depth at that pixel back and project it into view i
            pj = torch.stack([xi.float() + 0.5, yi.float() + 0.5, torch.ones_like(zj)])
            Xback = (torch.linalg.inv(Kj) @ pj) * dj[None]
            Xi = Rt.T @ (Xback - tt[:, None])
            uvi = (Ki @ Xi)[:2] / Xi[2].clamp(min=1e-9)
            err = (uvi - pix[:2]).norm(dim=0)
            rel = (Xi[2] - d_i.reshape(-1)).abs() / d_i.reshape(-1).clamp(min=1e-9)
            count += (ok & (err <= max_reproj_px) & (rel <= max_rel_depth)).int()
        out.append(count.reshape(H, W).cpu().numpy())
    return out


def depth_maps(grays: list[np.ndarray], Ks: np.ndarray, w2cs: np.ndarray, ranges: list[tuple[float, float]],
               neighbours: list[np.ndarray], s: MvsSettings, device: str = "cpu",
               masks: list[np.ndarray | None] | None = None,
               check: Callable[[float], None] = lambda f: None,
               support: tuple[np.ndarray, float] | None = None) -> list[DepthMap]:
    """Filtered depth maps for every view.

    grays: N (H_i, W_i) float32 in [0, 1] at the depth maps' resolution; Ks (N, 3, 3) for those sizes; w2cs (N, 4, 4);
    ranges: N (near, far); neighbours: N index arrays; masks: optional N (H_i, W_i) bool or None; support: the world
    plane (n (3,), d) the object stands on, a hypothesis of every sweep with ``s.support_hypothesis``."""
    n = len(grays)
    if not (len(Ks) == len(w2cs) == len(ranges) == len(neighbours) == n):
        raise ValueError("depth_maps: grays, Ks, w2cs, ranges and neighbours must have one entry per view")
    raw: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    frees: list[np.ndarray] = []
    tables: list[np.ndarray | None] = []
    dev = torch.device(device)
    # every view on the device once, at full and at the sweep's reduced resolution (each is a source of ~8 others)
    views = [_device_views(g, K, w, max(1, int(s.coarse)), dev) for g, K, w in zip(grays, Ks, w2cs)]
    for i in range(n):
        src = [int(j) for j in neighbours[i]]
        if not src:
            raw.append(np.zeros_like(grays[i]))
            scores.append(np.zeros_like(grays[i]))
            frees.append(np.zeros_like(grays[i]))
            tables.append(None)
            continue
        d, sc, fr, tab = _sweep(views[i], [views[j] for j in src], ranges[i][0], ranges[i][1], s,
                                None if masks is None else masks[i], support=support)
        raw.append(d)
        scores.append(sc)
        frees.append(fr)
        tables.append(tab if tab.any() else None)
        check(0.85 * (i + 1) / n)
    counts = consistency_counts(raw, Ks, w2cs, neighbours, s.max_reproj_px, s.max_rel_depth, device)
    # background depths are coarse (few hypotheses far away): their check only asks the neighbours to see background
    # there too, about as far
    bg_counts = consistency_counts(frees, Ks, w2cs, neighbours, 2.0 * s.max_reproj_px, 0.15, device)
    check(0.95)
    out = []
    for i in range(n):
        need = min(s.min_consistent, len(neighbours[i]))
        keep = counts[i] >= need
        free = np.where((bg_counts[i] >= need) & (frees[i] > 0), scores[i], 0).astype(np.float32)
        out.append(DepthMap(depth=np.where(keep, raw[i], 0).astype(np.float32), score=scores[i],
                            K=np.asarray(Ks[i], dtype=np.float64), w2c=np.asarray(w2cs[i], dtype=np.float64),
                            free=free, far=float(ranges[i][1]), table=tables[i]))
    return out


def to_gray(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width) float32 grey in [0, 1], area-resampled."""
    import cv2

    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    if g.shape != (height, width):
        g = cv2.resize(g, (width, height), interpolation=cv2.INTER_AREA)
    return g


def backproject(dm: DepthMap, table: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """World points (M, 3) of a depth map's valid pixels and their flat pixel indices (M,); with ``table`` False,
    without the pixels whose depth the support plane's hypothesis gave (``dm.table``): those lie on the sparse plane
    by construction, the table and not the object."""
    H, W = dm.depth.shape
    valid = dm.depth.reshape(-1) > 0
    if not table and dm.table is not None:
        valid &= ~dm.table.reshape(-1)
    idx = np.flatnonzero(valid)
    ys, xs = np.divmod(idx, W)
    d = dm.depth.reshape(-1)[idx].astype(np.float64)
    cam = np.stack([(xs + 0.5 - dm.K[0, 2]) / dm.K[0, 0] * d, (ys + 0.5 - dm.K[1, 2]) / dm.K[1, 1] * d, d], 1)
    R, t = dm.w2c[:3, :3], dm.w2c[:3, 3]
    return (cam - t) @ R, idx
