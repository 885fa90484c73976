"""Marching cubes through pytorch3d (the GPU path's) against skimage's (the CPU path's): same surface, same
coordinate convention (origin, voxel size, axis order), closed. Runs pytorch3d's CPU kernels here; tests/test_gpu.py
runs the CUDA ones."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree
from skimage import measure

from pipeline.context import JobError
import pipeline.geometry.meshing as meshing
from pipeline.geometry.meshing import marching_cubes, marching_cubes_on_device, marching_cubes_tensor


def ellipsoid_field(dims: tuple[int, int, int] = (41, 33, 37), voxel: float = 0.05,
                    origin: tuple[float, float, float] = (-1.0, 0.3, 2.0)) -> tuple[np.ndarray, np.ndarray, float]:
    """Signed distance-like field (world units, negative inside) of an ellipsoid with different radii along x, y, z
    off the grid's centre, on a grid that is not a cube: a swapped axis or a wrong origin moves the surface."""
    o = np.asarray(origin)
    ax = [o[i] + np.arange(dims[i]) * voxel for i in range(3)]
    X, Y, Z = np.meshgrid(*ax, indexing="ij")
    c = o + np.array([0.55, 0.5, 0.45]) * np.array(dims) * voxel
    r = np.array([0.7, 0.45, 0.55])
    q = np.sqrt(((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2)
    return ((q - 1.0) * r.min()).astype(np.float32), o, voxel


def compare_with_skimage(field: np.ndarray, origin: np.ndarray, voxel: float, device: str) -> None:
    ref = marching_cubes(field, origin, voxel)
    got = marching_cubes_tensor(torch.as_tensor(field, device=device), origin, voxel)
    assert got.is_watertight and ref.is_watertight
    assert got.euler_number == ref.euler_number
    assert got.volume > 0 and got.volume == pytest.approx(ref.volume, rel=1e-3)
    # every vertex of one lies within half a voxel of the other's
    assert cKDTree(ref.vertices).query(got.vertices)[0].max() < 0.5 * voxel
    assert cKDTree(got.vertices).query(ref.vertices)[0].max() < 0.5 * voxel
    assert np.abs(got.bounds - ref.bounds).max() < 0.5 * voxel


def compare_noisy_with_skimage(field: np.ndarray, origin: np.ndarray, voxel: float, device: str) -> None:
    """A fused field of noisy depth maps: ambiguous cubes are split differently by skimage (Lewiner) and pytorch3d
    (which is closed where skimage may leave a degenerate, open spot: measured on the noisy sphere scene), so only
    the surface's place is compared with skimage's; on ``device`` pytorch3d must give what its CPU kernels give."""
    ref = marching_cubes(field, origin, voxel)
    got = marching_cubes_tensor(torch.as_tensor(field, device=device), origin, voxel)
    cpu = marching_cubes_tensor(torch.as_tensor(field), origin, voxel)
    assert len(got.faces) == len(cpu.faces) and got.is_watertight == cpu.is_watertight
    assert cKDTree(cpu.vertices).query(got.vertices)[0].max() < 1e-4 * voxel
    # the same edge crossings: every pytorch3d vertex is one of skimage's
    assert cKDTree(ref.vertices).query(got.vertices)[0].max() < 1e-3 * voxel
    # but Lewiner adds a vertex at the centre of some ambiguous cubes, 0.707 voxel from the nearest edge crossing
    # (measured: 79 of 22325 on the noisy sphere scene)
    back = cKDTree(got.vertices).query(ref.vertices)[0]
    assert back.max() < 0.71 * voxel and (back < 1e-3 * voxel).mean() > 0.99
    assert got.volume == pytest.approx(ref.volume, rel=0.01)


def test_pytorch3d_marching_cubes_matches_skimage_on_an_ellipsoid() -> None:
    field, origin, voxel = ellipsoid_field()
    compare_with_skimage(field, origin, voxel, "cpu")
    # the surface is where the ellipsoid is: its extent along each axis, in world units
    got = marching_cubes_tensor(torch.from_numpy(field), origin, voxel)
    c = origin + np.array([0.55, 0.5, 0.45]) * np.array(field.shape) * voxel
    r = np.array([0.7, 0.45, 0.55])
    assert np.abs(got.bounds - np.stack([c - r, c + r])).max() < 0.5 * voxel


def test_pytorch3d_marching_cubes_stays_closed_where_values_touch_the_level() -> None:
    """Grid values within 1e-5 of 0 made pytorch3d snap and drop triangles (open edges); nudged, it stays closed."""
    field, origin, voxel = ellipsoid_field()
    rng = np.random.default_rng(0)
    near = np.abs(field) < 0.3 * voxel
    field = field.copy()
    field[near & (rng.uniform(size=field.shape) < 0.3)] = 1e-7  # many grid points practically on the surface
    compare_with_skimage(field, origin, voxel, "cpu")


def test_pytorch3d_marching_cubes_on_noise_is_closed_and_rejects_bad_input() -> None:
    rng = np.random.default_rng(1)
    g = rng.normal(size=(16, 18, 20)).astype(np.float32) * 0.05
    g[0] = g[-1] = g[:, 0] = g[:, -1] = g[:, :, 0] = g[:, :, -1] = 0.05
    got = marching_cubes_tensor(torch.from_numpy(g), np.zeros(3), 0.05)
    assert got.is_watertight
    with pytest.raises(JobError, match="empty"):
        marching_cubes_tensor(torch.ones(8, 8, 8), np.zeros(3), 0.1)
    with pytest.raises(ValueError, match="3-D"):
        marching_cubes_tensor(torch.ones(8, 8), np.zeros(3), 0.1)
    with pytest.raises(ValueError, match="float32"):
        marching_cubes_tensor(torch.ones(8, 8, 8, dtype=torch.float64), np.zeros(3), 0.1)


def test_a_failed_pytorch3d_result_falls_back_to_skimage(monkeypatch: pytest.MonkeyPatch) -> None:
    """An open or failed pytorch3d surface (as some releases' CUDA kernels gave) is replaced by skimage's."""
    field, origin, voxel = ellipsoid_field()
    ref = marching_cubes(field, origin, voxel)
    good = marching_cubes_on_device(torch.from_numpy(field), origin, voxel, use_pytorch3d=True)
    assert len(good.faces) == len(ref.faces) and good.is_watertight

    def open_surface(f: torch.Tensor, o: np.ndarray, v: float):  # type: ignore[no-untyped-def]
        m = marching_cubes(f.numpy(), o, v)
        m.update_faces(np.arange(len(m.faces)) > 0)
        return m

    def broken(f: torch.Tensor, o: np.ndarray, v: float):  # type: ignore[no-untyped-def]
        raise RuntimeError("face indices outside")

    for fake in (open_surface, broken):
        monkeypatch.setattr(meshing, "marching_cubes_tensor", fake)
        got = marching_cubes_on_device(torch.from_numpy(field), origin, voxel, use_pytorch3d=True)
        assert got.is_watertight and len(got.faces) == len(ref.faces)


def test_without_pytorch3d_marching_cubes_runs_in_skimage(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytorch3d is optional (the GPU benchmark machine runs without it): its absence is not an error."""
    import sys

    field, origin, voxel = ellipsoid_field()
    ref = marching_cubes(field, origin, voxel)
    monkeypatch.setitem(sys.modules, "pytorch3d.ops.marching_cubes", None)  # import now raises ImportError
    with pytest.raises(ImportError):
        marching_cubes_tensor(torch.from_numpy(field), origin, voxel)
    got = marching_cubes_on_device(torch.from_numpy(field), origin, voxel, use_pytorch3d=True)
    assert got.is_watertight and len(got.faces) == len(ref.faces)


def test_smooth_field_matches_scipy_gaussian_filter() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(3)
    f = rng.normal(size=(23, 17, 29)).astype(np.float32)
    got = meshing.smooth_field(torch.from_numpy(f), 0.8).numpy()
    ref = ndimage.gaussian_filter(f.astype(np.float64), 0.8, mode="nearest", truncate=3.0)
    # the same 5-tap kernel (radius int(3 sigma + 0.5) = 2) and edge handling; float32 sums
    assert np.abs(got - ref).max() < 1e-5
    assert meshing.smooth_field(torch.from_numpy(f), 0.0) is not None
    with pytest.raises(ValueError, match="3-D"):
        meshing.smooth_field(torch.zeros(4, 4), 1.0)


@pytest.mark.parametrize("radius,slab", [(1, 1 << 25), (2, 1 << 25), (1, 600)])
def test_close_inside_matches_scipy_grey_opening(radius: int, slab: int) -> None:
    """Against scipy's grey opening (a min then a max filter over a cube, edges replicated, which a min or max does
    not notice), in one piece and in x-slabs of two rows."""
    from scipy import ndimage

    rng = np.random.default_rng(5)
    f = rng.normal(size=(19, 13, 23)).astype(np.float32)
    got = meshing.close_inside(torch.from_numpy(f), radius, slab_voxels=slab).numpy()
    ref = ndimage.grey_opening(f, size=(2 * radius + 1,) * 3, mode="nearest")
    inner = (slice(1, -1),) * 3
    assert np.array_equal(got[inner], ref[inner])
    # the outer layer is left as it was: the fusion's outside border keeps the surface closed
    border = np.ones(f.shape, bool)
    border[inner] = False
    assert np.array_equal(got[border], f[border])
    assert (got <= f).all() and meshing.close_inside(torch.from_numpy(f), 0) is not None
    # an object that reaches the grid's outer layer stays closed there
    box = -np.ones((12, 12, 12), np.float32)
    box[0], box[-1], box[:, 0], box[:, -1], box[:, :, 0], box[:, :, -1] = 1.0, 1.0, 1.0, 1.0, 1.0, 1.0
    mesh = marching_cubes_on_device(meshing.close_inside(torch.from_numpy(box), radius), np.zeros(3), 1.0)
    assert mesh.is_watertight
    with pytest.raises(ValueError, match="3-D"):
        meshing.close_inside(torch.zeros(4, 4), 1)


def test_close_inside_fills_a_noise_tunnel_and_keeps_a_real_hole() -> None:
    """A block with two straight tunnels through it: one a voxel wide (noise) fills, one eight voxels wide (a mug's
    handle) stays; the block's outer surface does not move."""
    n = 48
    i, j, k = np.meshgrid(*(np.arange(n),) * 3, indexing="ij")
    block = (i >= 8) & (i < 40) & (j >= 8) & (j < 40) & (k >= 8) & (k < 40)
    thin = (np.abs(i - 16) < 1) & (np.abs(j - 16) < 1)  # along z, one voxel
    wide = (np.abs(i - 30) < 4) & (np.abs(j - 30) < 4)  # along z, eight voxels
    solid = block & ~thin & ~wide
    from scipy import ndimage

    f = (ndimage.distance_transform_edt(~solid) - ndimage.distance_transform_edt(solid)).astype(np.float32)
    origin, voxel = np.zeros(3), 1.0
    before = marching_cubes_on_device(torch.from_numpy(f), origin, voxel)
    closed = meshing.close_inside(torch.from_numpy(f), 1)
    after = marching_cubes_on_device(closed, origin, voxel)
    assert meshing.handle_count(before)[0] == 2
    assert meshing.handle_count(after)[0] == 1
    g = closed.numpy()
    assert (g[16, 16, 10:38] < 0).all() and (g[30, 30, 10:38] > 0).all()
    # away from the tunnels the surface is as it was: the same signs, and the same values within a voxel of it
    far = ~ndimage.binary_dilation(thin | wide, iterations=3)
    assert np.array_equal(g[far] < 0, f[far] < 0)
    near = far & (np.abs(f) <= 1.0)
    assert near.sum() > 5000 and np.array_equal(g[near], f[near])


@pytest.mark.parametrize("resolution", [192, 384])
def test_the_closing_fills_the_same_physical_tunnel_on_a_coarse_and_a_fine_grid(resolution: int) -> None:
    """dense.close_size is a fraction of the object, not voxels: a noise tunnel 1 % of the object wide (2 voxels of
    the CPU's 192, 4 of the GPU's 384) fills on both grids, and a hole about 15 voxels wide (8 % and 4 % of the
    object: a mug's handle) stays on both. A fixed one-voxel closing left the fine grid's tunnel open (the cup's 32
    handles at 384 voxels)."""
    from scipy import ndimage

    from pipeline.geometry.dense import DenseSettings, close_radius

    radius = close_radius(DenseSettings(resolution=resolution))
    assert radius == {192: 1, 384: 2}[resolution]
    assert close_radius(DenseSettings(resolution=128)) == 1 and close_radius(DenseSettings(close_size=0.0)) == 0
    n = 64  # a 64-voxel window of the grid, the object spanning the whole grid
    size = 1.0 / resolution  # one voxel, as a fraction of the object
    i, j, k = np.meshgrid(*(np.arange(n),) * 3, indexing="ij")
    block = (i >= 8) & (i < 56) & (j >= 8) & (j < 56) & (k >= 8) & (k < 56)

    def tunnel(ci: int, width: float) -> np.ndarray:
        half = width / size / 2  # voxels either side of the tunnel's axis
        return (np.abs(i - ci + 0.5) < half) & (np.abs(j - 32 + 0.5) < half)

    noise, handle = tunnel(20, 0.01), tunnel(40, 0.08 if resolution == 192 else 0.04)
    solid = block & ~noise & ~handle
    f = (ndimage.distance_transform_edt(~solid) - ndimage.distance_transform_edt(solid)).astype(np.float32)
    g = meshing.close_inside(torch.from_numpy(f), radius).numpy()
    assert (g[noise & block] < 0).all()  # filled
    assert (g[handle & block & (np.abs(i - 40 + 0.5) < 2)] > 0).all()  # still open along its axis
    # the fixed one-voxel closing leaves the fine grid's noise tunnel open
    if resolution == 384:
        assert (meshing.close_inside(torch.from_numpy(f), 1).numpy()[noise & block] > 0).any()


def noisy_frame_field(n: int = 200, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray, float]:
    """A seat on four thin legs as a signed distance (world units) on an n^3 grid over [-1, 1]^3, with independent
    noise of ``noise`` voxels at every voxel (fused depth noise, exaggerated)."""
    ax = np.linspace(-1, 1, n, dtype=np.float32)
    voxel = float(ax[1] - ax[0])
    X, Y, Z = np.meshgrid(ax, ax, ax, indexing="ij")
    f = np.full(X.shape, 10, np.float32)
    for cx, cy in [(-.6, -.6), (-.6, .6), (.6, -.6), (.6, .6)]:
        f = np.minimum(f, np.sqrt((X - cx) ** 2 + (Y - cy) ** 2) - 0.04)
    f = np.minimum(f, np.maximum.reduce([np.abs(X) - 0.7, np.abs(Y) - 0.7, np.abs(Z - 0.1) - 0.08]))
    f = np.maximum(f, np.abs(Z) - 0.9)
    f += np.random.default_rng(0).normal(0, noise * voxel, f.shape).astype(np.float32)
    return f, np.full(3, -1.0), voxel


def test_a_blurred_noisy_field_meshes_into_one_closed_surface_of_the_right_genus() -> None:
    """Depth noise leaves bubbles and tunnels in the raw level set; after the blur the surface is one closed,
    manifold piece of genus 0 (the seat and its legs), it stays so through decimation, and it stays on the shape."""
    f, origin, voxel = noisy_frame_field()
    raw = marching_cubes(f, origin, voxel)
    assert len(raw.split(only_watertight=False)) > 50  # the bubbles the blur is for
    g = meshing.smooth_field(torch.from_numpy(f), 0.8)
    mesh = marching_cubes_on_device(g, origin, voxel)
    assert len(mesh.split(only_watertight=False)) == 1 and meshing.is_closed_manifold(mesh)
    assert mesh.euler_number == 2
    small = meshing.clean_mesh(mesh, meshing.MeshingSettings(smoothing_iterations=3, max_faces=len(mesh.faces) // 5))
    assert meshing.is_closed_manifold(small) and small.euler_number == 2
    assert len(small.faces) <= len(mesh.faces) // 5 + 10
    # on the noise-free shape: within a voxel
    clean, _, _ = noisy_frame_field(noise=0.0)
    grid_pts = (small.vertices - origin) / voxel
    from scipy.ndimage import map_coordinates

    assert np.abs(map_coordinates(clean, grid_pts.T, order=1)).max() < 1.0 * voxel


def test_isotropic_remesh_is_kept_where_it_closed_a_sliver_handle() -> None:
    """A remesh that removes a handle much thinner than its edge length is kept (the refinement would otherwise
    fall back to subdivision); a plain sphere stays a sphere."""
    pymeshlab = pytest.importorskip("pymeshlab")
    if not hasattr(pymeshlab.MeshSet(), "meshing_isotropic_explicit_remeshing"):
        pytest.skip("pymeshlab's meshing plugin is not loaded")
    # a sphere with a sliver tunnel through it: a torus-like handle 0.02 wide on a body 2 across
    ax = np.linspace(-1.2, 1.2, 121, dtype=np.float32)
    X, Y, Z = np.meshgrid(ax, ax, ax, indexing="ij")
    f = np.maximum(np.sqrt(X ** 2 + Y ** 2 + Z ** 2) - 1.0, -(np.sqrt(X ** 2 + Y ** 2) - 0.03))
    holed = marching_cubes(f, np.full(3, -1.2), float(ax[1] - ax[0]))
    assert holed.euler_number == 0  # genus 1
    out = meshing.isotropic_remesh_or_reason(holed.vertices, holed.faces, 2000)
    assert not isinstance(out, str), out
    m = trimesh.Trimesh(*out)
    assert m.is_watertight and m.euler_number in (0, 2)
    ball = trimesh.creation.icosphere(subdivisions=4)
    got = meshing.isotropic_remesh_or_reason(ball.vertices, ball.faces, 3000)
    assert not isinstance(got, str) and trimesh.Trimesh(*got).euler_number == 2, got


def test_remesh_refusal_names_the_check_that_failed() -> None:
    """A remesh result is refused with a sentence naming what broke: an open or non-manifold surface (with its edge
    counts), a new handle, a new piece; a closed result of the same topology is kept (None)."""
    ball = trimesh.creation.icosphere(subdivisions=2)
    assert meshing.remesh_refusal(ball, trimesh.creation.icosphere(subdivisions=3)) is None
    holed = trimesh.Trimesh(ball.vertices, ball.faces[1:], process=False)
    reason = meshing.remesh_refusal(ball, holed)
    assert reason is not None and "not a closed manifold (3 border edges, 0 edges of three or more faces)" in reason
    torus = trimesh.creation.torus(1.0, 0.3)
    assert meshing.remesh_refusal(ball, torus) == "the result has 1 handle where its input has 0"
    assert meshing.remesh_refusal(torus, ball) is None  # a handle closed is welcome
    two = trimesh.util.concatenate([ball, ball.copy().apply_translation([5.0, 0, 0])])
    assert meshing.remesh_refusal(ball, two) == "the result has 2 pieces where its input has 1"


class _IdentityRemesh:
    """Stands in for pymeshlab: its "remesh" returns the input, so that the conversion of a result is tested alone."""

    class Mesh:
        def __init__(self, v: np.ndarray, f: np.ndarray) -> None:
            self.v, self.f = v, f

        def vertex_matrix(self) -> np.ndarray:
            return self.v

        def face_matrix(self) -> np.ndarray:
            return self.f

    class MeshSet:
        def add_mesh(self, m: "_IdentityRemesh.Mesh") -> None:
            self.m = m

        def meshing_isotropic_explicit_remeshing(self, **_: object) -> None:
            pass

        def current_mesh(self) -> "_IdentityRemesh.Mesh":
            return self.m

    @staticmethod
    def PureValue(x: float) -> float:
        return x


def test_a_remesh_result_keeps_vertices_that_nearly_touch_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """pymeshlab reprojects vertices onto its input, and where two sheets nearly touch two vertices can land a few
    nanometres apart (3.7e-9 in a CPU replay of the GPU's refused level remeshes). The result is a closed manifold
    as pymeshlab connected it; merging those vertices (trimesh's process=True) made edges of four faces and the remesh
    was refused at random."""
    a = trimesh.creation.icosphere(subdivisions=2)
    p, q = a.vertices[a.edges_unique[0]]
    n = np.cross(p, q) / np.linalg.norm(np.cross(p, q))
    # a mirror copy through the plane of one edge shares that edge's two points; 3e-9 apart, as on the device
    mirror = np.eye(3) - 2.0 * np.outer(n, n)
    b = trimesh.Trimesh(a.vertices @ mirror.T + 3e-9 * n, a.faces[:, ::-1], process=False)
    both = trimesh.util.concatenate([a, b])
    assert meshing.is_closed_manifold(both)
    merged = trimesh.Trimesh(both.vertices, both.faces, process=True)
    assert not meshing.is_closed_manifold(merged)  # what the merge made of it: the shared edge has four faces
    monkeypatch.setitem(sys.modules, "pymeshlab", _IdentityRemesh)
    out = meshing.isotropic_remesh_or_reason(both.vertices, both.faces, 500)
    assert not isinstance(out, str), out
    assert len(out[0]) == len(both.vertices) and np.array_equal(out[1], both.faces)


def test_a_refused_level_remesh_falls_back_to_subdivision_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.appearance import refine as rf

    ball = trimesh.creation.icosphere(subdivisions=2)
    monkeypatch.setattr(meshing, "isotropic_remesh_or_reason", lambda *a, **k: "the result has 1 handle where "
                        "its input has 0")
    s = rf.RefineSettings(levels=((64, 1), (128, 1)), remesh="isotropic", max_faces=100_000)
    colors = np.zeros((len(ball.vertices), 3))
    v, f, _, note = rf.grow_mesh(np.asarray(ball.vertices), np.asarray(ball.faces), colors, 1, s)
    assert note == "subdivide (no isotropic remesh for level 1: the result has 1 handle where its input has 0)"
    assert len(f) == 4 * len(ball.faces)  # midpoint subdivision instead


def _tunnelled_sphere(n: int = 96) -> trimesh.Trimesh:
    from scipy import ndimage

    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, n)
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    f = np.sqrt(X ** 2 + Y ** 2 + Z ** 2) - 0.8 + 0.2 * ndimage.gaussian_filter(rng.normal(size=(n, n, n)), 2)
    f = np.maximum(f, -(np.sqrt(X ** 2 + Y ** 2) - 0.2))  # two tunnels: genus 3 with their crossing
    f = np.maximum(f, -(np.sqrt(X ** 2 + Z ** 2) - 0.15))
    return meshing.main_components(marching_cubes(f.astype(np.float32), np.zeros(3), 2 / n))


def test_decimation_keeps_a_noisy_closed_surface_closed_with_its_handles() -> None:
    mesh = _tunnelled_sphere()
    assert meshing.is_closed_manifold(mesh)
    out = meshing.decimate(mesh, 8000)
    assert len(out.faces) <= 8000
    assert meshing.is_closed_manifold(out)
    assert meshing.handle_count(out) == meshing.handle_count(mesh)
    # the Euler characteristic against a plain count: V - E + F
    edges = {tuple(sorted(e)) for f in np.asarray(out.faces) for e in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0]))}
    assert meshing.euler_characteristic(out.faces) == len(np.unique(out.faces)) - len(edges) + len(out.faces)


