"""Automatic foreground masks without learned weights.

Per view, GrabCut (opencv) is seeded from the SfM points: object points that the view observes are sure
foreground, observed clutter and ground points are sure background, and everything outside the projection of
the object's bounding sphere is background. The per-view masks are then made to agree across views: a coarse
visual hull carved from them (tolerating a few bad views) is projected back into every view and a second GrabCut
round runs inside a band around that projection.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
from scipy import ndimage

from pipeline.geometry.scene import ObjectRegion, project


@dataclass(frozen=True)
class AutoMaskSettings:
    work_size: int = 480  # long side GrabCut runs at
    iterations: int = 5
    seed_radius: float = 0.01  # sure-foreground/background disks, fraction of the long side
    hull_resolution: int = 96
    hull_outlier_fraction: float = 0.15  # views allowed to disagree with a hull voxel
    band: float = 0.03  # second round: uncertain band around the hull's silhouette, fraction of the long side
    # the second round's edge is cut again at the photo's size (at most edge_size on the long side), in a band of
    # this many working-size pixels either side of it (0: off). At the working size the edge is a staircase of
    # 2+ photo pixels, while the refinement fits silhouettes to about a pixel: on six photo sets' kept masks the
    # IoU against the true silhouettes rose 0.008-0.028 at 2, and in whole H100 jobs on five sets F@0.2 % rose
    # 0.005-0.033 (docs/design.md, Silhouettes at the photo's size; docs/benchmarks.md)
    edge_band: float = 2.0
    edge_size: int = 1920
    # GrabCut rounds of that cut: on two kept jobs' silhouettes 1 gave the IoU of 3 within 0.0003 in 55 % of the
    # time (0.10 against 0.18 s a 960x720 view on one core)
    edge_iterations: int = 1


def sphere_outline(center: np.ndarray, radius: float, K: np.ndarray, w2c: np.ndarray, n: int = 64) -> np.ndarray:
    """Image outline of a sphere (its silhouette cone), as a polygon (n, 2) in pixels."""
    c = w2c[:3, :3] @ center + w2c[:3, 3]
    d = np.linalg.norm(c)
    if d <= radius * 1.001:
        raise ValueError("the camera is inside the object's bounding sphere")
    axis = c / d
    a = np.cross(axis, [0, 0, 1.0]) if abs(axis[2]) < 0.9 else np.cross(axis, [0, 1.0, 0])
    a /= np.linalg.norm(a)
    b = np.cross(axis, a)
    # tangent points: on the sphere, where the view ray grazes it
    r_t = radius * np.sqrt(d * d - radius * radius) / d
    off = c - axis * radius * radius / d
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = off + r_t * (np.cos(ang)[:, None] * a + np.sin(ang)[:, None] * b)
    return (pts[:, :2] / pts[:, 2:3]) @ K[:2, :2].T + K[:2, 2]


def _disks(shape: tuple[int, int], uv: np.ndarray, r: int) -> np.ndarray:
    m = np.zeros(shape, dtype=np.uint8)
    for x, y in np.round(uv).astype(int):
        if 0 <= x < shape[1] and 0 <= y < shape[0]:
            cv2.circle(m, (int(x), int(y)), r, 1, -1)
    return m.astype(bool)


def keep_seeded(mask: np.ndarray, seeds: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """Connected components of ``mask`` that contain a foreground seed (all of them if none do), with their holes
    filled, except the holes that hold a ``background`` pixel. mask, seeds, background: (H, W) bool.

    A hole that holds measured background is a real opening: the table or the wall seen between a stool's legs and
    under its seat, which GrabCut left out and the depth maps saw far behind the object. Filling it made a membrane
    there in every view, and the hull round kept it."""
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    hit = np.unique(lab[seeds & mask])
    hit = hit[hit > 0]
    if len(hit) == 0:
        sizes = ndimage.sum(mask, lab, range(1, n + 1))
        hit = np.array([int(np.argmax(sizes)) + 1])
    kept = np.isin(lab, hit)
    filled = ndimage.binary_fill_holes(kept)
    if background is None or not (background & filled & ~kept).any():
        return filled
    holes, _ = ndimage.label(filled & ~kept)
    open_ = np.unique(holes[background & (holes > 0)])
    return filled & ~np.isin(holes, open_[open_ > 0])


def grabcut(rgb: np.ndarray, init: np.ndarray, iterations: int) -> np.ndarray:
    """rgb: (H, W, 3) uint8; init: (H, W) uint8 GrabCut labels -> (H, W) bool foreground."""
    labels = init.copy()
    if not ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).any() or not (
            (labels == cv2.GC_BGD) | (labels == cv2.GC_PR_BGD)).any():
        return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    # GrabCut seeds its colour models by k-means from OpenCV's random generator, one per thread, whose state
    # depends on what that thread ran before: seeded here, the same photo gives the same mask on any thread
    cv2.setRNGSeed(0)
    cv2.grabCut(np.ascontiguousarray(rgb[..., ::-1]), labels, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def first_round_labels(shape: tuple[int, int], K: np.ndarray, w2c: np.ndarray, region: ObjectRegion,
                       obj_uv: np.ndarray, fg_seed_uv: np.ndarray, bg_seed_uv: np.ndarray, r: int) -> np.ndarray:
    h, w = shape
    labels = np.full(shape, cv2.GC_BGD, dtype=np.uint8)
    try:
        outline = sphere_outline(region.center, region.radius * 1.15, K, w2c)
        cv2.fillPoly(labels, [np.round(outline).astype(np.int32)], int(cv2.GC_PR_BGD))
    except ValueError:
        # the camera is inside or at the object's bounding sphere (a close-up): the sphere bounds nothing in this
        # view, so the whole frame may hold the object
        labels[:] = cv2.GC_PR_BGD
    inside = (obj_uv[:, 0] >= 0) & (obj_uv[:, 0] < w) & (obj_uv[:, 1] >= 0) & (obj_uv[:, 1] < h)
    if inside.sum() >= 3:
        pts = obj_uv[inside]
        c = pts.mean(0)
        hull = cv2.convexHull(np.round(c + 1.15 * (pts - c)).astype(np.int32))  # a little beyond the points
        pr_fg = np.zeros(shape, dtype=np.uint8)
        cv2.fillPoly(pr_fg, [hull], 1)
        labels[(pr_fg > 0) & (labels == cv2.GC_PR_BGD)] = cv2.GC_PR_FGD
    labels[_disks(shape, bg_seed_uv, r)] = cv2.GC_BGD
    labels[_disks(shape, fg_seed_uv, r)] = cv2.GC_FGD
    return labels


def hull_silhouettes(masks: list[np.ndarray], Ks: np.ndarray, w2cs: np.ndarray, s: AutoMaskSettings,
                     device: str, bounds: tuple[np.ndarray, np.ndarray] | None = None,
                     support: tuple[np.ndarray, float] | None = None) -> list[np.ndarray]:
    """Carve a coarse hull from the masks and project it back: one multi-view-consistent silhouette per view.
    ``bounds``/``support`` (see :func:`pipeline.geometry.carve.carve`) close the hull where masks touch the image border."""
    from pipeline.geometry.carve import CarveSettings, carve
    from pipeline.geometry.meshing import main_components, marching_cubes

    k = int(round(s.hull_outlier_fraction * len(masks)))
    res = carve(Ks, w2cs, masks, CarveSettings(resolution=s.hull_resolution, outlier_views=k), device=device,
                bounds=bounds, support=support)
    # every sizeable piece: the coarse hull loses thin parts (a chair's tubes) and with them what they join
    mesh = main_components(marching_cubes(res.field, res.origin, res.voxel))
    from pipeline.imaging.raster import mesh_renderer

    # rendered silhouettes (one fillPoly over all triangles would apply the even-odd rule and punch holes)
    render = mesh_renderer(device)
    return [render(mesh, K, w2c, m.shape[1], m.shape[0]).mask for K, w2c, m in zip(Ks, w2cs, masks)]


def _agreement(first: list[np.ndarray], hulls: list[np.ndarray]) -> float:
    """Median over views of how much of the first-round mask the hull's silhouette keeps."""
    fr = [float((f & h).sum()) / max(1.0, float(f.sum())) for f, h in zip(first, hulls) if f.any()]
    return float(np.median(fr)) if fr else 0.0


