"""Where the object is, from cameras and sparse points: centre, size, up, ground plane; similarity transforms.

All functions are pure numpy. Conventions as in :mod:`pipeline.cameras.cameras` (OpenCV world-to-camera ``w2c``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.cameras.cameras import camera_centers, camera_up
from pipeline.geometry.carve import axes_convergence


def box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The eight corners (8, 3) of the axis-aligned box lo, hi (3,)."""
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


@dataclass(frozen=True)
class Similarity:
    """X_new = scale * R @ X + t."""

    scale: float
    R: np.ndarray  # (3, 3)
    t: np.ndarray  # (3,)

    def points(self, X: np.ndarray) -> np.ndarray:
        """(N, 3) -> (N, 3)."""
        return self.scale * X @ self.R.T + self.t

    def w2c(self, w2c: np.ndarray) -> np.ndarray:
        """(N, 4, 4) world-to-camera in the old frame -> the same cameras in the new frame (metric camera
        coordinates scaled by ``scale``, so projections are unchanged)."""
        out = np.array(w2c, dtype=np.float64, copy=True)
        Rc, tc = w2c[:, :3, :3], w2c[:, :3, 3]
        out[:, :3, :3] = Rc @ self.R.T
        out[:, :3, 3] = self.scale * tc - np.einsum("nij,j->ni", Rc @ self.R.T, self.t)
        return out

    def region(self, r: "ObjectRegion") -> "ObjectRegion":
        """The same object region expressed in the new frame."""
        ground = None
        if r.ground is not None:
            n = self.R @ r.ground[0]
            ground = (n, float(self.scale * r.ground[1] + n @ self.t))
        return ObjectRegion(center=self.points(r.center[None])[0], radius=r.radius * self.scale, up=self.R @ r.up,
                            ground=ground, object_points=r.object_points)

    def matrix(self) -> np.ndarray:
        M = np.eye(4)
        M[:3, :3] = self.scale * self.R
        M[:3, 3] = self.t
        return M


def umeyama(src: np.ndarray, dst: np.ndarray) -> Similarity:
    """Least-squares similarity with dst ≈ s R src + t (Umeyama 1991). src, dst: (N, 3), N >= 3."""
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"umeyama needs two (N>=3, 3) arrays of the same shape, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1
    R = U @ S @ Vt
    var_s = (xs ** 2).sum() / len(src)
    s = float(np.trace(np.diag(D) @ S) / var_s) if var_s > 0 else 1.0
    return Similarity(s, R, mu_d - s * R @ mu_s)


def rotation_to(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation taking unit vector a to unit vector b. (3,), (3,) -> (3, 3)."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    v, c = np.cross(a, b), float(a @ b)
    if c < -1 + 1e-9:  # opposite: 180 degrees about any axis perpendicular to a
        axis = np.cross(a, [1.0, 0, 0]) if abs(a[0]) < 0.9 else np.cross(a, [0, 1.0, 0])
        axis /= np.linalg.norm(axis)
        return 2 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)


def up_from_cameras(w2c: np.ndarray) -> np.ndarray:
    """Up direction: normal of the plane the camera centres lie in (people circle an object), signed like the
    cameras' own up; the mean camera up when the centres do not span a plane. (N, 4, 4) -> (3,)."""
    centers = camera_centers(w2c)
    mean_up = camera_up(w2c).mean(0)
    if len(centers) >= 4:
        _, sv, vt = np.linalg.svd(centers - centers.mean(0))
        if sv[1] > 0.2 * sv[0]:  # the centres spread in two directions: a ring or a dome
            n = vt[2]
            return n if n @ mean_up >= 0 else -n
    return mean_up / np.linalg.norm(mean_up)


