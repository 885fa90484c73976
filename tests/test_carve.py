import numpy as np
import pytest

from pipeline.geometry.carve import CarveSettings, carve, mask_sdf
from pipeline.geometry.meshing import MeshingSettings, clean_mesh, marching_cubes
from pipeline.imaging.render import look_at, render


def test_mask_sdf_sign_and_distance() -> None:
    m = np.zeros((21, 21), bool)
    m[5:16, 5:16] = True
    d = mask_sdf(m)
    assert d[10, 10] < 0 and d[0, 0] > 0
    assert d[10, 0] == pytest.approx(5.0)  # 5 pixels from the square's left edge
    with pytest.raises(ValueError):
        mask_sdf(np.zeros((2, 2, 2)))


def _sphere_views(n: int, radius: float, size: int = 96, scale: float = 1.0):
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=5, radius=radius * scale)
    rng = np.random.default_rng(0)
    K = np.array([[size * 1.2, 0, size / 2], [0, size * 1.2, size / 2], [0, 0, 1.0]])
    Ks, w2cs, masks = [], [], []
    for _ in range(n):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        w2c = look_at(d * 4 * scale, np.zeros(3), np.array([0, 0, 1.0]))
        Ks.append(K)
        w2cs.append(w2c)
        masks.append(render(sphere, K, w2c, size, size).mask)
    return np.array(Ks), np.array(w2cs), masks


@pytest.mark.parametrize("scale", [0.001, 1.0, 1000.0])  # mm, m, km: results must not depend on units
def test_sphere_hull_is_accurate_at_any_scale(scale: float) -> None:
    Ks, w2cs, masks = _sphere_views(24, 1.0, scale=scale)
    res = carve(Ks, w2cs, masks, CarveSettings(resolution=48, outlier_views=0))
    mesh = clean_mesh(marching_cubes(res.field, res.origin, res.voxel), MeshingSettings(smoothing_iterations=5))
    r = np.linalg.norm(mesh.vertices, axis=1) / scale
    assert mesh.is_watertight
    # a visual hull is never smaller than the object and, with 24 views, not much larger
    assert r.min() > 0.97 and np.median(r) < 1.06


def test_one_bad_mask_is_tolerated() -> None:
    from pipeline.context import InputError

    Ks, w2cs, masks = _sphere_views(20, 1.0)
    masks[3] = np.zeros_like(masks[3])  # one view's mask lost the object entirely
    with pytest.raises(InputError, match="no common region"):
        carve(Ks, w2cs, masks, CarveSettings(resolution=40, outlier_views=0))
    tolerant = carve(Ks, w2cs, masks, CarveSettings(resolution=40, outlier_views=1))
    mesh = marching_cubes(tolerant.field, tolerant.origin, tolerant.voxel)
    assert 0.95 < np.median(np.linalg.norm(mesh.vertices, axis=1)) < 1.1


def test_a_ring_seen_through_by_one_view_keeps_its_hole_with_given_masks() -> None:
    """A flat ring whose opening only one (top) view sees through: tolerating one outlier view, as automatic masks
    need, closes the opening (genus 0); the policy for given masks (0 outliers) keeps it (genus 1)."""
    import trimesh

    from pipeline.stages.geometry import outlier_views

    ring = trimesh.creation.torus(major_radius=1.0, minor_radius=0.35, major_sections=64, minor_sections=32)
    size = 96
    K = np.array([[size * 1.2, 0, size / 2], [0, size * 1.2, size / 2], [0, 0, 1.0]])
    # 16 views around the equator (they never see through the opening) and one from straight above
    eyes = [4 * np.array([np.cos(a), np.sin(a), 0.15]) for a in np.linspace(0, 2 * np.pi, 16, endpoint=False)]
    eyes.append(np.array([0.0, 0.01, 4.0]))
    Ks, w2cs, masks = [], [], []
    for e in eyes:
        w2c = look_at(e, np.zeros(3), np.array([0, 0, 1.0]))
        Ks.append(K)
        w2cs.append(w2c)
        masks.append(render(ring, K, w2c, size, size).mask)

    def genus(outliers: int) -> int:
        res = carve(np.array(Ks), np.array(w2cs), masks, CarveSettings(resolution=64, outlier_views=outliers))
        mesh = clean_mesh(marching_cubes(res.field, res.origin, res.voxel), MeshingSettings(smoothing_iterations=5))
        assert mesh.is_watertight
        return int(round(1 - mesh.euler_number / 2))

    assert outlier_views(-1, len(masks), automatic_masks=False) == 0
    assert outlier_views(-1, 54, automatic_masks=True) == 2
    assert outlier_views(3, 54, automatic_masks=False) == 3  # an explicit setting wins
    assert genus(outlier_views(-1, len(masks), automatic_masks=False)) == 1
    assert genus(1) == 0


