"""The captures people really make, through the real pipeline on the CPU: photos of an object standing on a textured
table with a wall right behind it, no masks, close-ups cut by the image border and one camera inside the object's
bounding sphere. The job must finish (never an internal error), separate the object from table and wall, publish
its cameras in forms other tools read, and say that a full result needs the GPU path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh

from tests.scenes import SceneSpec, render_scene

# the CPU path at a size CI can afford: depth maps at 240 px, a 96-voxel surface
SMALL = {"dense": {"cpu_max_side": 240, "cpu_planes": 32, "neighbours": 4, "cpu_resolution": 96},
         "texture": {"cpu_size": 256, "cpu_max_faces": 5000}, "report": {"render_size": 96, "gt_samples": 20000}}


def _run(inbox: Path, name: str, tmp: Path, overrides: dict) -> tuple[str, Path, dict]:
    from daemon.config import build_settings
    from daemon.intake import fingerprint, snapshot
    from daemon.ledger import Ledger
    from daemon.worker import Paths, execute

    paths = Paths(inbox, tmp / "outbox", tmp / "state")
    ledger = Ledger(paths.ledger)
    ledger.create_job(name, fingerprint(snapshot(inbox / name)))
    job = ledger.claim_next("test")
    state = execute(ledger, paths, job, build_settings(overrides), "cpu")
    final = ledger.get(name)
    out = paths.outbox / name
    assert state == "done", final.error if final else None
    return state, out, json.loads((out / "stats.json").read_text())


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_scene(tmp_path_factory.mktemp("scene") / "inbox" / "wall", SceneSpec())


@pytest.fixture(scope="module")
def posed(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The posed photos through the pipeline once, shared by the tests that read its outputs (one CPU dense job
    costs a minute or more on a busy machine)."""
    _, out, stats = _run(scene.parent, scene.name, tmp_path_factory.mktemp("posed"), SMALL)
    return out, stats


def test_posed_photos_with_a_wall_behind_and_a_camera_inside_give_the_object(scene: Path,
                                                                            posed: tuple[Path, dict]) -> None:
    out, stats = posed
    assert stats["geometry"]["method"].startswith("dense multi-view stereo")
    assert stats["geometry"]["dense"]["walls"] >= 1  # the wall right behind was recognised and cut away
    # one closed surface without the tunnels depth noise leaves (the object has none; 3 pass the report's check)
    assert stats["geometry"]["dense"]["watertight"] and stats["geometry"]["dense"]["handles"] <= 3, stats["geometry"]
    assert "needs the GPU path" in stats["geometry"]["note"]
    # the mesh reaches down to the table the object stands on, as the photos measured
    base = stats["quality"]["base"]
    assert base is not None and base["share"] < 0.06, base  # the grade's bar
    gt = stats["quality"]["gt"]
    # coarse (240 px, 96 voxels) but the object alone: neither the wall nor the table is part of the mesh
    assert gt["precision"] > 0.6 and gt["fscore"] > 0.6, gt
    mesh = trimesh.load(out / "mesh.ply", force="mesh")
    obj = trimesh.load(scene / "gt.ply", force="mesh")
    assert mesh.bounds[0][2] > -0.02  # nothing below the table top
    assert mesh.bounds[0][1] > obj.bounds[0][1] - 0.1  # nothing of the wall (3 cm behind the object)
    # masks are the final mesh's projection, one per photo, for checking
    import zipfile

    with zipfile.ZipFile(out / "masks.zip") as z:
        assert len(z.namelist()) == len(list((scene / "images").iterdir()))
    assert "masks.zip" in (out / "report.html").read_text()


# refinement on with no GPU: the refine stage runs through pytorch3d's CPU rasteriser, so the stage outputs the GPU
# path hands to texture and report (a refined mesh, a full refine summary, no geometry note on a GPU) are
# exercised on every CI run, not only on the device
# the photo-consistency term turned on, so that the CPU runs the stage's path to it (auto: on a GPU only)
# the estimated silhouettes cut to the start mesh's outline (off by default), so that the cut's path runs too, and
# then fitted only where they agree with the fused outline (photos by default), so that its path runs
REFINED = {"refine": {"enabled": "on", "cpu_faces": 1500, "cpu_iterations": 6, "cpu_image_size": 64, "pair": "on",
                      "estimated_outline_px": 4.0, "estimated_silhouettes": "agree"},
           # the atlas laid out in a child while the refinement runs, as on a GPU (auto: off on the CPU)
           "texture": SMALL["texture"] | {"atlas_ahead": "on"}}