def fit_ground_plane(points: np.ndarray, up: np.ndarray, threshold: float, iterations: int = 600,
                     max_tilt_deg: float = 30.0, seed: int = 0) -> tuple[np.ndarray, float, np.ndarray] | None:
    """RANSAC plane with its normal within ``max_tilt_deg`` of ``up``: (normal signed like up, offset d with
    n·x = d on the plane, inlier mask) or None. points: (P, 3)."""
    if len(points) < 30:
        return None
    rng = np.random.default_rng(seed)
    best: tuple[int, np.ndarray, float] | None = None
    cos_max = np.cos(np.radians(max_tilt_deg))
    for _ in range(iterations):
        a, b, c = points[rng.choice(len(points), 3, replace=False)]
        n = np.cross(b - a, c - a)
        norm = np.linalg.norm(n)
        if norm < 1e-12:
            continue
        n /= norm
        if abs(n @ up) < cos_max - 1e-9:
            continue
        count = int((np.abs(points @ n - n @ a) < threshold).sum())
        if best is None or count > best[0]:
            best = (count, n, float(n @ a))
    if best is None:
        return None
    _, n, d = best
    inliers = np.abs(points @ n - d) < threshold
    # refine by least squares on the inliers
    P = points[inliers]
    c = P.mean(0)
    _, _, vt = np.linalg.svd(P - c, full_matrices=False)
    n = vt[2] if vt[2] @ up >= 0 else -vt[2]
    d = float(n @ c)
    return n, d, np.abs(points @ n - d) < threshold


@dataclass(frozen=True)
class ObjectRegion:
    """center: (3,); radius: object's bounding radius; up: (3,) unit; ground: (normal, offset) or None;
    object_points: (P,) bool, the sparse points that belong to the object."""

    center: np.ndarray
    radius: float
    up: np.ndarray
    ground: tuple[np.ndarray, float] | None
    object_points: np.ndarray


def project(points: np.ndarray, K: np.ndarray, w2c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, 3) world -> (P, 2) pixels and (P,) depth."""
    x = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = x[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (x[:, :2] / z[:, None]) @ K[:2, :2].T + K[:2, 2]
    return uv, z


def central_fraction(points: np.ndarray, K: np.ndarray, w2c: np.ndarray, width: int | np.ndarray,
                     height: int | np.ndarray, box: float = 0.35) -> np.ndarray:
    """Per point, the fraction of views that see it in front and within the central ±box of the image.
    An object photographed from all sides is central in nearly every view; clutter only in a few. width, height:
    one size for every view, or (N,) per view (portrait photos among landscape ones)."""
    hits = np.zeros(len(points))
    widths = np.broadcast_to(np.asarray(width, dtype=np.float64), (len(K),))
    heights = np.broadcast_to(np.asarray(height, dtype=np.float64), (len(K),))
    for Ki, Ti, W, H in zip(K, w2c, widths, heights):
        uv, z = project(points, Ki, Ti)
        hits += (z > 0) & (np.abs(uv[:, 0] - W / 2) < box * W) & (np.abs(uv[:, 1] - H / 2) < box * H)
    return hits / max(1, len(K))


def object_region(points: np.ndarray, K: np.ndarray, w2c: np.ndarray, width: int | np.ndarray,
                  height: int | np.ndarray) -> ObjectRegion:
    """Find the photographed object among the sparse points: points near where the optical axes converge, central
    in most views and above the ground plane (if there is one). points: (P, 3); K: (N, 3, 3); w2c: (N, 4, 4);
    width, height: the views' size, one for all or (N,) each."""
    if len(points) < 10:
        raise ValueError(f"need at least 10 sparse points to find the object, got {len(points)}")
    up = up_from_cameras(w2c)
    cam_up = camera_up(w2c).mean(0)
    cam_up /= np.linalg.norm(cam_up) + 1e-12
    if up @ cam_up < np.cos(np.radians(60)):  # cameras in a plane that is not horizontal: a wall-hung object
        up = cam_up
    c0 = axes_convergence(w2c)
    cam_dist = float(np.median(np.linalg.norm(camera_centers(w2c) - c0, axis=1)))
    near = np.linalg.norm(points - c0, axis=1) < 0.8 * cam_dist
    ground = None
    above = np.ones(len(points), dtype=bool)
    centers = camera_centers(w2c)
    # the surface the object rests on or hangs from: a table, the floor, a wall. Any orientation, as long as
    # every camera is on one side of it and so is the point the cameras look at.
    plane = fit_ground_plane(points[near], up, threshold=0.01 * cam_dist, max_tilt_deg=90.0)
    if plane is not None and plane[2].sum() >= max(30, 0.15 * near.sum()):
        n, d, _ = plane
        side = centers @ n - d
        if (side < 0).mean() > 0.5:
            n, d, side = -n, -d, -side
        if (side > 0).all() and n @ c0 - d > -0.05 * cam_dist:
            ground = (n, d)
            above = points @ n - d > 0.02 * cam_dist
            if abs(n @ up) > np.cos(np.radians(30)):  # a floor or table: its normal is the better up
                up = n
    central = central_fraction(points, K, w2c, width, height) >= 0.6
    obj = near & above & central
    if obj.sum() < 10:  # nothing central enough: fall back to what is near the convergence point
        obj = near & above
    P = points[obj]
    center = np.median(P, axis=0)
    for _ in range(3):  # trim stragglers: points far outside the bulk
        d = np.linalg.norm(P - center, axis=1)
        keep = d < 2.5 * np.percentile(d, 80)
        P = P[keep]
        center = np.median(P, axis=0)
    idx = np.nonzero(obj)[0]
    d_all = np.linalg.norm(points[idx] - center, axis=1)
    cutoff = 2.5 * np.percentile(np.linalg.norm(P - center, axis=1), 80)
    final = np.zeros(len(points), dtype=bool)
    final[idx[d_all < cutoff]] = True
    radius = float(np.percentile(np.linalg.norm(points[final] - center, axis=1), 98)) * 1.15
    return ObjectRegion(center=center, radius=radius, up=up / np.linalg.norm(up), ground=ground, object_points=final)