def auto_masks(rgbs: list[np.ndarray], Ks: np.ndarray, w2cs: np.ndarray, region: ObjectRegion, points: np.ndarray,
               obs_image: np.ndarray, obs_point: np.ndarray, obs_xy: np.ndarray, s: AutoMaskSettings,
               device: str = "cpu", check: Callable[[float], None] = lambda f: None) -> list[np.ndarray]:
    """Foreground masks for views at working resolution.

    rgbs: N (H_i, W_i, 3) uint8; Ks (N, 3, 3) and w2cs (N, 4, 4) for those images; points (P, 3) world;
    obs_*: SfM observations in those images' pixels (obs_image indexes rgbs). Returns N (H_i, W_i) bool.
    """
    if not (len(rgbs) == len(Ks) == len(w2cs)):
        raise ValueError(f"need one K and pose per image; got {len(rgbs)}, {len(Ks)}, {len(w2cs)}")
    small, sKs_a = working_copies(rgbs, Ks, s.work_size)
    obj_pts = points[region.object_points]
    first = []
    for i, (img, K, w2c) in enumerate(zip(small, sKs_a, w2cs)):
        h, w = img.shape[:2]
        scale = w / rgbs[i].shape[1]
        r = max(2, int(round(s.seed_radius * max(h, w))))
        mine = obs_image == i
        seen_obj = region.object_points[obs_point[mine]]
        uv_seen = obs_xy[mine] * scale
        obj_uv, z = project(obj_pts, K, w2c)
        labels = first_round_labels((h, w), K, w2c, region, obj_uv[z > 0], uv_seen[seen_obj], uv_seen[~seen_obj], r)
        fg = grabcut(img, labels, s.iterations)
        first.append(keep_seeded(fg, labels == cv2.GC_FGD))
        check(0.6 * (i + 1) / len(small))
    return consistent_masks(rgbs, small, sKs_a, w2cs, first, s, device, check=lambda f: check(0.6 + 0.4 * f))


