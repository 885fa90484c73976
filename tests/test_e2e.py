"""End-to-end: a real daemon subprocess, real data dropped into its inbox, real outputs checked."""
from __future__ import annotations

import json
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh

from tests.conftest import SAMPLE, TINY_SETTINGS, data, drop, set_args, tiny_job, wait_for

MESH_FILES = {"mesh.ply", "mesh.obj", "mesh.mtl", "mesh.glb"}


def _report_number(html: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}">([^<]*)<', html)
    assert m, f"#{element_id} not in report"
    return m.group(1).strip()


@pytest.mark.slow
def test_sample_matches_ground_truth_and_report_matches_files(daemon_factory, tmp_path: Path) -> None:
    """The bundled sample (36 masked renders with gt.ply, in the repository), so this runs on any clone."""
    d = daemon_factory(*set_args("geometry.voxel_resolution=160")).start()
    drop(SAMPLE, d.inbox)
    job = d.wait_state("spot", timeout=400)
    assert job["state"] == "done", job["error"]
    # the worker loaded the pipeline before it took the job (pipeline.warmup.preload), not inside its first stage
    log = d.log()
    assert re.search(r"worker \S+ loaded the pipeline on cpu in [0-9.]+s", log), log[-2000:]
    assert log.index("loaded the pipeline") < log.index("ready on")
    out = d.outbox / "spot"
    assert MESH_FILES | {"report.html", "stats.json", "job.log"} <= {p.name for p in out.iterdir()}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["quality"]["gt"]["fscore"] >= 0.6, stats["quality"]["gt"]
    # independent check of the published mesh against the GT, not trusting stats.json
    from pipeline.report.metrics import geometry_scores

    mesh = trimesh.load(out / "mesh.ply", process=False)
    gt = trimesh.load(SAMPLE / "gt.ply")
    assert geometry_scores(mesh, gt, samples=100_000, tau_rel=0.01).fscore >= 0.6
    assert mesh.is_watertight
    # the mesh stays in the cameras' frame (overlaps the GT), the GLB is +Y up (the sample is +Z up)
    glb = trimesh.load(out / "mesh.glb", force="mesh")
    assert np.allclose(glb.extents, mesh.extents[[0, 2, 1]], rtol=0.03)  # GLB: the decimated, textured copy
    # every number in the report is the file's
    html = (out / "report.html").read_text()
    assert int(_report_number(html, "mesh-vertices")) == len(mesh.vertices) == stats["mesh"]["vertices"]
    assert int(_report_number(html, "mesh-faces")) == len(mesh.faces) == stats["mesh"]["faces"]
    assert _report_number(html, "mesh-watertight") == "yes"
    # shown rounded: scores to 3 decimals, dB to 2
    assert float(_report_number(html, "gt-fscore")) == pytest.approx(stats["quality"]["gt"]["fscore"], abs=5e-4)
    assert float(_report_number(html, "heldout-iou")) == pytest.approx(stats["quality"]["heldout"]["mask_iou_mean"], abs=5e-4)
    held = stats["quality"]["heldout"]
    assert float(_report_number(html, "heldout-psnr-frame")) == pytest.approx(held["psnr_frame_mean"], abs=5e-3)
    # the whole frame adds only background, which is right: its PSNR is the union's plus 10 log10(frame / union)
    assert held["psnr_frame_mean"] > held["psnr_mean"] + 3
    assert int(_report_number(html, "input-images")) == 36
    assert stats["files"]["mesh.glb"] == (out / "mesh.glb").stat().st_size
    # offline: no external resources referenced
    assert not re.search(r'(src|href)="(https?:)?//', html)
    # the docs' contact sheets read the same renders back: colour, geometry and nearest photo per angle
    from bench.report_sheet import main as report_sheet, renders

    found = renders(html)
    assert sorted(found) == [0, 45, 90, 135, 180, 225, 270, 315] and all(len(v) == 3 for v in found.values())
    assert report_sheet([str(out / "report.html"), str(tmp_path / "sheet.jpg"), "--height", "100"]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "sheet.jpg").height == 4 * 100
    # per-stage timings in the ledger and the status JSON
    assert set(job["timings"]) >= {"ingest", "cameras", "masks", "geometry", "texture", "report", "publish"}
    status = json.loads((d.outbox / "_status" / "spot.json").read_text())
    assert status["state"] == "done" and status["progress"] == 100.0


