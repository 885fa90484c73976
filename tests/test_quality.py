"""The report's quality maths and grade (pipeline.report.quality, pipeline.report.grade): against plain reference loops, and on
synthetic captures with known outcomes (a capture that never sees the back fails coverage; one that circles the
object passes)."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from pipeline.io.export import export_all, read_seen
from pipeline.report.grade import build_checks, grade_checks, what_to_know
from pipeline.cameras.cameras import camera_centers
from pipeline.report.quality import (border_cuts, camera_spread, coverage_share, cut_sides, resting_vertices,
                              side_name, unseen_direction, vertex_areas, visibility_counts)
from pipeline.imaging.render import look_at, render
from pipeline.report.html import hatch
from pipeline.settings import ConfigError, ReportConfig, build_pipeline_settings
from pipeline.stages.cameras import holdout_flags
from tests.conftest import SAMPLE

UP = np.array([0.0, 0.0, 1.0])
CFG = ReportConfig()


def ring(azimuths_deg: np.ndarray, elevation_deg: float, dist: float, target: np.ndarray) -> np.ndarray:
    """OpenCV w2c (N, 4, 4) of cameras at ``dist`` from ``target``, looking at it, +Z up."""
    out = []
    for az in np.radians(azimuths_deg):
        el = np.radians(elevation_deg)
        d = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        out.append(look_at(target + dist * d, target, UP))
    return np.array(out)


def depth_maps(mesh: trimesh.Trimesh, w2cs: np.ndarray, size: int = 64, f: float = 70.0):
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    outs = [render(mesh, K, w2c, size, size) for w2c in w2cs]
    return [o.depth for o in outs], [o.mask for o in outs], np.repeat(K[None], len(w2cs), 0)


def dumbbell() -> trimesh.Trimesh:
    """Two spheres side by side: each hides part of the other from cameras on the axis."""
    a = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    b = a.copy()
    b.apply_translation([1.2, 0, 0])
    return trimesh.util.concatenate([a, b])


def test_visibility_counts_match_a_point_by_point_reference_and_ray_casting() -> None:
    mesh = dumbbell()
    target = np.array([0.6, 0.0, 0.0])
    w2cs = np.concatenate([ring(np.arange(0, 360, 60), 15, 4.0, target), ring([0, 180], 70, 4.0, target)])
    depths, _, Ks = depth_maps(mesh, w2cs)
    V, N = np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals)
    tol, max_angle = 0.02, 75.0
    got = visibility_counts(V, N, depths, Ks, w2cs, max_angle, tol)

    # the same rule, one vertex and one camera at a time
    ref = np.zeros(len(V), dtype=int)
    for depth, K, w2c in zip(depths, Ks, w2cs):
        c = -w2c[:3, :3].T @ w2c[:3, 3]
        h, w = depth.shape
        for p in range(len(V)):
            cam = w2c[:3, :3] @ V[p] + w2c[:3, 3]
            to_cam = (c - V[p]) / np.linalg.norm(c - V[p])
            if cam[2] <= 1e-9 or N[p] @ to_cam < np.cos(np.radians(max_angle)):
                continue
            u, v = K[0, 0] * cam[0] / cam[2] + K[0, 2], K[1, 1] * cam[1] / cam[2] + K[1, 2]
            if not (0 <= u < w and 0 <= v < h):
                continue
            x0, y0 = min(max(int(np.floor(u - 0.5)), 0), w - 1), min(max(int(np.floor(v - 0.5)), 0), h - 1)
            x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
            angle = np.arccos(np.clip(N[p] @ to_cam, -1, 1))
            slant = 1.5 * cam[2] / K[0, 0] * np.tan(angle)
            if cam[2] <= min(depth[y0, x0], depth[y0, x1], depth[y1, x0], depth[y1, x1]) + tol + slant:
                ref[p] += 1
    np.testing.assert_array_equal(got, ref)

    # and it agrees with casting a ray from each vertex to each camera (the depth maps are only 64 px)
    agree = total = 0
    for k, w2c in enumerate(w2cs):
        c = -w2c[:3, :3].T @ w2c[:3, 3]
        d = c - V
        dist = np.linalg.norm(d, axis=1)
        d /= dist[:, None]
        facing = np.einsum("vk,vk->v", N, d) >= np.cos(np.radians(max_angle))
        origins = V + 1e-3 * N
        hit = mesh.ray.intersects_any(origins[facing], d[facing])
        vis_ray = np.zeros(len(V), bool)
        vis_ray[np.nonzero(facing)[0][~hit]] = True
        vis_map = visibility_counts(V, N, [depths[k]], Ks[k:k + 1], w2cs[k:k + 1], max_angle, tol) > 0
        agree += int((vis_ray == vis_map).sum())
        total += len(V)
    assert agree / total > 0.97, agree / total
    # the inner side of each sphere is hidden by the other from the axis cameras: some vertices are never seen
    assert (got == 0).any() and got.max() >= 3
    with pytest.raises(ValueError, match=r"\(V, 3\)"):
        visibility_counts(V[:, :2], N, depths, Ks, w2cs, max_angle, tol)
    with pytest.raises(ValueError, match="depth maps"):
        visibility_counts(V, N, depths[:2], Ks, w2cs, max_angle, tol)


def test_vertex_areas_coverage_share_and_the_resting_face() -> None:
    box = trimesh.creation.box(extents=[1.0, 1.0, 1.0])
    box = box.subdivide().subdivide()
    V, F = np.asarray(box.vertices), np.asarray(box.faces)
    areas = vertex_areas(V, F)
    assert areas.sum() == pytest.approx(box.area)
    counts = np.where(V[:, 2] > 0.49, 3, 0)  # only the top face seen
    top = areas[V[:, 2] > 0.49].sum() / areas.sum()
    assert coverage_share(areas, counts, 2) == pytest.approx(top)
    assert coverage_share(areas, counts, 4) == 0.0
    # cameras all above: the bottom face is what the box stands on, left out of the share
    above = np.array([[3.0, 0, 1.0], [-3.0, 0, 2.0]])
    resting = resting_vertices(V, np.asarray(box.vertex_normals), UP, above)
    assert resting.any() and (V[resting, 2] < -0.49).all()
    assert not resting_vertices(V, np.asarray(box.vertex_normals), UP, np.array([[3.0, 0, -2.0]])).any()
    counts2 = np.where(V[:, 2] < -0.49, 0, 2)
    assert coverage_share(areas, counts2, 2, exclude=resting) > coverage_share(areas, counts2, 2)


def _spread_reference(az_deg: list[float]) -> float:
    """Largest gap between azimuths: for each camera, the angle to the next one counter-clockwise."""
    best = 0.0
    for i, a in enumerate(az_deg):
        nxt = min(((b - a) % 360 or 360) for j, b in enumerate(az_deg) if j != i)
        best = max(best, nxt)
    return best


def test_camera_spread_against_a_reference_and_named_gaps() -> None:
    rng = np.random.default_rng(2)
    target = np.zeros(3)
    for _ in range(5):
        az = rng.uniform(0, 360, size=rng.integers(3, 12))
        w2cs = ring(az, rng.uniform(-40, 60), 3.0, target)
        sp = camera_spread(camera_centers(w2cs), target, UP)
        assert sp.largest_gap_deg == pytest.approx(_spread_reference(list(az)), abs=1e-6)
        i, j = sp.gap_between
        assert ((az[j] - az[i]) % 360) == pytest.approx(sp.largest_gap_deg, abs=1e-6)
    # nine photos in a 90° arc in front: the gap is the back
    front = ring(np.linspace(-45, 45, 9), 10, 3.0, target)
    centres = camera_centers(front)
    sp = camera_spread(centres, target, UP)
    assert sp.largest_gap_deg == pytest.approx(270.0)
    mean_dir = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).mean(0)
    assert side_name(np.array(sp.gap_direction), mean_dir, UP) == "the back"
    assert side_name(np.array([0, 1.0, 0]), mean_dir, UP) == "the right side"  # seen from +x (the front), +z up
    assert side_name(np.array([0, 0, 1.0]), mean_dir, UP) == "the top"
    # cameras straight overhead count as seeing every side and leave the ring
    sp = camera_spread(np.array([[0, 0, 3.0], [0.1, 0, 3.0]]), target, UP)
    assert sp.ring_cameras == 0 and sp.largest_gap_deg == 360.0


def test_cut_sides_and_border_counts() -> None:
    inside = np.zeros((40, 50), bool)
    inside[10:30, 10:40] = True
    top = np.zeros((40, 50), bool)
    top[0:20, 15:35] = True
    wide = np.zeros((40, 50), bool)
    wide[15:25, :] = True
    touch = np.zeros((40, 50), bool)
    touch[0, 20] = True  # one pixel on the border is not a cut
    assert cut_sides(inside) == () and cut_sides(touch) == ()
    assert cut_sides(top) == ("top",) and cut_sides(wide) == ("left", "right")
    bc = border_cuts([inside, top, wide, touch])
    assert (bc.photos, bc.cut, bc.share) == (4, 2, 0.5)
    assert bc.per_side == {"top": 1, "bottom": 0, "left": 1, "right": 1}
    # real renders: the cow from too close has its top cut off, from far away it fits
    cow = trimesh.load(SAMPLE / "gt.ply", force="mesh")
    centre = cow.bounds.mean(0)
    K = np.array([[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]])
    up = np.array([0, 0, 1.0])
    near = render(cow, K, look_at(centre + np.array([1.6, 0, -0.25]), centre - np.array([0, 0, 0.25]), up), 64, 64)
    far = render(cow, K, look_at(centre + np.array([6.0, 0, 0]), centre, up), 64, 64)
    assert "top" in cut_sides(near.mask) and cut_sides(far.mask) == ()


def _capture(azimuths: np.ndarray, elevations: list[float]) -> tuple[trimesh.Trimesh, np.ndarray, np.ndarray]:
    cow = trimesh.load(SAMPLE / "gt.ply", force="mesh")
    centre = cow.bounds.mean(0)
    w2cs = np.concatenate([ring(azimuths, el, 4.0, centre) for el in elevations])
    depths, masks, Ks = depth_maps(cow, w2cs, size=96, f=110.0)
    counts = visibility_counts(np.asarray(cow.vertices), np.asarray(cow.vertex_normals), depths, Ks, w2cs,
                               CFG.coverage_max_angle_deg, 0.01 * float(np.linalg.norm(cow.extents)))
    return cow, w2cs, counts


def _quality_stats(cow: trimesh.Trimesh, w2cs: np.ndarray, counts: np.ndarray) -> dict:
    V, N = np.asarray(cow.vertices), np.asarray(cow.vertex_normals)
    centres = camera_centers(w2cs)
    target = cow.bounds.mean(0)
    front = ((centres - target) / np.linalg.norm(centres - target, axis=1, keepdims=True)).mean(0)
    areas = vertex_areas(V, np.asarray(cow.faces))
    share = coverage_share(areas, counts, 2)
    direction = unseen_direction(N, areas, counts < 2)
    sp = camera_spread(centres, target, UP)
    return {"quality": {
        "coverage": {"share": share, "min_views": 2, "max_angle_deg": 75.0,
                     "mean_views": float((areas * counts).sum() / areas.sum()),
                     "never_seen_share": float(areas[counts == 0].sum() / areas.sum()),
                     "unseen_side": side_name(direction, front, UP) if direction is not None else None},
        "camera_spread": dict(sp.to_dict(), gap_side=side_name(np.array(sp.gap_direction), front, UP),
                              gap_photos=[]),
        "border": border_cuts([np.zeros((8, 8), bool)] * len(w2cs)).to_dict([])}}


def test_a_capture_that_never_sees_the_back_fails_coverage_and_one_that_circles_passes() -> None:
    cow, w2cs, counts = _capture(np.linspace(-50, 50, 9), [15])  # nine photos from the front
    stats = _quality_stats(cow, w2cs, counts)
    by = {c.name: c for c in build_checks(stats, CFG)}
    assert by["coverage"].status == "fail", by["coverage"]
    assert by["camera_spread"].status == "fail" and by["camera_spread"].value > 250
    assert stats["quality"]["coverage"]["unseen_side"] == "the back"
    text = " ".join(k["text"] for k in what_to_know(stats, grade_checks(list(by.values())), set()))
    assert "The back was never photographed" in text and "No photo looks from the back" in text

    cow, w2cs, counts = _capture(np.arange(0, 360, 30), [-25, 20, 55])  # three rings all around
    stats = _quality_stats(cow, w2cs, counts)
    by = {c.name: c for c in build_checks(stats, CFG)}
    assert by["coverage"].status == "pass", by["coverage"]
    assert by["camera_spread"].status == "pass" and by["camera_spread"].value == pytest.approx(30.0)


def _stats(**quality) -> dict:
    base = {"heldout": {"views": 2, "mask_iou_mean": 0.95, "psnr_mean": 28.0},
            "coverage": {"share": 0.95, "min_views": 2, "max_angle_deg": 75, "mean_views": 5.0},
            "camera_spread": {"largest_gap_deg": 40.0, "gap_side": None, "gap_photos": []},
            "border": {"photos": 12, "cut": 0, "share": 0.0, "per_side": {}}, "gt": None}
    base.update(quality)
    return {"quality": base, "cameras": {"views": 12, "holdout": 2},
            "texture": {"gates": [{"name": "holes", "status": "fixed", "detail": "filled"},
                                  {"name": "self-intersections", "status": "pass", "detail": "12 faces (0.12%)",
                                   "value": 0.0012}]}}


def test_grade_never_passes_on_unmeasured_checks_and_uses_the_ground_truth() -> None:
    g = grade_checks(build_checks(_stats(), CFG))
    assert g.grade == "pass" and not g.not_measured
    # the armchair: a very good result with 0.12 % self-intersections passes
    assert {c.name: c.status for c in g.checks}["self_intersections"] == "pass"
    # the statue's 0.69 % alone is no warning either
    s = _stats()
    s["texture"]["gates"][1].update(value=0.0069, status="pass")
    assert grade_checks(build_checks(s, CFG)).grade == "pass"
    s["texture"]["gates"][1].update(value=0.02)
    assert grade_checks(build_checks(s, CFG)).grade == "warn"
    # no held-out view: everything else passes, but the grade is not PASS and says why
    s = _stats(heldout={"views": 0, "mask_iou_mean": None, "psnr_mean": None})
    s["cameras"]["holdout"] = 0
    g = grade_checks(build_checks(s, CFG))
    assert g.grade == "warn" and {c.name for c in g.not_measured} == {"heldout_iou", "heldout_psnr"}
    assert "cannot be PASS" in g.summary and "no photo was held out" in g.summary
    know = what_to_know(s, g, set())
    assert know[0]["level"] == "warn" and "could not be checked against a photo" in know[0]["text"]
    # nothing measured at all is not a pass either
    assert grade_checks([]).grade == "warn"
    # a ground truth, when given, takes part
    s = _stats(gt={"fscore": 0.6, "tau_rel": 0.01, "precision": 0.6, "recall": 0.6, "file": "gt.ply"})
    g = grade_checks(build_checks(s, CFG))
    assert g.grade == "fail" and {c.name: c.status for c in g.checks}["gt_fscore"] == "fail"
    s["quality"]["gt"]["fscore"] = 0.96
    assert grade_checks(build_checks(s, CFG)).grade == "pass"


def test_what_to_know_for_a_statue_with_its_heads_cut_off() -> None:
    s = _stats(coverage={"share": 0.55, "min_views": 2, "max_angle_deg": 75, "mean_views": 1.7,
                         "never_seen_share": 0.4, "unseen_side": "the back"},
               camera_spread={"largest_gap_deg": 250.0, "gap_side": "the back", "gap_photos": ["a.jpg", "i.jpg"]},
               border={"photos": 9, "cut": 9, "share": 1.0, "per_side": {"top": 9, "bottom": 0, "left": 1,
                                                                         "right": 0}})
    s["masks"] = {"auto": 9}
    s["cameras"]["views"] = 9
    g = grade_checks(build_checks(s, CFG))
    assert g.grade == "fail"
    texts = [k["text"] for k in what_to_know(s, g, {"report.html"})]
    assert any(t.startswith("The top of the object is cut off in 9 of 9 photos") and "step back" in t for t in texts)
    assert any("The back was never photographed" in t and "55%" in t and "1.7 photos" in t for t in texts)
    assert any("No photo looks from the back (between photos a.jpg and i.jpg)" in t for t in texts)
    auto = [t for t in texts if t.startswith("Masks were computed automatically for 9 of 9 photos: check them")]
    assert auto and "masks_preview.jpg" not in auto[0]  # not published: not mentioned
    texts = [k["text"] for k in what_to_know(s, g, {"masks_preview.jpg", "masks.zip"})]
    assert any("check them in masks_preview.jpg" in t for t in texts)


def test_report_thresholds_are_validated() -> None:
    assert build_pipeline_settings({"report": {"grade_coverage_pass": "0.8"}}).report.grade_coverage_pass == 0.8
    with pytest.raises(ConfigError, match="grade_coverage_pass .* must be >= grade_coverage_warn"):
        build_pipeline_settings({"report": {"grade_coverage_pass": 0.5}})
    with pytest.raises(ConfigError, match="grade_border_cut_pass .* must be <= grade_border_cut_warn"):
        build_pipeline_settings({"report": {"grade_border_cut_pass": 0.5}})
    with pytest.raises(ConfigError, match="coverage_max_angle_deg"):
        build_pipeline_settings({"report": {"coverage_max_angle_deg": 95}})


def test_small_sets_hold_out_one_or_two_views() -> None:
    assert not holdout_flags(7, 10).any() and not holdout_flags(30, 0).any()
    for n in range(8, 20):
        flags = holdout_flags(n, 10)
        assert flags.sum() == (1 if n < 15 else 2), n
    assert list(np.nonzero(holdout_flags(36, 10))[0]) == [5, 15, 25, 35]


def test_hatch_marks_only_the_unseen_pixels_and_ply_keeps_the_counts(tmp_path) -> None:
    img = np.full((20, 30, 3), 180, np.uint8)
    img[..., 0] = 250
    where = np.zeros((20, 30), bool)
    where[:, 15:] = True
    out = hatch(img, where)
    assert (out[:, :15] == img[:, :15]).all()
    right = out[:, 15:].astype(int)
    assert right.std() > 20 and np.abs(right[..., 0] - right[..., 1]).mean() < 40  # striped and washed out
    mesh = trimesh.creation.icosphere(subdivisions=2)
    seen = np.arange(len(mesh.vertices)) % 5
    export_all(mesh, np.full((len(mesh.vertices), 3), 0.5), UP, tmp_path, seen=seen)
    np.testing.assert_array_equal(read_seen(tmp_path / "mesh.ply"), seen)
    assert read_seen(tmp_path / "mesh.ply").dtype == np.int32
    with pytest.raises(ValueError, match="seen must be"):
        export_all(mesh, np.full((len(mesh.vertices), 3), 0.5), UP, tmp_path, seen=seen[:-1])


def test_a_surface_shredded_into_handles_fails_the_topology_check() -> None:
    """The apple's mesh had genus 1058 (its top torn into tunnels) and passed every mesh check."""
    import trimesh

    from pipeline.report.evaluate import handle_count, mesh_stats

    assert handle_count(trimesh.creation.icosphere()) == (0, 1)
    assert handle_count(trimesh.creation.torus(1.0, 0.3)) == (1, 1)
    two = trimesh.util.concatenate([trimesh.creation.torus(1.0, 0.3),
                                    trimesh.creation.torus(1.0, 0.3).apply_translation([5, 0, 0])])
    assert mesh_stats(two)["handles"] == 2 and mesh_stats(two)["components"] == 2
    for handles, status, grade in ((1, "pass", "pass"), (8, "warn", "warn"), (1058, "fail", "fail")):
        s = _stats()
        s["mesh"] = {"handles": handles, "components": 1}
        g = grade_checks(build_checks(s, CFG))
        assert {c.name: c.status for c in g.checks}["topology"] == status and g.grade == grade
        texts = [k["text"] for k in what_to_know(s, g, set())]
        named = [t for t in texts if f"{handles} handles" in t]
        assert bool(named) == (status != "pass"), texts
    assert "tunnels" in named[0] and "3-D view" in named[0]


