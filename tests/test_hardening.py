"""Issue 20: the faults an adversarial run found, each reproduced first, then shown handled.

Real file-system faults where they matter: a full tmpfs for the state folder, `chattr +i` for an unwritable
outbox (both need root; skipped with the reason where the kernel refuses), inotify to prove no file behind a
link was opened. Jobs are the suite's tiny ones; daemon-level policies run in process with an executor that
never starts a job, so they cost no worker start-up.
"""
from __future__ import annotations

import json
import logging
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from daemon.config import build_settings
from daemon.ledger import Ledger
from daemon.ops import check_disk, estimate_job_bytes
from daemon.states import JobState
from daemon.worker import Paths, execute
from pipeline.context import InputError, JobContext, JobLogAdapter
from tests.conftest import REPO, TINY_SETTINGS, drop, set_args, tiny_job, wait_for
from tests.faults import FaultUnavailable, OpenWatch, can_inject, fill, hidden_entries, immutable, tmpfs

TINY = {"limits": {"min_images": 4}, "geometry": {"voxel_resolution": 32}, "report": {"render_size": 48, "gt_samples": 2000},
        "texture": {"cpu_size": 256}}


def _paths(root: Path) -> Paths:
    p = Paths(inbox=root / "inbox", outbox=root / "outbox", state=root / "state")
    for d in (p.inbox, p.outbox, p.state):
        d.mkdir(parents=True, exist_ok=True)
    return p


def _settings(**sections: dict[str, Any]):
    merged = {k: dict(v) for k, v in TINY.items()}
    for k, v in sections.items():
        merged.setdefault(k, {}).update(v)
    return build_settings(merged)


def _ctx(job_dir: Path, work: Path, settings) -> JobContext:
    work.mkdir(parents=True, exist_ok=True)
    return JobContext(job_id=job_dir.name, input_dir=job_dir, work_dir=work, settings=settings.pipeline,
                      device="cpu", log=JobLogAdapter(logging.getLogger("test.hardening"), {"job_id": job_dir.name}))


def _skip_unless_root() -> None:
    why = can_inject()
    if why:
        pytest.skip(why)


def hotmesh(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=str(REPO), capture_output=True, text=True,
                          timeout=timeout)


class NoSlots:
    """An executor that never has a free slot: the daemon's intake and ledger policies, without a worker."""

    name = "none"

    def start(self) -> None: ...
    def free_slot(self) -> None: return None
    def submit(self, slot: str, job: Any) -> None: raise AssertionError("nothing is submitted")
    def poll(self) -> list: return []
    def cancel(self, job_id: str) -> None: ...
    def running(self) -> dict: return {}
    def describe(self) -> list: return []
    def stop(self, grace: float) -> None: ...


@pytest.fixture
def inproc_daemon(monkeypatch: pytest.MonkeyPatch):
    """A real Daemon (ledger, intake, status files) in this process, with :class:`NoSlots` as its executor."""
    from daemon.service import Daemon

    monkeypatch.setattr(Daemon, "_make_executor", lambda self: NoSlots())
    made: list[Daemon] = []

    def make(paths: Paths, **intake: Any) -> Daemon:
        settings = _settings(intake={"settle_seconds": 0.2, "rescan_seconds": 0.2, **intake})
        d = Daemon(paths, settings, gpus="cpu")
        d.start()
        made.append(d)
        return d

    yield make
    for d in made:
        try:
            d.stop()
        except Exception:  # already stopped by the test
            pass