def working_copies(rgbs: list[np.ndarray], Ks: np.ndarray, work_size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Images reduced to ``work_size`` on their long side and their intrinsics. -> N (h, w, 3), (N, 3, 3)."""
    small, sKs = [], []
    for rgb, K in zip(rgbs, Ks):
        h, w = rgb.shape[:2]
        f = min(1.0, work_size / max(h, w))
        sw, sh = max(1, round(w * f)), max(1, round(h * f))
        small.append(cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA))
        sKs.append(np.diag([sw / w, sh / h, 1.0]) @ K)
    return small, np.array(sKs)


def consistent_masks(rgbs: list[np.ndarray], small: list[np.ndarray], sKs: np.ndarray, w2cs: np.ndarray,
                     first: list[np.ndarray], s: AutoMaskSettings, device: str,
                     bounds: tuple[np.ndarray, np.ndarray] | None = None,
                     support: tuple[np.ndarray, float] | None = None,
                     seeds: list[np.ndarray] | None = None,
                     check: Callable[[float], None] = lambda f: None,
                     open_core: bool = False, core_in_first: bool = False) -> list[np.ndarray]:
    """Second round: make first-round masks (at the ``small`` working size) agree across views. A coarse hull
    carved from them (tolerating a share of dissenting views) is projected back, and GrabCut settles the edge in a
    band around that projection. Returns N (H_i, W_i) bool at the size of ``rgbs``.

    seeds: the first round's GrabCut labels (N (h_i, w_i) uint8 at the working size) where they were measured (the
    depth maps' object and background pixels). They keep their say in the second round: sure background stays
    background in the band (the table seen between a body's legs, which the band would otherwise hand to GrabCut's
    colour models with the contact shadow beside it), and sure foreground stays foreground, also where the hull
    lost it (a horn or a tube that too many first-round masks missed). With ``open_core``, measured background
    inside the hull's eroded core stays background too, and the core within a band of it goes to GrabCut's colour
    models: the table seen through a hole (a ring's) that the first-round masks, and so the hull, filled. With
    ``core_in_first``, only what this view's own first-round mask holds is sure foreground: the rest of the hull's
    core goes to GrabCut (a slit under a body that this view saw open and the other views, and so the hull,
    filled)."""
    hulls = hull_silhouettes(first, sKs, w2cs, s, device, bounds, support)
    lenient = _agreement(first, hulls) < 0.5
    if lenient:
        # the views disagree too much for a strict hull (close-ups, parts missed in many first-round masks,
        # e.g. fox): allow more dissenting views rather than lose the object
        lenient = dataclasses.replace(s, hull_outlier_fraction=max(s.hull_outlier_fraction, 0.35))
        hulls = hull_silhouettes(first, sKs, w2cs, lenient, device, bounds, support)
    check(0.3)

    def one(i: int) -> np.ndarray:
        img, hull = small[i], hulls[i]
        h, w = img.shape[:2]
        band = max(2, int(round(s.band * max(h, w))))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
        # what the views agree on (the hull's silhouette, plus a band for GrabCut to settle the edge); with the
        # lenient hull this view's own first-round mask may add what the other views missed
        either = hull | first[i] if lenient else hull
        grown = cv2.dilate(either.astype(np.uint8), kernel) > 0
        core = cv2.erode(hull.astype(np.uint8), kernel) > 0
        if core_in_first:
            core &= first[i]
        labels = np.full((h, w), cv2.GC_BGD, dtype=np.uint8)
        labels[grown] = cv2.GC_PR_BGD
        labels[either] = cv2.GC_PR_FGD
        labels[core] = cv2.GC_FGD
        if seeds is not None:
            measured = seeds[i]
            if open_core:
                inside = (measured == cv2.GC_BGD) & core
                near = cv2.dilate(inside.astype(np.uint8), kernel) > 0
                labels[near & core] = cv2.GC_PR_FGD
                labels[inside] = cv2.GC_BGD
                core = core & ~near
            labels[(measured == cv2.GC_BGD) & grown & ~core] = cv2.GC_BGD
            sure = measured == cv2.GC_FGD
            labels[sure] = cv2.GC_FGD
            grown |= sure
            core = core | sure
        fg = grabcut(img, labels, s.iterations) & grown
        fg = keep_seeded(fg, core, labels == cv2.GC_BGD if seeds is not None else None)
        return edge_at_size(rgbs[i], fg, s)

    return parallel_map(one, len(small), lambda f: check(0.3 + 0.7 * f))


def edge_at_size(rgb: np.ndarray, mask: np.ndarray, s: AutoMaskSettings) -> np.ndarray:
    """A working-size mask (h, w) bool brought to the photo rgb (H, W, 3) uint8, its edge cut again by GrabCut at the
    photo's size (at most ``s.edge_size``): sure foreground and background beyond ``s.edge_band`` working pixels of
    the upsampled edge, the band between them left to GrabCut's colour models, which are fitted within the band's
    bounding box. Parts that the band adds without touching the mask are dropped. -> (H, W) bool."""
    H, W = rgb.shape[:2]
    h, w = mask.shape

    def up(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return cv2.resize(m.astype(np.uint8) * 255, size, interpolation=cv2.INTER_LINEAR) > 127

    f = min(1.0, s.edge_size / max(H, W))
    ew, eh = max(1, round(W * f)), max(1, round(H * f))
    k = int(round(s.edge_band * max(ew, eh) / max(h, w)))
    if s.edge_band <= 0 or k < 1 or max(ew, eh) <= max(h, w) or not mask.any():
        return up(mask, (W, H))
    coarse = up(mask, (ew, eh))
    img = rgb if (ew, eh) == (W, H) else cv2.resize(rgb, (ew, eh), interpolation=cv2.INTER_AREA)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    outer = cv2.dilate(coarse.astype(np.uint8), kernel) > 0
    inner = cv2.erode(coarse.astype(np.uint8), kernel) > 0
    labels = np.full((eh, ew), cv2.GC_BGD, dtype=np.uint8)
    labels[outer] = cv2.GC_PR_BGD
    labels[coarse] = cv2.GC_PR_FGD
    labels[inner] = cv2.GC_FGD
    # the colour models see the band and a margin of sure pixels around it, not the whole photo: what lies far
    # from the edge says little about it, and the cut costs the box's size
    ys, xs = np.nonzero(outer)
    pad = 6 * k
    y0, y1 = max(0, int(ys.min()) - pad), min(eh, int(ys.max()) + pad + 1)
    x0, x1 = max(0, int(xs.min()) - pad), min(ew, int(xs.max()) + pad + 1)
    fine = np.zeros((eh, ew), dtype=bool)
    fine[y0:y1, x0:x1] = grabcut(img[y0:y1, x0:x1], labels[y0:y1, x0:x1], s.edge_iterations)
    _, comp = cv2.connectedComponents(fine.astype(np.uint8), connectivity=8)
    touching = np.unique(comp[fine & coarse])
    fine = np.isin(comp, touching[touching > 0])
    return fine if (ew, eh) == (W, H) else up(fine, (W, H))


def working_mask(mask: np.ndarray, work_size: int) -> np.ndarray:
    """A photo-size mask (H, W) bool reduced to ``work_size`` on its long side (a pixel is in where most of it is),
    as :func:`working_copies` reduces the photos. -> (h, w) bool."""
    H, W = mask.shape
    f = min(1.0, work_size / max(H, W))
    return cv2.resize(mask.astype(np.float32), (max(1, round(W * f)), max(1, round(H * f))),
                      interpolation=cv2.INTER_AREA) > 0.5


def parallel_map(fn: Callable[[int], np.ndarray], n: int, check: Callable[[float], None]) -> list[np.ndarray]:
    """[fn(0), ..., fn(n-1)] on a thread pool: GrabCut and OpenCV release the GIL, so views run on every core.
    ``check`` gets the finished fraction (and may raise to cancel)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    out: list[np.ndarray | None] = [None] * n
    with ThreadPoolExecutor(max_workers=max(1, min(n, os.cpu_count() or 1))) as pool:
        futures = {pool.submit(fn, i): i for i in range(n)}
        done = 0
        for fut in futures:
            out[futures[fut]] = fut.result()
            done += 1
            check(done / n)
    return out  # type: ignore[return-value]