def test_the_cpu_result_note_is_in_what_to_know() -> None:
    s = _stats()
    s["geometry"] = {"note": "coarse result (CPU): this capture needs the GPU path for a full result"}
    texts = what_to_know(s, grade_checks(build_checks(s, CFG)), set())
    assert texts[0]["level"] == "warn" and "needs the GPU path" in texts[0]["text"]
    assert not any("Nothing to act on" in k["text"] for k in texts)


def _reference_base_gap(vertices: np.ndarray, points: np.ndarray, n: np.ndarray, d: float) -> float:
    """Plain loop reference of base_gap's share."""
    d, n = d / np.linalg.norm(n), n / np.linalg.norm(n)
    hp = sorted(float(p @ n - d) for p in points if float(p @ n - d) > 0)
    hm = [float(v @ n - d) for v in vertices]
    low = float(np.percentile(hp, 2))
    top = max(float(np.percentile(hp, 98)), max(hm))
    return min(max((min(hm) - low) / (top - low), 0.0), 1.0)


def test_base_gap_finds_a_mesh_that_stops_above_the_measured_legs() -> None:
    from pipeline.report.quality import base_gap

    rng = np.random.default_rng(3)
    # a chair 1 unit tall on a tilted table: the photos measured points from its feet (0.0) to its back (1.0)
    n = np.array([0.1, -0.05, 1.0])
    n_unit = n / np.linalg.norm(n)
    basis = np.linalg.svd(n_unit[None])[2][1:]
    heights = rng.uniform(0.0, 1.0, 800)
    points = heights[:, None] * n_unit + rng.normal(size=(800, 2)) @ basis * 0.3 - 0.2 * n_unit
    d = -0.2 * float(np.linalg.norm(n))  # n·x - d = |n| * height above the plane (the table is 0.2 below 0)
    whole = trimesh.creation.box(extents=(0.6, 0.6, 1.0))
    whole.apply_translation([0, 0, 0.5 - 0.2])
    R = trimesh.geometry.align_vectors([0, 0, 1], n_unit)
    whole.apply_transform(R)
    seat_only = whole.copy()
    seat_only.vertices[seat_only.vertices @ n_unit < 0.45 - 0.2] += 0.45 * n_unit  # the lower 45 % lost
    for mesh in (whole, seat_only):
        gap = base_gap(np.asarray(mesh.vertices), points, (n, d))
        assert gap is not None
        assert gap.share == pytest.approx(_reference_base_gap(np.asarray(mesh.vertices), points, n, d), abs=1e-9)
    assert base_gap(np.asarray(whole.vertices), points, (n, d)).share < 0.03
    assert base_gap(np.asarray(seat_only.vertices), points, (n, d)).share > 0.4
    # the plane as the cameras stage fits it (n·x = d, away from the origin as in every unposed job's frame)
    from pipeline.geometry.scene import fit_ground_plane

    table = rng.uniform(-1.5, 1.5, (400, 2)) @ basis - 0.2 * n_unit
    fitted = fit_ground_plane(np.concatenate([table, points]), n_unit, threshold=0.01, max_tilt_deg=90.0)
    assert fitted is not None
    gap = base_gap(np.asarray(seat_only.vertices), points, (fitted[0], fitted[1]))
    assert gap.measured_low == pytest.approx(0.0, abs=0.02) and gap.share > 0.4
    # too few measured points: nothing to say
    assert base_gap(np.asarray(whole.vertices), points[:5], (n, d)) is None
    with pytest.raises(ValueError, match="plane normal is zero"):
        base_gap(np.asarray(whole.vertices), points, (np.zeros(3), 0.0))


