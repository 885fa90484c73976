"""Issue 27, hardening second round: each fault an adversarial run found, reproduced first, then shown handled.

Real file-system objects (FIFOs, symbolic links, a second daemon on the same inbox); whatever could hang runs in a
thread with a generous bound, so a regression fails the test instead of hanging the suite.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from daemon.states import JobState
from daemon.worker import Paths
from pipeline.context import InputError
from tests.conftest import TINY_SETTINGS, drop, set_args, tiny_job, wait_for
from tests.faults import OpenWatch
from tests.test_hardening import NoSlots, OneSlot, _ctx, _paths, _settings, inproc_daemon, ticks  # noqa: F401

BOUND = 60.0  # seconds a call that must not block may take under a loaded CPU before the test calls it hung


def bounded(fn: Callable[[], Any], what: str, timeout: float = BOUND) -> Any:
    """``fn()`` in a daemon thread; fails the test (instead of hanging it) when it does not return in time."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the test below
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"{what} blocked for more than {timeout:.0f}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def unblock_fifo(path: Path) -> None:
    """Free whatever a failed test left blocked on the FIFO (a reader waits for a writer)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


# -- 1. FIFOs (and other special files) in a job folder -----------------------------------------------------


def test_fifo_in_a_job_folder_never_blocks_the_daemon_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mkfifo inbox/job/extra.jpg` blocked the daemon's loop in the disk guard's header read: no later folder
    became a job and SIGTERM never ended it. Now the loop goes on and the later folder is queued."""
    from daemon.service import Daemon

    paths = _paths(tmp_path)
    executor = OneSlot()
    monkeypatch.setattr(Daemon, "_make_executor", lambda self: executor)
    tiny_job(paths.inbox / "apple", views=6, size=48)
    fifo = paths.inbox / "apple" / "images" / "extra.jpg"
    os.mkfifo(fifo)
    d = Daemon(paths, _settings(intake={"settle_seconds": 0.2, "rescan_seconds": 0.2}), gpus="cpu")
    d.start()
    try:
        bounded(lambda: ticks(d, 0.5), "intake of a folder holding a FIFO")
        assert d.ledger.get("apple").state == JobState.QUEUED
        executor.open = True  # the disk guard now estimates the job: it reads image headers
        bounded(lambda: ticks(d, 0.3), "the disk guard on a folder holding a FIFO")
        assert [j.id for j in executor.submitted] == ["apple"]
        tiny_job(paths.inbox / "later", views=4, size=48)
        bounded(lambda: ticks(d, 0.6), "intake after the FIFO folder")
        assert d.ledger.get("later") is not None, "a later folder did not become a job"
    finally:
        unblock_fifo(fifo)
        d.stop()


def test_fifo_and_socket_in_a_job_folder_are_refused_unopened_at_ingest(tmp_path: Path) -> None:
    """`mkfifo inbox/job/notes.txt` blocked the worker in ingest (read_head) where a CANCEL could not reach it.
    Now ingest lists each special entry as not used, with its kind and what to do, and opens none of them."""
    import socket

    from pipeline.stages.ingest import IngestStage, Manifest

    job = tiny_job(tmp_path / "inbox" / "pear", views=8, size=48)
    fifos = [job / "notes.txt", job / "images" / "extra.jpg", job / "masks.png"]
    for f in fifos:
        os.mkfifo(f)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(job / "control.sock"))
    # a transforms.json frame naming a FIFO: the image validator must not open it either
    meta = json.loads((job / "transforms.json").read_text())
    meta["frames"].append(dict(meta["frames"][0], file_path="images/extra.jpg"))
    (job / "transforms.json").write_text(json.dumps(meta))
    try:
        with pytest.raises(InputError) as err:  # one listed frame is unusable, so ingest may still pass: see below
            bounded(lambda: IngestStage().run(_ctx(job, tmp_path / "work", _settings(limits={"min_images": 99})),
                                              tmp_path / "out0"), "ingest of a folder holding FIFOs")
        assert "named pipe (FIFO)" in str(err.value)  # the failure message lists the files not used
        out = tmp_path / "out"
        out.mkdir()
        bounded(lambda: IngestStage().run(_ctx(job, tmp_path / "work", _settings()), out), "ingest with FIFOs")
    finally:
        for f in fifos:
            unblock_fifo(f)
        sock.close()
    rejected = {r.file: r.reason for r in Manifest.load(out).rejected}
    for name in ("notes.txt", "images/extra.jpg", "masks.png"):
        assert "is a named pipe (FIFO), not a regular file" in rejected[name] and "remove it" in rejected[name], rejected
    assert "is a socket" in rejected["control.sock"]
    assert len(Manifest.load(out).frames) == 8


