"""The outbox as other tools open it: nerfstudio (transforms.json), COLMAP and gsplat (sparse/0/ beside images/),
a web page (mesh_web.glb, thumbnail.jpg); and the report that describes it. Small real jobs through the pipeline on
the CPU: a posed masked job (no SfM, no dense points) and the photo-like scene without poses (SfM)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from tests.conftest import tiny_job
from tests.test_captures import _run

TINY = {"limits": {"min_images": 4}, "geometry": {"voxel_resolution": 32},
        "report": {"render_size": 64, "gt_samples": 5000}, "texture": {"cpu_size": 256, "cpu_max_faces": 3000},
        "export": {"web_faces": 1000, "surface_points": 5000, "thumbnail_size": 128}}


def check_transforms(out: Path) -> dict:
    """transforms.json against nerfstudio's conventions, and every image it names present in the outbox."""
    d = json.loads((out / "transforms.json").read_text())
    assert d["camera_model"] in ("OPENCV", "OPENCV_FISHEYE") and d["frames"]
    mesh = trimesh.load(out / "mesh.ply", force="mesh")
    centre = mesh.bounds.mean(axis=0)
    for fr in d["frames"]:
        rel = Path(fr["file_path"])
        assert not rel.is_absolute() and ".." not in rel.parts and rel.parts[0] == "images"
        assert (out / rel).is_file(), f"{rel} is named in transforms.json but not in the outbox"
        with Image.open(out / rel) as im:
            assert im.size == (fr["w"], fr["h"])  # the intrinsics describe this very file
        assert {"fl_x", "fl_y", "cx", "cy", "w", "h", "camera_model"} <= set(fr)
        c2w = np.array(fr["transform_matrix"])
        assert c2w.shape == (4, 4) and np.allclose(c2w[3], [0, 0, 0, 1])
        R = c2w[:3, :3]
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-6) and np.linalg.det(R) == pytest.approx(1, abs=1e-6)
        # OpenGL axes: the camera looks down its -Z, so the object is in front along -Z
        assert (centre - c2w[:3, 3]) @ -R[:, 2] > 0
    if "ply_file_path" in d:
        assert (out / d["ply_file_path"]).is_file()
    return d


def check_colmap(out: Path, transforms: dict) -> "object":
    """sparse/0 loads in pycolmap with every image present under images/ and the poses of transforms.json."""
    import pycolmap

    from pipeline.cameras.cameras import c2w_gl_to_w2c_cv

    rec = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    assert rec.num_reg_images() == len(transforms["frames"])
    w2c_of = {fr["file_path"]: c2w_gl_to_w2c_cv(np.array(fr["transform_matrix"])) for fr in transforms["frames"]}
    for iid in rec.reg_image_ids():
        im = rec.image(iid)
        assert (out / "images" / im.name).is_file(), im.name
        cam = rec.camera(im.camera_id)
        with Image.open(out / "images" / im.name) as pic:
            assert pic.size == (cam.width, cam.height)
        pose = np.asarray(im.cam_from_world().matrix())
        np.testing.assert_allclose(pose, w2c_of["images/" + im.name][:3], atol=1e-5)
    return rec


@pytest.fixture(scope="module")
def posed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("posed")
    tiny_job(root / "inbox" / "cow", views=10, size=64)
    _, out, stats = _run(root / "inbox", "cow", root, TINY)
    return out, stats


def test_a_posed_job_opens_as_it_is(posed: tuple[Path, dict]) -> None:
    out, stats = posed
    d = check_transforms(out)
    assert len(d["frames"]) == 10 and d["ply_file_path"] == "points.ply"
    rec = check_colmap(out, d)
    assert rec.num_cameras() == 1  # ten photos of one camera share it
    # a masked job has neither dense nor SfM points: points.ply samples the final mesh
    assert stats["points"] == {"source": "mesh surface samples", "count": 5000}
    pts = trimesh.load(out / "points.ply").vertices
    mesh = trimesh.load(out / "mesh.ply", force="mesh")
    from scipy.spatial import cKDTree

    # on the surface: never farther from a vertex than the longest edge
    assert len(pts) == 5000 and cKDTree(mesh.vertices).query(pts)[0].max() <= mesh.edges_unique_length.max()
    # the light web copy and its poster
    web = trimesh.load(out / "mesh_web.glb", force="mesh")
    assert 0 < len(web.faces) <= 1000 and web.visual.uv is not None
    with Image.open(out / "thumbnail.jpg") as im:
        assert im.size == (128, 128) and np.asarray(im).std() > 5
    html = (out / "report.html").read_text()
    assert 'poster="data:image/jpeg;base64,' in html
    # every published file is linked from the report
    for name in stats["files"]:
        assert f'href="{name}"' in html, name
    # the page: job state and result told apart, numbers written plainly
    assert ">job finished<" in html and "id=\"state-meaning\"" in html
    assert not re.search(r"\d\.0000<", html)


