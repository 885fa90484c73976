"""Object silhouettes from the photos alone, seeded by multi-view stereo.

Depth maps say, pixel by pixel, what a view sees: a surface inside the object's box and above its support plane
(the object), the table or anything outside the box, or the room far beyond (background). Those pixels seed
GrabCut as sure foreground and sure background; GrabCut's colour models then decide the pixels stereo could not
measure (a white, untextured body, a plain wall). The masks are made to agree across views by the hull round of
:func:`pipeline.geometry.automask.consistent_masks`. Views in which the object is cut by the border, or whose camera is
inside the object's box, need no special case: only what a view shows is labelled.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
from scipy import ndimage

from pipeline.geometry.automask import (AutoMaskSettings, consistent_masks, edge_at_size, grabcut, keep_seeded,
                                        parallel_map, working_copies, working_mask)
from pipeline.geometry.mvs import DepthMap, backproject
from pipeline.geometry.scene import box_corners


@dataclass(frozen=True)
class SilhouetteSettings:
    work_size: int = 480  # long side GrabCut runs at
    # GrabCut rounds per view in both passes: 3 gave the same masks as 5 on four sets (mean IoU against the true
    # silhouettes within 0.003) in 20-25 % less time (bench/results/silhouettes-iterations-cpu.json)
    iterations: int = 3
    fg_erode: float = 0.006  # sure-foreground seeds pulled back from their edge (fraction of the long side):
    # a matching window straddling the object's outline lends the object's depth to background pixels
    reach: float = 0.04  # probable foreground: this far (fraction of the long side) around the seeds
    base_margin: float = 0.02  # seeds this close to the support plane (fraction of the box) are not object
    # ... nor closer than this fraction of the box's height above that plane, whichever is less: a flat object (a
    # relief disc 3.3 cm high in a 31 cm box) lost the lowest 18 % of its side to the table otherwise
    base_margin_height: float = 0.05
    hull_resolution: int = 128
    hull_outlier_fraction: float = 0.15
    band: float = 0.03
    edge_band: float = 2.0  # the edge cut again at the photo's size (AutoMaskSettings.edge_band; 0: off)
    # the second round keeps what the depth maps measured (see consistent_masks' seeds): measured on spot_scene's
    # 43 views against the true silhouettes, precision / recall 0.980 / 0.946 without, 0.987 / 0.957 with
    keep_measured: bool = True
    # measured background inside the first-round hull's core stays background (consistent_masks' open_core): the
    # table seen through a ring's hole; the same or better in whole CPU jobs on seven of eight sets (the armchair
    # level), not yet run on a GPU
    open_core: bool = True
    # after fusion, thin parts of the fused surface's outline that the silhouettes missed (an armchair's tubes,
    # horns) join them: parts at most thin_width wide (fraction of the long side) reaching at least thin_reach
    # beyond the silhouette; 0 disables. Stereo measured them (the fusion keeps only measured surfaces outside
    # the silhouettes' hull), and without them in the silhouettes the refinement thins them to strings
    thin_width: float = 0.025
    thin_reach: float = 0.01
    thin_samples: int = 1_000_000  # surface samples that draw the fused surface's outline
    # thin_width is for a view at the median distance from the object; a nearer view sees the same tube wider, in
    # proportion (at most thin_near_scale times): close-ups of the armchair showed its near tubes 30-40 px wide, none
    # of them in the silhouettes (docs/design.md, Thin parts in near views). 1: the same width in every view
    thin_near_scale: float = 3.0
    # the second round's sure foreground is only what this view's own first-round mask holds
    core_in_first: bool = False
    # depth points at the table (within the plane margin) under the object's footprint are the table or the foot
    # standing on it: stereo cannot tell them apart, and as sure background they cut the lowest centimetres of
    # every leg out of the silhouettes. With base_open they are left to GrabCut's colour models where the object's
    # own depth points stand just above them (between the margin and foot_height margins, within one margin
    # across): the table seen between a body's legs has nothing that low above it and stays sure background
    base_open: bool = False
    foot_height: float = 3.0
    foot_reach: float = 1.0  # the footprint grown by this many margins across


def plane_margin(n: np.ndarray, d: float, lo: np.ndarray, hi: np.ndarray, s: SilhouetteSettings) -> float:
    """How far above the plane n . x = d (n (3,) unit, the object where n . x > d) depth points must lie to seed the
    object: ``base_margin`` of the box (lo, hi (3,)), or ``base_margin_height`` of the box's height above the plane
    where that is less (a flat object)."""
    corners = box_corners(lo, hi)
    height = max(0.0, float((corners @ n - d).max()))
    return min(s.base_margin * float(np.max(hi - lo)), s.base_margin_height * height)


@dataclass(frozen=True)
class Footprint:
    """Where the object stands on its support plane (n (3,) unit, d; the object where n·x > d): cells of a grid on
    the plane (origin (3,) on the plane, axes u, v (3,) unit, ``cell`` world units) that hold object points just
    above the plane margin ``margin``. ``occupied`` (U, V) bool (see :func:`footprint`)."""

    n: np.ndarray
    d: float
    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    cell: float
    margin: float
    occupied: np.ndarray

    def holds(self, pts: np.ndarray) -> np.ndarray:
        """(M,) bool: points (M, 3) whose drop onto the plane lies in the footprint."""
        rel = pts - self.origin
        iu = np.floor(rel @ self.u / self.cell).astype(np.int64)
        iv = np.floor(rel @ self.v / self.cell).astype(np.int64)
        U, V = self.occupied.shape
        ok = (iu >= 0) & (iu < U) & (iv >= 0) & (iv < V)
        out = np.zeros(len(pts), dtype=bool)
        out[ok] = self.occupied[iu[ok], iv[ok]]
        return out


def short_parts(foot: Footprint, max_length: float) -> Footprint:
    """``foot`` keeping only its parts (cells joined edge to edge) whose longer side along the grid's axes is at most
    ``max_length`` plane margins; max_length <= 0: ``foot`` as it is. A footprint part much longer than a leg is a
    base the object stands on: its outline sits on the table in plain view of the photos, and letting views dissent
    there keeps the contact shadow as surface (docs/benchmarks.md, Without a GPU)."""
    if max_length <= 0:
        return foot
    labels, _ = ndimage.label(foot.occupied)
    keep = np.zeros_like(foot.occupied)
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        longest = max(sl.stop - sl.start for sl in box) * foot.cell
        if longest <= max_length * foot.margin:
            keep[box] |= labels[box] == i
    return dataclasses.replace(foot, occupied=keep)


def footprint(points: np.ndarray | list[np.ndarray], lo: np.ndarray, hi: np.ndarray,
              support: tuple[np.ndarray, float], s: SilhouetteSettings, min_points: int = 3) -> Footprint:
    """The object's footprint on ``support`` from depth points (M, 3) world (or a list of such, one per view)
    inside the box (lo, hi): cells (half a margin wide, at most 2048 across the box) holding at least
    ``min_points`` points between the plane margin and ``foot_height`` margins above the plane, grown by
    ``foot_reach`` margins, the holes they enclose filled where smaller than a disc two margins across."""
    n = np.asarray(support[0], dtype=np.float64)
    d = float(support[1])
    margin = plane_margin(n, d, lo, hi, s)
    u = np.cross(n, [1.0, 0.0, 0.0] if abs(n[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    corners = box_corners(lo, hi)
    cu, cv_ = corners @ u, corners @ v
    cell = max(margin / 2, float(np.max(hi - lo)) / 2048, 1e-12)
    origin = cu.min() * u + cv_.min() * v + d * n
    dims = (int(np.ceil((cu.max() - cu.min()) / cell)) + 1, int(np.ceil((cv_.max() - cv_.min()) / cell)) + 1)
    occupied = np.zeros(dims, dtype=bool)
    low_parts = []
    for p in points if isinstance(points, list) else [points]:
        height = p @ n - d
        p = p[(height > margin) & (height <= s.foot_height * margin)]
        low_parts.append(p[np.all((p >= lo) & (p <= hi), axis=1)])
    low = np.concatenate(low_parts) if low_parts else np.zeros((0, 3))
    if len(low) and margin > 0:
        rel = low - origin
        iu = np.clip(np.floor(rel @ u / cell).astype(np.int64), 0, dims[0] - 1)
        iv = np.clip(np.floor(rel @ v / cell).astype(np.int64), 0, dims[1] - 1)
        count = np.bincount(iu * dims[1] + iv, minlength=dims[0] * dims[1]).reshape(dims)
        occupied = count >= min_points
        k = int(round(s.foot_reach * margin / cell))
        if k > 0:
            occupied = cv2.dilate(occupied.astype(np.uint8),
                                  cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))) > 0
        # depth points lie on a foot's outside: the ring they draw is filled where it encloses less than a disc
        # two margins across (a leg's own section), not the space between legs that low rails enclose
        holes, n_holes = ndimage.label(~occupied)
        if n_holes:
            sizes = np.bincount(holes.reshape(-1), minlength=n_holes + 1)
            small = sizes <= np.pi * (margin / cell) ** 2
            small[0] = False
            small[np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))] = False
            occupied |= small[holes]
    return Footprint(n=n, d=d, origin=origin, u=u, v=v, cell=cell, margin=margin, occupied=occupied)


def seed_labels(dm: DepthMap, shape: tuple[int, int], lo: np.ndarray, hi: np.ndarray,
                planes: list[tuple[np.ndarray, float]], s: SilhouetteSettings,
                foot: Footprint | None = None) -> np.ndarray:
    """GrabCut labels (h, w) uint8 at ``shape`` from one depth map, the object's box (lo, hi (3,) world) and the
    surfaces it stands on or in front of (``planes``: (n, d), cameras where n·x > d; the first is the support).
    With ``s.base_open``, ``foot`` is the object's footprint on the support (:func:`footprint` of every view's
    points; this view's own where it is None)."""
    Hd, Wd = dm.depth.shape
    pts, idx = backproject(dm)
    in_box = np.all((pts >= lo) & (pts <= hi), axis=1)
    inside = in_box.copy()
    for n, d in planes:
        inside &= pts @ n - d > plane_margin(n, d, lo, hi, s)
    fg = np.zeros(Hd * Wd, dtype=np.uint8)
    bg = np.zeros(Hd * Wd, dtype=np.uint8)
    fg[idx[inside]] = 1
    bg[idx[~inside]] = 1
    if s.base_open and planes:
        if foot is None:
            foot = footprint(pts, lo, hi, planes[0], s)
        height = pts @ foot.n - foot.d
        at_foot = ~inside & in_box & (np.abs(height) <= foot.margin)
        at_foot[at_foot] = foot.holds(pts[at_foot])
        bg[idx[at_foot]] = 0
    if dm.free is not None:
        bg[dm.free.reshape(-1) > 0] = 1
    h, w = shape
    fg_s = cv2.resize(fg.reshape(Hd, Wd), (w, h), interpolation=cv2.INTER_NEAREST)
    bg_s = cv2.resize(bg.reshape(Hd, Wd), (w, h), interpolation=cv2.INTER_NEAREST)
    e = max(1, int(round(s.fg_erode * max(h, w))))
    sure_fg = cv2.erode(fg_s, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * e + 1, 2 * e + 1))) > 0
    r = max(2, int(round(s.reach * max(h, w))))
    near_fg = cv2.dilate(fg_s, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) > 0
    labels = np.full((h, w), cv2.GC_PR_BGD, dtype=np.uint8)
    labels[near_fg] = cv2.GC_PR_FGD
    labels[bg_s > 0] = cv2.GC_BGD
    labels[sure_fg & (bg_s == 0)] = cv2.GC_FGD
    return labels