def test_fifo_job_runs_and_sigterm_ends_the_daemon(daemon_factory, tmp_path: Path) -> None:
    """End to end with a real daemon: the job holding FIFOs ends done, its report lists them under "Files not
    used", a CANCEL-free second folder is processed after it, and SIGTERM ends the daemon."""
    d = daemon_factory(*set_args(*TINY_SETTINGS)).start()
    src = tiny_job(tmp_path / "staging" / "fig", views=8, size=48)
    os.mkfifo(src / "images" / "extra.jpg")
    os.mkfifo(src / "notes.txt")
    src.rename(d.inbox / "fig")  # moved in with one rename (copytree cannot copy a FIFO)
    drop(tiny_job(tmp_path / "src" / "kiwi", views=8, size=48), d.inbox)
    try:
        fig = d.wait_state("fig", timeout=300)
        kiwi = d.wait_state("kiwi", timeout=300)
    finally:
        for f in ("images/extra.jpg", "notes.txt"):
            unblock_fifo(d.inbox / "fig" / f)
    assert fig["state"] == "done" and kiwi["state"] == "done", (fig, kiwi)
    report = (d.outbox / "fig" / "report.html").read_text()
    assert "Files not used" in report and "named pipe (FIFO)" in report
    t0 = time.monotonic()
    assert d.stop(timeout=60) == 0
    assert time.monotonic() - t0 < 60


# -- 2. files outside the inbox -------------------------------------------------------------------------------


def test_linked_job_folder_is_refused_without_opening_anything_behind_it(tmp_path: Path, inproc_daemon,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """`ln -s /some/where inbox/linked_job` was processed as a job: every file behind the link was opened and a
    mesh published. Now it is no job; a log line and a ledger event say to copy the folder in instead."""
    paths = _paths(tmp_path)
    outside = tiny_job(tmp_path / "elsewhere" / "scan", views=6, size=48)
    (paths.inbox / "linked_job").symlink_to(outside)
    with OpenWatch(outside) as opened, caplog.at_level(logging.WARNING, logger="hotmesh.daemon"):
        d = inproc_daemon(paths)
        ticks(d, 1.0)
        executor_free = d.executor.free_slot()  # NoSlots: nothing runs; the refusal is the intake's
        tiny_job(paths.inbox / "real", views=4, size=48)  # an ordinary folder beside it still becomes a job
        ticks(d, 0.8)
    assert executor_free is None
    assert d.ledger.get("linked_job") is None and d.ledger.by_folder("linked_job") is None
    assert d.ledger.get("real") is not None
    events = [e for e in d.ledger._read("SELECT * FROM events WHERE kind = 'link-refused'")]
    assert len(events) == 1, events  # once, not once per scan
    assert "Copy the folder into the inbox instead of linking it" in events[0]["message"]
    assert any("symbolic link to a folder" in r.getMessage() for r in caplog.records)
    assert opened.files == [], opened.files
    d.stop()
    d2 = inproc_daemon(paths)  # a restart does not refuse the same link again
    ticks(d2, 0.6)
    assert [e["folder"] for e in d2.ledger.daemon_event_data("link-refused")] == ["linked_job"]


def test_failure_report_never_opens_files_ingest_refused_as_links(tmp_path: Path) -> None:
    """A linked images/ folder or image file was refused at ingest, but the failure report then opened every
    linked photo for its thumbnail and sharpness (what `bench/chaos.py` saw as files opened outside the inbox)."""
    from pipeline.runner import run_job

    settings = _settings()
    outside = tiny_job(tmp_path / "elsewhere", views=8, size=48)
    linked_dir = tiny_job(tmp_path / "inbox" / "linkdir", views=8, size=48)
    shutil.rmtree(linked_dir / "images")
    (linked_dir / "images").symlink_to(outside / "images")
    linked_file = tiny_job(tmp_path / "inbox" / "linkfile", views=8, size=48)
    first = sorted((linked_file / "images").iterdir())[0]
    first.unlink()
    first.symlink_to(outside / "images" / first.name)
    unposed = tmp_path / "inbox" / "unposed"  # no poses: the report lists the folder's photos itself
    shutil.copytree(linked_file / "images", unposed, symlinks=True)
    outbox = tmp_path / "outbox"
    with OpenWatch(outside) as opened:
        outcomes = {job.name: run_job(_ctx(job, tmp_path / "work" / job.name, settings), "fp", outbox)
                    for job in (linked_dir, linked_file, unposed)}
    for name, outcome in outcomes.items():
        assert outcome.state == "failed" and "symbolic link" in (outcome.error or ""), (name, outcome)
        assert (outbox / name / "report.html").exists()
    assert opened.files == [], opened.files
    # the linked photo is in the report with the reason, and without a thumbnail
    stats = json.loads((outbox / "unposed" / "stats.json").read_text())
    linked = [p for p in stats["photos"] if p["name"] == first.name]
    assert linked and "outside the job folder" in linked[0]["error"], stats["photos"]


# -- 6. a failure report of huge photos ------------------------------------------------------------------------


def test_failure_report_does_not_decode_photos_refused_for_their_size(tmp_path: Path) -> None:
    """A job rejected in 0.01 s for a 144 MP image took 9.4 s more to decode it for the report's thumbnail, and
    its duplicate was said to be "used instead" of it although it was rejected too."""
    from pipeline.runner import run_job

    job = tmp_path / "inbox" / "big"
    job.mkdir(parents=True)
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), np.uint8))
    big.save(job / "big0.png", compress_level=0)  # 12 MP: over the limit set below
    shutil.copy(job / "big0.png", job / "big1.png")
    settings = _settings(limits={"max_megapixels": 1})
    t0 = time.monotonic()
    outcome = run_job(_ctx(job, tmp_path / "work", settings), "fp", tmp_path / "outbox")
    seconds = time.monotonic() - t0
    assert outcome.state == "failed" and "over the 1 MP limit" in (outcome.error or "")
    stats = json.loads((tmp_path / "outbox" / "big" / "stats.json").read_text())
    photos = {p["name"]: p for p in stats["photos"]}
    assert "over the 1 MP limit" in photos["big0.png"]["error"] and photos["big0.png"]["sharpness"] is None
    assert "only big0.png is used" not in outcome.error
    assert "big0.png is not used either" in outcome.error, outcome.error
    # decoding one 12 MP PNG takes ~0.3 s here; the whole job, report included, stays well under a full decode
    # of both under load (generous: a loaded CPU)
    assert seconds < 30, seconds