def _images(html: str) -> list[str]:
    return re.findall(r'src="data:image/(?:jpeg|png);base64,([A-Za-z0-9+/=]+)"', html)


def test_the_report_page_is_light_and_its_renders_fill_their_tiles(posed: tuple[Path, dict]) -> None:
    import base64
    import io

    from pipeline.stages.report import HELD_PX, TILE_PX

    out, _stats = posed
    html = (out / "report.html").read_text()
    uris = _images(html)
    assert len(uris) == len(set(uris)), "an image is stored twice in the page"
    for u in uris:
        with Image.open(io.BytesIO(base64.b64decode(u))) as im:
            assert max(im.size) <= max(TILE_PX, HELD_PX), im.size  # stored at the size shown
    # the colour renders are cropped to the object: it spans the tile (it filled a third of it before)
    from bench.report_sheet import renders

    for colour, _shaded, _photo in renders(html).values():
        a = np.asarray(colour).astype(int)
        ys, xs = np.nonzero((a < 245).any(axis=2))
        assert max(np.ptp(xs), np.ptp(ys)) + 1 >= 0.75 * max(a.shape[:2])
    # the 3-D view shows the light copy
    assert base64.b64encode((out / "mesh_web.glb").read_bytes()).decode()[:4000] in html


def test_sizes_are_written_in_real_units_when_the_job_has_a_scale(posed: tuple[Path, dict], tmp_path: Path) -> None:
    from pipeline.report.html import display_units, render_report

    out, stats = posed
    assert display_units(None, 1.0).name == "units"
    assert display_units({"metres_per_unit": 1.0}, 0.05).name == "mm"
    assert display_units({"metres_per_unit": 1.0}, 0.5).name == "cm"
    stats = dict(stats, scale={"units": "metres", "metres_per_unit": 1.0, "uncertainty": 0.01, "method": "distance",
                               "detail": "", "samples": 1, "applied": True})
    stats["mesh"] = dict(stats["mesh"], extent=[0.1, 0.2, 0.15], volume=0.0005, area=0.1, diagonal=0.27,
                         bbox_min=[0, 0, 0], bbox_max=[0.1, 0.2, 0.15])
    stats["masks"] = {"auto": 0}
    stats["texture"] = dict(stats["texture"], projected_masks=20)
    context = {"job": {"id": "cow", "folder": "cow", "state": "done", "error": None, "stage": None, "version": "x",
                       "device": "cpu", "finished": "now"}, "stats": stats, "renders": [], "heldout": [],
               "scene": None, "timings": [{"stage": "geometry", "seconds": 12.3456, "skipped": False,
                                           "peak_rss_mb": 698.0, "peak_vram_mb": None},
                                          {"stage": "refine", "seconds": 20.0, "skipped": False,
                                           "peak_rss_mb": 700.0, "peak_vram_mb": 2049.3}],
               "config": {}, "config_rows": [], "masks_preview": "data:image/jpeg;base64,AA==", "viewer": None,
               "no_viewer": None, "published": sorted(stats["files"]), "photos": [], "failure": None, "poster": None}
    render_report(context, tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    size = re.search(r'id="mesh-size">([^<]*)<', html).group(1)
    assert size == "10.0 cm × 20.0 cm × 15.0 cm"
    assert re.search(r'id="mesh-volume">500 ml<', html) and re.search(r'id="mesh-area">1,000 cm²<', html)
    assert "world units" not in html
    # 20 photos outlined: the count is the outlined photos, not the automatic masks (0)
    text = re.search(r'id="masks-text">([^<]*)<', html).group(1)
    assert text.startswith("20 photo(s) came without a mask") and "0 view(s)" not in html
    assert ">698<" in html and ">12.3<" in html and "698.0000" not in html
    # the job's peak GPU memory (the largest stage's) beside the smallest card the defaults are checked on
    assert re.search(r'id="peak-gpu">2,?049<', html) and "checked to run on a card with 24 GB" in html


@pytest.mark.skipif(shutil.which("node") is None or not (Path(__file__).resolve().parents[1] / "node_modules"
                                                       / "gltf-validator").is_dir(),
                    reason="node + npm's gltf-validator not installed (npm ci)")
def test_the_web_copy_passes_the_khronos_validator(posed: tuple[Path, dict]) -> None:
    import subprocess

    from tests.conftest import REPO

    out, _stats = posed
    res = subprocess.run(["node", str(REPO / "tools" / "gltf_validate.js"), str(out / "mesh_web.glb")],
                         capture_output=True, text=True, timeout=120, env={"NODE_PATH": str(REPO / "node_modules"),
                                                                            "PATH": "/usr/bin:/bin"})
    report = json.loads(res.stdout)
    assert report["numErrors"] == 0 and report["numWarnings"] == 0, report["messages"][:5]
    assert report["info"]["extensionsRequired"] == ["KHR_mesh_quantization"]
    assert report["info"]["totalTriangleCount"] <= 1000


def test_export_images_false_leaves_the_photos_out(tmp_path: Path) -> None:
    tiny_job(tmp_path / "inbox" / "cow", views=8, size=48)
    overrides = TINY | {"export": TINY["export"] | {"images": False}, "texture": {"enabled": False}}
    _, out, stats = _run(tmp_path / "inbox", "cow", tmp_path, overrides)
    assert not (out / "images").exists() and stats["exports"]["images_written"] is False
    d = json.loads((out / "transforms.json").read_text())
    assert [fr["file_path"] for fr in d["frames"]][:1] == ["images/r_000.png"]  # where to put them
    assert "export.images = false" in (out / "report.html").read_text()


def test_the_export_setting_is_validated() -> None:
    from daemon.config import build_settings

    with pytest.raises(ValueError, match="export.images"):
        build_settings({"export": {"images": "sometimes"}})
    with pytest.raises(ValueError, match="export.web_faces"):
        build_settings({"export": {"web_faces": 0}})


def test_an_unposed_job_publishes_the_sfm_reconstruction(unposed_wall: tuple[Path, dict, Path]) -> None:
    """COLMAP's own model, written by pycolmap: one shared camera, point tracks, keypoints at the photos' size."""
    out, stats, _scene = unposed_wall
    d = check_transforms(out)
    rec = check_colmap(out, d)
    assert stats["exports"]["colmap"]["writer"].startswith("pycolmap")
    assert rec.num_cameras() == 1  # the photos share one camera, as SfM estimated it
    assert rec.num_points3D() > 100 and rec.compute_mean_track_length() >= 2
    # the tracks are right where the published cameras see them: keypoints scaled to the original photo size and
    # points moved into the mesh's frame together with the cameras
    errors = []
    for pid in list(rec.point3D_ids())[:300]:
        p = rec.point3D(pid)
        for el in p.track.elements:
            im = rec.image(el.image_id)
            xy = im.points2D[el.point2D_idx].xy
            proj = rec.camera(im.camera_id).img_from_cam(im.cam_from_world() * p.xyz)
            errors.append(np.linalg.norm(np.asarray(proj) - np.asarray(xy)))
    assert np.median(errors) < 2.0, np.median(errors)
    assert stats["points"]["source"] in ("dense points", "SfM points")


def test_video_frames_are_exported_under_the_names_the_cameras_use(tmp_path: Path) -> None:
    """A video job's cameras name sampled frames that exist only in the work folder: they are copied into images/."""
    from pipeline.io.photos import export_photos
    from tests.test_inputs import _ctx, _ingest, _video

    job = tmp_path / "clip"
    job.mkdir()
    _video(job / "walk.mp4", 20, set(range(20)))
    ctx = _ctx(job, images={"video_frames": 4}, limits={"min_images": 4})
    man = _ingest(ctx)
    sources = {fr.name: man.path_of(fr, ctx) for fr in man.frames}
    written = export_photos(sources, tmp_path / "out")
    assert len(written) == 4
    for p, fr in zip(written, man.frames):
        assert p.path == f"images/{fr.name}" and (tmp_path / "out" / p.path).is_file()
        with Image.open(tmp_path / "out" / p.path) as im:
            assert im.size == (fr.width, fr.height)


def test_rotated_and_heic_photos_are_written_upright(tmp_path: Path) -> None:
    """The cameras describe the upright photo: one stored rotated (EXIF) is written upright, not copied."""
    from pipeline.io.photos import export_photos

    src = tmp_path / "in"
    src.mkdir()
    im = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (32, 1)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    im.convert("RGB").save(src / "rot.jpg", exif=exif)
    im.convert("RGB").save(src / "plain.jpg")
    written = {p.name: p for p in export_photos({"rot.jpg": src / "rot.jpg", "plain.jpg": src / "plain.jpg"},
                                                tmp_path / "out")}
    assert written["plain.jpg"].copied and (tmp_path / "out/images/plain.jpg").read_bytes() == (src / "plain.jpg").read_bytes()
    assert not written["rot.jpg"].copied
    with Image.open(tmp_path / "out" / written["rot.jpg"].path) as out:
        assert out.size == (32, 64) and out.getexif().get(0x0112, 1) == 1


def test_publish_copies_subfolders_and_refuses_paths_out_of_the_job(tmp_path: Path) -> None:
    from pipeline.io.publish import publish

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"x")
    final = publish({"images/a.jpg": src / "a.jpg", "sparse/0/cameras.txt": src / "a.jpg"}, tmp_path / "out", "job")
    assert (final / "images" / "a.jpg").read_bytes() == b"x" and (final / "sparse" / "0" / "cameras.txt").is_file()
    for bad in ("../a.jpg", "/etc/a.jpg", "images/../../a.jpg", ".hidden", "images/.a.jpg", "images//a.jpg"):
        with pytest.raises(ValueError, match="bad file name"):
            publish({bad: src / "a.jpg"}, tmp_path / "out2", "job")


