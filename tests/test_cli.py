"""The command line as users run it: process, status, demo, --help."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_SETTINGS, set_args, tiny_job


def hotmesh(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=str(REPO), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("cmd", ["run", "status", "process", "demo"])
def test_help_everywhere(cmd: str) -> None:
    r = hotmesh(cmd, "--help", timeout=60)
    assert r.returncode == 0 and "usage: hotmesh" in r.stdout


def test_process_then_status(tmp_path: Path) -> None:
    job = tiny_job(tmp_path / "in" / "cow", views=8, size=64)
    out, state = tmp_path / "out", tmp_path / "state"
    r = hotmesh("process", str(job), "--out", str(out), "--state", str(state), "--device", "cpu",
                *set_args(*TINY_SETTINGS))
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert result["state"] == "done" and Path(result["report"]).is_file()
    # a line per stage on stderr (and every few seconds within a long one), so a CPU job never looks hung
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("hotmesh: cow: running ")]
    assert [ln.split()[3] for ln in lines if ln.split()[3] in ("geometry", "texture", "report")][:1] == ["geometry"]
    assert {"ingest", "geometry", "texture", "report", "publish"} <= {ln.split()[3] for ln in lines}
    r = hotmesh("status", "--state", str(state), "--json", "--events", timeout=60)
    [row] = json.loads(r.stdout)
    assert row["id"] == "cow" and row["state"] == "done" and row["progress"] == 100.0
    assert [e["kind"] for e in row["events"]][:2] == ["created", "claimed"]
    r = hotmesh("status", "--state", str(state), timeout=60)
    assert "cow" in r.stdout and "done: 1" in r.stdout


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    r = hotmesh("process", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "geometry.voxels=3", timeout=60)
    assert r.returncode != 0 and "unknown key(s) ['voxels']" in r.stderr


@pytest.mark.slow
def test_cpu_refinement_preview_through_the_stage(tmp_path: Path) -> None:
    """refine.enabled = on with no GPU: the same stage runs through pytorch3d's CPU rasteriser."""
    job = tiny_job(tmp_path / "in" / "cow", views=8, size=64)
    out = tmp_path / "out"
    r = hotmesh("process", str(job), "--out", str(out), "--device", "cpu",
                *set_args(*TINY_SETTINGS, "refine.enabled=on", "refine.cpu_faces=800", "refine.cpu_iterations=4",
                          "refine.cpu_image_size=48"))
    assert r.returncode == 0, r.stderr[-2000:]
    stats = json.loads((out / "cow" / "stats.json").read_text())
    assert "pytorch3d" in stats["refine"]["method"] and stats["refine"]["watertight"]
    # isotropic remeshing aims at the face count within a few percent (edge length from the area)
    assert stats["mesh"]["watertight"] and stats["mesh"]["faces"] <= 800 * 1.15
    html = (out / "cow" / "report.html").read_text()
    # "isotropic", or "subdivide (...why...)" where pymeshlab's meshing plugin is missing
    assert f"mesh growth: {stats['refine']['remesh']}" in html
    assert stats["refine"]["remesh"].split(" ")[0] in ("isotropic", "subdivide")


@pytest.mark.slow
def test_demo_runs_a_real_daemon_on_the_bundled_sample(tmp_path: Path) -> None:
    r = hotmesh("demo", "--dir", str(tmp_path / "demo"), "--device", "cpu")
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    report = Path(r.stdout.strip().splitlines()[-1].removeprefix("report: "))
    assert report.is_file() and report.parent.name == "spot"
    stats = json.loads((report.parent / "stats.json").read_text())
    assert stats["quality"]["gt"]["fscore"] > 0.8  # the sample ships its ground truth


# -- folders, status, process state (issue 19: the CLI disagreed with itself about the state folder) ------------