def box_outline(lo: np.ndarray, hi: np.ndarray, K: np.ndarray, w2c: np.ndarray, shape: tuple[int, int]
                ) -> np.ndarray | None:
    """(h, w) bool: the image of the box (lo, hi), or None when the camera is too close to it to say (a corner
    behind the camera)."""
    corners = box_corners(lo, hi)
    cam = corners @ w2c[:3, :3].T + w2c[:3, 3]
    if (cam[:, 2] <= 1e-6).any():
        return None
    uv = (cam[:, :2] / cam[:, 2:3]) @ K[:2, :2].T + K[:2, 2]
    out = np.zeros(shape, dtype=np.uint8)
    cv2.fillConvexPoly(out, cv2.convexHull(np.round(uv).astype(np.int32)), 1)
    return out > 0


def photo_silhouettes(rgbs: list[np.ndarray], dms: list[DepthMap], Ks: np.ndarray, w2cs: np.ndarray,
                      lo: np.ndarray, hi: np.ndarray, planes: list[tuple[np.ndarray, float]],
                      s: SilhouetteSettings, device: str = "cpu",
                      check: Callable[[float], None] = lambda f: None,
                      foot: Footprint | None = None) -> list[np.ndarray]:
    """Masks of the object for views at working resolution.

    rgbs: N (H_i, W_i, 3) uint8; dms: their depth maps (any resolution); Ks (N, 3, 3) for rgbs; w2cs (N, 4, 4);
    lo, hi: the object's box; planes: the table and walls it touches; foot: the object's footprint on the table
    (:func:`footprint`; found from ``dms`` where None and ``s.base_open``). Returns N (H_i, W_i) bool."""
    if not (len(rgbs) == len(dms) == len(Ks) == len(w2cs)):
        raise ValueError("photo_silhouettes needs one depth map, K and pose per image")
    small, sKs = working_copies(rgbs, Ks, s.work_size)
    seeds: list[np.ndarray] = [np.zeros(0, dtype=np.uint8)] * len(small)
    if foot is None and s.base_open and planes:
        foot = footprint([backproject(dm)[0] for dm in dms], lo, hi, planes[0], s)

    def first_round(i: int) -> np.ndarray:
        h, w = small[i].shape[:2]
        labels = seed_labels(dms[i], (h, w), lo, hi, planes, s, foot)
        # what the depth maps measured (before the box's outline marks the rest of the frame background)
        seeds[i] = labels.copy()
        outline = box_outline(lo, hi, sKs[i], w2cs[i], (h, w))
        if outline is not None:
            labels[~outline] = cv2.GC_BGD
        return keep_seeded(grabcut(small[i], labels, s.iterations), labels == cv2.GC_FGD,
                           seeds[i] == cv2.GC_BGD if s.keep_measured else None)

    first = parallel_map(first_round, len(small), lambda f: check(0.5 * f))
    am = AutoMaskSettings(work_size=s.work_size, iterations=s.iterations, hull_resolution=s.hull_resolution,
                          hull_outlier_fraction=s.hull_outlier_fraction, band=s.band, edge_band=s.edge_band)
    return consistent_masks(rgbs, small, sKs, w2cs, first, am, device, bounds=(lo, hi),
                            support=planes[0] if planes else None, seeds=seeds if s.keep_measured else None,
                            open_core=s.keep_measured and s.open_core, core_in_first=s.core_in_first,
                            check=lambda f: check(0.5 + 0.5 * f))


