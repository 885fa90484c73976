"""Screened Poisson surface of the depth maps' oriented points: the dense path's second mesher.

Every consistent depth pixel becomes a point with the normal of its depth map there (the cross product of the
neighbouring pixels' back-projections, turned towards the camera). Points below the support plane or a wall, outside
the object's box, or outside the estimated silhouettes of most views that see them are dropped; screened Poisson
(pymeshlab) fits one smooth closed surface to the rest. Where no point supports it (the unseen underside, the
extrapolation into gaps) the surface is trimmed by Poisson's own sample density, the base is cut at the support plane
and the openings are closed again, so later stages get a closed mesh.

Against TSDF fusion with the estimated silhouettes' hull, Poisson averages many noisy depth samples along the
surface instead of meshing a blurred field, and estimated silhouettes only vote rather than cut; measured in
docs/design.md (Meshing).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from pipeline.geometry.mvs import DepthMap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoissonSettings:
    depth: int = 9  # octree depth: 2^depth cells along the points' extent
    samples_per_node: float = 1.5
    point_weight: float = 4.0  # screening: how strongly the surface is pulled through the points
    trim_quantile: float = 0.02  # faces whose vertices' sample density is below this quantile are unsupported
    silhouette_fraction: float = 0.5  # a point must lie inside the silhouettes of this fraction of its views
    base_margin: float = 0.003  # points and surface this fraction of the box diagonal above a plane are kept
    max_points: int = 3_000_000
    # trimming can separate parts (a seat from its legs where their joint is thinly sampled): pieces with at least
    # this fraction of the largest piece's faces are kept
    min_piece: float = 0.05
    # openings whose border is at most this fraction of the box diagonal long are closed (the base always): the
    # trimmed patches on a plain surface are shorter; the gaps between a stool's legs measured 1.1-1.8
    max_hole: float = 0.5

    def __post_init__(self) -> None:
        if not 5 <= self.depth <= 12:
            raise ValueError(f"PoissonSettings.depth must be in 5..12, got {self.depth}")
        if not 0 <= self.trim_quantile < 0.5 or not 0 <= self.silhouette_fraction <= 1:
            raise ValueError("PoissonSettings.trim_quantile must be in [0, 0.5) and silhouette_fraction in [0, 1]")


class PoissonUnavailable(RuntimeError):
    """pymeshlab or its Poisson filter is missing; the caller meshes another way."""


class TooFewPoints(ValueError):
    """Too few oriented points are left inside the object's box for a Poisson surface; the caller meshes another
    way."""


def depth_normals(dm: DepthMap, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """World points (M, 3) and unit normals (M, 3) of the pixels whose depth and four neighbours' depths are known;
    the normals face the camera. Central differences of the camera-frame back-projections, in torch on ``device``
    (48 maps of 960x720 took 13 s in numpy on the H200's CPU)."""
    dev = torch.device(device)
    d = torch.as_tensor(dm.depth, dtype=torch.float64, device=dev)
    H, W = d.shape
    ys, xs = torch.meshgrid(torch.arange(H, device=dev, dtype=torch.float64) + 0.5,
                            torch.arange(W, device=dev, dtype=torch.float64) + 0.5, indexing="ij")
    K = dm.K
    cam = torch.stack([(xs - K[0, 2]) / K[0, 0] * d, (ys - K[1, 2]) / K[1, 1] * d, d], -1)
    dx = torch.zeros_like(cam)
    dy = torch.zeros_like(cam)
    dx[:, 1:-1] = cam[:, 2:] - cam[:, :-2]
    dy[1:-1] = cam[2:] - cam[:-2]
    known = d > 0
    ok = known.clone()
    ok[:, 1:-1] &= known[:, 2:] & known[:, :-2]
    ok[1:-1] &= known[2:] & known[:-2]
    ok[[0, -1], :] = False
    ok[:, [0, -1]] = False
    n = torch.linalg.cross(dx[ok], dy[ok])
    norm = n.norm(dim=1)
    p = cam[ok]
    good = norm > 0
    n, p = n[good] / norm[good, None], p[good]
    n = torch.where(((n * p).sum(1) > 0)[:, None], -n, n)  # towards the camera (at the origin of its frame)
    R = torch.as_tensor(dm.w2c[:3, :3], dtype=torch.float64, device=dev)
    t = torch.as_tensor(dm.w2c[:3, 3], dtype=torch.float64, device=dev)
    return ((p - t) @ R).cpu().numpy(), (n @ R).cpu().numpy()


def silhouette_votes(points: np.ndarray, sil: list[np.ndarray], Ks: np.ndarray, w2cs: np.ndarray,
                     device: str = "cpu", chunk: int = 4_000_000) -> np.ndarray:
    """Fraction (P,) of the views that see a point (in front, inside the frame) whose silhouette contains it;
    1 for a point no view sees. sil: N (H_i, W_i) bool at the resolution of Ks (N, 3, 3); w2cs (N, 4, 4).
    In torch on ``device``, ``chunk`` points at a time."""
    dev = torch.device(device)
    masks = [torch.as_tensor(np.asarray(m, dtype=bool), device=dev) for m in sil]
    out = np.empty(len(points))
    for c0 in range(0, len(points), chunk):
        P = torch.as_tensor(points[c0:c0 + chunk], dtype=torch.float64, device=dev)
        inside = torch.zeros(len(P), dtype=torch.float64, device=dev)
        seen = torch.zeros_like(inside)
        for m, K, w2c in zip(masks, Ks, w2cs):
            X = P @ torch.as_tensor(w2c[:3, :3].T, dtype=torch.float64, device=dev) + \
                torch.as_tensor(w2c[:3, 3], dtype=torch.float64, device=dev)
            z = X[:, 2].clamp(min=1e-12)
            u = K[0, 0] * X[:, 0] / z + K[0, 2]
            v = K[1, 1] * X[:, 1] / z + K[1, 2]
            H, W = m.shape
            vis = (X[:, 2] > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
            seen += vis
            ui = u.clamp(0, W - 1).long()
            vi = v.clamp(0, H - 1).long()
            inside += (vis & m[vi, ui]).double()
        out[c0:c0 + chunk] = torch.where(seen > 0, inside / seen.clamp(min=1), torch.ones_like(seen)).cpu().numpy()
    return out


def above_planes(points: np.ndarray, planes: list[tuple[np.ndarray, float]], margin: float) -> np.ndarray:
    """(P,) bool: on the object's side of every plane (n . x - d > margin)."""
    keep = np.ones(len(points), dtype=bool)
    for n, d in planes:
        keep &= points @ n - d > margin
    return keep


def poisson_surface(points: np.ndarray, normals: np.ndarray, planes: list[tuple[np.ndarray, float]],
                    lo: np.ndarray, hi: np.ndarray, s: PoissonSettings) -> trimesh.Trimesh:
    """Closed-as-possible surface of oriented points (P, 3) and normals (P, 3) inside the box (lo, hi) above
    ``planes``. Raises PoissonUnavailable without pymeshlab's Poisson filter, TooFewPoints under 1000 points."""
    try:
        import pymeshlab
    except ImportError as e:
        raise PoissonUnavailable("pymeshlab is not installed") from e
    diag = float(np.linalg.norm(hi - lo))
    keep = np.all((points >= lo) & (points <= hi), axis=1) & above_planes(points, planes, s.base_margin * diag)
    p, n = points[keep], normals[keep]
    if len(p) > s.max_points:
        pick = np.random.default_rng(0).choice(len(p), s.max_points, replace=False)
        p, n = p[pick], n[pick]
    if len(p) < 1000:
        raise TooFewPoints(f"only {len(p)} oriented depth points inside the object's box")
    ms = pymeshlab.MeshSet()
    ms.add_mesh(pymeshlab.Mesh(vertex_matrix=p.astype(np.float64), v_normals_matrix=n.astype(np.float64)))
    try:
        ms.generate_surface_reconstruction_screened_poisson(depth=s.depth, samplespernode=s.samples_per_node,
                                                            pointweight=s.point_weight, preclean=False)
    except AttributeError as e:  # the filter plugin did not load (a missing system library)
        raise PoissonUnavailable(f"pymeshlab's screened Poisson filter is unavailable: {e}") from e
    m = ms.current_mesh()
    v, f = m.vertex_matrix(), m.face_matrix()
    density = m.vertex_scalar_array()
    keep_f = np.ones(len(f), dtype=bool)
    if s.trim_quantile > 0:
        keep_f &= (density >= np.quantile(density, s.trim_quantile))[f].all(1)
    inside = np.all((v >= lo) & (v <= hi), axis=1) & above_planes(v, planes, s.base_margin * diag)
    keep_f &= inside[f].all(1)
    mesh = significant_pieces(trimesh.Trimesh(v, f[keep_f], process=True), s.min_piece)
    return close_openings(mesh, planes, 2 * s.base_margin * diag, s.max_hole * diag)


def significant_pieces(mesh: trimesh.Trimesh, fraction: float) -> trimesh.Trimesh:
    """The connected pieces with at least ``fraction`` of the largest piece's faces, as one mesh."""
    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh
    big = max(len(p.faces) for p in parts)
    out = trimesh.util.concatenate([p for p in parts if len(p.faces) >= fraction * big])
    out.remove_unreferenced_vertices()
    return out


def simple_border_loops(faces: np.ndarray) -> list[np.ndarray]:
    """Closed loops of border edges, each (L,) vertex indices in the faces' winding order; loops through a vertex
    shared by two borders are left out (they are not simple). faces: (F, 3) int. (:func:`pipeline.geometry.meshing.
    boundary_loops` counts all loops, simple or not.)"""
    e = np.asarray(faces)[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    key = e[:, 0].astype(np.int64) * (int(e.max()) + 1) + e[:, 1]
    rev = e[:, 1].astype(np.int64) * (int(e.max()) + 1) + e[:, 0]
    border = e[~np.isin(key, rev)]
    nxt: dict[int, int] = {}
    bad: set[int] = set()
    for a, b in border.tolist():
        if a in nxt:
            bad.add(a)
        nxt[a] = b
    loops, seen = [], set()
    for a0 in nxt:
        if a0 in seen:
            continue
        loop, a = [], a0
        while a not in seen and a in nxt:
            seen.add(a)
            loop.append(a)
            a = nxt[a]
        if a == a0 and len(loop) >= 3 and not bad.intersection(loop):
            loops.append(np.array(loop))
    return loops


def close_openings(mesh: trimesh.Trimesh, planes: list[tuple[np.ndarray, float]], tol: float,
                   max_hole: float) -> trimesh.Trimesh:
    """Close the base and the small openings: a border loop lying on a plane (within ``tol``, the cut at the table)
    is closed flat by a fan from its centre, any other loop at most ``max_hole`` long too. Larger
    openings stay open: a patch across them would be a membrane where Poisson had no support (measured: it cost
    the stool 0.11 of F@1 %)."""
    v = np.asarray(mesh.vertices, dtype=np.float64)
    f = np.asarray(mesh.faces)
    new_v, new_f = [v], [f]
    count = len(v)
    for loop in simple_border_loops(f):
        pts = v[loop]
        flat = any(np.abs(pts @ n - d).max() <= tol for n, d in planes)
        if not flat and np.linalg.norm(pts - np.roll(pts, -1, 0), axis=1).sum() > max_hole:
            continue
        c = count
        count += 1
        new_v.append(pts.mean(0, keepdims=True))
        # the border runs a -> b in the faces' winding; the patch's faces run b -> a
        new_f.append(np.stack([np.roll(loop, -1), loop, np.full(len(loop), c)], 1))
    out = trimesh.Trimesh(np.concatenate(new_v), np.concatenate(new_f), process=True)
    if out.is_watertight:
        return out
    # what is left: borders through a vertex shared by two openings (not simple loops), usually a few edges
    import pymeshlab

    ms = pymeshlab.MeshSet()
    ms.add_mesh(pymeshlab.Mesh(np.asarray(out.vertices, np.float64), np.asarray(out.faces, np.int32)))
    try:
        ms.meshing_repair_non_manifold_vertices()
        ms.meshing_close_holes(maxholesize=32, selfintersection=False)
    except (AttributeError, pymeshlab.PyMeshLabException) as e:
        log.info("closing the last openings failed: %s", e)
        return out
    c = ms.current_mesh()
    return trimesh.Trimesh(c.vertex_matrix(), c.face_matrix(), process=True)
