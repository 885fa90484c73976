"""Scene maths for unposed input: similarities, the object region, sphere outlines; against direct references."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.geometry.automask import sphere_outline
from pipeline.imaging.render import look_at
from pipeline.geometry.scene import (Similarity, normalizing_similarity, object_region, pose_errors, project, rotation_to,
                            umeyama, up_from_cameras)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def ring_cameras(n: int, radius: float, height: float, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    a = np.array([1.0, 0, 0]) if abs(up[0]) < 0.9 else np.array([0, 1.0, 0])
    e1 = np.cross(up, a)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    out = []
    for t in np.linspace(0, 2 * np.pi, n, endpoint=False):
        eye = target + radius * (np.cos(t) * e1 + np.sin(t) * e2) + height * up
        out.append(look_at(eye, target, up))
    return np.array(out)


def test_umeyama_recovers_a_similarity_and_w2c_keeps_projections() -> None:
    rng = np.random.default_rng(1)
    truth = Similarity(2.5, random_rotation(rng), rng.normal(size=3))
    X = rng.normal(size=(50, 3))
    est = umeyama(X, truth.points(X))
    assert est.scale == pytest.approx(2.5, rel=1e-9)
    np.testing.assert_allclose(est.R, truth.R, atol=1e-9)
    np.testing.assert_allclose(est.t, truth.t, atol=1e-9)
    # the same cameras expressed in the new frame see the moved points at the same pixels
    w2c = ring_cameras(6, 4.0, 1.0, np.zeros(3), np.array([0, 0, 1.0]))
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    moved = truth.w2c(w2c)
    for a, b in zip(w2c, moved):
        uv0, z0 = project(X, K, a)
        uv1, z1 = project(truth.points(X), K, b)
        np.testing.assert_allclose(uv0, uv1, atol=1e-6)
        np.testing.assert_allclose(z1, 2.5 * z0, rtol=1e-9)
    errs = pose_errors(w2c, moved)
    assert errs["rotation_deg_max"] < 1e-5 and errs["center_err_max"] < 1e-9


def test_rotation_to_and_up_from_cameras() -> None:
    for a in ([0, 0, 1.0], [0, 0, -1.0], [1.0, 2, 3]):
        R = rotation_to(np.array(a), np.array([0, 0, 1.0]))
        np.testing.assert_allclose(R @ (np.array(a) / np.linalg.norm(a)), [0, 0, 1], atol=1e-9)
        assert np.linalg.det(R) == pytest.approx(1.0)
    up = np.array([0.2, -0.3, 0.93])
    up /= np.linalg.norm(up)
    w2c = ring_cameras(12, 3.0, 1.5, np.array([1.0, 2, 3]), up)
    assert up_from_cameras(w2c) @ up > 0.999


def test_object_region_finds_the_object_above_the_ground_among_clutter() -> None:
    rng = np.random.default_rng(0)
    up = np.array([0.0, 0.0, 1.0])
    center = np.array([0.3, -0.2, 0.5])  # a ball of radius 0.5 resting on the ground z = 0
    ball = rng.normal(size=(400, 3))
    ball = center + 0.5 * ball / np.linalg.norm(ball, axis=1, keepdims=True)
    ground = np.c_[rng.uniform(-1.5, 2, 600), rng.uniform(-2, 1.5, 600), np.zeros(600)]
    ring = rng.uniform(0, 2 * np.pi, 300)  # walls of a room, far away
    walls = np.c_[6 * np.cos(ring), 6 * np.sin(ring), rng.uniform(0, 3, 300)]
    points = np.vstack([ball, ground, walls])
    w2c = ring_cameras(24, 2.5, 1.5, center, up)
    K = np.repeat(np.array([[[600.0, 0, 400], [0, 600.0, 300], [0, 0, 1]]]), len(w2c), 0)
    region = object_region(points, K, w2c, 800, 600)
    assert region.ground is not None and region.ground[0] @ up > 0.99
    assert np.linalg.norm(region.center - center) < 0.1
    assert 0.45 < region.radius < 0.8
    obj = region.object_points
    assert obj[:400].mean() > 0.9 and obj[400:].mean() < 0.05
    sim = normalizing_similarity(region)
    moved_region = sim.region(region)  # the same region in the normalised frame
    np.testing.assert_allclose(moved_region.center, 0, atol=1e-9)
    assert moved_region.radius == pytest.approx(0.5)
    ground_pts = sim.points(ground)
    np.testing.assert_allclose(ground_pts @ moved_region.ground[0], moved_region.ground[1], atol=0.02)
    moved = sim.points(ball)
    assert np.abs(moved).max() < 0.5 + 1e-6  # inside the unit cube
    np.testing.assert_allclose(sim.R @ region.up, [0, 0, 1], atol=1e-9)


def test_sphere_outline_is_the_silhouette_of_the_sphere() -> None:
    import cv2

    w2c = look_at(np.array([0.0, -3, 1]), np.zeros(3), np.array([0, 0, 1.0]))
    K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    poly = sphere_outline(np.zeros(3), 0.7, K, w2c, n=256).astype(np.float32)
    rng = np.random.default_rng(2)
    surf = rng.normal(size=(2000, 3))
    surf = 0.7 * surf / np.linalg.norm(surf, axis=1, keepdims=True)
    uv, _ = project(surf, K, w2c)
    dist = np.array([cv2.pointPolygonTest(poly, (float(u), float(v)), True) for u, v in uv])
    assert dist.min() > -0.5  # every surface point projects inside (or on) the outline
    assert dist.min() < 1.0  # and the outline is tight: some points lie on it