def outline(points: np.ndarray, K: np.ndarray, w2c: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: the pixels of ``shape`` that surface samples (P, 3) fall in, closed by a pixel. K (3, 3) for
    ``shape``; w2c (4, 4). The samples must be denser than the pixels (:func:`surface_samples`)."""
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    front = cam[:, 2] > 1e-9
    uv = cam[front, :2] / cam[front, 2:3] @ K[:2, :2].T + K[:2, 2]
    h, w = shape
    px = np.floor(uv).astype(np.int64)
    ok = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
    out = np.zeros((h, w), dtype=np.uint8)
    out[px[ok, 1], px[ok, 0]] = 1
    out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    return out > 0


def outline_stack(points: np.ndarray, Ks: np.ndarray, w2cs: np.ndarray, shapes: list[tuple[int, int]],
                  device: str) -> list[np.ndarray]:
    """:func:`outline` of the same samples (P, 3) in N views at once, the projection in torch on ``device`` (float64,
    as numpy): Ks (N, 3, 3), w2cs (N, 4, 4), shapes N (h, w). -> N (h, w) bool."""
    import torch

    dev = torch.device(device)
    pts = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float64)).to(dev)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    out = []
    for K, w2c, (h, w) in zip(Ks, w2cs, shapes):
        R = torch.from_numpy(np.ascontiguousarray(w2c[:3, :3], dtype=np.float64)).to(dev)
        t = torch.from_numpy(np.ascontiguousarray(w2c[:3, 3], dtype=np.float64)).to(dev)
        Kt = torch.from_numpy(np.ascontiguousarray(K, dtype=np.float64)).to(dev)
        cam = pts @ R.T + t
        cam = cam[cam[:, 2] > 1e-9]
        uv = cam[:, :2] / cam[:, 2:3] @ Kt[:2, :2].T + Kt[:2, 2]
        px = torch.floor(uv).long()
        ok = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
        img = torch.zeros(h * w, dtype=torch.uint8, device=dev)
        img[px[ok, 1] * w + px[ok, 0]] = 1
        hit = img.reshape(h, w).cpu().numpy()
        out.append(cv2.morphologyEx(hit, cv2.MORPH_CLOSE, kernel) > 0)
    return out


def surface_samples(vertices: np.ndarray, faces: np.ndarray, count: int) -> np.ndarray:
    """(V + count, 3): the vertices and ``count`` points spread over the surface by area (seeded), so that a large
    flat triangle (decimation leaves them on plain parts) is covered as densely as a small one."""
    import trimesh

    samples, _ = trimesh.sample.sample_surface(trimesh.Trimesh(vertices, faces, process=False), count, seed=0)
    return np.concatenate([np.asarray(vertices, dtype=np.float64), samples])


def thin_parts(covered: np.ndarray, mask: np.ndarray, width_px: float, reach_px: float) -> np.ndarray:
    """(h, w) bool: the thin parts of ``covered`` outside ``mask`` (both (h, w) bool) that reach at least
    ``reach_px`` beyond it: what a morphological opening of diameter ``width_px`` removes from ``covered`` minus
    ``mask``, by connected piece. A rim along the mask (an outline a little too wide) does not reach far enough;
    a broad piece (a membrane) survives the opening and is not thin. Also the bites: pieces of ``covered`` minus
    ``mask`` no larger than a disk of diameter 2 ``width_px`` whose outer ring meets the mask in two or more
    separate arcs (the piece joins two parts of it) or lies almost wholly in it (a hole); GrabCut's background
    seeds take them out of a thin tube (its depth pixels see the background past it) and cut a leg into pieces
    that the refinement then drops. A bump of the outline beyond a broad edge meets the mask in one arc."""
    extra = (covered & ~mask).astype(np.uint8)
    if not extra.any():
        return np.zeros_like(mask)
    r = max(1, int(round(width_px / 2)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    thin = (extra > 0) & ~(cv2.morphologyEx(extra, cv2.MORPH_OPEN, kernel) > 0)
    out = np.zeros_like(mask)
    lab, n = ndimage.label(thin)
    if n:
        away = ndimage.distance_transform_edt(~mask)
        reach = np.asarray(ndimage.maximum(away, lab, range(1, n + 1)))
        out |= np.isin(lab, 1 + np.flatnonzero(reach >= reach_px))
    out |= bites(extra > 0, mask, np.pi * (2 * r + 1) ** 2)
    return out


def bites(extra: np.ndarray, mask: np.ndarray, max_area: float) -> np.ndarray:
    """(h, w) bool: the pieces of ``extra`` (h, w) bool (outside ``mask``) of at most ``max_area`` pixels that join
    separate parts of ``mask``'s border or fill a hole in it (see :func:`thin_parts`)."""
    out = np.zeros_like(mask)
    lab, n = ndimage.label(extra)
    if n == 0:
        return out
    area = np.bincount(lab.ravel(), minlength=n + 1)
    ring_kernel = np.ones((5, 5), bool)
    eight = np.ones((3, 3), bool)
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None or area[k] > max_area:
            continue
        # the piece's box grown by the ring's width, clipped to the image
        sl = tuple(slice(max(0, a.start - 3), a.stop + 3) for a in sl)
        piece = lab[sl] == k
        ring = ndimage.binary_dilation(piece, ring_kernel) & ~piece
        meets = ring & mask[sl]
        if not ring.any() or not meets.any():
            continue
        if meets.sum() >= 0.9 * ring.sum() or ndimage.label(meets, eight)[1] >= 2:
            out[sl] |= piece
    return out


def nearness(w2cs: np.ndarray, centre: np.ndarray, cap: float) -> np.ndarray:
    """How much nearer than the median view each camera stands to ``centre`` (3,): median distance / its distance,
    clipped to [1, cap]. w2cs (N, 4, 4) -> (N,) float64. A part's width in a view grows by that factor."""
    if cap < 1:
        raise ValueError(f"the nearness cap must be at least 1, got {cap}")
    R, t = w2cs[:, :3, :3], w2cs[:, :3, 3]
    centres = -np.einsum("nji,nj->ni", R, t)  # camera centres: -R^T t
    dist = np.maximum(np.linalg.norm(centres - centre, axis=1), 1e-12)
    return np.clip(np.median(dist) / dist, 1.0, cap)


def add_thin_parts(masks: list[np.ndarray], vertices: np.ndarray, faces: np.ndarray, Ks: np.ndarray,
                   w2cs: np.ndarray, s: SilhouetteSettings, device: str = "cpu",
                   rgbs: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], int]:
    """Silhouettes with the fused surface's thin measured parts added (:func:`thin_parts` at ``work_size``, up to
    ``thin_width`` times each view's :func:`nearness`).
    masks: N (H_i, W_i) bool; vertices (V, 3), faces (F, 3): the fused surface; Ks (N, 3, 3) for the masks;
    w2cs (N, 4, 4). On a GPU the outlines are projected there (:func:`outline_stack`). Returns the new masks and
    the number of views that gained pixels."""
    if s.thin_width <= 0:
        return list(masks), 0
    points = surface_samples(vertices, faces, s.thin_samples)
    shapes, sKs = [], []
    for m, K in zip(masks, Ks):
        H, W = m.shape
        f = min(1.0, s.work_size / max(H, W))
        h, w = max(1, round(H * f)), max(1, round(W * f))
        shapes.append((h, w))
        sKs.append(np.diag([w / W, h / H, 1.0]) @ K)
    # a million samples projected 40-odd times: on the GPU, in one go, instead of per view on CPU threads
    covs = outline_stack(points, np.array(sKs), w2cs, shapes, device) if device == "cuda" else None
    near = nearness(w2cs, points.mean(axis=0), s.thin_near_scale)

    def one(i: int) -> np.ndarray:
        m = masks[i]
        H, W = m.shape
        h, w = shapes[i]
        small = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_AREA) > 0
        cov = covs[i] if covs is not None else outline(points, sKs[i], w2cs[i], (h, w))
        add = thin_parts(cov, small, s.thin_width * near[i] * max(h, w), s.thin_reach * max(h, w))
        return cv2.resize(add.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST) > 0

    adds = parallel_map(one, len(masks), lambda f: None)
    grown = [m | a for m, a in zip(masks, adds)]
    if rgbs is not None and s.edge_band > 0:
        # the parts come from the fused surface's outline at the working size, a little wider than the tube they
        # draw: their edge is cut again at the photo's size, as the silhouettes' own edge was (edge_at_size)
        am = AutoMaskSettings(work_size=s.work_size, iterations=s.iterations, edge_band=s.edge_band)
        grown = parallel_map(lambda i: edge_at_size(rgbs[i], working_mask(grown[i], s.work_size), am)
                             if adds[i].any() else grown[i], len(grown), lambda f: None)
    return grown, sum(int(a.any()) for a in adds)
