"""Hull-bounded stereo (tools/stereo.py): its pieces against plain references, and the outcome it exists for: a
cup's cavity, which every silhouette fills, is opened while its walls and floor stay."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from pipeline.carve import CarveSettings, carve
from pipeline.meshing import MeshingSettings, clean_mesh, marching_cubes
from pipeline.render import look_at, render
from tools.stereo import (HullSampler, StereoSettings, carve_free_space, combine_fused, hull_span, ncc_windows,
                             view_sources)

FAST = StereoSettings(hypotheses=32, refine_hypotheses=5)


def test_ncc_windows_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    ref = torch.as_tensor(rng.uniform(size=(3, 20, 24)), dtype=torch.float32)
    src = torch.as_tensor(rng.uniform(size=(2, 3, 20, 24)), dtype=torch.float32)
    src[1] = 0.5 * ref + 0.2  # an affine copy correlates perfectly
    ncc, std = ncc_windows(ref, src, 5)
    for y, x in [(2, 2), (10, 11), (17, 21)]:
        a = ref[:, y - 2:y + 3, x - 2:x + 3].reshape(3, -1)
        b = src[0, :, y - 2:y + 3, x - 2:x + 3].reshape(3, -1)
        a0, b0 = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        expect = (a0 * b0).sum() / ((a0 ** 2).sum() * (b0 ** 2).sum()).sqrt()
        assert float(ncc[0, y, x]) == pytest.approx(float(expect), abs=1e-4)
        assert float(std[y, x]) == pytest.approx(float((a0 ** 2).mean().sqrt()), abs=1e-4)
    assert float(ncc[1, 2:-2, 2:-2].min()) > 0.999


def _sphere_field(radius: float, n: int = 41) -> tuple[np.ndarray, np.ndarray, float]:
    voxel = 3.0 / (n - 1)
    origin = np.full(3, -1.5)
    g = origin + np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1) * voxel
    return (np.linalg.norm(g, axis=-1) - radius).astype(np.float32), origin, voxel


def test_hull_span_finds_a_spheres_entry_and_exit() -> None:
    field, origin, voxel = _sphere_field(1.0)
    hull = HullSampler(field, origin, voxel, torch.device("cpu"))
    center = torch.tensor([0.0, 0.0, -4.0])
    # rays with unit z from (0, 0, -4) through (s, 0, 0)
    s = torch.tensor([0.0, 0.3, 0.6, 0.9, 1.2])
    dirs = torch.stack([torch.zeros_like(s), torch.zeros_like(s), torch.ones_like(s)], 1)
    dirs[:, 0] = s / 4
    front, back = hull_span(hull, center, dirs, 2.0, 6.0, 0.5 * voxel)
    # rays from (0, 0, -4) through (s, 0, 0): hit where |c + t d| = 1
    for i, si in enumerate(s.tolist()):
        d = np.array([si / 4, 0, 1.0])
        a, b, c = d @ d, 2 * np.array([0, 0, -4.0]) @ d, 16 - 1
        disc = b * b - 4 * a * c
        if disc < 0:
            assert float(front[i]) == 0 and float(back[i]) == 0
            continue
        t0, t1 = (-b - np.sqrt(disc)) / (2 * a), (-b + np.sqrt(disc)) / (2 * a)
        assert float(front[i]) == pytest.approx(t0, abs=0.1 * voxel)
        assert float(back[i]) == pytest.approx(t1, abs=0.1 * voxel)


def test_view_sources_are_the_nearest_views_within_the_angle_band() -> None:
    eyes = [4 * np.array([np.cos(a), np.sin(a), 0.0]) for a in np.radians([0, 2, 10, 30, 50, 90])]
    w2cs = np.array([look_at(e, np.zeros(3), np.array([0, 0, 1.0])) for e in eyes])
    src = view_sources(w2cs, np.zeros(3), 3, 4.0, 60.0)
    assert list(src[0]) == [2, 3, 4]  # 2 deg is too close for a baseline, 90 too far
    with pytest.raises(ValueError):
        carve_free_space(np.zeros((4, 4)), np.zeros(3), 1.0, [], [], np.zeros((0, 3, 3)), np.zeros((0, 4, 4)), FAST)


def test_combine_fused_ignores_specks_and_keeps_the_hull_where_nothing_is_free() -> None:
    field, origin, voxel = _sphere_field(1.0)
    tsdf = np.zeros_like(field)
    count = np.full(field.shape, 5, dtype=np.int32)
    tsdf[20, 20, 20] = 10 * voxel  # a single free voxel: noise
    out, carved = combine_fused(field, tsdf, count, voxel, StereoSettings())
    assert not carved.any() and np.array_equal(out, field)
    tsdf[14:27, 14:27, 14:27] = 10 * voxel  # a 13^3 free block inside the sphere
    out, carved = combine_fused(field, tsdf, count, voxel, StereoSettings())
    assert carved[20, 20, 20] and out[20, 20, 20] > 0
    assert out[20, 20, 2] == field[20, 20, 2]  # far from the block the hull is untouched


def _textured(mesh: trimesh.Trimesh, seed: int = 1) -> np.ndarray:
    """Band-limited 3-D texture per vertex (wavelength ~0.25 units, ~8 px at the test's image size)."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(3, 6, 3))
    phase = rng.uniform(0, 2 * np.pi, size=(3, 6))
    v = np.asarray(mesh.vertices)
    cols = 0.5 + 0.6 * np.stack([np.sin(v @ (dirs[c].T * 25.0) + phase[c]).mean(1) for c in range(3)], 1)
    return np.clip(cols, 0, 1)


def _views(mesh: trimesh.Trimesh, n: int = 24, size: int = 96):
    cols = _textured(mesh)
    K = np.array([[size * 1.3, 0, size / 2], [0, size * 1.3, size / 2], [0, 0, 1.0]])
    Ks, w2cs, imgs, masks = [], [], [], []
    for i in range(n):
        az = 2 * np.pi * i / n
        el = np.radians([70, 50, 20, -30][i % 4])
        eye = 4 * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        w2c = look_at(eye, np.zeros(3), np.array([0, 0, 1.0]))
        o = render(mesh, K, w2c, size, size, colors=cols)
        Ks.append(K)
        w2cs.append(w2c)
        imgs.append((o.rgb * 255).round().astype(np.uint8))
        masks.append(o.mask)
    return np.array(Ks), np.array(w2cs), imgs, masks


def _cup() -> trimesh.Trimesh:
    """A cup (outer radius 1, inner 0.7, 1.2 tall, floor 0.4 thick), finely tessellated for per-vertex texture."""
    wall = trimesh.creation.annulus(r_min=0.7, r_max=1.0, height=1.2, sections=64)
    floor = trimesh.creation.cylinder(radius=0.99, height=0.4, sections=64)
    floor.apply_translation([0, 0, -0.4])
    return trimesh.util.concatenate([wall, floor]).subdivide_to_size(0.03)


def test_a_cups_cavity_is_opened_and_its_walls_and_floor_kept() -> None:
    cup = _cup()
    Ks, w2cs, imgs, masks = _views(cup)
    hull = carve(Ks, w2cs, masks, CarveSettings(resolution=48, outlier_views=0))
    res = carve_free_space(hull.field, hull.origin, hull.voxel, imgs, masks, Ks, w2cs, FAST)
    before = HullSampler(hull.field, hull.origin, hull.voxel, torch.device("cpu"))
    after = HullSampler(res.field, hull.origin, hull.voxel, torch.device("cpu"))
    cavity = torch.tensor([[0, 0, 0.3], [0, 0, 0.0], [0.45, 0.0, 0.3], [0, -0.45, 0.1]], dtype=torch.float32)
    solid = torch.tensor([[0.85, 0, 0.3], [0, -0.85, 0.0], [0, 0, -0.4], [0.5, 0.5, -0.45]], dtype=torch.float32)
    assert (before(cavity) < 0).all()  # the silhouettes fill the cavity
    assert (after(cavity) > 0).all(), after(cavity)
    assert (after(solid) < 0).all(), after(solid)
    assert res.carved_voxels > 0.2 * res.hull_voxels

    # the mesh is closer to the cup than the hull's (Chamfer, both directions)
    def chamfer(field: np.ndarray) -> float:
        mesh = clean_mesh(marching_cubes(field, hull.origin, hull.voxel), MeshingSettings(smoothing_iterations=5))
        p = trimesh.sample.sample_surface(mesh, 20000, seed=0)[0]
        g = trimesh.sample.sample_surface(cup, 20000, seed=1)[0]

        return float(cKDTree(g).query(p)[0].mean() + cKDTree(p).query(g)[0].mean())

    assert chamfer(res.field) < 0.5 * chamfer(hull.field)


def test_a_textured_ball_keeps_its_hull() -> None:
    """Convex: the hull is already right, so (almost) nothing may be carved."""
    ball = trimesh.creation.icosphere(subdivisions=6, radius=1.0)
    Ks, w2cs, imgs, masks = _views(ball, n=16)
    hull = carve(Ks, w2cs, masks, CarveSettings(resolution=40, outlier_views=0))
    res = carve_free_space(hull.field, hull.origin, hull.voxel, imgs, masks, Ks, w2cs, FAST)
    assert res.kept_pixels > 0.5 * sum(int(m.sum()) for m in masks)  # textured: depths were found...
    assert res.carved_voxels < 0.005 * res.hull_voxels  # ...and agree with the hull