# -- 3. one inbox, one daemon ----------------------------------------------------------------------------------


def test_second_daemon_on_the_same_inbox_is_refused(daemon_factory, tmp_path: Path) -> None:
    """A second daemon on the same inbox with another --state made a second job of every folder the first had
    processed, and ran them. Now it stops at once with a sentence; the lock goes with the first daemon."""
    first = daemon_factory().start()
    wait_for(lambda: (first.inbox / ".hotmesh.lock").exists() and "watching" in first.log(), 120, "the first daemon")
    tiny_job(first.inbox / "cow", views=4, size=48)  # a folder the second one must not make a job of
    second = daemon_factory("--inbox", str(first.inbox), root=tmp_path / "second").start()
    code = wait_for(lambda: second.proc.poll() is not None and second.proc.returncode or None, 120,
                    "the second daemon to exit")
    assert code == 3, second.log()
    assert "another hotmesh daemon already watches the inbox" in second.log() and "--inbox" in second.log()
    assert second.jobs() == {}
    assert first.alive()
    wait_for(lambda: "cow" in first.jobs(), 60, "the first daemon to take the folder")
    assert ".hotmesh.lock" not in first.jobs()  # hidden: never a job
    assert first.stop() == 0
    third = daemon_factory("--inbox", str(first.inbox), root=tmp_path / "third").start()  # released on stop
    wait_for(lambda: "watching" in third.log(), 120, "a daemon to take the released inbox")
    assert third.alive()


# -- 5. secret redaction that garbled paths ----------------------------------------------------------------------


def test_redaction_masks_the_secret_parts_of_a_webhook_url_not_every_path(tmp_path: Path) -> None:
    """A webhook URL http://127.0.0.1:59999/hook made every '/hook' in a path a mask: "input /tmp/t/d5/inbox***job",
    in the daemon's log and the published job.log. The secret parts (password, query values, token-like path
    parts, the webhook secret) are still masked."""
    from daemon.config import build_settings
    from pipeline.io.redact import ScrubFilter

    urls = ("http://127.0.0.1:59999/hook,https://alice:pw-s3cret-77@hooks.example.com/services/T0/B0/"
            "XyZaBcDeFgHiJkLmNoPq?token=tk-91ce&channel=ops-room")
    settings = build_settings({"ops": {"webhook_urls": urls, "webhook_secret": "whsec-4f1d9a"}})
    secrets = settings.secrets()
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    h = Keep()
    h.addFilter(ScrubFilter(secrets))
    log = logging.getLogger("hotmesh.test.redact27")
    log.addHandler(h)
    try:
        log.warning("[job hook] input %s", "/tmp/t/d5/inbox/hook/job/images/hook.png")
        log.warning("user alice posted to services with pw-s3cret-77, token tk-91ce, channel ops-room, "
                    "path /services/T0/B0/XyZaBcDeFgHiJkLmNoPq, signed whsec-4f1d9a")
    finally:
        log.removeHandler(h)
    assert records[0] == "[job hook] input /tmp/t/d5/inbox/hook/job/images/hook.png", records[0]
    for secret in ("pw-s3cret-77", "tk-91ce", "ops-room", "XyZaBcDeFgHiJkLmNoPq", "whsec-4f1d9a"):
        assert secret not in records[1], (secret, records[1])
    assert "user alice posted to services" in records[1]


