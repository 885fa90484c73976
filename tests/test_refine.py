"""Refinement maths on the CPU (pytorch3d rasteriser) against simple references."""
import numpy as np
import pytest
import torch
import trimesh

from pipeline.raster import Cameras, Pytorch3dRasterizer
from pipeline.refine import RefineSettings, normalisation, normalise_cameras, parameterization_matrix, refine
from pipeline.render import look_at, render


def test_parameterization_matrix_matches_dense_reference() -> None:
    mesh = trimesh.creation.icosphere(subdivisions=1)
    v = torch.tensor(mesh.vertices, dtype=torch.float32)
    f = torch.tensor(mesh.faces, dtype=torch.int64)
    M = parameterization_matrix(v, f, 2.0).to_dense().numpy()
    A = np.zeros((len(v), len(v)))
    for a, b in mesh.edges_unique:
        A[a, b] = A[b, a] = 1
    L = np.diag(A.sum(1)) - A
    assert np.allclose(M, np.eye(len(v)) + 2.0 * L)


def test_normalised_cameras_project_identically() -> None:
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(20, 3)) * 50 + 300
    w2c = look_at(np.array([900.0, 0, 300]), np.array([300.0, 300, 300]), np.array([0, 0, 1.0]))[None]
    c, s = normalisation(pts)
    w2c_n = normalise_cameras(w2c, c, s)
    cam = pts @ w2c[0, :3, :3].T + w2c[0, :3, 3]
    cam_n = ((pts - c) * s) @ w2c_n[0, :3, :3].T + w2c_n[0, :3, 3]
    assert np.allclose(cam[:, :2] / cam[:, 2:], cam_n[:, :2] / cam_n[:, 2:])


def _views(mesh, n=8, size=64):
    K = np.array([[size * 1.4, 0, size / 2], [0, size * 1.4, size / 2], [0, 0, 1.0]])
    Ks, w2cs, masks, imgs = [], [], [], []
    for i in range(n):
        a = 2 * np.pi * i / n
        w2c = look_at(np.array([3 * np.cos(a), 3 * np.sin(a), 1.0]), np.zeros(3), np.array([0, 0, 1.0]))
        m = render(mesh, K, w2c, size, size).mask
        Ks.append(K), w2cs.append(w2c), masks.append(m)
        imgs.append(np.where(m[..., None], 200, 0).astype(np.uint8).repeat(3, -1))
    return np.array(Ks), np.array(w2cs), masks, imgs


def test_pytorch3d_soft_silhouette_aligns_with_ray_casting() -> None:
    mesh = trimesh.creation.icosphere(subdivisions=3)
    Ks, w2cs, masks, _ = _views(mesh, n=2, size=96)
    r = Pytorch3dRasterizer()
    _, alpha = r.render(torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces, dtype=torch.int32),
                        torch.full((len(mesh.vertices), 3), 0.5),
                        Cameras(K=torch.tensor(Ks, dtype=torch.float32), w2c=torch.tensor(w2cs, dtype=torch.float32), size=(96, 96)))
    for a, m in zip(alpha.numpy(), masks):
        hard = a > 0.5
        assert (hard & m).sum() / (hard | m).sum() > 0.97


@pytest.mark.slow
def test_cpu_refinement_pulls_a_too_big_sphere_onto_the_silhouettes() -> None:
    target = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    Ks, w2cs, masks, imgs = _views(target)
    start = trimesh.creation.icosphere(subdivisions=2, radius=1.15)
    res = refine(np.asarray(start.vertices), np.asarray(start.faces), imgs, masks, Ks, w2cs, Pytorch3dRasterizer(),
                 RefineSettings(levels=((64, 20),), max_faces=2000, start_faces=2000, lam=2.0, views_per_step=2),
                 "cpu")
    r_before = np.linalg.norm(start.vertices, axis=1).mean()
    r_after = np.linalg.norm(res.vertices, axis=1).mean()
    assert abs(r_after - 1.0) < 0.6 * abs(r_before - 1.0), (r_before, r_after)
    assert trimesh.Trimesh(res.vertices, res.faces).is_watertight