def test_a_fast_decimation_that_opens_the_surface_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pymeshlab")
    mesh = _tunnelled_sphere()
    real = meshing.fast_decimate

    def opened(m: trimesh.Trimesh, faces: int) -> trimesh.Trimesh:
        out = real(m, faces)
        return trimesh.Trimesh(out.vertices, out.faces[1:], process=False)  # one face short: open

    monkeypatch.setattr(meshing, "fast_decimate", opened)
    out = meshing.decimate(mesh, 8000)
    assert len(out.faces) <= 8000 and meshing.is_closed_manifold(out)
    assert meshing.handle_count(out) == meshing.handle_count(mesh)


def test_a_pre_pass_that_cuts_the_surface_gives_way_to_a_lighter_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the fast decimation and its pre-pass to twice the budget cut a part off (a thin tube: two pieces of
    one), the pre-pass to three times the budget is tried before the topology-preserving pass gets the whole input."""
    pytest.importorskip("pymeshlab")
    mesh = _tunnelled_sphere()
    real = meshing.fast_decimate
    calls: list[int] = []

    def cut(m: trimesh.Trimesh, faces: int) -> trimesh.Trimesh:
        calls.append(faces)
        out = real(m, faces)
        if faces > 2 * 8000:
            return out
        piece = trimesh.creation.icosphere(2, radius=0.5)  # a part cut off: a second piece, a tenth of the area
        piece.apply_translation([5.0, 0.0, 0.0])
        return trimesh.util.concatenate([out, piece])

    monkeypatch.setattr(meshing, "fast_decimate", cut)
    out = meshing.decimate(mesh, 8000)
    assert calls == [8000, 16000, 24000], calls
    assert len(out.faces) <= 8000 and meshing.is_closed_manifold(out)
    holes, pieces = meshing.handle_count(out)
    assert pieces == 1 and holes <= meshing.handle_count(mesh)[0]


def test_a_pinched_topology_preserving_pass_is_repaired_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """pymeshlab's topology-preserving pass can pinch two sheets into an edge of four faces (no hole, so fill_holes
    leaves it): the result is repaired into a closed manifold instead of going on pinched."""
    pytest.importorskip("pymeshlab")
    mesh = _tunnelled_sphere()
    real_fast = meshing.fast_decimate
    real_slow = meshing.topology_preserving_decimation

    def cut(m: trimesh.Trimesh, faces: int) -> trimesh.Trimesh:  # every fast pass cuts a part off
        piece = trimesh.creation.icosphere(2, radius=0.5)
        piece.apply_translation([5.0, 0.0, 0.0])
        return trimesh.util.concatenate([real_fast(m, faces), piece])

    def pinched(m: trimesh.Trimesh, faces: int) -> tuple[np.ndarray, np.ndarray]:
        v, f = real_slow(m, faces)
        a, b = f[0, 0], f[0, 1]  # a fin of two back-to-back faces on one edge: that edge has four faces
        v = np.vstack([v, (v[a] + v[b]) / 2 + 0.05])
        c = len(v) - 1
        return v, np.vstack([f, [[a, b, c], [b, a, c]]])

    monkeypatch.setattr(meshing, "fast_decimate", cut)
    monkeypatch.setattr(meshing, "topology_preserving_decimation", pinched)
    out = meshing.decimate(mesh, 8000)
    assert len(out.faces) <= 8000 and meshing.is_closed_manifold(out)
    holes, pieces = meshing.handle_count(out)
    assert pieces == 1 and holes <= meshing.handle_count(mesh)[0]


def _noisy_ring_blob(n: int = 128) -> trimesh.Trimesh:
    """A noisy ellipsoid with a ring on top: a marching-cubes surface with a dozen noise tunnels, whose fast
    decimation folds faces where sheets nearly touch."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, n)
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    f = np.sqrt(X ** 2 + Y ** 2 + (1.3 * Z) ** 2) - 0.7 + 0.1 * ndimage.gaussian_filter(rng.normal(size=(n, n, n)), 1.0)
    f = np.minimum(f, np.sqrt((np.sqrt(X ** 2 + (Z - 0.45) ** 2) - 0.35) ** 2 + Y ** 2) - 0.08)
    mesh = meshing.main_components(marching_cubes(f.astype(np.float32), np.zeros(3), 2 / n))
    trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=0.53, iterations=10)
    return mesh


