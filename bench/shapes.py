"""The benchmark objects' geometry: closed solids from profiles of revolution and from unions of signed distance
functions (capsules, rounded boxes and cylinders, tori) meshed by marching cubes, painted with the solid texture."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import trimesh

from bench.solid_texture import Palette, TextureStyle, solid_texture, to_u8

EDGE_FRACTION = 1.0 / 256  # target face edge length / object size (~1.5 px when the object spans 384 px)

@dataclass(frozen=True)
class ObjectInfo:
    """What ``describe`` reports about one object mesh."""

    name: str
    size: tuple[float, float, float]  # extents x, y, z in metres
    faces: int
    vertices: int
    watertight: bool
    genus: int | None                 # None when not watertight (Euler characteristic undefined as a solid)
    components: int
    edge_mean: float                  # metres
    edge_max: float
    volume: float | None              # m^3, None when not watertight


def describe(mesh: trimesh.Trimesh, name: str = "") -> ObjectInfo:
    """Name, size, face count, watertightness, genus (summed over components) and edge lengths of a mesh."""
    watertight = bool(mesh.is_watertight)
    n_comp = len(trimesh.graph.connected_components(mesh.face_adjacency, nodes=np.arange(len(mesh.faces)),
                                                    min_len=1))
    genus = None
    if watertight:
        # chi = 2 * components - 2 * genus for closed orientable surfaces
        genus = round((2 * n_comp - mesh.euler_number) / 2)
    edges = mesh.edges_unique_length
    return ObjectInfo(name=name, size=tuple(float(x) for x in mesh.extents), faces=len(mesh.faces),
                      vertices=len(mesh.vertices), watertight=watertight, genus=genus, components=n_comp,
                      edge_mean=float(edges.mean()), edge_max=float(edges.max()),
                      volume=float(mesh.volume) if watertight else None)


def closed(mesh: trimesh.Trimesh, what: str) -> trimesh.Trimesh:
    """Check that ``mesh`` is a closed, consistently wound solid with outward normals; raise ValueError if not."""
    if not mesh.is_watertight:
        raise ValueError(f"{what}: mesh is not watertight ({len(mesh.faces)} faces)")
    if not mesh.is_winding_consistent:
        raise ValueError(f"{what}: inconsistent face winding")
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def resample(poly: np.ndarray, step: float, corner_deg: float = 20.0) -> np.ndarray:
    """Polyline (n, 2) -> polyline with segments of at most ``step``: corners (turning by more than ``corner_deg``)
    and both ends are kept, the smooth runs between them are resampled uniformly by arc length (so a densely
    sampled curve is coarsened to ``step`` as well as a long segment refined)."""
    keep = np.r_[True, np.linalg.norm(np.diff(poly, axis=0), axis=1) > 1e-9]
    poly = poly[keep]                     # repeated points (where two pieces of a profile meet)
    d = np.diff(poly, axis=0)
    heading = np.arctan2(d[:, 1], d[:, 0])
    turn = np.abs((np.diff(heading) + np.pi) % (2 * np.pi) - np.pi)
    corners = np.r_[0, np.nonzero(turn > math.radians(corner_deg))[0] + 1, len(poly) - 1]
    out = [poly[:1]]
    for i0, i1 in pairwise(corners):
        piece = poly[i0:i1 + 1]
        s = np.r_[0, np.cumsum(np.linalg.norm(np.diff(piece, axis=0), axis=1))]
        n = max(1, math.ceil(s[-1] / step))
        t = s[-1] * np.arange(1, n + 1) / n
        out.append(np.c_[np.interp(t, s, piece[:, 0]), np.interp(t, s, piece[:, 1])])
    return np.concatenate(out)


def arc(center: tuple[float, float], radius: float, a0: float, a1: float, n: int = 48) -> np.ndarray:
    """Points (n, 2) on a circular arc from angle a0 to a1 (radians), both ends included."""
    t = np.linspace(a0, a1, n)
    return np.c_[center[0] + radius * np.cos(t), center[1] + radius * np.sin(t)]


def revolve(profile: np.ndarray, edge: float, what: str, axis_gap: float = 0.0) -> trimesh.Trimesh:
    """Closed solid of revolution about +Z of a (radius, z) profile (n, 2) that starts and ends on the axis.

    The profile runs counter-clockwise around the material in the (r, z) half-plane; it is resampled so that no
    segment is longer than ``edge`` and the number of sections keeps the longest ring edge below ``edge``.
    ``axis_gap``: no ring of the resampled profile closer to the axis than this (a flat face crossing the axis of a
    wide solid has hundreds of sections, and their fans' innermost faces are too small for trimesh to keep)."""
    if abs(profile[0, 0]) > 1e-12 or abs(profile[-1, 0]) > 1e-12:
        raise ValueError(f"{what}: the profile must start and end on the axis (r = 0)")
    prof = resample(np.asarray(profile, float), edge)
    prof = prof[(prof[:, 0] == 0) | (prof[:, 0] > axis_gap)]
    sections = max(16, math.ceil(2 * math.pi * prof[:, 0].max() / edge))
    return closed(trimesh.creation.revolve(prof, sections=sections), what)


# --- signed distance functions (negative inside) of points p (n, 3)
@dataclass(frozen=True)
class Part:
    """One primitive of an SDF union: its distance function, its bounding box (lo, hi) and a colour label."""

    sdf: Callable[[np.ndarray], np.ndarray]
    lo: np.ndarray
    hi: np.ndarray
    label: int


def capsule(a: np.ndarray, b: np.ndarray, r: float, label: int) -> Part:
    """Cylinder of radius r from a to b with spherical ends (a tube segment joined by spheres at its corners)."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    ba = b - a

    def sdf(p: np.ndarray) -> np.ndarray:
        pa = p - a
        h = np.clip(pa @ ba / (ba @ ba), 0, 1)
        return np.linalg.norm(pa - h[:, None] * ba, axis=1) - r

    return Part(sdf, np.minimum(a, b) - r, np.maximum(a, b) + r, label)


def rounded_box(center: np.ndarray, axes: np.ndarray, half: np.ndarray, rounding: float, label: int) -> Part:
    """Box with rounded edges: ``axes`` (3, 3) rows are its orthonormal local axes, ``half`` its half extents."""
    center = np.asarray(center, float)
    axes = np.asarray(axes, float)
    half = np.asarray(half, float)

    def sdf(p: np.ndarray) -> np.ndarray:
        q = np.abs((p - center) @ axes.T) - (half - rounding)
        return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(1), 0) - rounding

    ext = np.abs(axes.T) @ half
    return Part(sdf, center - ext, center + ext, label)


def rounded_cylinder(center: np.ndarray, radius: float, half_height: float, rounding: float, label: int) -> Part:
    """Vertical (+Z axis) cylinder with rounded rims."""
    center = np.asarray(center, float)

    def sdf(p: np.ndarray) -> np.ndarray:
        d = p - center
        q = np.c_[np.hypot(d[:, 0], d[:, 1]) - (radius - rounding), np.abs(d[:, 2]) - (half_height - rounding)]
        return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(1), 0) - rounding

    ext = np.array([radius, radius, half_height])
    return Part(sdf, center - ext, center + ext, label)


def torus_z(center: np.ndarray, major: float, minor: float, label: int) -> Part:
    """Torus around a vertical axis through ``center``."""
    center = np.asarray(center, float)

    def sdf(p: np.ndarray) -> np.ndarray:
        d = p - center
        return np.hypot(np.hypot(d[:, 0], d[:, 1]) - major, d[:, 2]) - minor

    ext = np.array([major + minor, major + minor, minor])
    return Part(sdf, center - ext, center + ext, label)


def sdf_union_mesh(parts: list[Part], voxel: float, what: str,
                   chunk: int = 1 << 21) -> tuple[trimesh.Trimesh, np.ndarray]:
    """Marching-cubes mesh of the union of ``parts`` on a grid of ``voxel`` metres.

    Each part is evaluated only inside its own bounding box plus a band of 3 voxels (outside it the union's
    distance is clamped to that band, which does not move the zero level set), in chunks of ``chunk`` points.
    Returns (closed mesh, per-face part label (F,) int64: the label of the nearest part at the face centre)."""
    from skimage.measure import marching_cubes

    lo = np.min([p.lo for p in parts], 0) - 3 * voxel
    hi = np.max([p.hi for p in parts], 0) + 3 * voxel
    shape = np.ceil((hi - lo) / voxel).astype(int) + 1
    band = 3 * voxel
    grid = np.full(tuple(shape), band, np.float32)
    axes = [lo[k] + voxel * np.arange(shape[k]) for k in range(3)]
    for part in parts:
        i0 = np.clip(np.floor((part.lo - band - lo) / voxel).astype(int), 0, shape - 1)
        i1 = np.clip(np.ceil((part.hi + band - lo) / voxel).astype(int) + 1, 1, shape)
        nx, ny = i1[0] - i0[0], i1[1] - i0[1]
        xs, ys = np.meshgrid(axes[0][i0[0]:i1[0]], axes[1][i0[1]:i1[1]], indexing="ij")
        slab = max(1, chunk // (nx * ny))
        for z0 in range(i0[2], i1[2], slab):
            z1 = min(z0 + slab, i1[2])
            zs = axes[2][z0:z1]
            pts = np.empty((nx, ny, len(zs), 3))
            pts[..., 0] = xs[..., None]
            pts[..., 1] = ys[..., None]
            pts[..., 2] = zs
            d = part.sdf(pts.reshape(-1, 3)).reshape(nx, ny, len(zs)).astype(np.float32)
            sub = grid[i0[0]:i1[0], i0[1]:i1[1], z0:z1]
            np.minimum(sub, d, out=sub)
    # a cube that the surface crosses has all corners within sqrt(3) voxels of it (distances are exact or
    # underestimated), so the 2-voxel mask skips only empty cubes and saves marching-cubes time
    verts, faces, _, _ = marching_cubes(grid, 0.0, spacing=(voxel,) * 3, gradient_direction="ascent",
                                        mask=np.abs(grid) < 2 * voxel)
    mesh = trimesh.Trimesh(verts + lo, faces, process=True)
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    mesh = closed(mesh, what)
    centres = mesh.triangles_center
    dist = np.stack([p.sdf(centres) for p in parts], 1)
    labels = np.array([p.label for p in parts])[np.argmin(dist, 1)]
    return mesh, labels


def on_ground(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Translate so that the lowest point is on z = 0 and the bounding box is centred on x = y = 0."""
    lo, hi = mesh.bounds
    mesh.apply_translation([-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, -lo[2]])
    return mesh


def paint(mesh: trimesh.Trimesh, labels: np.ndarray, palettes: dict[int, tuple[Palette, TextureStyle]],
           seed: int) -> trimesh.Trimesh:
    """Set per-face colours from the solid texture of each face's label (one texture per label)."""
    centres = mesh.triangles_center
    size = float(mesh.extents.max())
    rgb = np.zeros((len(mesh.faces), 3))
    for label, (pal, style) in palettes.items():
        sel = labels == label
        if sel.any():
            rgb[sel] = solid_texture(centres[sel], size, pal, seed * 7919 + label, style)
    mesh.visual.face_colors = to_u8(rgb)
    return mesh


def edge_length(size: float, edge_scale: float) -> float:
    if edge_scale <= 0:
        raise ValueError(f"edge_scale must be > 0, got {edge_scale}")
    return size * EDGE_FRACTION * edge_scale