@pytest.mark.slow
def test_lego_heldout_mask_iou(daemon_factory) -> None:
    src = data("lego")  # first: without the set, skip before starting a daemon
    d = daemon_factory(*set_args("images.max_side=400", "geometry.voxel_resolution=160")).start()
    drop(src, d.inbox)
    job = d.wait_state("lego", timeout=500)
    assert job["state"] == "done", job["error"]
    stats = json.loads((d.outbox / "lego" / "stats.json").read_text())
    held = stats["quality"]["heldout"]
    assert held["views"] == 10
    assert held["mask_iou_mean"] >= 0.9, held


def test_fox_fails_naming_missing_files_and_masks(daemon_factory) -> None:
    """Silhouettes only (geometry.method = hull) with automatic masks turned off: an unmasked set fails with
    everything the user must fix."""
    src = data("fox")  # first: without the set, skip before starting a daemon
    d = daemon_factory(*set_args("geometry.method=hull", "masks.auto=off")).start()
    drop(src, d.inbox)
    job = d.wait_state("fox", timeout=120)
    assert job["state"] == "failed"
    err = job["error"]
    assert "no masks" in err and "masks/" in err
    assert "17 of 67 frames listed in transforms.json are missing" in err
    assert "images/0005.jpg" in err  # one of the 17 missing files, by name
    out = d.outbox / "fox"
    assert not (MESH_FILES & {p.name for p in out.iterdir()})
    html = (out / "report.html").read_text()
    assert "no masks" in html and "images/0005.jpg" in html