def test_folds_of_a_fast_decimation_are_repaired_closed_without_new_handles(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("pymeshlab")
    from scipy.spatial import cKDTree

    mesh = _noisy_ring_blob()
    assert meshing.is_closed_manifold(mesh)
    fast = meshing.main_components(meshing.fast_decimate(mesh, 20000))
    assert len(meshing.misfolded_vertices(fast.faces)) > 0  # the case under test: the fast result is folded
    with caplog.at_level("INFO", logger="pipeline.geometry.meshing"):
        out = meshing.decimate(mesh, 20000)
    assert "folded vertices repaired" in caplog.text  # repaired, not the slow topology-preserving pass
    assert len(out.faces) <= 20000 and meshing.is_closed_manifold(out)
    (h_in, p_in), (h_out, p_out) = meshing.handle_count(mesh), meshing.handle_count(out)
    assert p_out == p_in and h_out <= h_in
    # as close to the input as a plain decimation: within half a voxel on average, 1.5 voxels at the 99th percentile
    d = cKDTree(trimesh.sample.sample_surface(mesh, 400_000, seed=0)[0]).query(
        trimesh.sample.sample_surface(out, 50_000, seed=1)[0])[0] / (2 / 128)
    assert d.mean() < 0.5 and np.percentile(d, 99) < 1.5


def test_misfolded_vertices_edges_and_pieces_against_plain_references() -> None:
    # two tetrahedra sharing the edge (0, 1): that edge has four faces; one face of a third, apart, is flipped
    a = np.array([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])
    b = np.array([[0, 1, 4], [0, 5, 1], [0, 4, 5], [1, 5, 4]])
    c = np.array([[6, 7, 8], [6, 9, 7], [6, 8, 9], [7, 8, 9]])  # the last face runs the wrong way
    faces = np.concatenate([a, b, c])
    directed: dict[tuple[int, int], int] = {}
    undirected: dict[tuple[int, int], int] = {}
    for f in faces.tolist():
        for i in range(3):
            u, v = f[i], f[(i + 1) % 3]
            directed[(u, v)] = directed.get((u, v), 0) + 1
            undirected[(min(u, v), max(u, v))] = undirected.get((min(u, v), max(u, v)), 0) + 1
    bad = {x for (u, v), k in directed.items() if k > 1 for x in (u, v)}
    bad |= {x for (u, v), k in undirected.items() if k > 2 for x in (u, v)}
    assert meshing.misfolded_vertices(faces).tolist() == sorted(bad)
    edges, counts = meshing.unique_edges(faces)
    assert dict(zip(map(tuple, edges.tolist()), counts.tolist())) == undirected
    labels, count = meshing.piece_labels(faces, 10)
    assert count == 2 and len(set(labels[:8])) == 1 and len(set(labels[8:])) == 1 and labels[0] != labels[-1]


def test_handle_count_matches_eulers_formula_computed_plainly() -> None:
    """handle_count shares one edge pass between Euler's characteristic and the border loops, and counts used
    vertices by bincount: the same numbers as the plain formula on closed, open, multi-piece and padded meshes."""
    torus = trimesh.creation.torus(1.0, 0.3)
    sphere = trimesh.creation.icosphere(subdivisions=2)
    two = trimesh.util.concatenate([torus, sphere.copy().apply_translation([4.0, 0, 0])])
    tube = trimesh.creation.cylinder(0.5, 2.0, sections=24)
    tube = trimesh.Trimesh(tube.vertices, tube.faces[np.abs(tube.face_normals[:, 2]) < 0.5], process=False)  # open
    padded = trimesh.Trimesh(np.vstack([sphere.vertices, np.ones((5, 3))]), sphere.faces, process=False)
    for mesh, handles in ((torus, 1), (sphere, 0), (two, 1), (tube, 0), (padded, 0)):
        faces = np.asarray(mesh.faces)
        pieces = len(trimesh.graph.connected_components(mesh.face_adjacency, nodes=np.arange(len(faces))))
        edges = np.unique(np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1), axis=0)
        chi = len(np.unique(faces)) - len(edges) + len(faces)
        plain = (2 * pieces - meshing.boundary_loops(faces) - chi) // 2
        assert meshing.handle_count(mesh) == (plain, pieces) == (handles, pieces)


