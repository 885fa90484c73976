"""What the photos saw: per-vertex visibility, surface coverage, the cameras' spread around the object, and the
object cut off by the image border. Small pure functions on arrays (no files, no settings), used by the report's
grade and tested against plain reference loops in tests/test_quality.py.

Conventions: cameras are OpenCV pinhole (K (3, 3) pixels, w2c (4, 4) world-to-camera, +z forward, +y down in the
image); ``up`` is the scene's unit up vector (3,).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.cameras.cameras import camera_centers

SIDES = ("top", "bottom", "left", "right")


def _check_cameras(Ks: np.ndarray, w2cs: np.ndarray) -> None:
    if Ks.ndim != 3 or Ks.shape[1:] != (3, 3) or w2cs.ndim != 3 or w2cs.shape[1:] != (4, 4) or len(Ks) != len(w2cs):
        raise ValueError(f"Ks must be (N, 3, 3) and w2cs (N, 4, 4) with the same N, got {Ks.shape} and {w2cs.shape}")


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def vertex_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """The surface area each vertex stands for: a third of the area of every face around it.

    vertices: (V, 3) float; faces: (F, 3) int. Returns (V,) float64 summing to the mesh's area."""
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"vertices must be (V, 3) and faces (F, 3), got {vertices.shape} and {faces.shape}")
    v = np.asarray(vertices, dtype=np.float64)
    tri = v[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    return np.bincount(np.asarray(faces).ravel(), weights=np.repeat(area / 3.0, 3), minlength=len(v))


def visibility_counts(vertices: np.ndarray, normals: np.ndarray, depths: list[np.ndarray], Ks: np.ndarray,
                      w2cs: np.ndarray, max_angle_deg: float, tolerance: float) -> np.ndarray:
    """How many cameras see each vertex at a reasonable angle.

    vertices, normals: (V, 3) (unit normals, pointing out); depths: N depth maps (h_i, w_i) float (camera z of the
    nearest surface, inf where empty) rendered with Ks (N, 3, 3) (pixels of that depth map) and w2cs (N, 4, 4).
    A camera sees a vertex when the vertex projects into its image, the angle between the normal and the direction
    to the camera is at most ``max_angle_deg``, and the vertex is not behind the nearest surface there: its depth is
    at most the minimum over the 2x2 pixel centres around its projection (so silhouette edges are not lost to the
    depth map's resolution) plus ``tolerance`` (world units) plus the depth a surface at the vertex's slant changes
    over 1.5 pixels (z / f * tan(angle); without it a slanted surface would hide itself at low resolution).
    Returns (V,) int32."""
    _check_cameras(Ks, w2cs)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or normals.shape != vertices.shape:
        raise ValueError(f"vertices and normals must both be (V, 3), got {vertices.shape} and {normals.shape}")
    if len(depths) != len(Ks):
        raise ValueError(f"{len(depths)} depth maps for {len(Ks)} cameras")
    if not 0 < max_angle_deg <= 180 or tolerance < 0:
        raise ValueError(f"max_angle_deg must be in (0, 180] and tolerance >= 0, got {max_angle_deg}, {tolerance}")
    V = np.asarray(vertices, dtype=np.float64)
    N = _unit(np.asarray(normals, dtype=np.float64))
    cos_min = np.cos(np.radians(max_angle_deg))
    counts = np.zeros(len(V), dtype=np.int32)
    for depth, K, w2c, c in zip(depths, Ks, w2cs, camera_centers(w2cs)):
        h, w = depth.shape
        cam = V @ w2c[:3, :3].T + w2c[:3, 3]
        z = cam[:, 2]
        cos = np.einsum("vk,vk->v", N, _unit(c - V))
        front = z > 1e-9
        zs = np.where(front, z, 1.0)
        u = K[0, 0] * cam[:, 0] / zs + K[0, 2]
        v = K[1, 1] * cam[:, 1] / zs + K[1, 2]
        inside = front & (cos >= cos_min) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        idx = np.nonzero(inside)[0]
        # the 2x2 pixel centres (x + 0.5) around the projection
        x0 = np.clip(np.floor(u[idx] - 0.5).astype(np.int64), 0, w - 1)
        y0 = np.clip(np.floor(v[idx] - 0.5).astype(np.int64), 0, h - 1)
        x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
        dmin = np.minimum.reduce([depth[y0, x0], depth[y0, x1], depth[y1, x0], depth[y1, x1]])
        ci = np.clip(cos[idx], cos_min, 1.0)
        slant = 1.5 * z[idx] / K[0, 0] * np.sqrt(1 - ci ** 2) / np.maximum(ci, 1e-3)
        counts[idx[z[idx] <= dmin + tolerance + slant]] += 1
    return counts


def coverage_share(areas: np.ndarray, counts: np.ndarray, min_views: int,
                   exclude: np.ndarray | None = None) -> float:
    """Share of the surface area seen by at least ``min_views`` cameras.

    areas: (V,) per-vertex areas (see :func:`vertex_areas`); counts: (V,) int; exclude: (V,) bool vertices left out
    of both the seen and the total area (e.g. the face the object stands on). 0 when nothing is left."""
    if areas.shape != counts.shape or areas.ndim != 1 or (exclude is not None and exclude.shape != areas.shape):
        raise ValueError(f"areas, counts (and exclude) must be (V,), got {areas.shape}, {counts.shape}"
                         f"{'' if exclude is None else ', ' + str(exclude.shape)}")
    if min_views < 1:
        raise ValueError(f"min_views must be >= 1, got {min_views}")
    keep = np.ones(len(areas), dtype=bool) if exclude is None else ~exclude
    total = float(areas[keep].sum())
    if total <= 0:
        return 0.0
    return float(areas[keep & (counts >= min_views)].sum() / total)


def resting_vertices(vertices: np.ndarray, normals: np.ndarray, up: np.ndarray, centres: np.ndarray,
                     band: float = 0.03, max_angle_deg: float = 30.0) -> np.ndarray:
    """The face the object stands on, which no photo can see: vertices within ``band`` of the object's height from
    its lowest point whose normal points down (within ``max_angle_deg`` of -up). Only when every camera centre
    (centres (N, 3)) is above that band: a capture that also looked from below could have seen it.

    vertices, normals: (V, 3). Returns (V,) bool."""
    if vertices.ndim != 2 or vertices.shape[1] != 3 or normals.shape != vertices.shape:
        raise ValueError(f"vertices and normals must both be (V, 3), got {vertices.shape} and {normals.shape}")
    u = _unit(np.asarray(up, dtype=np.float64))
    h = vertices @ u
    lo, hi = float(h.min()), float(h.max())
    top_of_band = lo + band * max(hi - lo, 1e-12)
    if len(centres) == 0 or float((centres @ u).min()) <= top_of_band:
        return np.zeros(len(vertices), dtype=bool)
    down = _unit(np.asarray(normals, dtype=np.float64)) @ -u >= np.cos(np.radians(max_angle_deg))
    return (h <= top_of_band) & down


@dataclass(frozen=True)
class Spread:
    """Where the cameras are around the object. Azimuths are measured around ``up``; cameras within
    ``polar_limit_deg`` of straight above or below count as seeing every side and are left out of the gaps."""

    largest_gap_deg: float  # widest azimuth range (degrees) with no camera; 360 with fewer than 2 ring cameras
    gap_direction: tuple[float, float, float]  # unit vector from the object to the middle of that gap
    gap_between: tuple[int, int]  # indices (into centres) of the cameras on either side of the gap; -1: none
    elevation_min_deg: float
    elevation_max_deg: float
    ring_cameras: int  # cameras used for the gaps

    def to_dict(self) -> dict[str, object]:
        return {"largest_gap_deg": self.largest_gap_deg, "gap_direction": list(self.gap_direction),
                "gap_between": list(self.gap_between),
                "elevation_min_deg": self.elevation_min_deg, "elevation_max_deg": self.elevation_max_deg,
                "ring_cameras": self.ring_cameras}


def horizontal_basis(up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors (3,) spanning the plane normal to ``up``, (e1, e2, up) right-handed."""
    u = _unit(np.asarray(up, dtype=np.float64))
    a = np.array([1.0, 0, 0]) if abs(u[0]) < 0.9 else np.array([0, 1.0, 0])
    e1 = _unit(np.cross(u, a))
    return e1, np.cross(u, e1)


def camera_spread(centres: np.ndarray, target: np.ndarray, up: np.ndarray, polar_limit_deg: float = 75.0) -> Spread:
    """The cameras' angular spread around ``target`` (3,): largest azimuth gap and elevation range.

    centres: (N, 3) camera centres."""
    if centres.ndim != 2 or centres.shape[1] != 3 or len(centres) == 0:
        raise ValueError(f"centres must be (N, 3) with N >= 1, got {centres.shape}")
    u = _unit(np.asarray(up, dtype=np.float64))
    d = _unit(centres - target)
    elev = np.degrees(np.arcsin(np.clip(d @ u, -1, 1)))
    e1, e2 = horizontal_basis(u)
    ring = np.nonzero(np.abs(elev) < polar_limit_deg)[0]
    raw = np.arctan2(d[ring] @ e2, d[ring] @ e1)
    order = np.argsort(raw)
    az = raw[order]
    if len(az) >= 2:
        gaps = np.diff(np.concatenate([az, az[:1] + 2 * np.pi]))
        k = int(np.argmax(gaps))
        gap, mid = float(np.degrees(gaps[k])), float(az[k] + gaps[k] / 2)
        between = (int(ring[order[k]]), int(ring[order[(k + 1) % len(az)]]))
    else:  # one ring camera or none: everything else around is a gap
        gap = 360.0
        mid = float(az[0] + np.pi) if len(az) else 0.0
        between = (int(ring[0]), int(ring[0])) if len(ring) else (-1, -1)
    direction = np.cos(mid) * e1 + np.sin(mid) * e2
    return Spread(largest_gap_deg=gap, gap_direction=tuple(float(x) for x in direction), gap_between=between,
                  elevation_min_deg=float(elev.min()), elevation_max_deg=float(elev.max()), ring_cameras=int(len(az)))


def cut_sides(mask: np.ndarray, min_fraction: float = 0.02) -> tuple[str, ...]:
    """Image sides a silhouette runs off: ('top', 'bottom', 'left', 'right') where the object covers at least
    ``min_fraction`` of the outermost row or column (and at least 2 pixels, so a single touching pixel is not a cut).

    mask: (H, W) bool."""
    if mask.ndim != 2 or min(mask.shape) < 2:
        raise ValueError(f"mask must be (H, W) with H, W >= 2, got {mask.shape}")
    m = np.asarray(mask, dtype=bool)
    edges = {"top": m[0], "bottom": m[-1], "left": m[:, 0], "right": m[:, -1]}
    return tuple(s for s in SIDES if edges[s].sum() >= max(2, min_fraction * len(edges[s])))


@dataclass(frozen=True)
class BorderCuts:
    photos: int
    cut: int  # photos whose silhouette runs off at least one side
    per_side: dict[str, int]  # side -> photos cut there
    per_photo: tuple[tuple[str, ...], ...]  # sides cut, per photo

    @property
    def share(self) -> float:
        return self.cut / self.photos if self.photos else 0.0

    def to_dict(self, names: list[str] | tuple[str, ...]) -> dict[str, object]:
        return {"photos": self.photos, "cut": self.cut, "share": self.share, "per_side": dict(self.per_side),
                "cut_photos": [{"name": n, "sides": list(s)} for n, s in zip(names, self.per_photo) if s]}


def border_cuts(masks: list[np.ndarray], min_fraction: float = 0.02) -> BorderCuts:
    """:func:`cut_sides` of every silhouette (N (H_i, W_i) bool, e.g. the final mesh rendered into each photo)."""
    per_photo = tuple(cut_sides(m, min_fraction) for m in masks)
    return BorderCuts(photos=len(masks), cut=sum(1 for s in per_photo if s),
                      per_side={s: sum(1 for p in per_photo if s in p) for s in SIDES}, per_photo=per_photo)


def side_name(direction: np.ndarray, front: np.ndarray, up: np.ndarray, vertical_deg: float = 45.0,
              min_front: float = 0.25) -> str | None:
    """Names a direction (3,) from the object as a side of it, seen from where the photos were taken: 'the top',
    'the underside', 'the back', 'the front', 'the left side', 'the right side'. ``front`` (3,) is the mean of the
    unit vectors from the object to the cameras; when its horizontal part is shorter than ``min_front`` the
    cameras surround the object, there is no front, and horizontal directions get no name (None)."""
    u = _unit(np.asarray(up, dtype=np.float64))
    d = _unit(np.asarray(direction, dtype=np.float64))
    elev = float(np.degrees(np.arcsin(np.clip(d @ u, -1, 1))))
    if elev >= vertical_deg:
        return "the top"
    if elev <= -vertical_deg:
        return "the underside"
    f = np.asarray(front, dtype=np.float64)
    f = f - (f @ u) * u
    h = d - (d @ u) * u
    if np.linalg.norm(f) < min_front:  # cameras all around (or straight above): no front to name sides from
        return None
    f, h = _unit(f), _unit(h)
    ang = float(np.degrees(np.arccos(np.clip(f @ h, -1, 1))))
    if ang <= 45:
        return "the front"
    if ang >= 135:
        return "the back"
    # a photographer at the front looks along -f; their right hand points along (-f) x up
    right = np.cross(-f, u)
    return "the right side" if h @ right > 0 else "the left side"


def unseen_direction(normals: np.ndarray, areas: np.ndarray, unseen: np.ndarray,
                     min_concentration: float = 0.3) -> np.ndarray | None:
    """The direction the unseen surface faces: the area-weighted mean of its normals (3,), or None when there is
    none or its normals point every way (their mean is shorter than ``min_concentration``: scattered pockets,
    not one side). normals: (V, 3) unit; areas: (V,); unseen: (V,) bool."""
    if normals.shape != (len(areas), 3) or unseen.shape != areas.shape:
        raise ValueError(f"normals (V, 3), areas (V,) and unseen (V,) expected, got {normals.shape}, {areas.shape}, "
                         f"{unseen.shape}")
    a = areas[unseen]
    if a.sum() <= 0:
        return None
    m = (normals[unseen] * a[:, None]).sum(0) / a.sum()
    if np.linalg.norm(m) < min_concentration:
        return None
    return _unit(m)


@dataclass(frozen=True)
class BaseGap:
    """How far above the lowest measured part of the object the mesh ends, along the support plane's normal.

    ``share``: that gap as a fraction of the object's measured height (0 when the mesh reaches down as far as the
    photos measured); heights in world units above the plane."""

    share: float
    mesh_low: float
    measured_low: float
    height: float
    points: int

    def to_dict(self) -> dict[str, float | int]:
        return {"share": self.share, "mesh_low": self.mesh_low, "measured_low": self.measured_low,
                "height": self.height, "points": self.points}


def base_gap(vertices: np.ndarray, points: np.ndarray, plane: tuple[np.ndarray, float],
             low_percentile: float = 2.0, min_points: int = 20) -> BaseGap | None:
    """Whether the mesh stops short of what the photos measured near the support plane (legs, feet, a stand lost).

    vertices: (V, 3) of the mesh; points: (P, 3) object points measured from the photos (SfM or fused stereo),
    above the plane; plane: (n (3,), d) with n·x - d the height above it, as :func:`object_region` fits it. The lowest measured height is a low
    percentile, so a few stray points do not decide it. None with fewer than ``min_points`` points above the plane."""
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
        raise ValueError(f"base_gap: vertices must be (V, 3) with V > 0, not {vertices.shape}")
    n, d = np.asarray(plane[0], dtype=np.float64), float(plane[1])
    norm = float(np.linalg.norm(n))
    if norm == 0:
        raise ValueError("base_gap: the plane normal is zero")
    n, d = n / norm, d / norm
    h_pts = np.asarray(points, dtype=np.float64).reshape(-1, 3) @ n - d
    h_pts = h_pts[h_pts > 0]
    if len(h_pts) < min_points:
        return None
    h_mesh = np.asarray(vertices, dtype=np.float64) @ n - d
    measured_low = float(np.percentile(h_pts, low_percentile))
    top = max(float(np.percentile(h_pts, 100 - low_percentile)), float(h_mesh.max()))
    height = max(top - measured_low, 1e-12)
    mesh_low = float(h_mesh.min())
    return BaseGap(share=float(np.clip((mesh_low - measured_low) / height, 0.0, 1.0)), mesh_low=mesh_low,
                   measured_low=measured_low, height=height, points=int(len(h_pts)))


@dataclass(frozen=True)
class MissedPoints:
    """Object points that held-out photos observed (SfM observations) where the mesh, rendered into those photos,
    has no pixel: a part the photos show and the mesh lacks.

    ``share``: missed observations over all observations of object points in the held-out photos; ``height``: the
    median height of the missed points as a fraction of the object's measured height (0 at its lowest measured
    point, 1 at its top), None when nothing was missed."""

    share: float
    observations: int
    missed: int
    views: int
    height: float | None

    @property
    def where(self) -> str:
        """The part the missed points lie in, in words."""
        if self.height is None:
            return "no part"
        if self.height < 1 / 3:
            return "the lower part (legs, feet, a stand near the table)"
        return "the top" if self.height > 2 / 3 else "the middle"

    def to_dict(self) -> dict[str, Any]:
        return {"share": self.share, "observations": self.observations, "missed": self.missed, "views": self.views,
                "height": self.height, "where": self.where}


def missed_points(silhouettes: list[np.ndarray], Ks_small: np.ndarray, Ks: np.ndarray, obs_view: np.ndarray,
                  obs_xy: np.ndarray, obs_height: np.ndarray, heights: np.ndarray, tol_px: int = 2,
                  min_observations: int = 30) -> MissedPoints | None:
    """Observations of object points outside the mesh's silhouettes in the photos they were observed in.

    silhouettes: N (h_i, w_i) bool, the mesh rendered with Ks_small (N, 3, 3); Ks: (N, 3, 3) the photos' own
    intrinsics, in whose pixels obs_xy (M, 2) are; obs_view: (M,) index into the N photos; obs_height: (M,) height
    of each observed point; heights: (P,) heights of all object points (the object's measured extent). A silhouette
    is grown by ``tol_px`` first, so that a point on the outline is not missed. None with fewer than
    ``min_observations`` observations."""
    import cv2

    obs_view, obs_xy = np.asarray(obs_view, dtype=np.int64), np.asarray(obs_xy, dtype=np.float64).reshape(-1, 2)
    if not (len(obs_view) == len(obs_xy) == len(obs_height)):
        raise ValueError(f"missed_points: obs_view, obs_xy and obs_height differ in length ({len(obs_view)}, "
                         f"{len(obs_xy)}, {len(obs_height)})")
    if len(silhouettes) != len(Ks_small) or len(silhouettes) != len(Ks):
        raise ValueError(f"missed_points needs one K of each kind per silhouette, got {len(silhouettes)}, "
                         f"{len(Ks_small)}, {len(Ks)}")
    if len(obs_view) < min_observations or len(heights) == 0:
        return None
    if obs_view.min() < 0 or obs_view.max() >= len(silhouettes):
        raise ValueError(f"missed_points: obs_view must index the {len(silhouettes)} silhouettes")
    kernel = np.ones((2 * tol_px + 1, 2 * tol_px + 1), np.uint8)
    missed = np.zeros(len(obs_view), dtype=bool)
    for i, sil in enumerate(silhouettes):
        sel = np.nonzero(obs_view == i)[0]
        if len(sel) == 0:
            continue
        grown = cv2.dilate(np.asarray(sil, dtype=np.uint8), kernel) > 0
        K, Kr = Ks[i], Ks_small[i]
        x = (obs_xy[sel, 0] - K[0, 2]) * Kr[0, 0] / K[0, 0] + Kr[0, 2]
        y = (obs_xy[sel, 1] - K[1, 2]) * Kr[1, 1] / K[1, 1] + Kr[1, 2]
        h, w = grown.shape
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        xi, yi = np.clip(x.astype(np.int64), 0, w - 1), np.clip(y.astype(np.int64), 0, h - 1)
        missed[sel] = inside & ~grown[yi, xi]
    lo, hi = float(np.percentile(heights, 2)), float(np.percentile(heights, 98))
    where = None
    if missed.any():
        where = float(np.clip((np.median(np.asarray(obs_height)[missed]) - lo) / max(hi - lo, 1e-12), 0.0, 1.0))
    return MissedPoints(share=float(missed.mean()), observations=int(len(obs_view)), missed=int(missed.sum()),
                        views=int(len(np.unique(obs_view))), height=where)


def within_footprint(points: np.ndarray, vertices: np.ndarray, up: np.ndarray, margin: float) -> np.ndarray:
    """Which points lie over or under the mesh: inside the convex outline of its vertices seen along ``up``
    (grown by ``margin``), and no higher than its top plus ``margin``. Object points beside the object (clutter on
    the table, the wall behind) are outside; a lost leg under the seat is inside. points: (P, 3); vertices: (V, 3);
    up: (3,). -> (P,) bool"""
    from scipy.spatial import ConvexHull, QhullError

    up = np.asarray(up, dtype=np.float64)
    if np.linalg.norm(up) == 0 or len(vertices) < 3:
        raise ValueError("within_footprint needs a non-zero up and a mesh with at least 3 vertices")
    up = up / np.linalg.norm(up)
    basis = np.linalg.svd(up[None])[2][1:]  # (2, 3): two directions across up
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    try:
        hull = ConvexHull(np.asarray(vertices, dtype=np.float64) @ basis.T)
    except QhullError:  # a mesh with no extent across up has no outline to be inside
        return np.zeros(len(points), dtype=bool)
    across = (points @ basis.T) @ hull.equations[:, :2].T + hull.equations[:, 2]
    return (across.max(axis=1) <= margin) & (points @ up <= float((np.asarray(vertices) @ up).max()) + margin)