def region_from_cameras(w2c: np.ndarray, K: np.ndarray, sizes: list[tuple[int, int]]) -> ObjectRegion:
    """Where the object must be when only the cameras are known (posed photos SfM could not use): the point the
    optical axes converge to, and the sphere there that fills the median view. w2c (N, 4, 4); K (N, 3, 3);
    sizes N (width, height). A loose bound (no support plane): the dense method narrows it down."""
    c = axes_convergence(w2c)
    centers = camera_centers(w2c)
    radii = []
    for Ki, Ci, (w, h) in zip(K, centers, sizes):
        half = np.arctan(0.5 * min(w, h) / max(Ki[0, 0], Ki[1, 1]))
        radii.append(np.linalg.norm(Ci - c) * np.sin(half))
    return ObjectRegion(center=c, radius=float(np.median(radii)), up=up_from_cameras(w2c), ground=None,
                        object_points=np.zeros(0, dtype=bool))


def normalizing_similarity(region: ObjectRegion, target_radius: float = 0.5) -> Similarity:
    """Object centre to the origin, up to +Z, bounding radius to ``target_radius`` (inside the unit cube)."""
    R = rotation_to(region.up, np.array([0.0, 0.0, 1.0]))
    s = target_radius / region.radius
    return Similarity(s, R, -s * R @ region.center)


def pose_errors(w2c_est: np.ndarray, w2c_ref: np.ndarray) -> dict[str, float]:
    """Align estimated cameras to reference ones (similarity on the centres) and report rotation error (deg) and
    centre error (fraction of the reference cameras' spread). (N, 4, 4) each, same order."""
    sim = umeyama(camera_centers(w2c_est), camera_centers(w2c_ref))
    aligned = sim.w2c(w2c_est)
    dR = np.einsum("nij,nkj->nik", aligned[:, :3, :3], w2c_ref[:, :3, :3])
    ang = np.degrees(np.arccos(np.clip((np.trace(dR, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    c_ref = camera_centers(w2c_ref)
    spread = float(np.linalg.norm(c_ref - c_ref.mean(0), axis=1).mean())
    terr = np.linalg.norm(camera_centers(aligned) - c_ref, axis=1) / spread
    return {"rotation_deg_mean": float(ang.mean()), "rotation_deg_max": float(ang.max()),
            "center_err_mean": float(terr.mean()), "center_err_max": float(terr.max()), "scale": sim.scale}
