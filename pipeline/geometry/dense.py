"""Dense geometry from the photos: multi-view stereo depth maps fused into a closed surface.

The object is told apart from the table and the room by the SfM object region (a sphere around the object's sparse
points), the support plane it stands on and the depth maps themselves, not by masks the user must make:

1. depth maps of every training view by plane sweep (:mod:`pipeline.geometry.mvs`), out to the room behind the object,
   kept where neighbouring views agree; views in which the object is cut by the border contribute what they see;
2. the support plane is refitted to the dense points near the sparse estimate;
3. the box to mesh is the dense points' extent above the plane, inside the region;
4. silhouettes: given masks where the user gave them, else GrabCut seeded by what the depth maps saw
   (:mod:`pipeline.geometry.silhouettes`), made consistent across views; they close the surface where stereo measured
   nothing (untextured parts), like a visual hull;
5. TSDF fusion over the box (:mod:`pipeline.geometry.fusion`): measured surfaces replace the hull, measured free space
   carves what the hull cannot (cavities, gaps between parts); the base is cut flat at the plane;
6. marching cubes, the largest piece, light Taubin smoothing, decimation.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import cv2
import numpy as np
import torch
import trimesh

from pipeline.cameras.cameras import camera_centers
from pipeline.geometry.carve import mask_sdf
from pipeline.context import JobError, Laps
from pipeline.geometry.fusion import Grid, combined_field_tensor, fuse_tensors
from pipeline.geometry.hull import grid_hull_tensor, hull_box, hull_under_footprint, reach_support
from pipeline.geometry.meshing import (MeshingSettings, clean_mesh, close_inside, decimate, handle_count,
                                      marching_cubes_on_device, smooth_field)
from pipeline.geometry.mvs import (DepthMap, MvsSettings, backproject, depth_maps, neighbour_views,
                                   sparse_depth_range, to_gray)
from pipeline.geometry.poisson import (PoissonSettings, PoissonUnavailable, TooFewPoints, depth_normals,
                                       poisson_surface, silhouette_votes)
from pipeline.imaging.raster import mesh_renderer
from pipeline.imaging.render import reduced_camera
from pipeline.geometry.scene import ObjectRegion, fit_ground_plane
from pipeline.geometry.unseen import settle_unseen
from pipeline.geometry.silhouettes import (Footprint, SilhouetteSettings, add_thin_parts, footprint, short_parts,
                                          photo_silhouettes)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DenseSettings:
    mvs: MvsSettings = field(default_factory=MvsSettings)
    silhouettes: SilhouetteSettings = field(default_factory=SilhouetteSettings)
    resolution: int = 512  # TSDF voxels along the longest side of the object's box
    trunc_voxels: float = 3.0  # TSDF truncation, voxels
    min_band: float = 1.0  # summed match scores of surface measurements that replace the hull (about 2 views)
    min_free: float = 1.5  # summed scores of free-space evidence that carves inside the hull
    hull_outlier_fraction: float = 0.03  # views allowed to disagree with a hull voxel (at most 2)
    base_margin_voxels: float = 1.0  # the base is cut this far above the support plane
    box_margin: float = 0.04  # fraction of the object's size added around the dense points' extent
    # estimated silhouettes miss thin or dark parts (horns, legs on a dark table): the fused box reaches this fraction
    # of the object's size beyond their hull (inside the dense points' box), and surfaces measured with at least
    # override_band of match score stand even outside that hull (None: the estimated hull is a hard limit);
    # measured in docs/design.md (Fusion)
    box_reach: float = 0.12
    override_band: float | None = 1.0
    # such a part wider than two truncations would stand as a hollow shell (the hull says outside beyond trunc): a
    # voxel that solid_hidden of match score measured a surface in front of, at most solid_depth of the fused box's
    # longest side in front, and that no view saw through, is inside (None: off); docs/design.md (Fusion)
    solid_hidden: float | None = 1.0
    solid_depth: float = 0.05
    # under the object's footprint on the table (silhouettes.base_open's, up to silhouettes.foot_height margins
    # above it), the fusion's hull lets this share of the views dissent instead of 2: a foot in the contact shadow
    # is missing from some estimated silhouettes (spot's: a median 6 of 43; docs/design.md, Feet on the table). 0: off
    foot_dissent: float = 0.25
    # ... only under the footprint's parts at most this many plane margins long (0: every part): a longer part is a
    # base, where the dissent keeps the contact shadow (bob's, docs/benchmarks.md, Without a GPU)
    foot_dissent_length: float = 0.0
    # a fused vertex that no photo sees facing it (the best cosine between its normal and the direction to a camera
    # that sees it stays under this) is placed by a harmonic fill from the seen ones around it: the hull's membrane
    # under a seat or a belly then spans its rim instead of hanging towards the table (0: off; docs/design.md, Fusion)
    unseen_facing: float = 0.45
    # ... unless at least this many views see it on the mesh's outline where their estimated silhouette holds it (a
    # rim the silhouettes placed: a dome seen only from the side keeps its top)
    unseen_rim_views: int = 1
    # ... and only where its normal points down by at most this (normal . up >= -value; 1: every rim, the default):
    # under a body the hull's membrane is made of the lower outlines of the photos that graze it (docs/design.md,
    # Fusion: measured, not adopted)
    unseen_rim_max_down: float = 1.0
    # fixed groups of fewer vertices than this among the free ones are freed too (0: off): a few vertices whose noisy
    # normals face a camera pinned the membrane under the armchair's seat once its rims were freed
    unseen_island_vertices: int = 0
    # the support plane's depths (mvs.support_hypothesis) weigh their whole match score in fusion, not its share by
    # the grazing angle: they are the plane's, exact at any angle, and the low views that see the table under a
    # body are the only ones that see through the gap (docs/design.md, Fusion)
    support_full_weight: bool = True
    # Gaussian blur of the fused field before marching cubes, as a fraction of the object's longest side, and at
    # least field_sigma_min_voxels (0: off): removes the bubbles and tunnels (handles) that depth noise leaves at the
    # scale of the depth maps' noise and, on coarse grids, of a voxel; they made the mesh open after decimation and
    # the refinement's remesh refused (docs/design.md, Fusion)
    field_blur: float = 0.0031
    field_sigma_min_voxels: float = 0.8
    # before the blur, the inside is closed by a cube whose half-width is this fraction of the object's longest side,
    # at least one voxel (0: off; close_radius): fills the tunnels and bubbles of depth noise, which the blur leaves
    # (the stool's 41 handles: 7 on the CPU's 192 voxels). A fraction, not voxels: one voxel closed the CPU's grid and
    # left the cup 32 handles on the GPU's 384, where two left 9 (docs/design.md, Fusion)
    close_size: float = 1 / 192
    smoothing_iterations: int = 3
    max_faces: int = 200_000
    max_points: int = 1_000_000  # fused points kept for points.ply
    # how the depth maps become a surface: "tsdf" (fusion with the silhouettes' hull, steps 5-6) or "poisson"
    # (screened Poisson of the oriented depth points, :mod:`pipeline.geometry.poisson`); docs/design.md, Meshing
    # "hybrid": Poisson of the depth points near the TSDF surface, with that surface's samples where no depth point
    # is within hybrid_gap of the box diagonal (the TSDF decides what is object, the points where it is)
    mesher: str = "tsdf"
    poisson: PoissonSettings = field(default_factory=PoissonSettings)
    hybrid_band: float = 0.02
    hybrid_gap: float = 0.005
    hybrid_samples: int = 400_000

    def __post_init__(self) -> None:
        if self.mesher not in ("tsdf", "poisson", "hybrid"):
            raise ValueError(f"DenseSettings.mesher must be 'tsdf', 'poisson' or 'hybrid', got {self.mesher!r}")


@dataclass(frozen=True)
class DenseResult:
    """mesh in world units; points (P, 3) float32 and colors (P, 3) uint8: consistent depth samples above the support;
    support: the refitted plane (unit n, d) or None; masks: N (H_i, W_i) bool, the silhouettes used (given or
    estimated); estimated: N bool, which of them were estimated; stats: numbers for the report."""

    mesh: trimesh.Trimesh
    points: np.ndarray
    colors: np.ndarray
    support: tuple[np.ndarray, float] | None
    masks: list[np.ndarray]
    estimated: list[bool]
    stats: dict


def refit_support(points: np.ndarray, support: tuple[np.ndarray, float], band: float
                  ) -> tuple[np.ndarray, float] | None:
    """Least-squares plane through the dense points within ``band`` of the sparse support plane (RANSAC first, so
    the object's own base does not tilt it). points (P, 3) world. None when too few points lie near it."""
    n, d = np.asarray(support[0], dtype=np.float64), float(support[1])
    near = np.abs(points @ n - d) < band
    if near.sum() < 200:
        return None
    sample = points[near]
    if len(sample) > 200_000:
        sample = sample[np.random.default_rng(0).choice(len(sample), 200_000, replace=False)]
    fit = fit_ground_plane(sample, n, threshold=0.1 * band, max_tilt_deg=10.0)
    if fit is None:
        return None
    n2, d2, inliers = fit
    if inliers.sum() < 100:
        return None
    return n2, d2


def find_walls(points: np.ndarray, region: ObjectRegion, planes: list[tuple[np.ndarray, float]],
               centers: np.ndarray, object_points: np.ndarray | None = None,
               max_walls: int = 2) -> list[tuple[np.ndarray, float]]:
    """Large flat surfaces near the object besides its support (a wall right behind it, a second table edge): RANSAC
    planes through the dense points near the region that hold a big share of them, spread wider than the object,
    with every camera on one side, and neither cutting through the object nor holding its own flat faces
    (``object_points`` (Q, 3), the SfM points that belong to it, stay in front, and off it where the plane is level
    with the support). Each is returned as (unit n, d) with the cameras on the side n·x > d.
    points (P, 3); planes: the ones already known (excluded), the support first; centers (N, 3) camera centres."""
    r = region.radius
    support = planes[0] if planes else None
    near = np.linalg.norm(points - region.center, axis=1) < 1.5 * r
    for n, d in planes:
        near &= points @ n - d > 0.03 * r
    pts = points[near]
    if len(pts) > 100_000:
        pts = pts[np.random.default_rng(1).choice(len(pts), 100_000, replace=False)]
    walls: list[tuple[np.ndarray, float]] = []
    for _ in range(max_walls):
        if len(pts) < 500:
            break
        fit = fit_ground_plane(pts, region.up, threshold=0.01 * r, max_tilt_deg=90.0, seed=len(walls))
        if fit is None:
            break
        n, d, inl = fit
        if inl.sum() < 0.1 * len(pts):
            break
        side = centers @ n - d
        if (side < 0).mean() > 0.5:
            n, d, side = -n, -d, -side
        # a real surface: every camera in front of it, and far wider than the object
        a = np.cross(n, [1.0, 0, 0] if abs(n[0]) < 0.9 else [0, 1.0, 0])
        a /= np.linalg.norm(a)
        b = np.cross(n, a)
        q = pts[inl]
        spread = min(np.ptp(q @ a), np.ptp(q @ b))
        # the object's own SfM points behind the plane (it would cut the object), or, for a plane level with the
        # table, on it: then it is the object's own flat face (the top of a lamp's base, holding a third of the
        # object's points, was taken for a wall, and the base and the stem above it became background). A wall
        # behind the object is not held to that: the object region's clutter includes points on such walls
        h = None if object_points is None or len(object_points) < 10 else object_points @ n - d
        level = support is not None and abs(float(n @ support[0])) > math.cos(math.radians(30.0))
        cuts_object = h is not None and ((h < -0.02 * r).mean() > 0.05
                                         or (level and (np.abs(h) < 0.02 * r).mean() > 0.05))
        if not (side > 0).all() or spread < r or cuts_object:
            log.debug("plane n %s d %.4g (%.0f %% of the points near the object) is not a wall: cameras on both "
                      "sides %s, spread %.3g of the region's radius, cuts or holds the object %s", np.round(n, 3), d,
                      100 * inl.mean(), not (side > 0).all(), spread / r, cuts_object)
            break
        walls.append((n, float(d)))
        pts = pts[~inl]
    return walls


def object_box(points: np.ndarray, region: ObjectRegion, planes: list[tuple[np.ndarray, float]],
               margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box (lo, hi) around the dense points that belong to the object: inside the region's sphere and
    in front of the support and walls; robust percentiles, grown by ``margin`` of the extent. points (P, 3)."""
    keep = np.linalg.norm(points - region.center, axis=1) < region.radius
    for n, d in planes:
        keep &= points @ n - d > 0.02 * region.radius
    p = points[keep]
    r = region.radius
    if len(p) < 100:
        return region.center - r, region.center + r
    lo, hi = np.percentile(p, 0.2, axis=0), np.percentile(p, 99.8, axis=0)
    grow = margin * float((hi - lo).max()) + 1e-9
    lo, hi = lo - grow, hi + grow
    # never beyond the region's own box
    return np.maximum(lo, region.center - r), np.minimum(hi, region.center + r)


def _colors_of(dm: DepthMap, idx: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    H, W = dm.depth.shape
    small = rgb if rgb.shape[:2] == (H, W) else cv2.resize(rgb, (W, H), interpolation=cv2.INTER_AREA)
    return small.reshape(-1, 3)[idx]


def dense_geometry(images: list[np.ndarray], masks: list[np.ndarray | None], Ks: np.ndarray, w2cs: np.ndarray,
                   region: ObjectRegion, s: DenseSettings, device: str = "cpu",
                   sparse: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                   check: Callable[[float], None] = lambda f: None) -> DenseResult:
    """Closed surface of the object from posed photos.

    images: N (H_i, W_i, 3) uint8; masks: N (H_i, W_i) bool or None (depths only inside a given mask);
    Ks (N, 3, 3) for those images; w2cs (N, 4, 4) OpenCV; region: the object's sphere, up and support plane;
    sparse: optional (points (P, 3), obs_view (M,), obs_point (M,)) SfM observations for choosing neighbours."""
    n = len(images)
    if not (len(masks) == len(Ks) == len(w2cs) == n) or n < 2:
        raise ValueError("dense_geometry needs >= 2 views with one mask entry, K and pose each")
    t0 = time.monotonic()
    dms, grays = photo_depth_maps(images, masks, Ks, w2cs, region, s, device, sparse, check=lambda f: check(0.7 * f))
    t_mvs = time.monotonic() - t0
    glue: dict[str, float] = {}  # the CPU steps between the GPU ones, which contention on a shared host stretches
    t = time.monotonic()
    cloud, cols = [], []
    for dm, img in zip(dms, images):
        # the sweep's own points: the support plane's hypothesis gives the table, which would pin the plane's refit
        # to SfM's plane and is no part of the object
        p, idx = backproject(dm, table=False)
        cloud.append(p)
        cols.append(_colors_of(dm, idx, img))
    points = np.concatenate(cloud) if cloud else np.zeros((0, 3))
    colors = np.concatenate(cols) if cols else np.zeros((0, 3), np.uint8)
    if len(points) < 1000:
        raise JobError(f"multi-view stereo found only {len(points)} consistent surface points: the photos share too "
                       "little texture or overlap. Photograph the object from more directions (every 10-15 degrees), "
                       "sharp and well lit; plain, shiny or transparent objects need masks (masks/<image>.png)")
    glue["points"], t = time.monotonic() - t, time.monotonic()
    support, refit, walls, lo, hi = surroundings(points, region, w2cs, sparse, s.box_margin)
    glue["surroundings"] = time.monotonic() - t
    planes = ([] if support is None else [support]) + walls
    log.info("dense points' box %s to %s (the region: centre %s, radius %.4g; support %s; %d wall(s)%s)",
             np.round(lo, 4), np.round(hi, 4), np.round(region.center, 4), region.radius,
             "none" if support is None else f"n {np.round(support[0], 3)} d {support[1]:.4g}", len(walls),
             "".join(f", n {np.round(n, 3)} d {d:.4g}" for n, d in walls))
    check(0.6)
    t1 = time.monotonic()
    estimated = [m is None for m in masks]
    sil = list(masks)
    foot = (footprint(cloud, lo, hi, support, s.silhouettes)
            if any(estimated) and support is not None and s.silhouettes.base_open else None)
    if any(estimated):
        pick = [i for i in range(n) if estimated[i]]
        # without a table there is no footprint (planes[0] would be a wall)
        sil_s = s.silhouettes if support is not None else replace(s.silhouettes, base_open=False)
        found = photo_silhouettes([images[i] for i in pick], [dms[i] for i in pick], Ks[pick], w2cs[pick], lo, hi,
                                  planes, sil_s, device, check=lambda f: check(0.6 + 0.15 * f), foot=foot)
        for i, m in zip(pick, found):
            sil[i] = m
    t_sil = time.monotonic() - t1
    surf, used = None, "tsdf"
    if s.mesher == "poisson":
        try:
            surf, used = poisson_mesh(dms, sil, estimated, Ks, w2cs, (lo, hi), planes, s, device=device), "poisson"
        except (PoissonUnavailable, TooFewPoints) as e:
            log.warning("%s; meshing by TSDF fusion instead", e)
    if surf is None:
        surf = fused_surface(dms, sil, estimated, Ks, w2cs, (lo, hi), support, planes, s=s, device=device,
                             check=lambda f: check(0.75 + 0.23 * f), foot=foot)
        if s.mesher == "hybrid":
            try:
                surf, used = poisson_mesh(dms, sil, estimated, Ks, w2cs, (surf.lo, surf.hi), planes, s,
                                          guide=surf, device=device), "hybrid"
            except (PoissonUnavailable, TooFewPoints) as e:
                log.warning("%s; the TSDF surface is kept", e)
    check(0.98)
    t = time.monotonic()
    grid, mesh, raw, lo, hi = surf.grid, surf.mesh, surf.raw, surf.lo, surf.hi
    thin_views = 0
    if any(estimated):
        # measured thin parts the estimated silhouettes missed join them, so that the refinement keeps them
        pick = [i for i in range(n) if estimated[i]]
        grown, thin_views = add_thin_parts([sil[i] for i in pick], np.asarray(mesh.vertices),
                                           np.asarray(mesh.faces), Ks[pick], w2cs[pick], s.silhouettes, device,
                                           rgbs=[images[i] for i in pick])
        for i, m in zip(pick, grown):
            sil[i] = m
    glue["thin_parts"], t = time.monotonic() - t, time.monotonic()
    above = np.ones(len(points), dtype=bool)
    for n_, d_ in planes:
        above &= points @ n_ - d_ > 0
    inbox = np.all((points >= lo) & (points <= hi), axis=1) & above
    keep = np.flatnonzero(inbox)
    if len(keep) > s.max_points:
        keep = np.random.default_rng(0).choice(keep, s.max_points, replace=False)
    coverage = [float((dm.depth > 0).mean()) for dm in dms]
    stats = {"views": n, "depth_size": [int(grays[0].shape[1]), int(grays[0].shape[0])],
             "planes": s.mvs.planes, "neighbours": s.mvs.neighbours, "window": s.mvs.window,
             "depth_pixels_mean": round(float(np.mean(coverage)), 4), "points": int(len(points)),
             "mesher": used,  # what made the surface: "tsdf" also where Poisson was asked for but unavailable
             "grid": None if grid is None else list(grid.dims), "voxel": None if grid is None else grid.voxel,
             "trunc": None if grid is None else s.trunc_voxels * grid.voxel,
             "support_refit": refit is not None, "walls": len(walls), "raw_faces": int(len(raw.faces)),
             "faces": int(len(mesh.faces)),
             "watertight": bool(mesh.is_watertight),
             # tunnels through the fused surface (the genus of a closed piece): depth noise left here shows up as
             # the final mesh's handles, which the report's topology check grades
             "handles": handle_count(mesh)[0],
             "seconds": {"depth_maps": round(t_mvs, 2), "fusion_meshing": round(time.monotonic() - t0 - t_mvs, 2)}}
    glue["summary"] = time.monotonic() - t
    stats["seconds"]["silhouettes"] = round(t_sil, 2)
    stats["seconds"].update({k: round(v, 2) for k, v in glue.items()})
    # where fusion_meshing's time goes (it includes the silhouettes): measured per step
    stats["seconds"].update({k: round(v, 2) for k, v in surf.seconds.items()})
    stats["estimated_silhouettes"] = int(sum(estimated))
    stats["thin_parts_views"] = thin_views  # estimated silhouettes that gained the surface's thin measured parts
    return DenseResult(mesh=mesh, points=points[keep].astype(np.float32), colors=colors[keep].astype(np.uint8),
                       support=support, masks=[np.asarray(m, dtype=bool) for m in sil], estimated=estimated,
                       stats=stats)


def photo_depth_maps(images: list[np.ndarray], masks: list[np.ndarray | None], Ks: np.ndarray, w2cs: np.ndarray,
                     region: ObjectRegion, s: DenseSettings, device: str = "cpu",
                     sparse: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                     check: Callable[[float], None] = lambda f: None) -> tuple[list[DepthMap], list[np.ndarray]]:
    """Steps 1-2 of :func:`dense_geometry`: one depth map per view at ``s.mvs.max_side`` (inside a given mask only),
    with the sweep over the region's depth range and neighbours chosen from the SfM observations. Arguments as
    there. -> (N depth maps, N (h, w) grey images they were computed from)."""
    grays, Kd, dmasks = [], [], []
    for img, K, m in zip(images, Ks, masks):
        H, W = img.shape[:2]
        k2, w, h = reduced_camera(K, W, H, s.mvs.max_side)
        grays.append(to_gray(img, w, h))
        Kd.append(k2)
        dmasks.append(None if m is None else cv2.resize(m.astype(np.uint8), (w, h),
                                                        interpolation=cv2.INTER_NEAREST) > 0)
    pts, ov, op = sparse if sparse is not None else (None, None, None)
    nbrs = neighbour_views(w2cs, pts, ov, op, s.mvs.neighbours, region.center)
    ranges = [sparse_depth_range(w, region.center, region.radius,
                                 None if pts is None else pts[np.unique(op[ov == i])], s.mvs.sparse_near)
              for i, w in enumerate(w2cs)]
    dms = depth_maps(grays, np.array(Kd), w2cs, ranges, nbrs, s.mvs, device,
                     masks=None if all(m is None for m in dmasks) else dmasks, check=check, support=region.ground)
    return dms, grays


def surroundings(points: np.ndarray, region: ObjectRegion, w2cs: np.ndarray,
                 sparse: tuple[np.ndarray, np.ndarray, np.ndarray] | None, box_margin: float
                 ) -> tuple[tuple[np.ndarray, float] | None, tuple[np.ndarray, float] | None,
                            list[tuple[np.ndarray, float]], np.ndarray, np.ndarray]:
    """Step 3 of :func:`dense_geometry`: the support plane refitted to the dense points (P, 3), the walls behind
    the object, and the object's box above them. -> (support or None, the refit or None where it failed, walls,
    lo (3,), hi (3,))."""
    support = region.ground
    refit = None
    if support is not None:
        refit = refit_support(points, support, band=0.06 * region.radius)
        support = refit if refit is not None else support
    planes = [] if support is None else [support]
    obj_pts = None
    if sparse is not None and len(region.object_points) == len(sparse[0]) and region.object_points.any():
        obj_pts = sparse[0][region.object_points]
    walls = find_walls(points, region, planes, camera_centers(w2cs), obj_pts)
    lo, hi = object_box(points, region, planes + walls, box_margin)
    return support, refit, walls, lo, hi


@dataclass(frozen=True)
class Surface:
    """The fused grid (None for a Poisson surface), the raw mesh and the cleaned one (world units), the fused box
    (lo, hi) and seconds per step (silhouette_sdf, hull_box, fusion, hull, field, marching_cubes, clean_mesh; the
    Poisson steps oriented_points, poisson, clean_mesh)."""

    grid: Grid | None
    raw: trimesh.Trimesh
    mesh: trimesh.Trimesh
    lo: np.ndarray
    hi: np.ndarray
    seconds: dict[str, float]


def close_radius(s: DenseSettings) -> int:
    """Half-width in voxels of the cube that closes the fused inside: ``close_size`` of the object's longest side on
    a grid of ``resolution`` voxels along it, rounded, at least 1; 0 when ``close_size`` is 0."""
    if s.close_size <= 0:
        return 0
    return max(1, round(s.close_size * s.resolution))


def blur_voxels(s: DenseSettings) -> float:
    """Sigma of the fused field's blur in voxels: ``field_blur`` of the object's size, at least
    ``field_sigma_min_voxels``; 0 when ``field_blur`` is 0."""
    if s.field_blur <= 0:
        return 0.0
    return max(s.field_sigma_min_voxels, s.field_blur * s.resolution)


def fused_surface(dms: list[DepthMap], sil: list[np.ndarray], estimated: list[bool], Ks: np.ndarray,
                  w2cs: np.ndarray, box: tuple[np.ndarray, np.ndarray], support: tuple[np.ndarray, float] | None,
                  planes: list[tuple[np.ndarray, float]], s: DenseSettings, device: str = "cpu",
                  check: Callable[[float], None] = lambda f: None, foot: Footprint | None = None) -> Surface:
    """Steps 5 and 6: the box around the silhouettes' hull, TSDF fusion of the depth maps with the hull, marching
    cubes and clean-up. dms: N depth maps; sil: N (H_i, W_i) bool silhouettes at the resolution of ``Ks`` (N, 3, 3);
    estimated: N bool; w2cs (N, 4, 4); box: (lo (3,), hi (3,)) around the dense points; planes: support and walls;
    foot: the object's footprint on the support, where the hull lets ``s.foot_dissent`` of the views dissent."""
    lap = Laps(digits=None)
    dev = torch.device(device)
    # one distance transform per silhouette (full-size photos) serves the box and the hull
    sdfs = [mask_sdf(m) for m in sil]
    lap("silhouette_sdf")
    # the silhouettes bound the object far more tightly than the points do (clutter near it, the table's edge)
    lo, hi = hull_box(sil, Ks, w2cs, box, support, s.box_margin, s.hull_outlier_fraction, device, sdfs=sdfs)
    voxel = float((hi - lo).max()) / s.resolution
    hull_lo, hull_hi = lo, hi
    if any(estimated) and s.box_reach > 0:
        reach = s.box_reach * float((hi - lo).max())
        lo, hi = np.maximum(lo - reach, box[0]), np.minimum(hi + reach, box[1])
    if any(estimated) and support is not None:
        # the object stands on the table: estimated silhouettes lose thin legs near it (an armchair's tubular frame
        # in every view), so the box reaches down to the table under its footprint; only measured surfaces stand
        # there (override_band), and the base cut keeps the table itself out
        lo, hi = reach_support(lo, hi, support, box)
    log.info("silhouettes' hull box %s to %s; fused box %s to %s", np.round(hull_lo, 4), np.round(hull_hi, 4),
             np.round(lo, 4), np.round(hi, 4))
    grid = Grid.over_box(lo, hi, int(round(float((hi - lo).max()) / voxel)))
    trunc = s.trunc_voxels * grid.voxel
    lap("hull_box")
    # the fields stay on the device from fusion to marching cubes (a 512^3 grid: 0.5 GB each)
    solid = any(estimated) and s.override_band is not None and s.solid_hidden is not None
    values, weight, band, hidden = fuse_tensors(dms, grid, trunc, device=device, check=lambda f: check(0.4 * f),
                                                solid_depth=s.solid_depth * float((hi - lo).max()) if solid else 0.0,
                                                plane_weight=s.support_full_weight)
    lap("fusion")
    hull = grid_hull_tensor(grid, Ks, w2cs, sdfs, s.hull_outlier_fraction, device)
    if foot is not None and any(estimated) and s.foot_dissent > 0:
        legs = short_parts(foot, s.foot_dissent_length)  # the whole footprint unless a length is set
        opened = hull_under_footprint(hull, grid, legs, s.silhouettes.foot_height, Ks, w2cs, sdfs,
                                      int(round(s.foot_dissent * len(sdfs))), device)
        log.info("hull under the footprint: %d voxels let %d of %d views dissent", opened,
                 int(round(s.foot_dissent * len(sdfs))), len(sdfs))
    lap("hull")
    # estimated silhouettes can be a little off: the hull is a hard limit only where the user drew the masks
    slack = trunc if any(estimated) else 0.0
    field_ = combined_field_tensor(values, weight, band, hull, grid, trunc, s.min_band, s.min_free, slack, planes,
                                   s.base_margin_voxels * grid.voxel,
                                   override_band=s.override_band if any(estimated) else None,
                                   hidden=hidden, solid_hidden=s.solid_hidden if solid else None)
    del values, weight, band, hidden, hull
    field_ *= trunc
    field_ = smooth_field(close_inside(field_, close_radius(s)), blur_voxels(s))
    lap("field")
    check(0.7)
    raw = marching_cubes_on_device(field_, grid.origin, grid.voxel)
    del field_
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    lap("marching_cubes")
    log.info("fused %s voxels on %s: %s s", "x".join(map(str, grid.dims)), device,
             {k: round(v, 2) for k, v in lap.seconds.items()})
    mesh = clean_mesh(raw, MeshingSettings(smoothing_iterations=s.smoothing_iterations, max_faces=s.max_faces))
    lap("clean_mesh")
    if any(estimated) and s.unseen_facing > 0:
        # the views' depths by nvdiffrast on a GPU: Embree's 48 renders were most of the step's 1.3 s there
        settled = settle_unseen(mesh, Ks, w2cs, [(m.shape[1], m.shape[0]) for m in sil], s.unseen_facing, sil,
                                s.unseen_rim_views, renderer=mesh_renderer(device),
                                up=None if support is None else support[0], rim_max_down=s.unseen_rim_max_down,
                                island_vertices=s.unseen_island_vertices)
        mesh = trimesh.Trimesh(settled.vertices, mesh.faces, process=False)
        log.info("%.1f %% of the fused vertices seen by no photo facing them; %d placed by the harmonic fill",
                 100 * settled.unseen_share, int(settled.free.sum()))
        lap("unseen")
    check(1.0)
    return Surface(grid=grid, raw=raw, mesh=mesh, lo=lo, hi=hi, seconds=lap.seconds)


def poisson_mesh(dms: list[DepthMap], sil: list[np.ndarray], estimated: list[bool], Ks: np.ndarray,
                 w2cs: np.ndarray, box: tuple[np.ndarray, np.ndarray], planes: list[tuple[np.ndarray, float]],
                 s: DenseSettings, guide: Surface | None = None, device: str = "cpu") -> Surface:
    """Steps 5 and 6 by screened Poisson: the depth maps' oriented points that most silhouettes contain (all of them
    where the user gave the masks), meshed inside ``box`` above ``planes`` and decimated to ``max_faces``.
    With a ``guide`` (the TSDF surface, mesher "hybrid"), the points are those within ``hybrid_band`` of the box
    diagonal from it instead, joined by its own samples where no point lies within ``hybrid_gap``, and nothing is
    trimmed: the result is closed where the guide is. Arguments as :func:`fused_surface`. Raises PoissonUnavailable
    without pymeshlab's filter."""
    from scipy.spatial import cKDTree

    seconds: dict[str, float] = {}
    t = time.monotonic()
    oriented = [depth_normals(dm, device) for dm in dms]
    points = np.concatenate([p for p, _ in oriented])
    normals = np.concatenate([n for _, n in oriented])
    ps = s.poisson
    if guide is None:
        # estimated silhouettes miss thin or dark parts: they only vote; given masks are trusted like the hull
        need = ps.silhouette_fraction if any(estimated) else 1.0 - s.hull_outlier_fraction
        keep = silhouette_votes(points, sil, Ks, w2cs, device) >= need
        points, normals = points[keep], normals[keep]
    else:
        diag = float(np.linalg.norm(np.asarray(box[1]) - np.asarray(box[0])))
        samples, face = trimesh.sample.sample_surface(guide.mesh, s.hybrid_samples, seed=0)
        near = cKDTree(samples).query(points, distance_upper_bound=s.hybrid_band * diag, workers=-1)[0]
        points, normals = points[np.isfinite(near)], normals[np.isfinite(near)]
        gap = cKDTree(points).query(samples, distance_upper_bound=s.hybrid_gap * diag, workers=-1)[0]
        fill = ~np.isfinite(gap)
        points = np.concatenate([points, samples[fill]])
        normals = np.concatenate([normals, guide.mesh.face_normals[face[fill]]])
        ps = replace(ps, trim_quantile=0.0)
    seconds["oriented_points"] = time.monotonic() - t
    t = time.monotonic()
    raw = poisson_surface(points, normals, planes, box[0], box[1], ps)
    seconds["poisson"] = time.monotonic() - t
    t = time.monotonic()
    mesh = decimate(raw, s.max_faces)
    seconds["clean_mesh"] = time.monotonic() - t
    log.info("Poisson surface of %d oriented points%s: %d faces, closed %s, %s s", len(points),
             "" if guide is None else " (hybrid)", len(mesh.faces), mesh.is_watertight,
             {k: round(v, 2) for k, v in seconds.items()})
    if guide is not None:
        seconds = {**guide.seconds, **{f"hybrid_{k}": v for k, v in seconds.items()}}
        return Surface(grid=guide.grid, raw=raw, mesh=mesh, lo=guide.lo, hi=guide.hi, seconds=seconds)
    return Surface(grid=None, raw=raw, mesh=mesh, lo=np.asarray(box[0]), hi=np.asarray(box[1]), seconds=seconds)