def test_the_web_copy_keeps_every_face_where_pymeshlab_lacks_its_texture_plugin(monkeypatch) -> None:
    """A minimal pymeshlab (its texture plugin left out) must not fail the report stage: the web copy is then the
    whole textured mesh."""
    import pymeshlab

    from pipeline.io.export import decimate_textured

    mesh = trimesh.creation.icosphere(subdivisions=3)
    uv = np.random.default_rng(0).random((len(mesh.vertices), 2))
    low, low_uv = decimate_textured(mesh, uv, 200)
    assert len(low.faces) <= 200 and len(low_uv) == len(low.vertices)
    monkeypatch.delattr(pymeshlab.MeshSet, "compute_texcoord_transfer_vertex_to_wedge")
    same, same_uv = decimate_textured(mesh, uv, 200)
    assert same is mesh and same_uv is uv


def test_obj_rows_match_numpy_savetxt(tmp_path: Path) -> None:
    """The OBJ writer's one-string formatting against numpy's own row writer (a plain reference), in several chunks."""
    import io

    from pipeline.io import export

    rng = np.random.default_rng(3)
    rows = rng.normal(size=(70_000, 3)) * 100
    faces = rng.integers(1, 10**6, size=(70_000, 9))
    for fmt, data in (("v %.6f %.6f %.6f", rows), ("f %d/%d/%d %d/%d/%d %d/%d/%d", faces)):
        ours, ref = io.StringIO(), io.StringIO()
        export._write_rows(ours, fmt, data)
        np.savetxt(ref, data, fmt=fmt)
        assert ours.getvalue() == ref.getvalue()