def test_signed_volume_and_the_inside_box() -> None:
    """The sign that orients marching cubes' output is the enclosed volume's, and the crop it meshes is the box of
    the inside voxels one voxel wider: the same surface as the whole grid's, in the same place."""
    from pipeline.geometry.meshing import inside_box, signed_volume

    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.4)
    ball.apply_translation([2.0, -1.0, 0.5])  # away from the origin: the tetrahedra's signs must cancel
    assert signed_volume(ball.vertices, ball.faces) == pytest.approx(ball.volume, rel=1e-9)
    assert signed_volume(ball.vertices, ball.faces[:, ::-1]) == pytest.approx(-ball.volume, rel=1e-9)
    field, origin, voxel = ellipsoid_field()
    lo, hi = inside_box(field < 0)
    assert lo == inside_box(torch.as_tensor(field) < 0)[0] and hi == inside_box(torch.as_tensor(field) < 0)[1]
    inside = np.argwhere(field < 0)
    assert np.array_equal(lo, np.maximum(inside.min(0) - 1, 0))
    assert np.array_equal(hi, np.minimum(inside.max(0) + 2, field.shape))
    assert (np.array(hi) - np.array(lo) < np.array(field.shape)).any()  # a real crop
    whole = measure.marching_cubes(-field, level=0.0, spacing=(voxel,) * 3)[0] + origin
    got = marching_cubes(field, origin, voxel)
    assert len(got.vertices) == len(whole) and cKDTree(whole).query(got.vertices)[0].max() < 1e-5 * voxel
    assert got.volume > 0
    with pytest.raises(JobError, match="visual hull is empty"):
        inside_box(np.zeros((4, 4, 4), bool))


