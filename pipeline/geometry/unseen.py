"""Surfaces that no photo sees: placed by a harmonic fill from the surface around them.

Where neither stereo nor any silhouette measures a surface, the fused mesh follows the visual hull, which is the
largest shape the silhouettes allow: under a seat or a belly it hangs as a membrane towards the table, along the
cones of the few photos that graze it. A vertex that no photo sees facing it (the best cosine between its normal and
the direction to a camera that sees it unoccluded stays under a threshold), and that no silhouette holds on the mesh's
outline (a silhouette places its rim, however grazing the view), is moved to the harmonic interpolation of
the seen vertices around it (each free vertex the mean of its neighbours): the membrane then spans its rim, as the
underside of a seat does, instead of hanging. docs/design.md (Fusion) has the measurements.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import scipy.sparse as sp
import trimesh
from scipy.ndimage import binary_dilation, binary_erosion, maximum_filter
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import splu

from pipeline.cameras.cameras import camera_centers
from pipeline.geometry.scene import project
from pipeline.imaging.render import RenderOut, reduced_camera, render


@dataclass(frozen=True)
class UnseenResult:
    vertices: np.ndarray  # (V, 3) float64, the seen ones unchanged
    free: np.ndarray  # (V,) bool: the vertices the fill placed
    # share of the vertices that no photo sees facing them and no silhouette holds: all free, though a group of them
    # that touches no fixed vertex stays where it is
    unseen_share: float


def view_evidence(mesh: trimesh.Trimesh, Ks: np.ndarray, w2cs: np.ndarray, sizes: list[tuple[int, int]],
                  masks: list[np.ndarray] | None = None, max_side: int = 256,
                  tol: float = 0.004, renderer: Callable[..., RenderOut] = render) -> tuple[np.ndarray, np.ndarray]:
    """What the views say about each vertex of ``mesh``: (best (V,) float64 in [0, 1], rim (V,) int64).

    best: the largest cosine between the vertex normal and the direction to a camera that sees the vertex (in the
    image, in front, and no more than ``tol`` of the mesh's diagonal behind the farthest depth the mesh itself shows
    within a pixel of it, ray-cast at ``max_side`` px); 0 where no camera sees it. rim: how many views see the vertex
    on the mesh's outline (within a pixel) where their silhouette in ``masks`` holds it, so that the silhouette placed
    it (the rim of a dome seen only from the side), however grazing the view; all 0 without ``masks``.
    Ks (N, 3, 3) for images of ``sizes`` N (width, height); w2cs (N, 4, 4) OpenCV; masks N (height, width) bool.
    renderer: :func:`pipeline.imaging.render.render` or one of its signature (nvdiffrast's on a GPU,
    :func:`pipeline.imaging.raster.mesh_renderer`), which gives the same depths at the pixel centres."""
    if not (len(Ks) == len(w2cs) == len(sizes)) or (masks is not None and len(masks) != len(sizes)):
        raise ValueError(f"view_evidence needs one K, pose, size (and mask) per view, got {len(Ks)}, {len(w2cs)}, "
                         f"{len(sizes)}" + ("" if masks is None else f", {len(masks)}"))
    V = np.asarray(mesh.vertices, dtype=np.float64)
    N = np.asarray(mesh.vertex_normals, dtype=np.float64)
    margin = tol * float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]))
    best = np.zeros(len(V))
    rim = np.zeros(len(V), dtype=np.int64)
    near = np.ones((3, 3), dtype=bool)
    w2cs = np.asarray(w2cs, np.float64)
    centres = camera_centers(w2cs)
    for i, (K0, w2c, (w0, h0)) in enumerate(zip(np.asarray(Ks, np.float64), w2cs, sizes)):
        K, w, h = reduced_camera(K0, w0, h0, max_side)
        raw = renderer(mesh, K, w2c, w, h).depth
        # the farthest depth around each pixel: a surface seen at a grazing angle changes depth by more than the
        # tolerance within one pixel, and the vertex need not lie on the pixel's centre ray
        depth = maximum_filter(raw, size=3, mode="nearest")
        uv, z = project(V, K, w2c)
        u, v = uv[:, 0], uv[:, 1]
        inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        ui = np.clip(np.nan_to_num(u), 0, w - 1).astype(np.int64)
        vi = np.clip(np.nan_to_num(v), 0, h - 1).astype(np.int64)
        seen = inside & (z <= depth[vi, ui] + margin)
        to_cam = centres[i] - V
        cos = np.einsum("ij,ij->i", N, to_cam) / np.maximum(np.linalg.norm(to_cam, axis=1), 1e-12)
        best = np.where(seen, np.maximum(best, cos), best)
        if masks is not None:
            cover = np.isfinite(raw)
            outline = binary_dilation(cover & ~binary_erosion(cover, near, border_value=1), near)
            m = np.asarray(masks[i], dtype=np.uint8)
            # a pixel of the render that the silhouette covers at all, give or take a pixel
            sil = binary_dilation(cv2.resize(m * 255, (w, h), interpolation=cv2.INTER_AREA) > 0, near)
            rim += seen & outline[vi, ui] & sil[vi, ui]
    return np.clip(best, 0.0, 1.0), rim


def adjacency(edges: np.ndarray, n: int) -> sp.csr_matrix:
    """The (n, n) symmetric 0/1 vertex adjacency of ``edges`` (E, 2) int64; an edge listed twice is one neighbour."""
    A = sp.coo_matrix((np.ones(2 * len(edges)), (np.r_[edges[:, 0], edges[:, 1]], np.r_[edges[:, 1], edges[:, 0]])),
                      shape=(n, n)).tocsr()
    A.data[:] = 1.0
    return A


def harmonic_fill(vertices: np.ndarray, edges: np.ndarray, free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``vertices`` (V, 3) with each ``free`` (V,) bool vertex moved so that it is the mean of its neighbours along
    ``edges`` (E, 2) int (each edge once), the others fixed: the uniform-Laplacian harmonic interpolation. A group of
    connected free vertices with no fixed neighbour has nothing to span and stays where it is. -> (new vertices
    (V, 3) float64, the vertices that moved (V,) bool)."""
    vertices = np.asarray(vertices, dtype=np.float64)
    n = len(vertices)
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    free = np.asarray(free, dtype=bool)
    if free.shape != (n,):
        raise ValueError(f"harmonic_fill: free must be ({n},) bool, got {free.shape}")
    if len(edges) and (edges.min() < 0 or edges.max() >= n):
        raise ValueError("harmonic_fill: an edge names a vertex that is not there")
    if not free.any():
        return vertices.copy(), free.copy()
    A = adjacency(edges, n)
    # free groups: connected components of the free vertices' own graph; a group moves only if a fixed vertex borders it
    idx = np.flatnonzero(free)
    _, group = connected_components(A[idx][:, idx], directed=False)
    bordered = np.zeros(group.max() + 1, dtype=bool)
    touches_fixed = np.asarray(A[idx][:, ~free].sum(1)).ravel() > 0
    np.logical_or.at(bordered, group, touches_fixed)
    move = np.zeros(n, dtype=bool)
    move[idx[bordered[group]]] = True
    out = vertices.copy()
    if not move.any():
        return out, move
    L = sp.diags(np.asarray(A.sum(1)).ravel()) - A
    Lff = L[move][:, move].tocsc()
    rhs = -(L[move][:, ~move] @ vertices[~move])
    out[move] = splu(Lff).solve(rhs)
    return out, move


