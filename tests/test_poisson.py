"""The Poisson mesher of the dense path: oriented depth points, silhouette votes, the closed base."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from pipeline.geometry.dense import DenseSettings
from pipeline.geometry.mvs import DepthMap
from pipeline.geometry.meshing import boundary_loops
from pipeline.geometry.poisson import (PoissonSettings, TooFewPoints, close_openings, depth_normals, poisson_surface,
                                       silhouette_votes)

K = np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]])


def test_a_plane_facing_the_camera_gets_normals_towards_it() -> None:
    w2c = np.eye(4)
    w2c[:3, 3] = [0.1, 0.0, 0.0]  # the camera sits at x = -0.1 in the world
    dm = DepthMap(depth=np.full((48, 64), 2.0, np.float32), score=np.ones((48, 64), np.float32), K=K, w2c=w2c)
    p, n = depth_normals(dm)
    assert len(p) == 46 * 62  # the border pixels lack a neighbour on one side
    np.testing.assert_allclose(p[:, 2], 2.0, atol=1e-9)
    np.testing.assert_allclose(n, np.tile([0.0, 0.0, -1.0], (len(n), 1)), atol=1e-9)
    # the points are where the pixels' rays meet the plane: pixel (31.5 + 0.5, .) is on the axis of camera x = -0.1
    assert np.isclose(p[:, 0].min(), (1.5 - 32) / 100 * 2 - 0.1)


def test_a_slanted_plane_gets_its_own_normal() -> None:
    # z = 2 + 0.5 x: the normal is (0.5, 0, -1) normalised, facing the camera
    H, W = 48, 64
    xs = (np.arange(W) + 0.5 - K[0, 2]) / K[0, 0]
    depth = np.tile(2.0 / (1 - 0.5 * xs), (H, 1)).astype(np.float32)
    p, n = depth_normals(DepthMap(depth=depth, score=np.ones_like(depth), K=K, w2c=np.eye(4)))
    np.testing.assert_allclose(p[:, 2], 2 + 0.5 * p[:, 0], atol=1e-5)
    want = np.array([0.5, 0.0, -1.0]) / np.linalg.norm([0.5, 0.0, -1.0])
    assert np.abs(n - want).max() < 1e-3


def test_votes_count_only_the_views_that_see_a_point() -> None:
    w2c = np.eye(4)
    inside = np.zeros((48, 64), bool)
    inside[:, :32] = True  # the left half of the image
    pts = np.array([[-0.2, 0, 2.0], [0.2, 0, 2.0], [5.0, 0, 2.0]])  # left, right, outside the frame
    v = silhouette_votes(pts, [inside, inside], np.array([K, K]), np.array([w2c, w2c]))
    np.testing.assert_allclose(v, [1.0, 0.0, 1.0])


def test_normals_and_votes_match_plain_per_pixel_references() -> None:
    rng = np.random.default_rng(1)
    H, W = 12, 16
    ys, xs = np.mgrid[0:H, 0:W]
    depth = (2.0 + 0.3 * np.sin(xs / 3.0) + 0.2 * np.cos(ys / 2.0)).astype(np.float32)
    depth[rng.random((H, W)) < 0.15] = 0  # holes: their neighbours get no normal
    c, s_ = np.cos(0.3), np.sin(0.3)
    w2c = np.eye(4)
    w2c[:3, :3] = [[c, 0, s_], [0, 1, 0], [-s_, 0, c]]
    w2c[:3, 3] = [0.1, -0.2, 0.3]
    dm = DepthMap(depth=depth, score=np.ones_like(depth), K=K, w2c=w2c)
    p, n = depth_normals(dm)

    def cam(y: int, x: int) -> np.ndarray:
        d = float(depth[y, x])
        return np.array([(x + 0.5 - K[0, 2]) / K[0, 0] * d, (y + 0.5 - K[1, 2]) / K[1, 1] * d, d])

    ref_p, ref_n = [], []
    for y in range(1, H - 1):
        for x in range(1, W - 1):
            if min(depth[y, x], depth[y, x - 1], depth[y, x + 1], depth[y - 1, x], depth[y + 1, x]) <= 0:
                continue
            nn = np.cross(cam(y, x + 1) - cam(y, x - 1), cam(y + 1, x) - cam(y - 1, x))
            nn /= np.linalg.norm(nn)
            if nn @ cam(y, x) > 0:
                nn = -nn
            ref_p.append(w2c[:3, :3].T @ (cam(y, x) - w2c[:3, 3]))
            ref_n.append(w2c[:3, :3].T @ nn)
    np.testing.assert_allclose(p, np.array(ref_p), atol=1e-9)
    np.testing.assert_allclose(n, np.array(ref_n), atol=1e-9)
    # votes: per point, per view, by hand
    masks = [rng.random((48, 64)) < 0.6 for _ in range(3)]
    w2cs = np.array([np.eye(4), w2c, np.linalg.inv(w2c)])
    pts = rng.normal(size=(200, 3)) * 0.5 + [0, 0, 2.0]
    votes = silhouette_votes(pts, masks, np.array([K, K, K]), w2cs, chunk=64)
    for q, got in zip(pts, votes):
        hits = seen = 0
        for m, T in zip(masks, w2cs):
            X = T[:3, :3] @ q + T[:3, 3]
            u, v = K[0, 0] * X[0] / X[2] + K[0, 2], K[1, 1] * X[1] / X[2] + K[1, 2]
            if X[2] > 0 and 0 <= u < 64 and 0 <= v < 48:
                seen += 1
                hits += bool(m[int(v), int(u)])
        assert got == pytest.approx(hits / seen if seen else 1.0)


def _sphere_points(center: np.ndarray, radius: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.random.default_rng(0).normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return center + radius * d, d


def test_a_sphere_cut_by_the_table_is_closed_flat_on_it() -> None:
    pytest.importorskip("pymeshlab")
    center, r = np.array([0.0, 0.0, 0.15]), 0.3
    pts, nrm = _sphere_points(center, r, 60_000)
    above = pts[:, 2] > 0  # the table hides what is below it
    planes = [(np.array([0.0, 0.0, 1.0]), 0.0)]
    lo, hi = np.array([-0.4, -0.4, -0.1]), np.array([0.4, 0.4, 0.5])
    s = PoissonSettings(depth=7)
    mesh = poisson_surface(pts[above], nrm[above], planes, lo, hi, s)
    assert mesh.is_watertight
    diag = float(np.linalg.norm(hi - lo))
    assert mesh.vertices[:, 2].min() >= s.base_margin * diag * 0.5  # cut at the plane ...
    base = mesh.vertices[:, 2] < 3 * s.base_margin * diag
    assert base.sum() > 10  # ... and closed there
    side = ~base
    dist = np.abs(np.linalg.norm(mesh.vertices[side] - center, axis=1) - r)
    assert np.percentile(dist, 95) < 0.02 * r
    # the volume of the cap above the cut: pi h^2 (3 r - h) / 3 with h = r + 0.15
    h = r + center[2]
    assert abs(mesh.volume - np.pi * h * h * (3 * r - h) / 3) < 0.05 * np.pi * h * h * (3 * r - h) / 3


def test_a_large_opening_stays_open_and_the_base_is_closed() -> None:
    # an open tube standing on the table: its top rim is longer than max_hole, its foot lies on the plane
    tube = trimesh.creation.cylinder(radius=0.1, height=0.4, sections=48)
    tube.apply_translation([0, 0, 0.2])
    keep = np.abs(tube.face_normals[:, 2]) < 0.5  # drop both caps
    tube = trimesh.Trimesh(tube.vertices, tube.faces[keep])
    tube.remove_unreferenced_vertices()
    assert boundary_loops(tube.faces) == 2
    planes = [(np.array([0.0, 0.0, 1.0]), 0.0)]
    closed = close_openings(tube, planes, tol=1e-3, max_hole=0.5)
    assert boundary_loops(closed.faces) == 1  # the rim, 0.63 long
    assert closed.vertices[:, 2].min() == pytest.approx(0.0, abs=1e-9)
    both = close_openings(tube, planes, tol=1e-3, max_hole=1.0)
    assert both.is_watertight and both.is_winding_consistent
    assert both.volume == pytest.approx(np.pi * 0.01 * 0.4, rel=0.02)


def test_too_few_points_inside_the_box_are_refused_with_their_own_error() -> None:
    pytest.importorskip("pymeshlab")
    pts, nrm = _sphere_points(np.array([0.0, 0.0, 0.5]), 0.3, 5000)
    planes = [(np.array([0.0, 0.0, 1.0]), 0.0)]
    # the box holds a sliver of the sphere: under 1000 points
    with pytest.raises(TooFewPoints, match="oriented depth points"):
        poisson_surface(pts, nrm, planes, np.array([-0.4, -0.4, 0.0]), np.array([0.4, 0.4, 0.25]), PoissonSettings())


def test_the_mesher_is_checked() -> None:
    with pytest.raises(ValueError, match="mesher"):
        DenseSettings(mesher="marching")
    with pytest.raises(ValueError, match="depth"):
        PoissonSettings(depth=3)