def test_the_closed_manifold_check_agrees_with_trimeshs_watertight_and_winding_checks() -> None:
    s = trimesh.creation.icosphere(2)
    flipped = s.faces.copy()
    flipped[3] = flipped[3][::-1]
    doubled = np.concatenate([s.faces, s.faces[:, ::-1]])  # every edge on four faces, each wound both ways
    pinched = s.faces.copy()
    pinched[5] = [pinched[5][0], pinched[5][0], pinched[5][2]]
    cases = [s.faces, flipped, s.faces[1:], doubled, pinched, np.concatenate([s.faces, s.faces + len(s.vertices)])]
    verts = np.concatenate([s.vertices, s.vertices + 3.0])
    cases += [trimesh.creation.annulus(0.5, 1.0, 1.0), trimesh.creation.box(), _tunnelled_sphere()]
    for case in cases:
        m = case if isinstance(case, trimesh.Trimesh) else trimesh.Trimesh(verts, case, process=False)
        ref = trimesh.Trimesh(m.vertices, m.faces, process=False)
        assert meshing.is_closed_manifold(m) == bool(ref.is_watertight and ref.is_winding_consistent)
    assert [meshing.is_closed_manifold(trimesh.Trimesh(verts, c, process=False)) for c in cases[:6]] == \
        [True, False, False, False, False, True]
