"""The chunked, all-views-at-once TSDF fusion and the torch field combination against frozen copies of the
implementations they replaced (tests/fusion_reference.py), on depth maps of a rendered sphere before a wall with
noisy scores, free-space evidence and views of different sizes. CPU, a few seconds."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pipeline.geometry.carve import CarveSettings, hull_field, mask_sdf
from pipeline.geometry.fusion import Grid, Tsdf, combined_field, combined_field_tensor, fuse, fuse_tensors
from pipeline.geometry.mvs import DepthMap, depth_range
from tests.fusion_reference import combined_field_reference, fuse_reference, hull_field_reference
from tests.test_dense import _textured_sphere_views


def noisy_depth_maps(seed: int = 0) -> list[DepthMap]:
    """Depth maps of a unit sphere before a wall: the sphere measured (with 0.3 % depth noise and random scores),
    the wall beyond the far depth as free space, a few holes; every other view at 3/4 size."""
    rng = np.random.default_rng(seed)
    _, Ks, w2cs, _, depth, on_sphere = _textured_sphere_views(n=6)
    out = []
    for i, (d, m, K, w) in enumerate(zip(depth, on_sphere, Ks, w2cs)):
        near, far = depth_range(w, np.zeros(3), 1.3)
        d = np.nan_to_num(d, nan=0.0).astype(np.float32)
        meas = np.where(m & (rng.uniform(size=d.shape) > 0.05), d * (1 + 0.003 * rng.normal(size=d.shape)), 0)
        score = rng.uniform(0.0, 1.0, size=d.shape).astype(np.float32)
        free = np.where((d > far) & ~m, score, 0).astype(np.float32)
        K = K.copy()
        if i % 2:
            H, W = d.shape
            w_, h_ = W * 3 // 4, H * 3 // 4
            meas = cv2.resize(meas, (w_, h_), interpolation=cv2.INTER_NEAREST)
            score = cv2.resize(score, (w_, h_), interpolation=cv2.INTER_NEAREST)
            free = cv2.resize(free, (w_, h_), interpolation=cv2.INTER_NEAREST)
            K[:2] *= 0.75
        out.append(DepthMap(meas.astype(np.float32), score, K, w, free=free, far=far))
    return out


@pytest.fixture(scope="module")
def maps() -> list[DepthMap]:
    return noisy_depth_maps()


def _compare(got: Tsdf, ref: Tsdf) -> None:
    """The fields agree: the projection's float rounding differs from the reference's (batched matrix products,
    other kernels on a GPU), so a voxel on a pixel boundary may read the neighbouring pixel; that may change a few
    voxels in 10^4, and where both read the same pixels the values agree to float precision."""
    same_w = np.isclose(got.weight, ref.weight, rtol=1e-4, atol=1e-5)
    same_b = np.isclose(got.band, ref.band, rtol=1e-4, atol=1e-5)
    same_h = np.isclose(got.hidden, ref.hidden, rtol=1e-4, atol=1e-5)
    assert min(same_w.mean(), same_b.mean(), same_h.mean()) >= 0.9999, (same_w.mean(), same_b.mean(), same_h.mean())
    both = (got.weight > 0) & (ref.weight > 0) & same_w
    assert both.sum() > 1000
    assert np.abs(got.values[both] - ref.values[both]).max() < 1e-4
    assert ((got.values > 0) == (ref.values > 0)).mean() >= 0.999


@pytest.mark.parametrize("chunk", [None, 5000, 1 << 26])
def test_fusion_matches_the_reference_implementation(maps: list[DepthMap], chunk: int | None) -> None:
    grid = Grid.over_box(np.full(3, -1.4), np.full(3, 1.4), 40)
    trunc = 3 * grid.voxel
    ref = fuse_reference(maps, grid, trunc, solid_depth=0.5)
    got = fuse(maps, grid, trunc, chunk_elements=chunk, solid_depth=0.5)
    # the scene exercises every kind of evidence: measured surface, the band behind it, free space, surfaces more
    # than trunc in front (and more than solid_depth: the sphere's far inside), nothing
    assert (ref.band > 0).mean() > 0.01 and ((ref.weight - ref.band) > 0).mean() > 0.1 and (ref.weight == 0).any()
    assert (ref.hidden > 0).mean() > 0.01 and ((ref.weight == 0) & (ref.hidden == 0)).any()
    _compare(got, ref)


def test_fusion_reference_comparison_can_fail(maps: list[DepthMap]) -> None:
    """The comparison sees a wrong field: a TSDF fused with a slightly different truncation does not pass."""
    grid = Grid.over_box(np.full(3, -1.4), np.full(3, 1.4), 40)
    ref = fuse_reference(maps, grid, 3 * grid.voxel, solid_depth=0.5)
    other = fuse(maps, grid, 3.3 * grid.voxel, solid_depth=0.5)
    with pytest.raises(AssertionError):
        _compare(other, ref)


def test_fusion_without_evidence_and_bad_inputs() -> None:
    grid = Grid.over_box(np.zeros(3), np.ones(3), 8)
    empty = DepthMap(np.zeros((10, 12), np.float32), np.zeros((10, 12), np.float32), np.eye(3), np.eye(4))
    values, weight, band, hidden = fuse_tensors([empty], grid, 0.1, solid_depth=0.5)
    assert float(hidden.abs().sum()) == 0.0
    assert values.shape == grid.dims and bool((values == 1).all()) and float(weight.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="trunc"):
        fuse([empty], grid, 0.0)
    bad = DepthMap(np.zeros((10, 12), np.float32), np.zeros((10, 11), np.float32), np.eye(3), np.eye(4))
    with pytest.raises(ValueError, match="score"):
        fuse([bad], grid, 0.1)
    bad_free = DepthMap(np.ones((10, 12), np.float32), np.ones((10, 12), np.float32), np.eye(3), np.eye(4),
                        free=np.zeros((9, 12), np.float32))
    with pytest.raises(ValueError, match="free"):
        fuse([bad_free], grid, 0.1)
    nan_cam = DepthMap(np.ones((10, 12), np.float32), np.ones((10, 12), np.float32), np.full((3, 3), np.nan), np.eye(4))
    with pytest.raises(ValueError, match="finite"):
        fuse([nan_cam], grid, 0.1)


@pytest.mark.parametrize("estimated", [True, False])
def test_combined_field_matches_the_reference_implementation(maps: list[DepthMap], estimated: bool) -> None:
    grid = Grid.over_box(np.full(3, -1.4), np.full(3, 1.4), 40)
    trunc = 3 * grid.voxel
    ts = fuse_reference(maps, grid, trunc, solid_depth=0.5)
    ax = [grid.origin[i] + np.arange(grid.dims[i]) * grid.voxel for i in range(3)]
    X, Y, Z = np.meshgrid(*ax, indexing="ij")
    # a slightly fat hull of the sphere; an estimated one misses its outer shell, where the override and the hidden
    # evidence decide
    hull = (np.sqrt(X ** 2 + Y ** 2 + Z ** 2) - (0.85 if estimated else 1.05)).astype(np.float32)
    planes = [(np.array([0.0, 0.0, 1.0]), -0.8), (np.array([0.6, 0.0, 0.8]), -1.0)]
    kw = dict(min_band=0.5, min_free=0.7, hull_slack=trunc if estimated else 0.0, planes=planes,
              support_margin=grid.voxel, override_band=1.0 if estimated else None,
              solid_hidden=0.5 if estimated else None)
    ref = combined_field_reference(ts, hull, **kw)
    got = combined_field(ts, hull, **kw)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-5
    assert ((got < 0) == (ref < 0)).mean() >= 0.999
    t = combined_field_tensor(torch.from_numpy(ts.values), torch.from_numpy(ts.weight), torch.from_numpy(ts.band),
                              torch.from_numpy(hull), grid, trunc, hidden=torch.from_numpy(ts.hidden), **kw)
    assert np.abs(t.numpy() - ref).max() < 1e-5
    if estimated:  # the hidden rule decides some voxels here, so the comparison covers it
        plain = combined_field_reference(ts, hull, **{**kw, "solid_hidden": None})
        assert ((plain >= 0) & (ref < 0)).sum() > 0
    with pytest.raises(ValueError, match="hidden"):
        combined_field(Tsdf(ts.values, ts.weight, ts.band, grid, trunc), hull, **{**kw, "solid_hidden": 0.5})
    with pytest.raises(ValueError, match="hull"):
        combined_field(ts, hull[1:], **kw)


@pytest.mark.parametrize("outliers,one_size", [(0, False), (1, False), (2, False), (1, True)])
def test_hull_field_matches_the_reference_implementation(outliers: int, one_size: bool) -> None:
    """Silhouettes of the sphere, one of them wrong (half cut away), one at another size (or all of one size);
    points over a box that reaches beyond what some views see."""
    _, Ks, w2cs, _, _, on_sphere = _textured_sphere_views(n=6)
    masks = [m.copy() for m in on_sphere]
    masks[2][:, : masks[2].shape[1] // 2] = False
    Ks = Ks.copy()
    H, W = masks[3].shape
    if not one_size:
        masks[3] = cv2.resize(masks[3].astype(np.uint8), (W // 2, H // 2), interpolation=cv2.INTER_NEAREST) > 0
        Ks[3, :2] *= 0.5
    sdfs = [torch.from_numpy(mask_sdf(m)) for m in masks]
    grid = Grid.over_box(np.full(3, -2.0), np.full(3, 2.0), 36)
    pts = grid.points(0, grid.dims[0], torch.device("cpu"))
    Kt, Wt = torch.as_tensor(Ks, dtype=torch.float32), torch.as_tensor(w2cs, dtype=torch.float32)
    cs = CarveSettings(outlier_views=outliers, chunk=20000)
    ref = hull_field_reference(pts, Kt, Wt, sdfs, cs)
    got = hull_field(pts, Kt, Wt, sdfs, cs)
    assert (ref < 0).float().mean() > 0.01 and (ref == -1e3).sum() == (got == -1e3).sum()
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one K and pose"):
        hull_field(pts, Kt[:3], Wt, sdfs, cs)


def test_mask_sdf_matches_scipy_exact_distance_transform() -> None:
    """mask_sdf through OpenCV's exact Euclidean transform gives scipy's distances (the implementation before)."""
    from scipy import ndimage

    rng = np.random.default_rng(1)
    for _ in range(12):
        H, W = rng.integers(5, 240, 2)
        m = rng.uniform(size=(H, W)) < rng.uniform(0.001, 0.5)
        m = cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=int(rng.integers(0, 6))) > 0
        ref = (ndimage.distance_transform_edt(~m) - ndimage.distance_transform_edt(m)).astype(np.float32)
        assert np.abs(mask_sdf(m) - ref).max() < 1e-4
    full = np.ones((6, 9), bool)  # a camera inside the object: scipy's convention is kept
    assert np.allclose(mask_sdf(full), -ndimage.distance_transform_edt(full))
    assert (mask_sdf(np.zeros((4, 5), bool)) > 0).all()


def test_the_support_planes_depths_vouch_for_free_space_at_any_angle() -> None:
    """A table seen at 8 degrees: its stereo depths would weigh cos^2 of the grazing angle (about 0.02 of the score)
    as free space in front of it; the same depths from the support plane's hypothesis (``DepthMap.table``) weigh the
    whole score, because they are the plane's and exact at any angle."""
    H, W, f = 60, 80, 60.0
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]])
    el = np.radians(8.0)
    # camera 2 m from the origin, 8 degrees above the plane z = 0, looking at the origin (OpenCV: y down)
    c = np.array([0.0, -2 * np.cos(el), 2 * np.sin(el)])
    fwd = -c / np.linalg.norm(c)
    right = np.array([1.0, 0.0, 0.0])
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd])
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, -R @ c
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    rays = np.stack([(xs - W / 2) / f, (ys - H / 2) / f, np.ones_like(xs)], -1) @ R  # world directions, per unit z
    t = -c[2] / rays[..., 2]  # camera z at which each ray meets z = 0
    depth = np.where(t > 0, t, 0).astype(np.float32)
    score = np.full((H, W), 0.9, np.float32)
    grid = Grid.over_box(np.array([-0.3, -0.3, 0.02]), np.array([0.3, 0.3, 0.2]), 24)
    trunc = 2 * grid.voxel
    stereo = fuse([DepthMap(depth, score, K, w2c)], grid, trunc)
    plane = fuse([DepthMap(depth, score, K, w2c, table=depth > 0)], grid, trunc)
    off = fuse([DepthMap(depth, score, K, w2c, table=depth > 0)], grid, trunc, plane_weight=False)
    assert np.array_equal(off.weight, stereo.weight) and np.array_equal(off.values, stereo.values)
    free_s, free_p = stereo.weight - stereo.band, plane.weight - plane.band
    seen = free_p > 0
    assert seen.mean() > 0.3
    assert np.allclose(free_p[seen], 0.9, atol=1e-4)
    assert float(np.median(free_s[seen])) < 0.05
