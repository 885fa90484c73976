"""Inputs people have: HEIC photos, videos, nerfstudio transforms fields, every unused file named with a reason,
and transforms.json paths that must stay inside the job folder (issue 20: absolute paths, all problems at once)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.cameras.cameras import read_transforms, undistort_image, undistort_points
from pipeline.context import InputError, JobContext, JobLogAdapter
from pipeline.io.images import ImageInfo, load_rgba, sniff_format, validate_image
from pipeline.settings import LimitsConfig, build_pipeline_settings
from pipeline.stages.ingest import FRAMES_DIR, IngestStage, Manifest
from pipeline.io.video import pick_sharp_spread, sample_video, upright

EYE = np.eye(4).tolist()


def _ctx(job: Path, **sections: dict) -> JobContext:
    settings = build_pipeline_settings(sections)
    return JobContext(job_id=job.name, input_dir=job, work_dir=job.parent / f"{job.name}-work", settings=settings,
                      device="cpu", log=JobLogAdapter(logging.getLogger("hotmesh.test"), {"job_id": job.name}))


def _ingest(ctx: JobContext) -> Manifest:
    out = ctx.work_dir / "stages" / "ingest"
    out.mkdir(parents=True)
    IngestStage().run(ctx, out)
    return Manifest.load(out)


def _texture(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A photo-like (H, W, 3) uint8 pattern, different per seed (so duplicates are only the ones we make)."""
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 255, (h // 4, w // 4, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


# -- issue 20: transforms.json paths and validation -------------------------------------------------------------


def test_absolute_and_parent_paths_in_transforms_are_refused(tmp_path: Path) -> None:
    """An absolute file_path used to be read and used as a training view; '..' must be refused the same way."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (8, 8)).save(elsewhere / "secret.png")
    job = tmp_path / "job"
    (job / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(job / "images" / "ok.png")
    (job / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.5, "frames": [
        {"file_path": "images/ok.png", "transform_matrix": EYE},
        {"file_path": str(elsewhere / "secret.png"), "transform_matrix": EYE},
        {"file_path": "../elsewhere/secret.png", "transform_matrix": EYE},
        {"file_path": "images/ok.png", "mask_path": "/etc/passwd", "transform_matrix": EYE}]}))
    with pytest.raises(InputError) as e:
        read_transforms(job / "transforms.json")
    msg = str(e.value)
    assert "4 problem(s)" not in msg and "3 problem(s)" in msg
    assert "frame 1: 'file_path' is an absolute path" in msg
    assert "frame 2: 'file_path' leaves the job folder" in msg
    assert "frame 3: 'mask_path' is an absolute path" in msg


def test_every_transforms_problem_is_listed_in_one_message(tmp_path: Path) -> None:
    """Validation used to stop at the first problem although the README promises one message listing all."""
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": 5, "camera_model": "EQUIRECTANGULAR",
                                                          "frames": [
        {"file_path": "a.png", "transform_matrix": [[1, 0], [0, 1]]},
        {"transform_matrix": EYE},
        {"file_path": "c.png", "transform_matrix": EYE, "fl_x": "big"},
        {"file_path": "d.png", "transform_matrix": EYE, "camera_model": "PINHOLE", "k1": 0.1, "fl_x": 100,
         "w": 64, "h": 48}]}))
    with pytest.raises(InputError) as e:
        read_transforms(tmp_path / "transforms.json")
    msg = str(e.value)
    for needle in ("camera_angle_x=5.0 is not an angle", "camera_model 'EQUIRECTANGULAR' is not supported",
                   "frame 0: transform_matrix is not an invertible 4x4", "frame 1: needs 'file_path'",
                   "frame 2: 'fl_x' must be a finite number", "frame 3: camera_model PINHOLE has no k1",
                   "no intrinsics for frame(s) 0, 2"):
        assert needle in msg, (needle, msg)
    assert msg.count("\n- ") == 7


def test_nerfstudio_camera_model_and_mask_path(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "m").mkdir()
    for n in ("a", "b", "c"):
        Image.new("RGB", (64, 48)).save(tmp_path / "images" / f"{n}.jpg")
    Image.new("L", (64, 48), 255).save(tmp_path / "m" / "a.png")
    (tmp_path / "transforms.json").write_text(json.dumps({
        "camera_model": "OPENCV_FISHEYE", "fl_x": 40.0, "fl_y": 40.0, "cx": 32, "cy": 24, "w": 64, "h": 48,
        "k1": 0.05, "k2": -0.01, "k3": 0.002, "k4": -0.0005, "frames": [
            {"file_path": "images/a.jpg", "mask_path": "m/a.png", "transform_matrix": EYE},
            {"file_path": "images/b.jpg", "mask_path": "m/b.png", "transform_matrix": EYE,
             "camera_model": "OPENCV", "k1": 0.1, "p1": 0.001},
            {"file_path": "images/c.jpg", "transform_matrix": EYE}]}))
    src = read_transforms(tmp_path / "transforms.json")
    a, b, _c = src.frames
    assert a.camera_model == "OPENCV_FISHEYE" and a.dist == pytest.approx((0.05, -0.01, 0.002, -0.0005))
    assert a.mask_path == "m/a.png"
    assert b.camera_model == "OPENCV" and b.dist == pytest.approx((0.1, 0.0, 0.001, 0.0)) and b.mask_path is None
    assert src.missing_masks == ("m/b.png",)
    # the listed mask is the frame's mask at ingest (instead of a masks/ lookup)
    man = _ingest(_ctx(tmp_path, limits={"min_images": 3, "max_file_mb": 1}, masks={"auto": "missing"}))
    assert {f.name: f.mask_file for f in man.frames} == {"images/a.jpg": "m/a.png", "images/b.jpg": None,
                                                         "images/c.jpg": None}
    assert any("mask_path file(s) listed in transforms.json are missing" in w for w in man.warnings)


def test_fisheye_undistortion_gives_pinhole_pixels() -> None:
    K = np.array([[120.0, 0, 80], [0, 120.0, 60], [0, 0, 1]])
    D = (0.08, -0.03, 0.01, -0.002)
    pts = np.array([[0.3, -0.2, 1.0], [-0.4, 0.25, 1.0], [0.1, 0.1, 1.0]])
    distorted, _ = cv2.fisheye.projectPoints(pts.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K, np.array(D))
    pinhole = (pts[:, :2] / pts[:, 2:]) * [K[0, 0], K[1, 1]] + K[:2, 2]
    assert undistort_points(distorted.reshape(-1, 2), K, "OPENCV_FISHEYE", D) == pytest.approx(pinhole, abs=1e-3)
    # an image: a bright dot drawn at the distorted position lands at the pinhole position after undistortion
    img = np.zeros((120, 160), np.uint8)
    x, y = distorted.reshape(-1, 2)[0]
    cv2.circle(img, (int(round(x * 16)), int(round(y * 16))), 2 * 16, 255, -1, shift=4)
    out = undistort_image(img, K, "OPENCV_FISHEYE", D)
    ys, xs = np.nonzero(out > 100)
    assert (xs.mean(), ys.mean()) == pytest.approx(tuple(pinhole[0]), abs=0.6)
    assert undistort_image(img, K, "OPENCV_FISHEYE", ()) is img  # no distortion: untouched


# -- HEIC -------------------------------------------------------------------------------------------------------


def _heic(path: Path, rgb: np.ndarray, orientation: int = 1) -> Path:
    """A real HEIC written by pillow-heif (as an iPhone would, with an EXIF orientation)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, format="HEIF", exif=exif.tobytes(), quality=95)
    return path