def test_a_mesh_that_stops_short_of_the_table_cannot_pass() -> None:
    s = _stats(base={"share": 0.23, "mesh_low": 0.23, "measured_low": 0.0, "height": 1.0, "points": 900})
    g = grade_checks(build_checks(s, CFG))
    assert g.grade == "warn" and {c.name: c.status for c in g.checks}["base"] == "warn"
    texts = [k["text"] for k in what_to_know(s, g, set())]
    assert any(t.startswith("The mesh ends 23% of the object's height above the lowest part the photos measured")
               and "legs" in t for t in texts)
    s["quality"]["base"]["share"] = 0.02
    assert grade_checks(build_checks(s, CFG)).grade == "pass"
    # an armchair whose legs were lost up to its lowest runner, 9 % of its height above the table (H200 job)
    s["quality"]["base"]["share"] = 0.091
    assert {c.name: c.status for c in grade_checks(build_checks(s, CFG)).checks}["base"] == "warn"
    # posed and masked captures have no support plane: not measured, and not required
    s["quality"]["base"] = None
    g = grade_checks(build_checks(s, CFG))
    assert g.grade == "pass" and {c.name: c.status for c in g.checks}["base"] == "n/a"


def _held_out_observations(mesh_points: np.ndarray, Ks: np.ndarray, w2cs: np.ndarray, size: tuple[int, int]):
    """Where each view sees each point (all points in front of every camera): obs_view (M,), obs_xy (M, 2)."""
    views, xys = [], []
    for i, (K, w2c) in enumerate(zip(Ks, w2cs)):
        cam = mesh_points @ w2c[:3, :3].T + w2c[:3, 3]
        uv = cam @ K.T
        xy = uv[:, :2] / uv[:, 2:]
        ok = (xy[:, 0] >= 0) & (xy[:, 0] < size[0]) & (xy[:, 1] >= 0) & (xy[:, 1] < size[1])
        views.append(np.full(int(ok.sum()), i))
        xys.append(xy[ok])
    return np.concatenate(views), np.concatenate(xys)


