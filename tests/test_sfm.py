"""Unposed and unmasked real photos: pycolmap SfM, automatic masks, through the real daemon (CPU)."""
from __future__ import annotations

import json
import logging
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from pipeline.cameras.cameras import read_transforms
from pipeline.geometry.scene import pose_errors
from pipeline.cameras.sfm import SfmResult, SfmSettings, run_sfm
from pipeline.stages.cameras import check_registration
from tests.conftest import data, drop, set_args

FAST = ["sfm.max_image_size=640", "images.max_side=512", "geometry.voxel_resolution=96", "report.render_size=128",
        "report.gt_samples=5000", "dense.cpu_max_side=256", "dense.cpu_planes=32", "dense.neighbours=4",
        "dense.cpu_resolution=96", "texture.cpu_size=256"]


def test_unposed_apple_gets_poses_masks_and_a_mesh(daemon_factory) -> None:
    src = data("apple")  # first: without the set, skip before starting a daemon
    d = daemon_factory(*set_args(*FAST)).start()
    drop(src, d.inbox)
    job = d.wait_state("apple", timeout=600)
    assert job["state"] == "done", job["error"]
    out = d.outbox / "apple"
    stats = json.loads((out / "stats.json").read_text())
    sfm = stats["cameras"]["sfm"]
    assert stats["cameras"]["source"] == "sfm"
    assert sfm["registered"] >= 18 and sfm["images"] == 20
    assert sfm["mean_reprojection_error_px"] < 1.5 and sfm["points"] > 500
    # where the stage's time went: SfM's own steps, its photo copies and its process within the SfM step, and the
    # steps within the stage's time
    steps, stage = stats["cameras"]["seconds"], {t["stage"]: t["seconds"] for t in stats["timings"]}["cameras"]
    assert set(steps) == {"sfm", "views", "scale", "save"} and min(steps.values()) >= 0
    assert {"extract", "match", "map", "copies", "process"} <= set(sfm["seconds"])
    assert sum(sfm["seconds"].values()) <= steps["sfm"] + 0.05 and sum(steps.values()) <= stage + 0.05
    # no masks given: dense multi-view stereo, and the published masks are the final mesh's silhouettes
    assert stats["geometry"]["method"].startswith("dense multi-view stereo")
    assert stats["geometry"]["dense"]["estimated_silhouettes"] == stats["cameras"]["views"] - stats["cameras"]["holdout"]
    with zipfile.ZipFile(out / "masks.zip") as z:
        assert len([n for n in z.namelist() if n.endswith(".png")]) == sfm["registered"]
    assert (out / "masks_preview.jpg").stat().st_size > 10_000
    # normalised frame: the object in the unit cube, centred, +Z up; an apple is round
    mesh = trimesh.load(out / "mesh.ply", force="mesh")
    assert np.abs(mesh.bounds).max() < 0.75
    ext = mesh.extents
    assert ext.max() / ext.min() < 1.7, ext
    # the held-out photos have no masks: their colours are compared where the mesh covers them
    assert stats["quality"]["heldout"]["mask_iou_mean"] is None
    assert stats["quality"]["heldout"]["psnr_mean"] > 12
    html = (out / "report.html").read_text()
    m = re.search(r'id="sfm-registered">(\d+) / (\d+)<', html)
    assert m and (int(m.group(1)), int(m.group(2))) == (sfm["registered"], 20)
    assert "data:image/jpeg;base64," in html[html.find('id="masks"'):]