def test_heic_is_sniffed_validated_and_loaded_upright(tmp_path: Path) -> None:
    rgb = np.zeros((40, 80, 3), np.uint8)
    rgb[:, :20] = (255, 0, 0)  # red band on the left of the stored image
    p = _heic(tmp_path / "IMG_0001.HEIC", rgb, orientation=6)  # 6: shown rotated 90 degrees clockwise
    assert sniff_format(p.read_bytes()[:16]) == "HEIF"
    info = validate_image(p, tmp_path, LimitsConfig())
    assert isinstance(info, ImageInfo) and info.format == "HEIF" and (info.width, info.height) == (40, 80)
    shown, alpha = load_rgba(p)
    assert shown.shape == (80, 40, 3) and alpha is None
    # the band is now along the top, exactly as a JPEG with the same orientation is shown
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "same.jpg", exif=exif.tobytes(), quality=95)
    as_jpeg, _ = load_rgba(tmp_path / "same.jpg")
    assert np.abs(shown.astype(int) - as_jpeg.astype(int)).mean() < 6
    assert shown[:15, :, 0].mean() > 200 and shown[30:, :, 0].mean() < 40


# -- video ------------------------------------------------------------------------------------------------------


def _video(path: Path, n: int, sharp: set[int], size: tuple[int, int] = (160, 120)) -> Path:
    """An H.264 clip of ``n`` frames of a slowly moving texture; frames not in ``sharp`` are blurred."""
    import av

    w, h = size
    base = cv2.resize(np.random.default_rng(0).integers(0, 255, (h // 2, 2 * w // 2, 3), dtype=np.uint8), (2 * w, h),
                      interpolation=cv2.INTER_NEAREST)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "12", "preset": "ultrafast"}
        for i in range(n):
            f = base[:, i:i + w].copy()
            if i not in sharp:
                f = cv2.GaussianBlur(f, (0, 0), 3.0)
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def test_video_sampling_keeps_the_sharp_frame_of_each_part(tmp_path: Path) -> None:
    sharp = {3, 17, 24, 38, 45, 52}  # one sharp frame in each sixth of a 60-frame clip
    sample = sample_video(_video(tmp_path / "clip.mp4", 60, sharp), 6)
    assert [f.index for f in sample.frames] == sorted(sharp)
    assert sample.decoded == 60 and sample.frames[0].rgb.shape == (120, 160, 3)
    assert sample.duration_s == pytest.approx(2.0, abs=0.1)
    # the same choice from the pure function on the scores
    scores = np.array([1.0 if i in sharp else 0.0 for i in range(60)])
    assert pick_sharp_spread(scores, 6) == sorted(sharp)
    assert pick_sharp_spread(scores[:4], 6) == [0, 1, 2, 3]
    # display rotation (counter-clockwise degrees, as PyAV reports it)
    a = np.arange(6).reshape(2, 3, 1)
    assert upright(a, -90)[:, :, 0].tolist() == [[3, 0], [4, 1], [5, 2]]


def test_video_only_folder_is_sampled_into_the_work_folder(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    _video(job / "walkaround.mp4", 40, set(range(40)))
    ctx = _ctx(job, images={"video_frames": 5}, limits={"min_images": 4})
    man = _ingest(ctx)
    assert len(man.frames) == 5 and all(f.source == "walkaround.mp4" for f in man.frames)
    assert [v.file for v in man.videos] == ["walkaround.mp4"] and man.videos[0].decoded == 40
    for f in man.frames:  # later stages load through the manifest: the work folder, never the inbox
        p = man.path_of(f, ctx)
        assert p.parent == ctx.work_dir / "stages" / "ingest" / FRAMES_DIR and p.is_file()
        assert load_rgba(p)[0].shape == (120, 160, 3)
    assert sorted(x.name for x in job.iterdir()) == ["walkaround.mp4"]  # nothing written into the inbox
    assert not man.rejected


# -- every file accounted for -----------------------------------------------------------------------------------


def test_heic_folder_with_a_video_lists_every_file_not_used(tmp_path: Path) -> None:
    """Issue 19: 10 iPhone HEICs and an .mp4 failed with 'only 1 usable image(s)', naming no skipped file."""
    job = tmp_path / "job"
    (job / "masks").mkdir(parents=True)
    for i in range(10):
        _heic(job / f"IMG_{i:04d}.HEIC", _texture(i))
    _video(job / "IMG_0003.MOV", 8, set(range(8)))  # the Live Photo clip of IMG_0003
    _video(job / "walk.mp4", 8, set(range(8)))
    Image.fromarray(_texture(0)).save(job / "IMG_0000.JPG")  # the same shot exported as JPEG
    (job / "copy.heic").write_bytes((job / "IMG_0005.HEIC").read_bytes())
    (job / "notes.txt").write_text("shot on a phone")
    (job / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (job / "IMG_0100.DNG").write_bytes(b"II*\0raw")
    Image.new("L", (8, 8)).save(job / "masks" / "orphan.png")
    Image.fromarray(_texture(50)).save(job / "photo_without_suffix", format="JPEG")
    (job / "big.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 2_000_000)  # over limits.max_file_mb = 1
    man = _ingest(_ctx(job, limits={"max_file_mb": 1}))
    assert sorted(f.name for f in man.frames) == [f"IMG_{i:04d}.HEIC" for i in range(10)]
    assert all(f.format == "HEIF" for f in man.frames) and not man.videos
    why = {r.file: r.reason for r in man.rejected}
    expected = {
        "IMG_0003.MOV": "Live Photo clip of IMG_0003.HEIC",
        "walk.mp4": "photos are not mixed with video frames",
        "IMG_0000.JPG": "same name as IMG_0000.HEIC",
        "copy.heic": "byte-for-byte copy of IMG_0005.HEIC",
        "notes.txt": "not an input hotmesh reads",
        ".DS_Store": "hidden file",
        "IMG_0100.DNG": "camera RAW file",
        "masks/orphan.png": "matches no image used",
        "photo_without_suffix": "is a JPEG image but its name does not end in an image suffix",
        "big.jpg": "over the 1 MB per-file limit",
    }
    assert set(why) == set(expected), sorted(why)
    for file, needle in expected.items():
        assert needle in why[file], (file, why[file])
    assert any("10 file(s) not used" in w for w in man.warnings)


def test_failure_names_the_files_that_were_skipped(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    Image.fromarray(_texture(1)).save(job / "a.jpg")
    Image.fromarray(_texture(2)).save(job / "b.gif")
    (job / "c.heic").write_text("not really a photo")
    with pytest.raises(InputError) as e:
        _ingest(_ctx(job))
    msg = str(e.value)
    assert "only 1 usable image(s)" in msg
    assert "b.gif is a GIF file, which is not read; convert it to PNG or JPEG" in msg
    assert "c.heic is not a JPEG, PNG, WebP, TIFF or HEIC/HEIF image" in msg
