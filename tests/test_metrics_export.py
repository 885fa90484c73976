from pathlib import Path

import numpy as np
import pytest
import trimesh

from pipeline.io.export import estimate_up, export_all, rotation_to_y_up
from pipeline.report.metrics import geometry_scores, mask_iou, psnr
from pipeline.io.publish import publish, remove_stale_partials


def test_iou_and_psnr_against_reference() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True
    b[1:3] = True
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    x = np.zeros((2, 2, 3))
    y = np.full((2, 2, 3), 0.1)
    assert psnr(x, y) == pytest.approx(20.0)
    region = np.array([[True, False], [False, False]])
    y[1, 1] = 1.0
    assert psnr(x, y, region) == pytest.approx(20.0)


def test_fscore_self_and_shifted() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=4)
    same = geometry_scores(sphere, sphere, samples=50_000, tau_rel=0.01)
    assert same.fscore > 0.99 and same.chamfer_l1_rel < 0.003
    shifted = sphere.copy()
    shifted.apply_translation([0.1, 0, 0])  # 0.1 / diagonal 3.46 = 2.9% of the diagonal
    far = geometry_scores(shifted, sphere, samples=50_000, tau_rel=0.01)
    assert far.fscore < 0.5 and far.chamfer_l1 > 0.02


def test_up_estimate_snaps_and_rotation() -> None:
    ups = np.array([[0.05, 0.02, 1.0], [-0.05, 0.1, 0.98]])
    assert np.allclose(estimate_up(ups), [0, 0, 1])
    assert np.allclose(rotation_to_y_up(np.array([0, 0, 1.0])) @ [0, 0, 1.0], [0, 1, 0])


def test_exports_round_trip(tmp_path: Path) -> None:
    mesh = trimesh.creation.box(extents=(1, 2, 3))
    mesh.apply_translation([5, 0, 0])
    colors = np.tile([0.2, 0.4, 0.6], (len(mesh.vertices), 1))
    export_all(mesh, colors, np.array([0, 0, 1.0]), tmp_path)
    ply = trimesh.load(tmp_path / "mesh.ply", process=False)
    obj = trimesh.load(tmp_path / "mesh.obj", process=False)
    glb = trimesh.load(tmp_path / "mesh.glb", force="mesh", process=False)
    assert len(ply.faces) == len(obj.faces) == len(glb.faces) == 12
    assert np.allclose(ply.bounds, mesh.bounds) and np.allclose(obj.bounds, mesh.bounds, atol=1e-5)
    # GLB is +Y up: the box's 3-unit z extent became the y extent
    assert np.allclose(glb.extents, [1, 3, 2], atol=1e-5)
    assert np.allclose(ply.visual.vertex_colors[0, :3], [51, 102, 153], atol=1)
    assert "mtllib mesh.mtl" in (tmp_path / "mesh.obj").read_text()


def test_publish_is_all_or_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("1")
    out = tmp_path / "out"
    final = publish({"a.txt": src / "a.txt"}, out, "job")
    assert (final / "a.txt").read_text() == "1"
    (src / "a.txt").write_text("2")
    with pytest.raises(FileNotFoundError):
        publish({"a.txt": src / "a.txt", "b.txt": src / "missing"}, out, "job")
    assert (out / "job" / "a.txt").read_text() == "1"  # the old result is untouched
    assert [p.name for p in out.iterdir()] == ["job"]  # no partial folder left behind
    (out / ".job.publishing-dead").mkdir()
    assert remove_stale_partials(out) == [".job.publishing-dead"]
    publish({"a.txt": src / "a.txt"}, out, "job")
    assert (out / "job" / "a.txt").read_text() == "2"


def _ring_of_cameras(n: int, dist: float, size: int = 96):
    from pipeline.imaging.render import look_at

    K = np.array([[size * 1.2, 0, size / 2], [0, size * 1.2, size / 2], [0, 0, 1.0]])
    rng = np.random.default_rng(0)
    Ks, w2cs = [], []
    for _ in range(n):
        d = rng.normal(size=3)
        w2cs.append(look_at(dist * d / np.linalg.norm(d), np.zeros(3), np.array([0, 0, 1.0])))
        Ks.append(K)
    return np.array(Ks), np.array(w2cs), [(size, size)] * n


def test_visible_mask_hides_an_enclosed_surface() -> None:
    """Two concentric spheres: cameras outside see (almost) all of the outer one and none of the inner one."""
    from pipeline.report.metrics import sample_points, visible_mask

    outer = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    inner = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    both = trimesh.util.concatenate([outer, inner])
    Ks, w2cs, sizes = _ring_of_cameras(20, 4.0)
    p_out, p_in = sample_points(outer, 3000, seed=1), sample_points(inner, 3000, seed=2)
    seen = visible_mask(np.concatenate([p_out, p_in]), both, Ks, w2cs, sizes, tol=0.01)
    assert seen[:3000].mean() > 0.98
    assert seen[3000:].mean() == 0.0
    with pytest.raises(ValueError, match=r"\(P, 3\)"):
        visible_mask(np.zeros((4, 2)), both, Ks, w2cs, sizes, tol=0.01)


def test_open_scan_is_capped_and_scores_like_the_closed_object() -> None:
    """A sphere with its bottom cut away (an open scan) gets a cap, so a closed reconstruction is not charged for
    closing a hole that no silhouette shows."""
    from pipeline.report.metrics import cap_open_scan, geometry_scores_multi, observable_scores

    sphere = trimesh.creation.icosphere(subdivisions=5, radius=1.0)
    # cut the bottom off, then snap the rim onto the circle z = -0.6, r = 0.8: a planar circular hole
    open_scan = sphere.submesh([np.nonzero(sphere.triangles_center[:, 2] > -0.6)[0]], append=True)
    rim = np.unique(open_scan.edges_sorted[trimesh.grouping.group_rows(open_scan.edges_sorted, require_count=1)])
    v = open_scan.vertices.copy()
    v[rim, :2] *= 0.8 / np.linalg.norm(v[rim, :2], axis=1, keepdims=True)
    v[rim, 2] = -0.6
    open_scan = trimesh.Trimesh(v, open_scan.faces, process=False)
    assert not open_scan.is_watertight
    capped = cap_open_scan(open_scan)
    assert capped.is_watertight
    assert capped.area == pytest.approx(open_scan.area + np.pi * 0.8 ** 2, rel=0.01)
    # an object with several bodies (or open sheets) is left alone
    two = trimesh.util.concatenate([open_scan, open_scan.copy().apply_translation([5, 0, 0])])
    assert cap_open_scan(two) is two

    Ks, w2cs, sizes = _ring_of_cameras(24, 4.0)
    # a closed reconstruction of the scanned object: its flat bottom is an error only against the open scan
    closed = capped.copy()
    f_given = geometry_scores_multi(closed, open_scan, 100_000, (0.01,))[0]
    f_obs = observable_scores(closed, open_scan, Ks, w2cs, sizes, 100_000, (0.01,))[0]
    assert f_given.precision < 0.95
    assert f_obs.precision > 0.99 and f_obs.recall > 0.99