def test_strict_hull_coverage_exposes_a_bad_given_mask() -> None:
    """The check behind the strict hull for given masks: consistent masks are covered fully; when one mask lost half
    the object, the strict hull loses it too and the median coverage drops below the stage's threshold, while the
    tolerant hull (what the stage falls back to) covers the masks again."""
    from pipeline.geometry.carve import mask_coverage
    from pipeline.stages.geometry import STRICT_MIN_COVERAGE

    Ks, w2cs, masks = _sphere_views(20, 1.0)

    def coverage(ms: list, outliers: int) -> float:
        res = carve(Ks, w2cs, ms, CarveSettings(resolution=48, outlier_views=outliers))
        mesh = clean_mesh(marching_cubes(res.field, res.origin, res.voxel), MeshingSettings(smoothing_iterations=5))
        return float(np.median(mask_coverage(mesh, Ks, w2cs, ms)))

    assert coverage(masks, 0) > 0.99
    bad = [m.copy() for m in masks]
    bad[5][:, : bad[5].shape[1] // 2] = False  # a hand-drawn mask that misses the left half of the object
    assert coverage(bad, 0) < STRICT_MIN_COVERAGE
    assert coverage(bad, 1) > 0.99
    with pytest.raises(ValueError, match="one K, pose and mask"):
        mask_coverage(None, Ks, w2cs, masks[:3])


def test_geometry_stage_falls_back_when_a_given_mask_is_bad(tmp_path) -> None:
    """The sample's alpha masks with one of them half erased: the job still succeeds, the geometry stage records
    that it tolerated an outlier view and why, and the mesh still covers the object (held-out IoU)."""
    import json
    import shutil

    from PIL import Image

    from daemon.config import build_settings
    from daemon.intake import fingerprint, snapshot
    from daemon.ledger import Ledger
    from daemon.worker import Paths, execute
    from tests.conftest import SAMPLE

    job_dir = tmp_path / "inbox" / "badmask"
    shutil.copytree(SAMPLE, job_dir)
    img = np.array(Image.open(job_dir / "images" / "r_003.png"))
    img[:, : img.shape[1] // 2, 3] = 0  # the alpha of the left half is gone
    Image.fromarray(img).save(job_dir / "images" / "r_003.png")
    paths = Paths(inbox=job_dir.parent, outbox=tmp_path / "out", state=tmp_path / "state")
    ledger = Ledger(paths.ledger)
    ledger.create_job(job_dir.name, fingerprint(snapshot(job_dir)))
    job = ledger.claim_next("test")
    # small report renders: the held-out IoU and the note are what this test reads, not the pictures
    settings = build_settings({"texture": {"enabled": False}, "geometry": {"voxel_resolution": 96},
                               "report": {"gt_samples": 20_000, "render_size": 128}})
    assert execute(ledger, paths, job, settings, "cpu") == "done", ledger.get(job.id).error
    stats = json.loads((paths.outbox / job.id / "stats.json").read_text())
    assert stats["geometry"]["outlier_views"] >= 1
    assert "a given mask is probably wrong" in stats["geometry"]["note"]
    assert stats["quality"]["heldout"]["mask_iou_mean"] > 0.9
    assert "a given mask is probably wrong" in (paths.outbox / job.id / "report.html").read_text()


def test_main_components_drop_floaters_and_keep_parts_that_did_not_join() -> None:
    import trimesh

    from pipeline.geometry.meshing import main_components

    seat = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    back = trimesh.creation.icosphere(subdivisions=3, radius=0.5)  # a quarter of the seat's area
    back.apply_translation([3.0, 0, 0])
    floater = trimesh.creation.icosphere(subdivisions=2, radius=0.1)  # 1 % of it
    floater.apply_translation([0, 3.0, 0])
    kept = main_components(trimesh.util.concatenate([seat, back, floater]))
    parts = kept.split(only_watertight=False)
    # a plain reference: pieces of at least 5 % of the largest piece's area
    assert sorted(round(p.area, 6) for p in parts) == sorted(round(p.area, 6) for p in (seat, back))
    assert kept.is_watertight
    assert len(main_components(trimesh.util.concatenate([seat, back]), min_share=1.0).faces) == len(seat.faces)
    with pytest.raises(ValueError):
        main_components(seat, min_share=0.0)


def test_hull_silhouettes_keep_a_part_whose_thin_join_no_mask_shows() -> None:
    """A seat and a back whose joining tubes the masks miss: the coarse hull falls in two pieces, and both stay in
    every view's silhouette (keeping the largest piece alone lost an armchair's back on the H200)."""
    import trimesh

    from pipeline.geometry.automask import AutoMaskSettings, hull_silhouettes

    seat = trimesh.creation.box(extents=[1.0, 1.0, 0.2])
    back = trimesh.creation.box(extents=[0.15, 1.0, 0.8])
    back.apply_translation([0.6, 0, 0.6])  # 0.1 above and beside the seat: not touching
    both = trimesh.util.concatenate([seat, back])
    size = 96
    K = np.array([[size * 1.2, 0, size / 2], [0, size * 1.2, size / 2], [0, 0, 1.0]])
    rng = np.random.default_rng(1)
    Ks, w2cs, masks = [], [], []
    for _ in range(24):
        d = rng.normal(size=3)
        d[2] = abs(d[2]) + 0.2
        d /= np.linalg.norm(d)
        w2c = look_at(d * 4.0 + [0.2, 0, 0.3], np.array([0.2, 0, 0.3]), np.array([0, 0, 1.0]))
        Ks.append(K)
        w2cs.append(w2c)
        masks.append(render(both, K, w2c, size, size).mask)
    sil = hull_silhouettes(masks, np.array(Ks), np.array(w2cs), AutoMaskSettings(hull_resolution=64), "cpu")
    for m, h, w2c in zip(masks, sil, w2cs):
        back_only = render(back, K, w2c, size, size).mask & ~render(seat, K, w2c, size, size).mask
        # the back's own pixels are in the hull's silhouette, and the silhouette is the object's
        assert (h & back_only).sum() >= 0.9 * back_only.sum()
        assert (h & m).sum() / (h | m).sum() > 0.75