def ticks(d, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        d.tick()
        time.sleep(0.05)


def ledger_ok(path: Path) -> bool:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


# -- 1. a full state disk -------------------------------------------------------------------------------


def test_ledger_write_failures_are_kept_in_memory_and_written_later(tmp_path: Path, inproc_daemon) -> None:
    """Reproduces the daemon's crash: a worker lost while the state disk is full made requeue() raise
    'database or disk is full' and the daemon exit. Now the change waits in memory and the daemon goes on."""
    _skip_unless_root()
    from daemon.executors import Lost

    try:
        with tmpfs(tmp_path / "state", 8):
            paths = _paths(tmp_path)
            d = inproc_daemon(paths)
            job, _ = d.ledger.create_job("scan", "fp")
            d.ledger.claim_next("host:cpu:1")
            filler = fill(paths.state)
            d._handle(Lost("scan", "worker process killed by SIGKILL"))  # as executor.poll() hands it over
            assert d.health()["ledger_ok"] is False and d.health()["pending_writes"] >= 1
            assert d.ledger.get("scan").state == JobState.RUNNING  # not written...
            status = json.loads(paths.status_file("scan").read_text())
            assert status["state"] == "queued"  # ...but the job's state is known and shown
            daemon_status = json.loads((paths.outbox / "_status" / "_daemon.json").read_text())
            assert not daemon_status["ledger_ok"] and "full" in daemon_status["ledger"]
            d.tick()  # still full: no exception, nothing lost
            filler.unlink()
            d.tick()
            assert d.ledger.get("scan").state == JobState.QUEUED and d.health()["ledger_ok"]
            assert "requeued" in [e["kind"] for e in d.ledger.events("scan")]
            fill(paths.state)
            d.stop()  # the stop event cannot be written either: logged, not raised
            (paths.state / "filler").unlink()
            assert ledger_ok(paths.ledger)
    except FaultUnavailable as e:
        pytest.skip(str(e))


def test_daemon_survives_a_full_state_disk_during_a_job(daemon_factory, tmp_path: Path) -> None:
    """The issue's reproduction: state on a tmpfs, ops.min_free_mb=0, the disk filled during geometry. The
    daemon stays up, the job goes back to the queue, and it resumes from its checkpoint once space is back."""
    _skip_unless_root()
    root = tmp_path / "root"
    try:
        with tmpfs(root / "state", 64) as state:
            # a grid fine enough that geometry lasts a few seconds: the disk fills while it runs
            d = daemon_factory(*set_args(*TINY_SETTINGS, "ops.min_free_mb=0", "geometry.voxel_resolution=128"),
                               root=root).start()
            drop(tiny_job(tmp_path / "src" / "cow", views=10, size=64), d.inbox)
            wait_for(lambda: d.jobs().get("cow", {}).get("stage") == "geometry", 120, "job to reach geometry")
            filler = fill(state)

            def status(job: str) -> dict:
                try:
                    return json.loads((d.outbox / "_status" / f"{job}.json").read_text())
                except (OSError, ValueError):
                    return {}

            # the attempt ends (disk full) and the job is queued again; the daemon, which cannot write that into
            # the ledger either, keeps it in memory and shows it
            wait_for(lambda: status("cow").get("state") == "queued", 120, "the job to be queued again")
            drop(tiny_job(tmp_path / "src" / "late", views=8, size=48), d.inbox)
            time.sleep(2)  # a folder dropped now waits: nothing new is queued while the ledger cannot be written
            assert d.alive() and "late" not in d.jobs()
            assert d.jobs()["cow"]["state"] == "running"  # the ledger's last written state
            assert json.loads((d.outbox / "_status" / "_daemon.json").read_text())["ledger_ok"] is False
            filler.unlink()
            cow = d.wait_state("cow", timeout=120)
            assert cow["state"] == "done" and cow["attempts"] == 2, cow
            assert cow["timings"]["masks"]["skipped"] is True  # resumed from its checkpoints
            assert any("disk is full" in e["message"] for e in d.events("cow") if e["kind"] == "requeued")
            d.wait_state("late", ("queued", "running", "done"), timeout=60)
            assert d.stop(signal.SIGTERM, timeout=60) == 0
            assert ledger_ok(state / "ledger.db")
            assert not hidden_entries(d.outbox)
            assert "Traceback" not in d.log(), d.log()[-3000:]
    except FaultUnavailable as e:
        pytest.skip(str(e))


def test_full_disk_in_a_job_retries_then_fails_with_its_report(tmp_path: Path) -> None:
    """An attempt stopped by a full disk is retried (the daemon's disk guard waits for space); the last one
    fails with a sentence and its report, which is built in the outbox since the state volume is the full one."""
    _skip_unless_root()
    from pipeline.runner import run_job

    job = tiny_job(tmp_path / "inbox" / "cow", views=8, size=48)
    try:
        with tmpfs(tmp_path / "state", 4) as state:
            fill(state)
            retry = run_job(_ctx(job, state / "jobs" / "cow", _settings()), "fp", tmp_path / "outbox",
                            retry_disk_full=True)
            last = run_job(_ctx(job, state / "jobs" / "cow", _settings()), "fp", tmp_path / "outbox")
    except FaultUnavailable as e:
        pytest.skip(str(e))
    assert retry.state == "retry" and "disk is full" in retry.error
    assert last.state == "failed" and last.error.startswith("the disk is full") and "hotmesh retry" in last.error
    assert (tmp_path / "outbox" / "cow" / "report.html").exists() and "report" in last.outputs


def test_job_log_on_a_full_disk_never_ends_the_worker(tmp_path: Path) -> None:
    """Found by bench/chaos.py: closing job.log on a full disk raised ENOSPC out of the worker."""
    _skip_unless_root()
    from daemon.worker import _job_logger

    try:
        with tmpfs(tmp_path / "state", 1) as state:
            jlog, handler = _job_logger("cow", state / "jobs" / "cow")
            jlog.logger.propagate = False
            jlog.info("attempt 1")
            fill(state)
            for i in range(500):
                jlog.info("a line that no longer fits on the disk %d", i)
            jlog.logger.removeHandler(handler)
            handler.close()  # raised before
    except FaultUnavailable as e:
        pytest.skip(str(e))
    assert handler.failed


# -- 2. a linked images/ folder ------------------------------------------------------------------------


def test_linked_images_folder_is_refused_before_any_file_behind_it_is_opened(tmp_path: Path) -> None:
    """It was refused, but only after every image behind the link had been opened and decoded."""
    from pipeline.io.images import validate_image
    from pipeline.stages.ingest import IngestStage

    outside = tiny_job(tmp_path / "elsewhere", views=8, size=48)
    job = tmp_path / "inbox" / "linked"
    job.mkdir(parents=True)
    shutil.copy(outside / "transforms.json", job / "transforms.json")
    (job / "images").symlink_to(outside / "images")
    settings = _settings()
    with OpenWatch(outside) as opened:
        with pytest.raises(InputError) as err:
            IngestStage().run(_ctx(job, tmp_path / "work", settings), tmp_path / "out")
        # and one image named by an absolute path (how transforms.json names it is parsed elsewhere): refused
        # by the validator without being opened
        first = sorted((outside / "images").iterdir())[0]
        res = validate_image(first, job, settings.pipeline.limits)
        # nor does the daemon's disk guard read the headers of files behind links
        (job / "extra.png").symlink_to(first)
        estimate_job_bytes(job, settings.pipeline)
    assert "symbolic links point outside the job folder" in str(err.value) and "images" in str(err.value)
    assert getattr(res, "reason", "").startswith("is outside the job folder")
    assert opened.files == [], opened.files


# -- 3. a worker killed while publishing -----------------------------------------------------------------


def test_worker_killed_while_publishing_leaves_no_hidden_folder(daemon_factory, tmp_path: Path) -> None:
    """A kill during publish left `.<job>.publishing-*` in the outbox until the daemon restarted."""
    import os

    d = daemon_factory(*set_args("limits.min_images=4", "geometry.voxel_resolution=128")).start()
    drop(tiny_job(tmp_path / "src" / "cow", views=10, size=64), d.inbox)
    row = wait_for(lambda: (j := d.jobs().get("cow")) and j["stage"] == "geometry" and j, 120, "job to reach geometry")
    # what a kill in the middle of publish leaves behind: the folder being built, and a previous result moved
    # aside just before the new one was renamed into place; another job's folder must not be touched
    (d.outbox / ".cow.publishing-0badf00d").mkdir()
    (d.outbox / ".cow.publishing-0badf00d" / "mesh.ply").write_bytes(b"half")
    (d.outbox / ".cow.old-0badf00d").mkdir()
    (d.outbox / ".cow.old-0badf00d" / "report.html").write_text("the previous result")
    (d.outbox / ".other.publishing-12345678").mkdir()
    os.kill(int(row["worker"].split(":")[2]), signal.SIGKILL)
    wait_for(lambda: "requeued" in [e["kind"] for e in d.events("cow")], 60, "the lost job to be requeued")
    assert not (d.outbox / ".cow.publishing-0badf00d").exists() and not (d.outbox / ".cow.old-0badf00d").exists()
    assert (d.outbox / "cow" / "report.html").read_text() == "the previous result"  # put back, not lost
    assert (d.outbox / ".other.publishing-12345678").exists()
    assert d.alive()


# -- 4. an outbox that is briefly unwritable ---------------------------------------------------------------


def test_unwritable_status_folder_never_fails_a_job(daemon_factory, tmp_path: Path) -> None:
    """`chattr +i outbox/_status` made the job fail on attempt 1 with 'internal error ... PermissionError'."""
    _skip_unless_root()
    d = daemon_factory(*set_args(*TINY_SETTINGS)).start()
    status_dir = d.outbox / "_status"
    status_dir.mkdir(parents=True, exist_ok=True)
    try:
        with immutable(status_dir):
            drop(tiny_job(tmp_path / "src" / "cow", views=8, size=48), d.inbox)
            job = d.wait_state("cow", timeout=120)
            assert not (status_dir / "cow.json").exists()  # nothing could be written there...
    except FaultUnavailable as e:
        pytest.skip(str(e))
    assert job["state"] == "done" and job["attempts"] == 1, job
    assert (d.outbox / "cow" / "mesh.glb").exists()
    # ...and once the folder takes writes again, the daemon catches the status file up
    wait_for(lambda: (status_dir / "cow.json").exists()
             and json.loads((status_dir / "cow.json").read_text())["state"] == "done", 30, "the status file")
    assert not hidden_entries(d.outbox)
    assert "Traceback" not in d.log()


def test_publish_waits_for_a_briefly_unwritable_outbox(tmp_path: Path) -> None:
    _skip_unless_root()
    from pipeline.io.publish import publish

    outbox = tmp_path / "outbox"
    outbox.mkdir()
    src = tmp_path / "report.html"
    src.write_text("<html>")
    try:
        with immutable(outbox):
            timer = threading.Timer(1.5, lambda: subprocess.run(["chattr", "-i", str(outbox)]))
            timer.start()
            t0 = time.monotonic()
            final = publish({"report.html": src}, outbox, "cow", retry_seconds=20)
            timer.join()
    except FaultUnavailable as e:
        pytest.skip(str(e))
    assert 1.0 < time.monotonic() - t0 < 10
    assert (final / "report.html").read_text() == "<html>" and not hidden_entries(outbox)


# -- 5 and 6. folders that change after their job ended --------------------------------------------------


def test_slow_copy_is_not_a_job_until_its_listed_files_arrive(tmp_path: Path, inproc_daemon) -> None:
    """A folder copied with pauses longer than intake.settle_seconds became a job after its first file."""
    paths = _paths(tmp_path)
    full = tiny_job(tmp_path / "src" / "slow", views=8, size=48)
    dst = paths.inbox / "slow"
    dst.mkdir()
    shutil.copy(full / "transforms.json", dst)  # copied first, as `cp -r` may; the images trickle in after
    (dst / "images").mkdir()
    images = sorted((full / "images").iterdir())
    d = inproc_daemon(paths, missing_files_seconds=30)
    for im in images[:-1]:
        shutil.copy(im, dst / "images")
        ticks(d, 0.4)  # a pause twice intake.settle_seconds
        assert d.ledger.get("slow") is None, "became a job while listed files were still missing"
    shutil.copy(images[-1], dst / "images")
    ticks(d, 0.6)
    job = d.ledger.get("slow")
    assert job is not None and job.state == JobState.QUEUED


def test_failed_job_runs_again_when_its_folder_changes(tmp_path: Path, inproc_daemon) -> None:
    """A folder that failed at ingest ("Add more views") stayed failed once the copy completed."""
    from daemon.intake import fingerprint, snapshot

    paths = _paths(tmp_path)
    tiny_job(paths.inbox / "grow", views=3, size=48)
    d = inproc_daemon(paths)
    ticks(d, 0.5)
    d.ledger.claim_next("w")
    d.ledger.set_progress("grow", "ingest", 1.0)
    d.ledger.finish("grow", JobState.FAILED, error="only 3 usable image(s); ... Add more views")
    ticks(d, 0.5)
    assert d.ledger.get("grow").state == JobState.FAILED  # unchanged folder: stays failed
    shutil.rmtree(paths.inbox / "grow")
    tiny_job(paths.inbox / "grow", views=8, size=48)  # the rest of the copy arrives
    ticks(d, 0.8)
    job = d.ledger.get("grow")
    assert job.state == JobState.QUEUED and job.attempts == 0
    assert job.fingerprint == fingerprint(snapshot(paths.inbox / "grow"))  # the new content reruns from ingest
    assert "input-changed" in [e["kind"] for e in d.ledger.events("grow")]


class OneSlot(NoSlots):
    """An executor with one slot once ``open`` is set; it records what it is given and runs nothing."""

    def __init__(self) -> None:
        self.open = False
        self.submitted: list[Any] = []

    def free_slot(self) -> str | None:
        return "test:slot:0" if self.open and not self.submitted else None

    def submit(self, slot: str, job: Any) -> None:
        self.submitted.append(job)


def test_a_job_runs_on_its_folder_as_it_is_when_it_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder that kept changing while its job waited in the queue ran on its new content but kept the old
    fingerprint: the first checkpoint's key was stale, and the job's end looked like a re-drop."""
    from daemon.intake import fingerprint, snapshot
    from daemon.service import Daemon

    paths = _paths(tmp_path)
    executor = OneSlot()
    monkeypatch.setattr(Daemon, "_make_executor", lambda self: executor)
    tiny_job(paths.inbox / "cow", views=4, size=48)
    d = Daemon(paths, _settings(intake={"settle_seconds": 0.2, "rescan_seconds": 0.2}), gpus="cpu")
    d.start()
    try:
        ticks(d, 0.5)
        queued = d.ledger.get("cow").fingerprint
        shutil.rmtree(paths.inbox / "cow")
        tiny_job(paths.inbox / "cow", views=8, size=48)  # the rest of the copy, while the job waits
        executor.open = True
        ticks(d, 0.3)
        [job] = executor.submitted
        now = fingerprint(snapshot(paths.inbox / "cow"))
        assert job.fingerprint == now != queued and d.ledger.get("cow").fingerprint == now
        d.ledger.finish("cow", JobState.DONE)
        ticks(d, 0.6)
        assert "redrop-ignored" not in [e["kind"] for e in d.ledger.events("cow")]
    finally:
        d.stop()


def test_finished_job_redropped_with_new_content_is_refused_visibly(tmp_path: Path, inproc_daemon, caplog) -> None:
    """Rule: one folder, one job. A done (or cancelled) job's folder re-dropped with new content is not run
    again by itself; a log line, a ledger event and the status file say so and what to do."""
    paths = _paths(tmp_path)
    tiny_job(paths.inbox / "cow", views=8, size=48)
    d = inproc_daemon(paths)
    ticks(d, 0.5)
    d.ledger.claim_next("w")
    d.ledger.finish("cow", JobState.DONE)
    ticks(d, 0.5)
    assert [e["kind"] for e in d.ledger.events("cow")].count("redrop-ignored") == 0
    shutil.rmtree(paths.inbox / "cow")
    tiny_job(paths.inbox / "cow", views=6, size=48)  # re-dropped, new content
    with caplog.at_level(logging.WARNING, logger="hotmesh.daemon"):
        ticks(d, 1.0)
    kinds = [e["kind"] for e in d.ledger.events("cow")]
    assert kinds.count("redrop-ignored") == 1  # once, not once per scan
    assert d.ledger.get("cow").state == JobState.DONE and len(d.ledger.jobs()) == 1
    notice = json.loads(paths.status_file("cow").read_text())["notice"]
    assert "hotmesh retry cow" in notice and "cow-2" in notice
    assert any("changed after its job cow was done" in r.getMessage() for r in caplog.records)
    d.stop()
    d2 = inproc_daemon(paths)  # a restart does not answer the same re-drop again
    ticks(d2, 0.6)
    assert [e["kind"] for e in d2.ledger.events("cow")].count("redrop-ignored") == 1
    d2.stop()
    # `hotmesh retry` then runs the new content (the first stage's checkpoint key changes with it)
    r = hotmesh("retry", "cow", "--state", str(paths.state), "--outbox", str(paths.outbox))
    assert r.returncode == 0 and "new content" in r.stdout, (r.stdout, r.stderr)


# -- 7. masks of the wrong size --------------------------------------------------------------------------


def test_masks_of_the_wrong_size_are_named(tmp_path: Path) -> None:
    """They were reported as 'empty or all-object masks were dropped'."""
    from pipeline.runner import run_job

    job = tiny_job(tmp_path / "inbox" / "masked", views=8, size=48)
    (job / "masks").mkdir()
    for im in sorted((job / "images").iterdir()):  # half as tall as their 48x48 images
        Image.fromarray(np.full((24, 48), 255, np.uint8)).save(job / "masks" / f"{im.stem}.png")
    outcome = run_job(_ctx(job, tmp_path / "work", _settings()), "fp", tmp_path / "outbox")
    assert outcome.state == "failed" and outcome.stage == "masks", outcome
    first = sorted((job / "images").iterdir())[0]
    assert "masks of the wrong size" in outcome.error
    assert f"masks/{first.stem}.png is 48x24 but images/{first.name} is 48x48" in outcome.error
    assert "empty or all-object" not in outcome.error


# -- 9. a damaged ledger ---------------------------------------------------------------------------------


def test_damaged_ledger_is_explained_and_rebuilt(tmp_path: Path, inproc_daemon) -> None:
    """A corrupt ledger.db gave a 26-line traceback ending in 'file is not a database'."""
    from daemon.intake import fingerprint, snapshot
    from daemon.worker import write_status

    paths = _paths(tmp_path)
    for name in ("a", "b", "c"):
        (paths.inbox / name).mkdir()
        (paths.inbox / name / "photo.jpg").write_bytes(name.encode())
    d = inproc_daemon(paths)  # its start writes paths.json and the backup
    ledger = d.ledger
    ticks(d, 0.5)
    for name, end in (("a", JobState.DONE), ("b", JobState.FAILED), ("c", None)):
        ledger.claim_next("w")
        if end is not None:
            ledger.finish(name, end, error=None if end == JobState.DONE else "boom")
        write_status(paths, ledger.get(name))
    d.stop()
    inproc_daemon(paths).stop()  # a daemon backs the ledger up when it starts (and with every retention run)
    assert (paths.state / "ledger.db.bak").exists()
    st = ["--state", str(paths.state)]

    def corrupt() -> None:
        for p in paths.state.glob("ledger.db*"):
            if p.name in ("ledger.db", "ledger.db-wal", "ledger.db-shm"):
                p.unlink()
        paths.ledger.write_bytes(b"this is not an SQLite file\n" * 200)

    corrupt()
    for args, code in ((("status", *st), 2), (("run", "--inbox", str(paths.inbox), "--outbox", str(paths.outbox), *st), 3)):
        r = hotmesh(*args)
        assert r.returncode == code and "Traceback" not in r.stderr, r.stderr
        assert "is damaged (file is not a database)" in r.stderr and "hotmesh ledger rebuild" in r.stderr
    r = hotmesh("ledger", "check", *st)
    assert r.returncode == 1 and "damaged: file is not a database" in r.stdout and "--from-backup" in r.stdout
    r = hotmesh("ledger", "rebuild", *st)  # from the outbox's status files alone
    assert r.returncode == 0, r.stderr
    rebuilt = Ledger(paths.ledger)
    got = {j.id: j for j in rebuilt.jobs()}
    rebuilt.close()
    assert {k: v.state for k, v in got.items()} == {"a": JobState.DONE, "b": JobState.FAILED, "c": JobState.QUEUED}
    assert got["c"].fingerprint == fingerprint(snapshot(paths.inbox / "c"))  # its checkpoints stay valid
    assert any(p.name.startswith("ledger.db.damaged-") for p in paths.state.iterdir())  # kept, not deleted
    corrupt()
    r = hotmesh("ledger", "rebuild", "--from-backup", *st)
    assert r.returncode == 0, r.stderr
    r = hotmesh("ledger", "check", *st)
    assert r.returncode == 0 and ": ok (" in r.stdout
    rebuilt = Ledger(paths.ledger)
    assert "created" in [e["kind"] for e in rebuilt.events("a")]  # the backup's history came back too
    assert {j.id: j.state for j in rebuilt.jobs()} == {"a": JobState.DONE, "b": JobState.FAILED, "c": JobState.QUEUED}
    rebuilt.close()


def test_cli_errors_are_sentences_not_tracebacks(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "state-file"
    not_a_dir.write_text("")
    r = hotmesh("run", "--inbox", str(tmp_path / "in"), "--outbox", str(tmp_path / "out"), "--state", str(not_a_dir))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "Check that it exists" in r.stderr, r.stderr
    (tmp_path / "state" / "ledger.db").mkdir(parents=True)  # something that cannot be opened as a database
    r = hotmesh("status", "--state", str(tmp_path / "state"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "cannot be opened" in r.stderr, r.stderr


# -- 10 and 11. a tiny job: its disk estimate, and no held-out view ---------------------------------------


@pytest.fixture(scope="module")
def twelve_views(tmp_path_factory: pytest.TempPathFactory):
    """A real tiny job with 12 views and no view held out (images.holdout_every = 0)."""
    from daemon.intake import fingerprint, snapshot

    paths = _paths(tmp_path_factory.mktemp("twelve"))
    folder = tiny_job(paths.inbox / "cow", views=12, size=64)
    settings = _settings(images={"holdout_every": 0})
    ledger = Ledger(paths.ledger)
    ledger.create_job("cow", fingerprint(snapshot(folder)))
    state = execute(ledger, paths, ledger.claim_next("w"), settings, "cpu")
    job = ledger.get("cow")
    ledger.close()
    assert state == "done", job.error
    return paths, settings, job


def _bytes_under(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file())


def test_disk_guard_lets_a_tiny_job_run_on_a_small_volume(twelve_views, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard asked >= 150 MiB for any job; a tiny job uses a few MB."""
    from daemon import ops

    paths, settings, job = twelve_views
    used = _bytes_under(paths.work_dir("cow")) + _bytes_under(paths.outbox / "cow")
    need = estimate_job_bytes(paths.inbox / "cow", settings.pipeline)
    assert used <= need < 40 * 2**20, (used, need)
    monkeypatch.setattr(ops, "free_bytes", lambda p: 64 * 2**20)  # a 64 MiB volume, ops.min_free_mb = 0
    assert check_disk([paths.state, paths.outbox], need, 0).ok


def test_job_without_held_out_view_says_not_evaluated(twelve_views) -> None:
    paths, _settings_, job = twelve_views
    assert job.outputs["evaluated"] is False
    assert job.outputs["evaluation"].startswith("not evaluated: no held-out view")
    status = json.loads(paths.status_file("cow").read_text())
    assert status["outputs"]["evaluation"] == job.outputs["evaluation"]
    r = hotmesh("status", "--state", str(paths.state))
    assert "not evaluated" in r.stdout and "1 done without a held-out evaluation" in r.stdout