def test_the_colmap_writer_is_started_ahead_only_where_the_sfm_model_is_written(tmp_path: Path) -> None:
    """The report starts pycolmap's child ahead only for SfM's own model: SfM placed the photos, left its model,
    and they share one size (photos of several sizes, or given poses, get hotmesh's writer and no child)."""
    from types import SimpleNamespace

    from pipeline.cameras.camera_files import PhotoCamera
    from pipeline.stages.base import DONE_MARKER
    from pipeline.stages.exports import writes_sfm_model

    cams_dir = tmp_path / "stages" / "cameras"
    (cams_dir / "sfm" / "sparse").mkdir(parents=True)
    ctx = SimpleNamespace(work_dir=tmp_path)

    def cameras(source: str, sizes: list[tuple[int, int]]) -> bool:
        summary = {"source": source, "normalization": {"matrix": np.eye(4).tolist()}}
        (cams_dir / DONE_MARKER).write_text(json.dumps({"key": "k", "summary": summary}))
        cams = [PhotoCamera(f"{i}.jpg", w, h, np.eye(3), (0.0,) * 4, "OPENCV", np.eye(4)).to_json()
                for i, (w, h) in enumerate(sizes)]
        (cams_dir / "photos.json").write_text(json.dumps(cams))
        return writes_sfm_model(ctx)

    assert cameras("sfm", [(640, 480)] * 3)
    assert not cameras("sfm", [(640, 480), (480, 640), (640, 360)])
    assert not cameras("transforms", [(640, 480)] * 3)
    (cams_dir / "photos.json").unlink()
    assert not writes_sfm_model(ctx)


@pytest.mark.timeout(90)  # the bug this guards against hangs: fail instead
def test_a_hung_colmap_writer_is_stopped_at_its_timeout(tmp_path: Path) -> None:
    """pycolmap's writer hangs (here: the files it writes are named pipes nobody reads). The export gives up at its
    timeout and its child is stopped, so the report is not held up: before, the child pool's shutdown waited for
    the hung child for ever."""
    import os
    import time

    from pipeline.cameras.colmap_model import export_sfm_model

    pycolmap = pytest.importorskip("pycolmap")
    model = tmp_path / "sparse" / "0"
    model.mkdir(parents=True)
    pycolmap.Reconstruction().write(str(model))
    (tmp_path / "out").mkdir()
    for name in ("rigs.txt", "cameras.txt", "frames.txt", "images.txt", "points3D.txt"):
        os.mkfifo(tmp_path / "out" / name)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        export_sfm_model(tmp_path / "sparse", tmp_path / "out", np.eye(4), {}, (64, 48), timeout=5)
    assert time.monotonic() - t0 < 40