# -- 4. a slow copy of a folder without poses ---------------------------------------------------------------------


def test_job_that_ran_on_part_of_a_growing_folder_runs_again_with_all_of_it(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """apple (20 photos, no poses) copied with pauses: a job ran on 8 of them, ended done, and the other 12 were
    refused as a re-drop. Rule: while files keep arriving (pauses shorter than intake.settle_seconds) the folder is
    no job; a done job whose folder changed while it ran (or within settle_seconds after) runs again, once the
    folder has settled, with all of it ('input-grew'); a change after that is a re-drop, refused visibly."""
    from daemon.intake import fingerprint, snapshot
    from daemon.service import Daemon

    paths = _paths(tmp_path)
    executor = OneSlot()
    monkeypatch.setattr(Daemon, "_make_executor", lambda self: executor)
    photos = sorted((tiny_job(tmp_path / "src" / "apple", views=12, size=48) / "images").iterdir())
    dst = paths.inbox / "apple"
    dst.mkdir()
    settle = 1.0
    d = Daemon(paths, _settings(intake={"settle_seconds": settle, "rescan_seconds": 0.2}), gpus="cpu")
    d.start()
    try:
        for p in photos[:5]:  # pauses of 40 % of the settle time: still growing, never a job
            shutil.copy(p, dst)
            ticks(d, 0.4 * settle)
            assert d.ledger.get("apple") is None, "a folder still being copied became a job"
        # a pause longer than the settle time: the folder settles and its job starts on 5 photos...
        wait_for(lambda: (d.tick(), d.ledger.get("apple"))[1], 30, "the paused folder to become a job", 0.05)
        executor.open = True
        wait_for(lambda: (d.tick(), executor.submitted)[1], 30, "the job to start", 0.05)
        for p in photos[5:]:  # ...while the copy goes on
            shutil.copy(p, dst)
            ticks(d, 0.3 * settle)
        d.ledger.finish("apple", JobState.DONE)  # it ran on the first 5
        job = wait_for(lambda: (d.tick(), (j := d.ledger.get("apple")) and j.state == JobState.QUEUED and j)[1],
                       30, "the job to be queued again with the whole folder", 0.05)
        kinds = [e["kind"] for e in d.ledger.events("apple")]
        assert "input-grew" in kinds and "redrop-ignored" not in kinds, kinds
        assert job.fingerprint == fingerprint(snapshot(dst)) and job.attempts == 0
        # the rerun ends done; a change long after it ended is a re-drop: refused, not rerun
        d.ledger.claim_next("w")
        d.ledger.finish("apple", JobState.DONE)
        ticks(d, 2 * settle)
        shutil.copy(photos[0], dst / "extra.png")
        wait_for(lambda: (d.tick(), "redrop-ignored" in [e["kind"] for e in d.ledger.events("apple")])[1], 30,
                 "the later change to be refused as a re-drop", 0.05)
        assert d.ledger.get("apple").state == JobState.DONE
        assert [e["kind"] for e in d.ledger.events("apple")].count("input-grew") == 1
    finally:
        d.stop()


# -- 7. smaller ones --------------------------------------------------------------------------------------------


def test_status_shows_the_redrop_notice(tmp_path: Path, inproc_daemon) -> None:
    """`hotmesh status` said "done" for a job whose re-drop was ignored; the notice was only in the status file."""
    from tests.test_hardening import hotmesh

    paths = _paths(tmp_path)
    tiny_job(paths.inbox / "cow", views=6, size=48)
    d = inproc_daemon(paths)
    ticks(d, 0.5)
    d.ledger.claim_next("w")
    d.ledger.finish("cow", JobState.DONE)
    ticks(d, 0.5)
    shutil.rmtree(paths.inbox / "cow")
    tiny_job(paths.inbox / "cow", views=5, size=48)  # re-dropped with new content, long after the job ended
    wait_for(lambda: (d.tick(), "redrop-ignored" in [e["kind"] for e in d.ledger.events("cow")])[1], 30,
             "the re-drop to be refused", 0.05)
    d.stop()
    r = hotmesh("status", "--state", str(paths.state), "--outbox", str(paths.outbox))
    assert r.returncode == 0, r.stderr
    assert "notice: the inbox folder 'cow' changed after its job cow was done" in r.stdout, r.stdout
    r = hotmesh("status", "--json", "--state", str(paths.state), "--outbox", str(paths.outbox))
    assert "hotmesh retry cow" in json.loads(r.stdout)[0]["notice"]
    # once retried, the notice has been answered and is no longer shown
    assert hotmesh("retry", "cow", "--state", str(paths.state), "--outbox", str(paths.outbox)).returncode == 0
    assert "notice:" not in hotmesh("status", "--state", str(paths.state), "--outbox", str(paths.outbox)).stdout


def test_status_agrees_with_the_status_file_while_the_ledger_cannot_be_written(tmp_path: Path, inproc_daemon) -> None:
    """While the state disk was full, `hotmesh status` said running/geometry (the ledger) but the status file said
    queued (the daemon's state in memory). Now status shows the kept state, marked, and says why."""
    from daemon.executors import Lost
    from tests.faults import FaultUnavailable, fill, tmpfs
    from tests.test_hardening import _skip_unless_root, hotmesh

    _skip_unless_root()
    try:
        with tmpfs(tmp_path / "state", 8):
            paths = _paths(tmp_path)
            d = inproc_daemon(paths)
            d.ledger.create_job("scan", "fp")
            d.ledger.claim_next("host:cpu:1")
            d.ledger.set_progress("scan", "geometry", 40.0)
            filler = fill(paths.state)
            d._handle(Lost("scan", "worker process killed by SIGKILL"))  # requeue: kept in memory
            d._daemon_status()
            assert json.loads(paths.status_file("scan").read_text())["state"] == "queued"
            r = hotmesh("status", "--state", str(paths.state), "--outbox", str(paths.outbox))
            filler.unlink()
            ticks(d, 0.3)
            d.stop()
    except FaultUnavailable as e:
        pytest.skip(str(e))
    row = next(line for line in r.stdout.splitlines() if line.startswith("scan"))
    assert row.split()[1] == "queued*", r.stdout
    assert "cannot write the ledger now" in r.stdout


def test_cancel_before_the_first_stage_names_no_empty_stage(tmp_path: Path) -> None:
    """"cancelled by a CANCEL file during stage ''"."""
    from pipeline.runner import run_job

    job = tiny_job(tmp_path / "inbox" / "cow", views=6, size=48)
    (job / "CANCEL").write_text("")
    outcome = run_job(_ctx(job, tmp_path / "work", _settings()), "fp", tmp_path / "outbox")
    assert outcome.state == "cancelled"
    assert outcome.error == "cancelled by a CANCEL file before any stage started", outcome.error
    assert "stage ''" not in (tmp_path / "outbox" / "cow" / "report.html").read_text()


def test_newline_in_a_folder_name_cannot_split_a_log_line(tmp_path: Path, inproc_daemon,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    paths = _paths(tmp_path)
    tiny_job(paths.inbox / "bad\nname", views=4, size=48)
    with caplog.at_level(logging.INFO, logger="hotmesh"):
        d = inproc_daemon(paths)
        ticks(d, 0.6)
    [job] = d.ledger.jobs()
    messages = [r.getMessage() for r in caplog.records]
    assert any("queued from 'bad\\nname'" in m for m in messages), messages
    assert not any("\n" in m for m in messages if job.id in m), messages


def test_fifo_where_the_poses_are_read_by_name_fails_the_job_unopened(tmp_path: Path) -> None:
    """A FIFO named like a file hotmesh opens by name (a COLMAP model's images.bin, scale.json) would block its
    reader: the job fails at once, saying which entry to replace."""
    from pipeline.stages.ingest import IngestStage

    job = tiny_job(tmp_path / "inbox" / "plum", views=6, size=48)
    os.mkfifo(job / "scale.json")
    try:
        with pytest.raises(InputError) as err:
            bounded(lambda: IngestStage().run(_ctx(job, tmp_path / "work", _settings()), tmp_path / "out"),
                    "ingest of a folder whose scale.json is a FIFO")
    finally:
        unblock_fifo(job / "scale.json")
    assert "scale.json is a named pipe (FIFO)" in str(err.value) and "put the real file there" in str(err.value)