def test_bad_inputs_fail_clearly_and_daemon_survives(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory(*set_args(*TINY_SETTINGS)).start()
    src = tmp_path / "src"
    cases: dict[str, str] = {}

    def make(name: str) -> Path:
        return tiny_job(src / name, views=8)

    p = make("corrupt")  # 5 of 8 images damaged: 3 usable, below limits.min_images=4
    for f in sorted((p / "images").iterdir())[:5]:
        f.write_bytes(f.read_bytes()[:200])
    cases["corrupt"] = "damaged PNG file"
    p = make("notimage")
    for f in sorted((p / "images").iterdir())[:5]:
        f.write_text("this is not a picture")
    cases["notimage"] = "is not a JPEG, PNG, WebP, TIFF or HEIC/HEIF image"
    p = make("escape")
    target = sorted((p / "images").iterdir())[0]
    target.unlink()
    target.symlink_to("/etc/hostname")
    cases["escape"] = "symbolic links point outside the job folder"
    p = make("badjson")
    (p / "transforms.json").write_text('{"frames": [')
    cases["badjson"] = "transforms.json is not valid JSON"
    p = make("noposes")
    (p / "transforms.json").unlink()
    cases["noposes"] = "structure from motion"  # unposed: SfM runs, and 8 tiny renders do not register
    p = src / "noimages"
    p.mkdir(parents=True)
    (p / "notes.txt").write_text("oops")
    cases["noimages"] = "contains no images"
    good = make("good")
    for name in cases:
        drop(src / name, d.inbox)
    drop(good, d.inbox)
    for name, needle in cases.items():
        job = d.wait_state(name, timeout=120)
        assert job["state"] == "failed", (name, job)
        assert needle in job["error"], (name, job["error"])
        report = (d.outbox / name / "report.html").read_text()
        assert "Failed" in report
        assert not (MESH_FILES & {x.name for x in (d.outbox / name).iterdir()})
    assert d.wait_state("good", timeout=120)["state"] == "done"
    assert d.alive()


def test_cancel_running_queued_and_copying(daemon_factory, tmp_path: Path) -> None:
    # slow enough (fine grid) that the cancel lands mid-geometry
    d = daemon_factory(*set_args("geometry.voxel_resolution=320")).start()
    drop(SAMPLE, d.inbox, name="a-running")
    drop(SAMPLE, d.inbox, name="b-queued")
    wait_for(lambda: d.jobs().get("a-running", {}).get("stage") == "geometry", 120, "job to reach geometry")
    assert d.jobs()["b-queued"]["state"] == "queued"
    (d.inbox / "b-queued" / "CANCEL").write_text("")
    (d.inbox / "a-running" / "CANCEL").write_text("")
    running = d.wait_state("a-running", timeout=60)
    queued = d.wait_state("b-queued", timeout=60)
    assert running["state"] == "cancelled" and running["stage"] == "geometry"
    assert queued["state"] == "cancelled" and queued["attempts"] == 0  # never started
    for name in ("a-running", "b-queued"):
        files = {p.name for p in (d.outbox / name).iterdir()}
        assert "report.html" in files and not (MESH_FILES & files)
    assert not (d.state / "jobs" / "a-running" / "stages").exists()  # scratch removed
    # a folder still being copied (never settles) with a CANCEL in it
    copying = d.inbox / "copying"
    copying.mkdir()
    (copying / "CANCEL").write_text("")
    assert d.wait_state("copying", timeout=30)["state"] == "cancelled"
    assert not any(p.name.startswith(".") for p in d.outbox.iterdir())  # no half-published folders


# A job whose geometry stage lasts seconds (a 192-voxel hull over 12 views) while the rest is cheap: the
# interrupted and resumed runs cost little, and the interruption still lands inside geometry.
RESUME_SETTINGS = set_args(*TINY_SETTINGS, "geometry.voxel_resolution=192", "geometry.max_faces=20000")


def test_kill9_mid_stage_then_resume(daemon_factory, tmp_path: Path) -> None:
    args = RESUME_SETTINGS
    d = daemon_factory(*args).start()
    drop(tiny_job(tmp_path / "src" / "spot", views=12, size=96), d.inbox)
    wait_for(lambda: d.jobs().get("spot", {}).get("stage") == "geometry", 120, "job to reach geometry")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    row = d.jobs()["spot"]
    assert row["state"] == "running" and row["stage"] == "geometry" and row["attempts"] == 1
    # the worker died with its daemon (no orphan finishes the job behind our back)
    assert not (d.outbox / "spot").exists()
    d2 = daemon_factory(*args, root=d.root).start()
    job = d2.wait_state("spot", timeout=400)
    assert job["state"] == "done", job["error"]
    assert job["attempts"] == 2
    # resumed, not restarted: the stages before the kill came from checkpoints
    for stage in ("ingest", "cameras", "masks"):
        assert job["timings"][stage]["skipped"] is True, job["timings"]
    assert job["timings"]["geometry"]["skipped"] is False
    kinds = [e["kind"] for e in d2.events("spot")]
    assert kinds.count("requeued") == 1 and kinds.count("done") == 1
    assert trimesh.load(d.outbox / "spot" / "mesh.ply").is_watertight


def test_sigterm_checkpoints_and_next_start_resumes(daemon_factory, tmp_path: Path) -> None:
    args = RESUME_SETTINGS
    d = daemon_factory(*args).start()
    drop(tiny_job(tmp_path / "src" / "spot", views=12, size=96), d.inbox)
    wait_for(lambda: d.jobs().get("spot", {}).get("stage") == "geometry", 120, "job to reach geometry")
    assert d.stop(signal.SIGTERM, timeout=60) == 0
    row = d.jobs()["spot"]
    assert row["state"] == "queued" and row["attempts"] == 0  # a clean stop is not a failed attempt
    assert not (d.outbox / "spot").exists()
    d2 = daemon_factory(*args, root=d.root).start()
    job = d2.wait_state("spot", timeout=400)
    assert job["state"] == "done" and job["timings"]["masks"]["skipped"] is True


def test_burst_of_20_folders_each_processed_once(daemon_factory, tmp_path: Path) -> None:
    # workers retire after 8 jobs: the hand-over (twice) must lose or repeat nothing
    # a 128² texture: the jobs' atlases were most of the test's CPU time, and only the hand-over is under test
    d = daemon_factory(*set_args(*TINY_SETTINGS, "jobs.worker_max_jobs=8", "texture.cpu_size=128")).start()
    proto = tiny_job(tmp_path / "proto", views=8, size=48)
    staging = tmp_path / "burst"
    staging.mkdir()
    for i in range(20):
        shutil.copytree(proto, staging / f"job{i:02d}")
    for i in range(20):  # dropped in a burst
        (staging / f"job{i:02d}").rename(d.inbox / f"job{i:02d}")
    wait_for(lambda: len(d.jobs()) == 20 and all(j["state"] == "done" for j in d.jobs().values()), 600,
             "20 jobs done")
    jobs = d.jobs()
    assert sorted(jobs) == [f"job{i:02d}" for i in range(20)]
    for job_id in jobs:
        kinds = [e["kind"] for e in d.events(job_id)]
        assert kinds.count("created") == 1 and kinds.count("claimed") == 1 and kinds.count("done") == 1, kinds
        assert (d.outbox / job_id / "mesh.glb").exists()
    assert d.log().count("retired") >= 2
    # a restart does not turn any folder into a second job
    d.stop()
    d2 = daemon_factory(*set_args(*TINY_SETTINGS, "texture.cpu_size=128"), root=d.root).start()
    wait_for(lambda: "watching" in d2.log(), 60, "the second daemon to start")
    time.sleep(3)  # several intake scans (settle 0.5 s, rescan 1 s) over the 20 folders
    assert d2.alive()
    assert len(d2.jobs()) == 20 and all(j["attempts"] == 1 and j["state"] == "done" for j in d2.jobs().values())