@pytest.mark.parametrize("mapper,keyframes", [("incremental", 64), ("global", 64), ("incremental", 7)])
def test_sfm_poses_agree_with_the_given_poses_on_real_photos(tmp_path: Path, mapper: str, keyframes: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """fox ships COLMAP poses; SfM on 14 of its photos, ignoring them, must land on the same cameras, with either
    mapper, and with every other photo mapped and the rest placed by absolute pose against its points."""
    src = read_transforms(data("fox") / "transforms.json")
    frames = src.frames[:14]
    img_dir = tmp_path / "img"
    from PIL import Image

    for fr in frames:
        (img_dir / fr.name).parent.mkdir(parents=True, exist_ok=True)
        im = Image.open(data("fox") / fr.name)
        im.resize((im.width // 2, im.height // 2)).save(img_dir / fr.name, quality=95)
    res = run_sfm(img_dir, [f.name for f in frames], tmp_path / "sfm",
                  SfmSettings(max_image_size=640, mapper=mapper, keyframes=keyframes), logging.getLogger("test"))
    assert res.stats["mapper"] == mapper
    placed = [res.names.index(f.name) for f in frames[1::2]] if keyframes == 7 else []
    assert res.stats["placed"] == len(placed) and res.stats["mapped"] == len(frames) - len(placed)
    # a placed photo observes the model's points where they project (its inliers), as a mapped one does
    for k in placed:
        m = res.obs_image == k
        assert m.sum() >= 30
        X = np.c_[res.points[res.obs_point[m]], np.ones(int(m.sum()))] @ res.w2c[k].T
        uv = X[:, :2] / X[:, 2:3] * np.diag(res.K[k])[:2] + res.K[k][:2, 2]
        assert np.median(np.linalg.norm(uv - res.obs_xy[m], axis=1)) < 3.0
    if keyframes == 7:
        # where placing leaves photos out, every photo is mapped after all
        import pipeline.cameras.sfm as sfm_module

        monkeypatch.setattr(sfm_module, "place_remaining", lambda *args, **kwargs: {})
        recs, again, seconds = sfm_module.map_and_place(tmp_path / "sfm" / "database.db", img_dir, tmp_path / "again",
                                                        SfmSettings(max_image_size=640, keyframes=7),
                                                        [f.name for f in frames], logging.getLogger("test"))
        assert not again and max(r.num_reg_images() for r in recs.values()) == len(frames) and "place" in seconds
    assert len(res.names) == len(frames), res.unregistered
    given = {f.name: f.w2c for f in frames}
    errs = pose_errors(res.w2c, np.array([given[n] for n in res.names]))
    assert errs["rotation_deg_max"] < 2.0, errs
    assert errs["center_err_max"] < 0.05, errs
    assert res.stats["mean_reprojection_error_px"] < 1.5


def test_photos_that_do_not_register_fail_with_their_names(daemon_factory) -> None:
    src = data("cake")  # first: without the set, skip before starting a daemon
    d = daemon_factory(*set_args(*FAST)).start()
    drop(src, d.inbox)
    job = d.wait_state("cake", timeout=300)
    assert job["state"] == "failed"
    assert "Reshoot" in job["error"] and "structure from motion" in job["error"]
    html = (d.outbox / "cake" / "report.html").read_text()
    assert "Reshoot" in html
    assert not (d.outbox / "cake" / "mesh.glb").exists()


def test_registration_check_names_the_missing_images() -> None:
    res = SfmResult(names=("a", "b", "c"), unregistered=("d", "e"), width=1, height=1, K=np.zeros((3, 3, 3)),
                    dist=np.zeros((3, 4)), w2c=np.zeros((3, 4, 4)), points=np.zeros((0, 3)),
                    colors=np.zeros((0, 3), np.uint8), obs_image=np.zeros(0, int), obs_point=np.zeros(0, int),
                    obs_xy=np.zeros((0, 2), np.float32), stats={})
    with pytest.raises(Exception, match=r"placed only 3 of 5 images .* Not registered: d, e"):
        check_registration(res, 5, SfmSettings(min_registered=0.7), min_images=3)
    warn = check_registration(res, 5, SfmSettings(min_registered=0.5), min_images=3)
    assert "d, e" in warn[0]


def test_sfm_runs_in_its_own_process_and_cancels_with_it(tmp_path: Path) -> None:
    """SfM's errors come back from its child process as the same exception; a cancel kills the child at once."""
    import multiprocessing as mp
    import time

    from pipeline.context import Cancelled, InputError
    from pipeline.cameras.sfm import run_sfm_isolated

    rng = np.random.default_rng(0)
    for i in range(4):  # noise shares no features between images: no camera poses
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"n{i}.png")
    names = [f"n{i}.png" for i in range(4)]
    log = logging.getLogger("test")
    with pytest.raises(InputError, match="found no camera poses"):
        run_sfm_isolated(tmp_path, names, tmp_path / "w1", SfmSettings(), log)

    def cancel(_f: float) -> None:
        raise Cancelled("cancelled by a CANCEL file")

    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        run_sfm_isolated(tmp_path, names, tmp_path / "w2", SfmSettings(), log, check=cancel)
    assert time.monotonic() - t0 < 10
    assert not [p for p in mp.active_children() if p.name == "hotmesh-sfm"]


def test_the_incremental_mappers_bundle_adjustment_settings_reach_colmap(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    import pycolmap

    from pipeline.cameras.sfm import map_cameras
    from pipeline.settings import SfmConfig

    seen: dict = {}

    def capture(db, image_dir, out, options):  # noqa: ANN001 - pycolmap's signature
        seen.update(ratio=(options.ba_global_frames_ratio, options.ba_global_points_ratio),
                    iterations=options.ba_global_max_num_iterations,
                    refinements=(options.ba_local_max_refinements, options.ba_global_max_refinements),
                    redundant=options.mapper.ba_global_ignore_redundant_points3D,
                    local=(options.mapper.ba_local_num_images, options.ba_local_max_num_iterations))
        return {}

    monkeypatch.setattr(pycolmap, "incremental_mapping", capture)
    map_cameras(tmp_path / "db", tmp_path, tmp_path, SfmSettings(ba_global_ratio=1.7, ba_global_iterations=9,
                                                                 ba_refinements=2, ba_skip_redundant_points=False,
                                                                 ba_local_images=7, ba_local_iterations=3))
    assert seen == {"ratio": (1.7, 1.7), "iterations": 9, "refinements": (2, 4), "redundant": False, "local": (7, 3)}
    map_cameras(tmp_path / "db", tmp_path, tmp_path, SfmSettings())
    assert seen["redundant"] is True and seen["ratio"] == (2.0, 2.0) and seen["local"] == (4, 10)
    # the [sfm] config section and the SfM settings have the same fields (the cameras stage passes one as the other)
    import dataclasses

    assert SfmSettings(**dataclasses.asdict(SfmConfig())) == SfmSettings()


def test_listed_sequential_pairs_are_colmaps_own(tmp_path: Path) -> None:
    """The pipeline lists the sequential pairs itself (COLMAP verifies a listed block's pairs in parallel, its own
    sequential matcher one photo's pairs at a time): the pairs matched must be exactly those of COLMAP's sequential
    matcher with quadratic overlap, on real photos."""
    import shutil
    import sqlite3

    import pycolmap

    from pipeline.cameras.sfm import match_features, sequential_pairs

    src = read_transforms(data("fox") / "transforms.json")
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    names = []
    for fr in src.frames[:20]:
        im = Image.open(data("fox") / fr.name)
        names.append(Path(fr.name).name)
        im.resize((im.width // 4, im.height // 4)).save(img_dir / names[-1], quality=95)
    names.sort()
    db = tmp_path / "x.db"
    pycolmap.extract_features(db, img_dir, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                              device=pycolmap.Device.cpu)
    ours, theirs = tmp_path / "ours" / "x.db", tmp_path / "theirs" / "x.db"
    for p in (ours, theirs):
        p.parent.mkdir()
        shutil.copy2(db, p)
    cfg = SfmSettings(matcher="sequential", overlap=4)
    assert match_features(ours, names, cfg, pycolmap.Device.cpu) == "sequential"
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap, pairing.quadratic_overlap, pairing.loop_detection = 4, True, False
    pycolmap.match_sequential(theirs, pairing_options=pairing, device=pycolmap.Device.cpu)

    def matched(path: Path) -> set[tuple[str, str]]:
        with sqlite3.connect(path) as c:
            name = dict(c.execute("SELECT image_id, name FROM images"))
            pairs = [pycolmap.pair_id_to_image_pair(p) for (p,) in c.execute("SELECT pair_id FROM matches")]
        return {tuple(sorted((name[a], name[b]))) for a, b in pairs}

    expected = {(names[i], names[j]) for i, j in sequential_pairs(len(names), 4)}
    assert matched(theirs) == expected
    assert matched(ours) == expected
    assert sequential_pairs(5, 3) == [(0, 1), (0, 2), (0, 4), (1, 2), (1, 3), (2, 3), (2, 4), (3, 4)]
    with pytest.raises(ValueError):
        sequential_pairs(5, 0)


def test_keyframe_stride_keeps_the_mapped_photos_within_the_limit() -> None:
    from pipeline.cameras.sfm import keyframe_stride, sequential_pairs

    assert [keyframe_stride(n, 64) for n in (0, 3, 48, 64, 65, 128, 129, 200, 1000)] == [1, 1, 1, 1, 2, 2, 4, 4, 16]
    assert keyframe_stride(200, 0) == 1
    for n, limit in ((200, 64), (500, 48), (97, 96)):
        k = keyframe_stride(n, limit)
        assert len(range(0, n, k)) <= limit < len(range(0, n, k // 2)) or k == 1
        # the mapped photos keep their sequential pairs among themselves: each with the next mapped one
        assert all((i, i + k) in set(sequential_pairs(n, 10)) for i in range(0, n - k, k))
    with pytest.raises(ValueError):
        keyframe_stride(-1, 64)


def test_the_report_says_how_many_photos_were_placed_beside_the_mapped_ones(tmp_path: Path) -> None:
    from pipeline.report.html import complete_stats, render_report

    sfm = {"registered": 200, "images": 200, "mean_reprojection_error_px": 0.5, "mean_track_length": 9.1,
           "points": 14616, "pycolmap": "4.2.1", "device": "cpu", "matcher": "sequential", "feature_size": 1000,
           "camera_model": "OPENCV", "seconds": {"map": 6.5, "place": 4.5}, "unregistered": [], "mapped": 50,
           "placed": 150}
    for placed, shown in ((150, True), (0, False)):
        stats = complete_stats({"cameras": {"source": "sfm", "sfm": dict(sfm, placed=placed)}})
        ctx = {"job": {"id": "j", "folder": "j", "state": "done", "error": None, "stage": None, "version": "0",
                       "device": "cpu", "finished": "now"}, "stats": stats, "renders": [], "heldout": [],
               "scene": None, "masks_preview": None, "viewer": None, "no_viewer": "none", "timings": [],
               "config": {}, "config_rows": [], "published": [], "photos": [], "failure": None}
        render_report(ctx, tmp_path / "report.html")
        html = (tmp_path / "report.html").read_text()
        assert ('id="sfm-placed">50 photos mapped' in html and "150 placed by absolute pose" in html) == shown
        assert 'id="sfm-registered">200 / 200<' in html


def _sfm_result(K: np.ndarray, dist: np.ndarray, w2c: np.ndarray, xy: np.ndarray, size: tuple[int, int]) -> SfmResult:
    n = len(K)
    obs_image = np.repeat(np.arange(n), len(xy[0]))
    return SfmResult(names=tuple(f"v{k}" for k in range(n)), unregistered=(), width=size[0], height=size[1], K=K,
                     dist=dist, w2c=w2c, points=np.zeros((len(xy[0]), 3)), colors=np.zeros((len(xy[0]), 3), np.uint8),
                     obs_image=obs_image, obs_point=np.tile(np.arange(len(xy[0])), n),
                     obs_xy=np.concatenate(xy).astype(np.float64), stats={})


def test_a_photo_read_turned_a_quarter_gets_its_own_camera_back() -> None:
    """turn_back against a reference: a portrait photo's pixels, turned a quarter (np.rot90) into a landscape copy
    that SfM described with the shared camera, are where the turned-back camera (intrinsics, distortion and pose)
    projects the same points in the photo itself."""
    import cv2

    from pipeline.cameras.sfm import turn_back
    from pipeline.imaging.render import look_at

    rng = np.random.default_rng(5)
    pts = rng.uniform(-0.5, 0.5, (40, 3))
    W, H = 400, 300  # the shared camera's (landscape) size; the portrait photo is 300 x 400
    K = np.array([[380.0, 0, 205], [0, 372, 148], [0, 0, 1]])
    dist = np.array([-0.08, 0.02, 0.003, -0.002])
    w2c = look_at(np.array([2.5, -1.0, 1.2]), np.zeros(3), np.array([0, 0, 1.0]))

    def proj(Km, d, T):
        rvec, _ = cv2.Rodrigues(T[:3, :3])
        return cv2.projectPoints(pts, rvec, T[:3, 3], Km, d)[0].reshape(-1, 2)

    copy_xy = proj(K, dist, w2c)  # where SfM saw the points in the turned copy
    res = _sfm_result(np.stack([K, K]), np.stack([dist, dist]), np.stack([w2c, w2c]), [copy_xy, copy_xy], (W, H))
    back = turn_back(res, {"v1"})
    assert back.size_of(0) == (W, H) and back.size_of(1) == (H, W)
    assert np.allclose(back.K[0], K) and np.allclose(back.obs_xy[:40], copy_xy)  # v0 was not turned
    # the photo itself: the copy is np.rot90 of it, so a copy pixel (x', y') is the photo's (H - y', x')
    photo_xy = np.stack([H - copy_xy[:, 1], copy_xy[:, 0]], axis=1)
    assert np.allclose(back.obs_xy[40:], photo_xy)
    assert np.allclose(proj(back.K[1], back.dist[1], back.w2c[1]), photo_xy, atol=1e-6)
    # the same centre: turning a photo rolls the camera, it does not move it
    centre = lambda T: -T[:3, :3].T @ T[:3, 3]  # noqa: E731
    assert np.allclose(centre(back.w2c[1]), centre(w2c))
    # and the pixel grid agrees with np.rot90 itself: a bright pixel of the photo lands where the copy shows it
    photo = np.zeros((W, H), np.uint8)  # rows = the photo's height (400), columns = its width (300)
    photo[250, 40] = 255
    r, c = np.argwhere(np.rot90(photo) == 255)[0]
    assert (H - (r + 0.5), c + 0.5) == (40 + 0.5, 250 + 0.5)


def test_photos_are_grouped_by_lens_and_the_groups_must_partition_the_names(tmp_path: Path) -> None:
    """lens_of reads make, model and focal length from EXIF (nothing from a PNG); check_groups keeps capture order
    and refuses groups that lose or repeat a photo."""
    from PIL.TiffImagePlugin import IFDRational

    from pipeline.cameras.sfm import check_groups
    from pipeline.io.images import lens_of

    px = Image.fromarray(np.zeros((12, 16, 3), np.uint8))
    for name, focal in (("a.jpg", 26), ("b.jpg", 77)):
        ex = Image.Exif()
        ex[0x010F], ex[0x0110] = "Acme", "X1"
        ex.get_ifd(0x8769)[0x920A] = IFDRational(focal, 10)
        px.save(tmp_path / name, exif=ex)
    px.save(tmp_path / "c.png")
    bad = Image.Exif()
    bad[0x0110] = "X1"
    bad.get_ifd(0x8769)[0x920A] = "n/a"  # a malformed focal length: no lens, and no failure
    px.save(tmp_path / "d.jpg", exif=bad)
    assert lens_of(tmp_path / "a.jpg") == ("Acme", "X1", "2.6") and lens_of(tmp_path / "b.jpg")[2] == "7.7"
    assert lens_of(tmp_path / "d.jpg") == ("", "X1", "")
    assert lens_of(tmp_path / "c.png") == ()
    assert check_groups(["a", "b", "c"], ()) == [["a", "b", "c"]]
    assert check_groups(["a", "b", "c"], [["c", "a"], ["b"]]) == [["a", "c"], ["b"]]
    for bad in ([["a", "b"]], [["a", "b"], ["b", "c"]]):
        with pytest.raises(ValueError, match="exactly once"):
            check_groups(["a", "b", "c"], bad)


def test_the_less_common_orientation_is_turned() -> None:
    from types import SimpleNamespace as F

    from pipeline.stages.cameras import quarter_turned

    land, port, sq = (lambda n: F(name=n, width=4, height=3)), (lambda n: F(name=n, width=3, height=4)), \
        (lambda n: F(name=n, width=3, height=3))
    assert quarter_turned([land("a"), land("b"), sq("c")]) == set()
    assert quarter_turned([land("a"), port("b"), land("c")]) == {"b"}
    assert quarter_turned([port("a"), port("b"), land("c")]) == {"c"}
    assert quarter_turned([sq("s"), port("a"), land("b")]) == {"b"}  # a tie: the first non-square one's kept


def test_photos_of_three_shapes_register_and_keep_their_own_size(tmp_path: Path) -> None:
    """A phone capture turned now and then and switched to its 16:9 mode now and then: unposed photos of three
    shapes. Every photo registers (COLMAP's one camera skipped every other size, and the job failed as if those
    photos did not overlap), the published cameras describe each photo as it is, and the mesh matches the object
    about as well as an all-landscape capture's does (F@1 % 0.82 there)."""
    from tests.scenes import mixed_capture_job

    got = mixed_capture_job(tmp_path, "cpu")
    assert got["fscore@1%"] > 0.75, got