def test_dense_path_with_refinement_reaches_the_report(scene: Path, tmp_path: Path) -> None:
    from pipeline.settings import RefineConfig
    from pipeline.stages.summaries import GeometrySummary, RefineSummary, summary_keys

    _, out, stats = _run(scene.parent, scene.name, tmp_path, SMALL | REFINED)
    assert set(stats["geometry"]) == summary_keys(GeometrySummary)
    assert set(stats["refine"]) == summary_keys(RefineSummary)
    assert stats["refine"]["ran"] and "pytorch3d" in stats["refine"]["backend"]
    assert stats["refine"]["estimated_silhouettes"] > 0 and len(stats["refine"]["losses"]) > 0
    # estimated silhouettes: the photo sets' own largesteps lambda, not the given masks' one
    assert stats["refine"]["smoothness"] == RefineConfig().estimated_smoothness != RefineConfig().smoothness
    # the cut took something (the estimated silhouettes and the fused surface's outline never agree to the pixel),
    # but little: the fused surface is made from those silhouettes
    assert 0.0 < stats["refine"]["outline_cut"] < 0.1, stats["refine"]["outline_cut"]
    # the fused outline then disputes some of what is left, but not most of it
    assert stats["refine"]["outline_source"] == "agree", stats["refine"]
    assert 0.0 < stats["refine"]["outline_changed"] < 0.3, stats["refine"]["outline_changed"]
    assert "agree" in stats["refine"]["silhouette_target"]
    # the term compared a real share of the object's pixels at the preview's one level
    shares = stats["refine"]["pair_share_per_level"]
    assert shares is not None and len(shares) == 1 and shares[0] > 0.2, shares
    # the prepare step's parts are each timed and add up to it (rounding aside)
    sec = stats["refine"]["seconds"]
    parts = {k: v for k, v in sec.items() if k.startswith("prepare.")}
    assert set(parts) == {f"prepare.{p}" for p in ("mesh", "rasterizer", "views", "decimate", "targets")}, sec
    assert abs(sum(parts.values()) - sec["prepare"]) <= 0.05 + sec["prepare"] * 0.2, sec
    # the table SfM found is the refinement's floor: nothing of the refined mesh (the stage's own, in the job's
    # frame; kept jobs keep their stage folders) went under it
    *normal, height = stats["refine"]["floor"]
    kept = list((tmp_path / "state").rglob("refine/mesh.ply"))
    assert len(kept) == 1
    refined = np.asarray(trimesh.load(kept[0], force="mesh").vertices)
    assert float((refined @ np.asarray(normal)).min()) >= height - 1e-4
    html = (out / "report.html").read_text()
    assert "mesh growth:" in html and "Geometry note" in html
    gt = stats["quality"]["gt"]
    assert gt["fscore"] > 0.6, gt  # the refined mesh still overlaps the object
    assert {"mesh.glb", "mesh.obj", "mesh.ply", "texture.png"} <= {p.name for p in out.iterdir()}
    # the texture stage used the layout made from the last level's start, and the textured mesh is the refined one
    assert stats["texture"]["atlas"] == "laid out during the refinement" and stats["texture"]["texels"] == "cv2"
    assert stats["texture"]["textured_faces"] >= len(trimesh.load(kept[0], force="mesh").faces)


def test_cameras_are_published_for_nerfstudio_and_colmap(scene: Path, posed: tuple[Path, dict]) -> None:
    """transforms.json reproduces the given poses; the COLMAP text model loads in pycolmap with every photo."""
    import pycolmap

    from bench.scoring import alignment, read_nerf_cameras

    out, _ = posed
    published = read_nerf_cameras(out / "transforms.json", images=scene)
    truth = read_nerf_cameras(scene / "transforms.json")
    al = alignment(published, truth)
    assert al.residual < 1e-6 and al.sim.scale == pytest.approx(1.0, abs=1e-6)  # posed input: the user's own frame
    assert not al.misplaced
    rec = pycolmap.Reconstruction()
    rec.read_text(str(out / "sparse" / "0"))
    assert rec.num_images() == len(truth.names)
    assert trimesh.load(out / "points.ply").vertices.shape[0] > 1000


def test_unposed_photos_find_their_cameras_and_the_object(unposed_wall: tuple[Path, dict, Path]) -> None:
    """The same photos without poses: SfM places them, and the mesh, brought into the true frame by the published
    cameras (as the benchmark scores unposed jobs), overlaps the object."""
    from bench.scoring import alignment, moved, read_nerf_cameras, score

    out, stats, scene = unposed_wall
    assert stats["cameras"]["sfm"]["registered"] >= 0.7 * len(list((scene / "images").iterdir()))
    truth = read_nerf_cameras(scene / "transforms.json")
    al = alignment(read_nerf_cameras(out / "transforms.json", images=scene), truth)
    assert al.residual < 0.01 and not al.misplaced  # every camera centre within 1 % of their spread
    mesh = moved(trimesh.load(out / "mesh.ply", force="mesh"), al.sim)
    s = score(mesh, trimesh.load(scene / "gt.ply", force="mesh"), truth, 50_000)
    assert s["fscore@1%"] > 0.5, s
    assert np.isfinite(s["chamfer_l1_rel"])
    # the held-out photos' SfM points were checked against the mesh, and the grade says what it found
    hp = stats["quality"]["heldout_points"]
    assert hp is not None and hp["observations"] >= 30 and 0 <= hp["missed"] <= hp["observations"]
    check = {c["name"]: c for c in stats["grade"]["checks"]}["heldout_points"]
    assert check["value"] == pytest.approx(hp["missed"] / hp["observations"])
    # the base check measures heights above the table SfM found: the object's height, and the mesh reaches down
    base = stats["quality"]["base"]
    z = np.ptp(trimesh.load(out / "mesh.ply", force="mesh").vertices[:, 2])  # the job's frame has +Z up
    assert base is not None and base["height"] == pytest.approx(z, rel=0.25) and base["share"] < 0.06, (base, z)