def freed_islands(edges: np.ndarray, free: np.ndarray, max_vertices: int) -> np.ndarray:
    """``free`` (V,) bool with every connected group of fixed vertices (along ``edges`` (E, 2) int) of fewer than
    ``max_vertices`` vertices freed too: a few vertices whose noisy normals happen to face a camera would otherwise
    pin the fill in the middle of a membrane. 0: ``free`` as it is."""
    free = np.asarray(free, dtype=bool)
    if max_vertices <= 0 or free.all() or not free.any():
        return free.copy()
    A = adjacency(np.asarray(edges, dtype=np.int64).reshape(-1, 2), len(free))
    fixed = np.flatnonzero(~free)
    _, group = connected_components(A[fixed][:, fixed], directed=False)
    out = free.copy()
    out[fixed[np.bincount(group)[group] < max_vertices]] = True
    return out


def settle_unseen(mesh: trimesh.Trimesh, Ks: np.ndarray, w2cs: np.ndarray, sizes: list[tuple[int, int]],
                  facing: float, masks: list[np.ndarray] | None = None, rim_views: int = 1,
                  max_side: int = 256, renderer: Callable[..., RenderOut] = render, up: np.ndarray | None = None,
                  rim_max_down: float = 1.0, island_vertices: int = 0) -> UnseenResult:
    """The vertices of ``mesh`` that no view sees facing them (:func:`view_evidence`'s best cosine under ``facing``)
    and that fewer than ``rim_views`` silhouettes of ``masks`` place on their outline, placed by
    :func:`harmonic_fill` from the rest.

    A silhouette's rim holds only a vertex whose normal points down by at most ``rim_max_down`` (normal . ``up``
    >= -rim_max_down; 1: every rim holds): under a body, seen by no camera from below, the hull's membrane is made of
    the lower outlines of the photos that graze it, and a rim there says only that the object reaches that ray
    somewhere. Fixed groups of fewer than ``island_vertices`` vertices are freed (:func:`freed_islands`).
    Ks (N, 3, 3) for images of ``sizes`` N (width, height); w2cs (N, 4, 4); masks N (height, width) bool;
    up (3,) unit, away from the table; renderer as :func:`view_evidence`'s."""
    if not 0 < facing < 1:
        raise ValueError(f"settle_unseen: facing must lie in (0, 1), got {facing}")
    if rim_views < 1:
        raise ValueError(f"settle_unseen: rim_views must be >= 1, got {rim_views}")
    if not 0 <= rim_max_down <= 1:
        raise ValueError(f"settle_unseen: rim_max_down must lie in [0, 1], got {rim_max_down}")
    best, rim = view_evidence(mesh, Ks, w2cs, sizes, masks, max_side, renderer=renderer)
    held = rim >= rim_views
    if up is not None and rim_max_down < 1:
        held &= np.asarray(mesh.vertex_normals) @ (np.asarray(up, dtype=np.float64) / np.linalg.norm(up)) \
            >= -rim_max_down
    unseen = freed_islands(np.asarray(mesh.edges_unique), (best < facing) & ~held, island_vertices)
    verts, moved = harmonic_fill(np.asarray(mesh.vertices), np.asarray(mesh.edges_unique), unseen)
    return UnseenResult(vertices=verts, free=moved, unseen_share=float(unseen.mean()))