def hotmesh_in(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """The CLI run from ``cwd`` (defaults are relative to it), with HOTMESH_* taken from ``env`` only."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HOTMESH_")}
    base["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=str(cwd), capture_output=True, text=True,
                          timeout=timeout, env=base | (env or {}))


def _ledger_with_jobs(state: Path) -> None:
    """A ledger as a running daemon leaves it: one job running in geometry at 42 %, one done, one queued."""
    from daemon.ledger import Ledger
    from daemon.states import JobState

    ledger = Ledger(state / "ledger.db")
    for name in ("apple", "bunny", "cake"):
        ledger.create_job(name, "fp")
    done = ledger.claim_next("w0")
    ledger.finish(done.id, JobState.DONE, outputs={"report": "/out/apple/report.html"})
    running = ledger.claim_next("w0")
    ledger.set_progress(running.id, "geometry", 42.0)
    ledger.close()


def test_one_folder_resolution_for_every_subcommand(tmp_path: Path) -> None:
    from daemon.folders import resolve_folders

    cwd = tmp_path
    saved = lambda state: {"inbox": "/srv/in", "outbox": "/srv/out"}  # noqa: E731 (what a daemon recorded)
    f = resolve_folders({}, {}, {}, cwd)
    assert (f.inbox, f.outbox, f.state) == (cwd / "inbox", cwd / "outbox", cwd / "hotmesh-state")
    assert f.origin["state"] == "default: next to the outbox (default ./outbox)"
    f = resolve_folders({"outbox": "demo/outbox"}, {}, {}, cwd)  # the demo's layout: state beside the outbox
    assert f.state == cwd / "demo" / "hotmesh-state" and f.origin["outbox"] == "--outbox"
    f = resolve_folders({}, {"HOTMESH_STATE": "/e/state"}, {"state": "/c/state", "outbox": "/c/out"}, cwd, saved)
    assert (f.state, f.outbox, f.inbox) == (Path("/e/state"), Path("/c/out"), Path("/srv/in"))
    assert f.origin["state"] == "HOTMESH_STATE" and f.origin["outbox"] == "config paths.outbox"
    assert "paths.json" in f.origin["inbox"]
    f = resolve_folders({"state": "s"}, {"HOTMESH_STATE": "/e/state"}, {"state": "/c/state"}, cwd)
    assert f.state == cwd / "s" and f.origin["state"] == "--state"


def test_status_finds_the_ledger_like_run_and_shows_events_and_bars(tmp_path: Path) -> None:
    r = hotmesh_in(tmp_path, "status")  # no daemon has run here yet: a sentence, not an error
    assert r.returncode == 0 and "no jobs: there is no ledger at" in r.stdout and "hotmesh run" in r.stdout
    state = tmp_path / "hotmesh-state"  # where `hotmesh run` puts it with the default ./outbox
    state.mkdir()
    _ledger_with_jobs(state)
    r = hotmesh_in(tmp_path, "status")
    assert r.returncode == 0, r.stderr
    assert f"state folder: {state} (default: next to the outbox" in r.stdout and "running: 1" in r.stdout
    r = hotmesh_in(tmp_path, "status", "--events")  # used to be ignored without --json
    assert r.returncode == 0 and "claimed" in r.stdout and "attempt 1 started on w0" in r.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for how in (["--state", str(state)], ["--outbox", str(tmp_path / "outbox")]):
        assert "bunny" in hotmesh_in(elsewhere, "status", *how).stdout
    assert "bunny" in hotmesh_in(elsewhere, "status", env={"HOTMESH_STATE": str(state)}).stdout
    (tmp_path / "h.toml").write_text(f'[paths]\nstate = "{state}"\n')
    r = hotmesh_in(elsewhere, "status", "--json", "--config", str(tmp_path / "h.toml"))
    assert [j["id"] for j in json.loads(r.stdout)] == ["apple", "bunny", "cake"]
    r = hotmesh_in(tmp_path, "status", "--watch", "--once")
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("bunny"))
    assert "geometry" in line and "42.0%" in line and "█" * 12 + "░" in line
    assert "queued: cake" in r.stdout and "apple" in r.stdout


def test_status_watch_ends_on_ctrl_c(tmp_path: Path) -> None:
    state = tmp_path / "hotmesh-state"
    state.mkdir()
    _ledger_with_jobs(state)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTMESH_")} | {"PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-m", "daemon.cli", "status", "--watch", "--interval", "0.2"],
                         cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert "bunny" in p.stdout.readline() + p.stdout.readline() + p.stdout.readline()
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)
    finally:
        p.kill()
    assert p.returncode == 0 and "Traceback" not in err


def test_process_says_where_its_state_is_and_removes_a_temporary_one(tmp_path: Path) -> None:
    job = tmp_path / "in" / "empty"
    job.mkdir(parents=True)
    (job / "notes.txt").write_text("no photos here")  # fails at ingest: quick, and a state folder was made
    for keep in (False, True):
        r = hotmesh_in(tmp_path, "process", str(job), "--out", str(tmp_path / "out"), "--device", "cpu",
                       *(["--keep-state"] if keep else []), timeout=120)
        result = json.loads(r.stdout)
        assert r.returncode == 1 and result["state"] == "failed" and "notes.txt" in result["error"]
        state = Path(result["state_folder"])
        assert f"state folder {state} (temporary" in r.stderr
        assert state.exists() == keep and result["state_kept"] == keep
        if keep:
            assert (state / "ledger.db").is_file()
            shutil.rmtree(state)


def test_retry_with_an_unknown_stage_lists_the_stages(tmp_path: Path) -> None:
    from daemon.folders import STAGES_TEXT
    from pipeline.runner import STAGE_NAMES, STAGES

    # --help and the check list the checkpointed stages, read without importing the pipeline; publishing has none
    assert STAGES_TEXT == ", ".join(s.name for s in STAGES) and STAGE_NAMES == (*(s.name for s in STAGES), "publish")
    r = hotmesh_in(tmp_path, "retry", "cow", "--from-stage", "geo")
    assert r.returncode != 0 and f"unknown stage 'geo'; the stages, in order: {STAGES_TEXT}" in r.stderr
    r = hotmesh_in(tmp_path, "retry", "cow", "--from-stage", "publish")
    assert r.returncode != 0 and "unknown stage 'publish'" in r.stderr
    readme = (REPO / "README.md").read_text()
    assert f"`{STAGES_TEXT.replace(', ', ' ')}`" in " ".join(readme.split())  # the README's list is the same


HEAVY = ("torch", "pipeline.runner", "pipeline.stages", "pipeline.geometry", "pipeline.appearance", "trimesh", "cv2",
         "scipy", "pycolmap")


def test_ledger_commands_import_neither_torch_nor_the_stages(tmp_path: Path) -> None:
    """status, cancel, retry, logs, ledger and clean only read or edit the ledger: importing torch and the stages
    would cost them tens of seconds on a loaded machine. -X importtime lists every module a command imports."""
    from daemon.ledger import Ledger
    from daemon.states import JobState

    state, inbox = tmp_path / "state", tmp_path / "inbox"
    (inbox / "cow").mkdir(parents=True)
    ledger = Ledger(state / "ledger.db")
    for name in ("cow", "calf"):
        ledger.create_job(name, "fp")
    ledger.claim_next(worker="test")
    ledger.finish("cow", JobState.FAILED, error="geometry failed")
    ledger.close()
    folders = ["--state", str(state), "--inbox", str(inbox), "--outbox", str(tmp_path / "outbox")]
    for cmd in (["status"], ["status", "--json", "--events"], ["status", "--once"], ["logs", "cow", "--events"],
                ["retry", "cow", "--from-stage", "texture"], ["cancel", "calf"], ["clean", "--dry-run"],
                ["ledger", "check"]):
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "daemon.cli", *cmd, *folders], cwd=str(REPO),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode in (0, 1), (cmd, r.stderr[-1500:])
        imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
        heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY or any(m.startswith(h + ".") or m == h
                                                                             for h in HEAVY))
        assert not heavy, f"hotmesh {' '.join(cmd)} imported {heavy[:8]}"
        assert len(imported) > 50  # importtime did report (the check above cannot pass on an empty list)
    ledger = Ledger(state / "ledger.db")
    assert ledger.get("cow").state == JobState.QUEUED and ledger.get("calf").state == JobState.QUEUED
    assert [e["kind"] for e in ledger.events("calf")][-1] == "cancel-requested"
    ledger.close()


def test_stage_progress_and_time_left() -> None:
    """The stage's own share and the time left come from the job's percentage, its start and the end of the last
    stage; the printer writes a line per stage change and at most one every few seconds within a stage."""
    from daemon.progress import ProgressPrinter, clock, describe, stage_progress
    from pipeline.stage_names import stage_span

    lo, hi = stage_span("geometry")
    assert 0 < lo < hi < stage_span("texture")[0] < 100 and stage_span("publish")[1] == pytest.approx(100.0)
    timings = {"ingest": {"ended": 1000.0}, "cameras": {"ended": 1010.0}, "masks": {"ended": 1020.0}}
    p = stage_progress("geometry", lo + 0.25 * (hi - lo), 990.0, timings, now=1050.0)
    assert p.fraction == pytest.approx(0.25) and p.elapsed == pytest.approx(30.0)
    assert p.left == pytest.approx(90.0)  # 30 s for a quarter: 90 s for the rest
    assert describe(p) == "geometry  25 %, 0:30 in, about 1:30 left"
    early = stage_progress("geometry", lo + 0.001, 990.0, timings, now=1021.0)
    assert early.left is None and "estimating" in describe(early)
    assert stage_progress(None, 0.0, None, {}, 0.0) is None and stage_progress("nosuch", 5.0, 1.0, {}, 2.0) is None
    assert clock(3725) == "1:02:05" and clock(59.6) == "1:00"

    lines: list[str] = []
    t = [0.0]
    printer = ProgressPrinter(lines.append, every=3.0, monotonic=lambda: t[0])
    status = {"state": "running", "stage": "geometry", "progress": lo, "started": 990.0, "timings": timings}
    for step in range(10):  # 10 updates over 4.5 s of one stage: the first, and one 3 s later
        t[0] = step * 0.5
        printer.update_status(status | {"progress": lo + step * 0.05 * (hi - lo)}, now=1020.0 + t[0])
    assert len(lines) == 2 and lines[1].startswith("running geometry") and "left" in lines[1]
    printer.update_status(status | {"stage": "texture", "progress": stage_span("texture")[0]}, now=1030.0)
    assert len(lines) == 3 and lines[2].startswith("running texture")

    # a step that reports nothing for a while still prints: the heartbeat repeats the last state
    import threading

    quiet: list[str] = []
    beating = ProgressPrinter(quiet.append, every=0.05)
    stop = threading.Event()
    beating.update_status(status, now=1020.0)
    thread = threading.Thread(target=beating.heartbeat, args=(stop,))
    thread.start()
    time.sleep(0.6)
    stop.set()
    thread.join(timeout=5)
    assert len(quiet) >= 3 and all(q.startswith("running geometry") for q in quiet)


def test_watch_view_shows_the_stage_and_time_left() -> None:
    from daemon.progress import render_watch
    from daemon.ledger import Job
    from daemon.states import JobState
    from pipeline.stage_names import stage_span

    lo, hi = stage_span("texture")
    job = Job(id="cow", folder="cow", fingerprint="", state=JobState.RUNNING, stage="texture",
              progress=lo + 0.5 * (hi - lo), timings={"refine": {"ended": 1000.0}}, attempts=1, error=None,
              outputs={}, worker="w", created=900.0, started=950.0, finished=None, updated=1040.0)
    [line] = [ln for ln in render_watch([job], now=1040.0) if ln.startswith("cow")]
    assert "texture  50 %, 0:40 in, about 0:40 left" in line
