"""Benchmark objects (bench/objects.py) and set rendering (bench/make_sets.py) with the shared renderers.

Objects are built coarse (edge_scale 3) except where density itself is checked; the renders are tiny."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from bench import objects as bo
from bench.make_sets import main as make_sets
from tests.conftest import shared_tools

COARSE = 3.0
GENUS = {"bottle": 0, "relief_disc": 0, "armchair": 6, "cup": 1, "plain_vase": 0, "stool": 3, "lamp": 0, "bench": 1,
         "bowl": 0, "picture_frame": 1, "kettle": 1}


@pytest.fixture(scope="module")
def objs() -> dict[str, trimesh.Trimesh]:
    return {name: bo.make(name, seed=3, edge_scale=COARSE) for name in bo.OBJECTS}


def luminance(mesh: trimesh.Trimesh) -> np.ndarray:
    """Per-face luminance in 0..1."""
    return mesh.visual.face_colors[:, :3] @ np.array([0.299, 0.587, 0.114]) / 255.0


def test_every_object_is_one_closed_upright_solid_of_the_expected_genus(objs: dict[str, trimesh.Trimesh]) -> None:
    assert set(objs) == set(GENUS)
    for name, mesh in objs.items():
        info = bo.describe(mesh, name)
        assert info.watertight and mesh.is_winding_consistent and mesh.volume > 0, name
        assert info.components == 1, (name, info.components)
        assert info.genus == GENUS[name], (name, info.genus)
        assert abs(mesh.bounds[0][2]) < 1e-6, (name, mesh.bounds)       # resting on z = 0
        assert 0.18 < max(info.size) < 1.0, (name, info.size)
        assert len(mesh.visual.face_colors) == len(mesh.faces)


def test_faces_are_small_at_the_default_density_and_scale_with_edge_scale(objs: dict[str, trimesh.Trimesh]) -> None:
    fine = bo.describe(bo.make("bottle"), "bottle")
    target = max(fine.size) * bo.EDGE_FRACTION                          # 1.5 px when the object spans 384 px
    assert fine.edge_mean < 1.1 * target and fine.edge_max < 1.5 * target    # quad diagonals: sqrt(2) * target
    assert fine.faces > 100_000
    for name, mesh in objs.items():
        edges = mesh.edges_unique_length
        target = mesh.extents.max() * bo.EDGE_FRACTION * COARSE
        assert np.percentile(edges, 95) < 1.6 * target, name


def test_cup_has_a_cavity_with_a_floor(objs: dict[str, trimesh.Trimesh]) -> None:
    cup = objs["cup"]
    assert cup.volume < 0.4 * cup.convex_hull.volume
    # straight down the axis: the first surface is the cavity floor, far below the rim
    loc, _, _ = cup.ray.intersects_location([[0, 0, 1.0]], [[0, 0, -1.0]], multiple_hits=True)
    assert loc[:, 2].max() == pytest.approx(bo.CUP_FLOOR, abs=0.003)


def test_armchair_has_a_gap_between_seat_and_back(objs: dict[str, trimesh.Trimesh]) -> None:
    chair = objs["armchair"]
    z_gap = (bo.CHAIR_SEAT_TOP + bo.CHAIR_BACK_BOTTOM) / 2
    # rays from the front to the back, through the chair's middle
    assert not chair.ray.intersects_any([[0, -2.0, z_gap]], [[0, 1.0, 0]])[0]
    assert chair.ray.intersects_any([[0, -2.0, 0.72]], [[0, 1.0, 0]])[0]              # the back slab
    assert chair.ray.intersects_any([[0, -2.0, bo.CHAIR_SEAT_TOP - 0.01]], [[0, 1.0, 0]])[0]  # the seat


def test_lamp_shade_overhangs_the_table_beside_a_thin_stem(objs: dict[str, trimesh.Trimesh]) -> None:
    lamp = objs["lamp"]
    shift = -(-bo.LAMP_BASE_R + 0.10 + bo.LAMP_SHADE_R) / 2          # _on_ground centres the x extent
    stem_x, beyond_base = -0.035 + shift, bo.LAMP_BASE_R + shift + 0.03
    # straight down beyond the base's edge: the shade's top and bottom, then nothing down to the table
    loc, _, _ = lamp.ray.intersects_location([[beyond_base, 0, 1.0]], [[0, 0, -1.0]], multiple_hits=True)
    assert len(loc) == 2 and loc[:, 2].min() > 0.25
    # across at mid height: the stem is hit, the space under the shade is not
    assert lamp.ray.intersects_any([[stem_x, -1.0, 0.15]], [[0, 1.0, 0]])[0]
    assert not lamp.ray.intersects_any([[beyond_base, -1.0, 0.15]], [[0, 1.0, 0]])[0]
    stem = lamp.vertices[(lamp.vertices[:, 2] > 0.1) & (lamp.vertices[:, 2] < 0.25)]
    assert np.ptp(stem[:, 0]) < 4 * bo.LAMP_TUBE_R                     # a thin tube, nothing else at that height


def test_bench_shows_the_table_through_its_slot_and_between_its_legs(objs: dict[str, trimesh.Trimesh]) -> None:
    b = objs["bench"]
    leg_x = bo.BENCH_W / 2 - 0.05
    assert not b.ray.intersects_any([[0, 0, 1.0]], [[0, 0, -1.0]])[0]                  # down through the slot
    assert b.ray.intersects_any([[0, 0.05, 1.0]], [[0, 0, -1.0]])[0]                    # beside it: the top
    assert not b.ray.intersects_any([[0, -1.0, 0.07]], [[0, 1.0, 0]])[0]                # under the top
    assert b.ray.intersects_any([[leg_x, -1.0, 0.07]], [[0, 1.0, 0]])[0]                # a leg


def test_bowl_frame_and_kettle_have_their_hollow_window_and_handle(objs: dict[str, trimesh.Trimesh]) -> None:
    bowl, frame, kettle = objs["bowl"], objs["picture_frame"], objs["kettle"]
    # the bowl: straight down its axis, the inside floor first, then its underside, held off the table by the foot
    loc, _, _ = bowl.ray.intersects_location([[0, 0, 1.0]], [[0, 0, -1.0]], multiple_hits=True)
    assert sorted(loc[:, 2].round(3)) == pytest.approx([bo.BOWL_FOOT_H - 0.004, bo.BOWL_FOOT_H + bo.BOWL_WALL],
                                                       abs=0.002)
    assert bowl.volume < 0.25 * bowl.convex_hull.volume
    # the frame: the room through its window, the border beside it, the easel leg standing behind it
    assert not frame.ray.intersects_any([[0.045, -1.0, 0.14]], [[0, 1.0, 0]])[0]
    assert frame.ray.intersects_any([[0.09, -1.0, 0.14]], [[0, 1.0, 0]])[0]
    assert frame.ray.intersects_any([[0, frame.bounds[1][1] - 0.01, 1.0]], [[0, 0, -1.0]])[0]
    # the kettle: the room under its arched handle, above the lid; the arch itself higher up
    assert not kettle.ray.intersects_any([[-1.0, 0, 0.155]], [[1.0, 0, 0]])[0]
    assert kettle.ray.intersects_any([[-1.0, 0, 0.18]], [[1.0, 0, 0]])[0]


def test_relief_disc_is_thick_and_its_relief_is_1_to_4_mm(objs: dict[str, trimesh.Trimesh]) -> None:
    disc = objs["relief_disc"]
    assert disc.extents[:2] == pytest.approx([0.30, 0.30], abs=1e-3)
    v = disc.vertices
    top = v[v[:, 2] >= 0.03 - 1e-9]
    relief = top[:, 2] - 0.03
    assert 0.001 <= relief.max() <= 0.004
    assert 0.01 < (relief > 0.0005).mean() < 0.5                         # raised parts, but mostly flat top
    fine = bo._relief_height(np.array([[0.105, 0.0], [0.132, 0.0], [0.0, 0.145]]))
    assert fine[0] == pytest.approx(0.003) and fine[1] == pytest.approx(0.002) and fine[2] == 0.0


def test_textured_objects_vary_in_colour_and_the_plain_vase_barely(objs: dict[str, trimesh.Trimesh]) -> None:
    for name, mesh in objs.items():
        lum = luminance(mesh)
        rgb = mesh.visual.face_colors[:, :3]
        if name in bo.PLAIN:
            assert lum.std() < 0.02 and np.ptp(lum) < 0.12, (name, lum.std())
        else:
            assert lum.std() > 0.1, (name, lum.std())
            assert len(np.unique(rgb, axis=0)) > 2000, name


def test_colours_are_seeded() -> None:
    a = bo.make("stool", seed=1, edge_scale=4.0).visual.face_colors
    b = bo.make("stool", seed=1, edge_scale=4.0).visual.face_colors
    c = bo.make("stool", seed=2, edge_scale=4.0).visual.face_colors
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_describe_and_unknown_names() -> None:
    info = bo.describe(bo.make("cup", edge_scale=4.0), "cup")
    assert (info.name, info.watertight, info.genus, info.components) == ("cup", True, 1, 1)
    assert info.size[2] == pytest.approx(bo.CUP_H, abs=1e-3) and info.volume > 0
    with pytest.raises(KeyError, match="known: bottle"):
        bo.make("teapot")
    with pytest.raises(ValueError, match="edge_scale"):
        bo.bottle(edge_scale=0)


def test_make_sets_renders_tiny_scene_and_masked_sets_and_skips_them_next_time(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tools = shared_tools()
    out = tmp_path / "sets"
    argv = [str(out), "--kind", "scene", "masked", "--objects", "cup", "--views", "6", "--width", "96",
            "--height", "72", "--res", "64", "--edge-scale", "4", "--workers", "1", "--tools", str(tools),
            "--scene-args", "--texel 0.05", "--masked-args", "--ss 1"]
    assert make_sets(argv) == 0
    printed = capsys.readouterr().out
    assert f"{out / 'cup_scene'}  6 views" in printed and f"{out / 'cup_masked'}  6 views" in printed

    scene = out / "cup_scene"
    jpgs = sorted((scene / "images").glob("IMG_*.jpg"))
    assert len(jpgs) == 6 and Image.open(jpgs[0]).size == (96, 72) and Image.open(jpgs[0]).mode == "RGB"
    poses = json.loads((out / "cup_scene.poses.json").read_text())
    assert (poses["w"], poses["h"], len(poses["frames"])) == (96, 72, 6)
    assert not (scene / "transforms.json").exists()                      # unposed unless --posed
    gt = trimesh.load(scene / "gt.ply", force="mesh")
    assert gt.bounds[0][2] == pytest.approx(0.0, abs=1e-4) and gt.extents[2] == pytest.approx(bo.CUP_H, abs=2e-3)

    masked = out / "cup_masked"
    pngs = sorted((masked / "images").glob("r_*.png"))
    assert len(pngs) == 6
    alpha = np.asarray(Image.open(pngs[0]))[..., 3]
    assert alpha.shape == (64, 64) and alpha.min() == 0 and alpha.max() == 255
    assert len(json.loads((masked / "transforms.json").read_text())["frames"]) == 6
    assert (masked / "gt.ply").is_file() and (out / "_meshes" / "cup-s13-e4.ply").is_file()

    sets = {s["name"]: s for s in json.loads((out / "sets.json").read_text())["sets"]}
    assert set(sets) == {"cup_scene", "cup_masked"}
    assert sets["cup_scene"]["command"][1].endswith("render_scene.py") and sets["cup_scene"]["size"] == [96, 72]
    assert sets["cup_masked"]["command"][1].endswith("render_set.py") and sets["cup_masked"]["up"] == "z"
    assert sets["cup_masked"]["seed"] == 13 and sets["cup_masked"]["views"] == 6

    assert {s["status"] for s in sets.values()} == {"done"}

    mtime = jpgs[0].stat().st_mtime_ns
    assert make_sets(argv) == 0
    assert capsys.readouterr().out.count("skip ") == 2 and jpgs[0].stat().st_mtime_ns == mtime

    # an interrupted set (sets.json still says rendering) is rendered again; a complete one is not
    manifest = json.loads((out / "sets.json").read_text())
    for s in manifest["sets"]:
        if s["name"] == "cup_masked":
            s["status"] = "rendering"
    (out / "sets.json").write_text(json.dumps(manifest))
    (masked / "images" / "r_005.png").unlink()
    assert make_sets(argv) == 0
    printed = capsys.readouterr().out
    assert f"skip {scene}: complete" in printed and f"{masked}  6 views" in printed
    assert len(list((masked / "images").glob("r_*.png"))) == 6 and jpgs[0].stat().st_mtime_ns == mtime


def test_make_sets_never_replaces_a_folder_it_did_not_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tools = shared_tools()
    foreign = tmp_path / "stool_masked"
    (foreign / "images").mkdir(parents=True)
    (foreign / "images" / "mine.png").write_bytes(b"not ours")
    assert make_sets([str(tmp_path), "--kind", "masked", "--objects", "stool", "--tools", str(tools)]) == 0
    assert "sets.json does not list it" in capsys.readouterr().out
    assert (foreign / "images" / "mine.png").read_bytes() == b"not ours"
    assert not (tmp_path / "_meshes").exists()


def test_make_sets_rejects_unknown_objects(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        make_sets(["/nonexistent", "--objects", "teapot"])
    assert "unknown object(s) teapot" in capsys.readouterr().err


def test_alignment_names_a_misplaced_camera_and_fits_without_it() -> None:
    """Cameras in a job's own frame (scaled, rotated, moved) with one of them put elsewhere by SfM: the similarity is
    recovered exactly from the others and the bad one is named; without it, every camera agrees."""
    from scipy.spatial.transform import Rotation

    from bench.scoring import TrueCameras, alignment
    from pipeline.geometry.scene import Similarity

    rng = np.random.default_rng(3)
    n = 24
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    centres = np.stack([3 * np.cos(ang), 3 * np.sin(ang), 1 + rng.uniform(0, 1, n)], 1)
    truth_w2c = np.tile(np.eye(4), (n, 1, 1))
    truth_w2c[:, :3, 3] = -centres  # identity rotations: the centre is -t
    true_sim = Similarity(scale=0.37, R=Rotation.from_euler("xyz", [20, -35, 70], degrees=True).as_matrix(),
                          t=np.array([0.5, -1.0, 2.0]))
    job_centres = true_sim.points(centres)
    job_centres[5] += np.array([1.5, 0.0, 0.0])  # ~0.4 of the spread off, in job units
    job_w2c = np.tile(np.eye(4), (n, 1, 1))
    job_w2c[:, :3, 3] = -job_centres
    names = tuple(f"IMG_{i:04d}.jpg" for i in range(n))
    K = np.tile(np.eye(3), (n, 1, 1))
    sizes = ((64, 48),) * n
    al = alignment(TrueCameras(names, K, job_w2c, sizes), TrueCameras(names, K, truth_w2c, sizes))
    assert al.misplaced == ("IMG_0005.jpg",)
    assert al.residual < 1e-9 and al.sim.scale == pytest.approx(1 / 0.37)
    clean = job_w2c.copy()
    clean[5, :3, 3] = -true_sim.points(centres[5:6])[0]
    al2 = alignment(TrueCameras(names, K, clean, sizes), TrueCameras(names, K, truth_w2c, sizes))
    assert al2.misplaced == () and al2.residual < 1e-9


def test_run_bench_draws_the_error_picture_of_a_kept_mesh(tmp_path: Path) -> None:
    import trimesh

    from bench import run_bench

    from tests.conftest import shared_tools

    shared_tools()  # skips (or, in CI, fails) without ../shared/tools, where error_map.py lives
    gt = trimesh.creation.icosphere(subdivisions=3)
    dented = gt.copy()
    dented.vertices[dented.vertices[:, 2] < -0.5] *= 0.8  # a missing part at the bottom
    gt.export(tmp_path / "gt.ply")
    dented.export(tmp_path / "mesh.ply")
    name = run_bench.error_map(tmp_path / "mesh.ply", tmp_path / "gt.ply", tmp_path / "mesh.png")
    assert name == "mesh.png" and (tmp_path / "mesh.png").stat().st_size > 10_000
    assert run_bench.error_map(tmp_path / "nope.ply", tmp_path / "gt.ply", tmp_path / "x.png").startswith("not drawn")


def test_a_point_cloud_is_scored_like_the_mesh_it_was_sampled_from() -> None:
    """The peer's fused cloud is scored on the same observable ground truth as meshes (bench.scoring.score_points):
    points on the GT score ~1, the same points moved by 1 % of the diagonal fail the tighter thresholds."""
    from bench.scoring import TrueCameras, score, score_points
    from pipeline.imaging.render import look_at

    gt = trimesh.creation.icosphere(subdivisions=4)
    Ks, w2cs = [], []
    for a in np.linspace(0, 2 * np.pi, 8, endpoint=False):
        Ks.append(np.array([[200.0, 0, 100], [0, 200.0, 100], [0, 0, 1]]))
        w2cs.append(look_at(np.array([4 * np.cos(a), 4 * np.sin(a), 1.0]), np.zeros(3), np.array([0, 0, 1.0])))
    truth = TrueCameras(tuple(f"v{i}" for i in range(8)), np.array(Ks), np.array(w2cs), ((200, 200),) * 8)
    pts = np.asarray(gt.sample(50_000))
    on = score_points(pts, gt, truth, 50_000)
    assert on["fscore@1%"] > 0.99 and on["fscore@0.5%"] > 0.95
    assert abs(on["fscore@1%"] - score(gt, gt, truth, 50_000)["fscore@1%"]) < 0.01
    diag = float(np.linalg.norm(gt.bounds[1] - gt.bounds[0]))
    off = score_points(pts * (1 + 0.01 * diag), gt, truth, 50_000)
    assert off["fscore@0.2%"] < 0.1 and off["chamfer_l1_rel"] > 0.005
    with pytest.raises(ValueError, match="points"):
        score_points(np.zeros((0, 3)), gt, truth, 1000)


def test_far_surface_finds_a_membrane_where_it_hangs_and_which_way_it_faces(tmp_path: Path) -> None:
    """A box on the table with a thin plate hung under a ledge at 75 % of its height: the far samples are the
    plate's, in the 0.7-0.8 band, half of them on its downward face; the box alone is all near."""
    from bench.far_surface import far_by_band

    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    box.apply_translation((0, 0, 0.5))
    plate = trimesh.creation.box(extents=(0.6, 0.6, 0.02))
    plate.apply_translation((1.0, 0, 0.75))  # beside the box, 0.2-0.8 away from it: far at 1 % of 1.73
    box.export(tmp_path / "gt.ply")
    trimesh.util.concatenate([box, plate]).export(tmp_path / "mesh.ply")
    alone = far_by_band(tmp_path / "gt.ply", tmp_path / "gt.ply", 0.01, 100_000)
    assert alone["precision"] > 0.99
    r = far_by_band(tmp_path / "mesh.ply", tmp_path / "gt.ply", 0.01, 100_000)
    plate_share = plate.area / (plate.area + box.area)
    assert r["precision"] == pytest.approx(1 - plate_share, abs=0.03)
    band = r["bands"][7]
    assert band["share_of_far"] > 0.9
    assert 0.4 < band["facing_down"] < 0.6  # its bottom face, not its top