def test_missed_points_finds_the_part_the_photos_show_and_the_mesh_lacks() -> None:
    from pipeline.imaging.render import look_at, reduced_camera, render
    from pipeline.report.quality import missed_points

    # an object 1 unit tall standing on z = 0; the photos observed points all over its surface
    whole = trimesh.creation.box(extents=(0.6, 0.4, 1.0))
    whole.apply_translation([0, 0, 0.5])
    points = trimesh.sample.sample_surface(whole, 600, seed=1)[0]
    W, H = 640, 480
    K = np.array([[700.0, 0, W / 2], [0, 700.0, H / 2], [0, 0, 1]])
    eyes = [np.array([3 * np.cos(a), 3 * np.sin(a), 1.2]) for a in (0.3, 1.9, 3.5, 5.0)]
    w2cs = np.array([look_at(e, np.array([0, 0, 0.5]), np.array([0, 0, 1.0])) for e in eyes])
    Ks = np.repeat(K[None], len(eyes), 0)
    obs_view, obs_xy = _held_out_observations(points, Ks, w2cs, (W, H))
    # which point each observation is of (every point is seen in every view here)
    obs_point = np.concatenate([np.arange(len(points))] * len(eyes))
    assert len(obs_point) == len(obs_view)
    heights = points[:, 2]
    top = whole.copy()
    top.vertices[top.vertices[:, 2] < 0.45, 2] = 0.45  # the lower 45 % lost, as the armchair's frame was
    for mesh, low, high in ((whole, 0.0, 0.02), (top, 0.3, 0.6)):
        sils, Ksmall = [], []
        for w2c in w2cs:
            Kr, w, h = reduced_camera(K, W, H, 160)
            sils.append(render(mesh, Kr, w2c, w, h).mask)
            Ksmall.append(Kr)
        found = missed_points(sils, np.array(Ksmall), Ks, obs_view, obs_xy, heights[obs_point], heights)
        assert found is not None and low <= found.share <= high, found
        # a plain reference: project the points straight into the small silhouettes, grown by 2 px
        import cv2

        ref = []
        for i, (sil, Kr, w2c) in enumerate(zip(sils, Ksmall, w2cs)):
            grown = cv2.dilate(sil.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            cam = points @ w2c[:3, :3].T + w2c[:3, 3]
            uv = cam @ Kr.T
            for x, y in uv[:, :2] / uv[:, 2:]:
                ref.append(not grown[int(y), int(x)])
        assert found.missed == pytest.approx(sum(ref), abs=2)
    assert found.height is not None and found.height < 1 / 3 and found.where.startswith("the lower part")
    assert missed_points(sils, np.array(Ksmall), Ks, obs_view[:5], obs_xy[:5], heights[obs_point][:5], heights) \
        is None
    with pytest.raises(ValueError, match="index the 4 silhouettes"):
        missed_points(sils, np.array(Ksmall), Ks, obs_view + 1, obs_xy, heights[obs_point], heights)


def test_a_part_the_held_out_photos_show_missing_from_the_mesh_cannot_pass() -> None:
    hp = {"share": 0.18, "observations": 1200, "missed": 216, "views": 5, "height": 0.15,
          "where": "the lower part (legs, feet, a stand near the table)"}
    s = _stats(heldout_points=hp)
    g = grade_checks(build_checks(s, CFG))
    assert g.grade == "warn" and {c.name: c.status for c in g.checks}["heldout_points"] == "warn"
    texts = [k["text"] for k in what_to_know(s, g, set())]
    assert any(t.startswith("The held-out photos show the lower part (legs") and "18%" in t for t in texts)
    s["quality"]["heldout_points"]["share"] = 0.02
    assert grade_checks(build_checks(s, CFG)).grade == "pass"
    # a handful of stray points above the share is noise, not a missing part
    s["quality"]["heldout_points"].update(share=0.06, observations=200, missed=12)
    g = grade_checks(build_checks(s, CFG))
    assert g.grade == "pass" and "noise" in {c.name: c for c in g.checks}["heldout_points"].detail
    s["quality"]["heldout_points"] = None  # posed or masked captures: not measured, not required
    g = grade_checks(build_checks(s, CFG))
    assert g.grade == "pass" and {c.name: c.status for c in g.checks}["heldout_points"] == "n/a"


def test_within_footprint_keeps_what_is_under_the_mesh_and_drops_what_is_beside_it() -> None:
    from pipeline.report.quality import within_footprint

    # a seat: a slab 1 x 1 across, from 0.5 to 0.6 high; up is +z tilted a little
    up = np.array([0.0, 0.1, 1.0])
    seat = trimesh.creation.box(extents=(1.0, 1.0, 0.1))
    seat.apply_translation([0, 0, 0.55])
    seat.apply_transform(trimesh.geometry.align_vectors([0, 0, 1], up / np.linalg.norm(up)))
    R = trimesh.geometry.align_vectors([0, 0, 1], up / np.linalg.norm(up))[:3, :3]
    pts = np.array([[0.0, 0.0, 0.1],    # a leg's foot under the seat
                    [0.45, -0.45, 0.3],  # under a corner
                    [0.52, 0.0, 0.3],    # just outside, within the 0.05 margin
                    [0.7, 0.0, 0.3],     # clutter beside it
                    [0.0, 0.0, 1.0],     # far above the top
                    [-2.0, 1.0, 0.0]]) @ R.T
    got = within_footprint(pts, np.asarray(seat.vertices), up, 0.05)
    assert got.tolist() == [True, True, True, False, False, False]
    with pytest.raises(ValueError, match="non-zero up"):
        within_footprint(pts, np.asarray(seat.vertices), np.zeros(3), 0.05)
