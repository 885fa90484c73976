"""Operations: retention, disk guard, runtime limit, webhooks, CLI and HTTP endpoint against a live daemon."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from daemon import ops
from daemon.config import OpsConfig, build_settings
from daemon.ledger import Ledger
from daemon.states import JobState
from daemon.worker import Paths
from tests.conftest import SAMPLE, WebhookReceiver, drop, set_args, tiny_job, wait_for
from tests.test_cli import hotmesh


def _paths(tmp_path: Path) -> Paths:
    p = Paths(inbox=tmp_path / "inbox", outbox=tmp_path / "outbox", state=tmp_path / "state")
    for d in (p.inbox, p.outbox, p.state):
        d.mkdir(parents=True, exist_ok=True)
    return p


def test_retention_with_a_fake_clock(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    ledger = Ledger(paths.ledger)
    for name in ("old", "running"):
        ledger.create_job(name, "fp")
        (paths.inbox / name).mkdir()
        paths.work_dir(name).mkdir(parents=True)
        (paths.outbox / name).mkdir()
    ledger.claim_next("w")
    ledger.finish("old", JobState.DONE)
    ledger.claim_next("w")  # "running" stays running
    t0 = ledger.get("old").finished
    cfg = OpsConfig(state_retention_days=1, outbox_retention_days=2, inbox_after="move", inbox_after_days=0.5)
    assert ops.plan_retention(ledger.jobs(), cfg, paths, t0 + 0.1 * ops.DAY) == []
    day1 = ops.plan_retention(ledger.jobs(), cfg, paths, t0 + 1.5 * ops.DAY)
    assert {(a.job_id, a.what) for a in day1} == {("old", "state"), ("old", "inbox-move")}
    day3 = ops.plan_retention(ledger.jobs(), cfg, paths, t0 + 3 * ops.DAY)
    assert {(a.job_id, a.what) for a in day3} == {("old", "state"), ("old", "outbox"), ("old", "inbox-move")}
    ops.apply_retention(ledger, day3, paths)
    assert not paths.work_dir("old").exists() and not (paths.outbox / "old").exists()
    assert (paths.inbox / "_done" / "old").is_dir() and not (paths.inbox / "old").exists()
    # the running job is never touched, however old
    assert paths.work_dir("running").exists() and (paths.inbox / "running").exists()
    kinds = [e["kind"] for e in ledger.events("old")]
    assert kinds.count("retention") == 3


def test_disk_guard_waits_then_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.service import Daemon

    paths = _paths(tmp_path)
    tiny_job(paths.inbox / "job", views=8, size=48)
    settings = build_settings({"intake": {"settle_seconds": 0}, "limits": {"min_images": 4},
                               "geometry": {"voxel_resolution": 32}, "images": {"holdout_every": 0},
                               "report": {"render_size": 48, "gt_samples": 2000}})
    need = ops.estimate_job_bytes(paths.inbox / "job", settings.pipeline)
    assert 5 * 2**20 < need < 60 * 2**20  # a tiny job needs little (tests/test_hardening.py checks it is enough)
    free = {"bytes": 10 * 2**20}  # below the need plus ops.min_free_mb (500 MB)
    monkeypatch.setattr(ops, "free_bytes", lambda p: free["bytes"])
    d = Daemon(paths, settings, gpus="cpu")
    d.start()
    try:
        # 20 ticks once the job is recorded and the worker is ready: the daemon decides on every tick, so a job it
        # would claim is claimed at the first one (counted from then: on a busy machine the worker's start, which the
        # disk guard waits for, can take longer than 20 ticks after the record)
        deadline = time.monotonic() + 60
        ticks = 0
        while ticks < 20 and time.monotonic() < deadline:
            d.tick()
            ready = any(s["ready"] for s in d.health()["slots"])
            ticks += ready and d.ledger.get("job") is not None
            time.sleep(0.2)
        assert ticks == 20, "the worker did not start within 60 s"
        job = d.ledger.get("job")
        assert job.state == JobState.QUEUED and job.attempts == 0
        status = json.loads((paths.outbox / "_status" / "_daemon.json").read_text())
        assert not status["disk_ok"] and "waiting for disk space" in status["message"]
        assert d.health()["disk_ok"] is False
        free["bytes"] = 10**13
        for _ in range(600):
            d.tick()
            if d.ledger.get("job").state.terminal:
                break
            time.sleep(0.2)
        assert d.ledger.get("job").state == JobState.DONE
        assert [e["kind"] for e in d.ledger.events("job")].count("disk") == 1
    finally:
        d.stop()


def test_runtime_limit_fails_cleanly_and_keeps_logs(tmp_path: Path) -> None:
    job = tiny_job(tmp_path / "in" / "slow", views=8, size=128)
    out, state = tmp_path / "out", tmp_path / "state"
    r = hotmesh("process", str(job), "--out", str(out), "--state", str(state), "--device", "cpu",
                *set_args("limits.min_images=4", "geometry.voxel_resolution=400", "ops.max_runtime_seconds=1"))
    assert r.returncode == 1
    result = json.loads(r.stdout)
    assert result["state"] == "failed" and "maximum runtime" in result["error"]
    assert (out / "slow" / "job.log").read_text().count("maximum runtime") >= 1
    assert not (out / "slow" / "mesh.ply").exists()
    assert (state / "jobs" / "slow" / "stages" / "ingest").is_dir()  # checkpoints kept for a retry


def test_webhook_is_signed_and_retried_with_backoff(tmp_path: Path, webhooks: WebhookReceiver) -> None:
    url = webhooks.url()
    webhooks.fail_first = 2
    paths = _paths(tmp_path)
    ledger = Ledger(paths.ledger)
    ledger.create_job("a", "fp")
    ledger.claim_next("w")
    ledger.finish("a", JobState.FAILED, error="boom")
    sleeps: list[float] = []
    n = ops.Notifier(OpsConfig(webhook_urls=url, webhook_secret="s3cret", webhook_retries=4,
                               webhook_backoff_seconds=1.5), paths.ledger, paths.outbox, sleep=sleeps.append)
    n.start()
    n.job_ended(ledger.get("a"))
    wait_for(lambda: any(e["kind"] == "notified" for e in ledger.events("a")), 20, "webhook delivery")
    n.stop()
    assert len(webhooks.received) == 3 and sleeps == [1.5, 3.0]
    _path, headers, body = webhooks.received[-1]
    assert headers["X-Hotmesh-Event"] == "job.failed" and "X-Hotmesh-Signature" not in headers
    # Standard Webhooks: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">, checked as a receiver would
    low = {k.lower(): v for k, v in headers.items()}  # HTTP header names are case-insensitive
    msg_id, ts = low["webhook-id"], int(low["webhook-timestamp"])
    mac = hmac.new(b"s3cret", f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    assert low["webhook-signature"] == "v1," + base64.b64encode(mac).decode()
    assert abs(time.time() - ts) < 60
    assert len({h["Webhook-Id"] if "Webhook-Id" in h else h["Webhook-id"] for _p, h, _b in webhooks.received}) == 1  # retries keep the id: receivers dedupe
    assert ops.verify_webhook("s3cret", headers, body)
    # a captured delivery replayed later, or with its body or id changed, is refused
    assert not ops.verify_webhook("s3cret", headers, body, now=ts + 301)
    assert not ops.verify_webhook("s3cret", headers, body.replace(b"boom", b"fine"))
    assert not ops.verify_webhook("s3cret", dict(low, **{"webhook-id": "other"}), body)
    assert not ops.verify_webhook("other", headers, body)
    assert json.loads(body)["error"] == "boom"


def test_unreachable_webhook_gives_up_without_blocking(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    ledger = Ledger(paths.ledger)
    ledger.create_job("a", "fp")
    ledger.claim_next("w")
    ledger.finish("a", JobState.DONE)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    n = ops.Notifier(OpsConfig(webhook_urls=f"http://127.0.0.1:{port}/x", webhook_retries=2), paths.ledger,
                     paths.outbox, sleep=lambda s: None)
    n.start()
    t0 = time.monotonic()
    n.job_ended(ledger.get("a"))
    assert time.monotonic() - t0 < 0.1  # the caller never waits
    wait_for(lambda: any(e["kind"] == "notify-failed" for e in ledger.events("a")), 20, "give-up event")
    n.stop()
    assert "failed 3 times" in [e for e in ledger.events("a") if e["kind"] == "notify-failed"][0]["message"]


def test_json_log_lines() -> None:
    rec = logging.LogRecord("hotmesh.job", logging.INFO, __file__, 1, "[job cow] stage %s done", ("geometry",), None)
    d = json.loads(ops.JsonFormatter().format(rec))
    assert d["job"] == "cow" and d["msg"] == "stage geometry done" and d["level"] == "INFO"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_operator_cli_and_endpoints_against_a_running_daemon(daemon_factory, tmp_path: Path,
                                                             webhooks: WebhookReceiver) -> None:
    url = webhooks.url()
    port = _free_port()
    d = daemon_factory(*set_args("geometry.voxel_resolution=256", f"ops.http_port={port}", f"ops.webhook_urls={url}",
                                 "ops.webhook_secret=k")).start()
    drop(SAMPLE, d.inbox, name="cow")
    wait_for(lambda: d.jobs().get("cow", {}).get("stage") == "geometry", 120, "job to reach geometry")
    st = ["--state", str(d.state)]
    r = hotmesh("cancel", "cow", *st, timeout=60)
    assert r.returncode == 0, r.stderr
    assert d.wait_state("cow", timeout=60)["state"] == "cancelled"
    r = hotmesh("retry", "cow", "--from-stage", "geometry", *st, timeout=60)
    assert r.returncode == 0, r.stderr
    job = d.wait_state("cow", timeout=300)
    assert job["state"] == "done" and job["attempts"] == 1
    r = hotmesh("logs", "cow", "--events", *st, timeout=60)
    assert "stage geometry: started" in r.stdout and "retry" in r.stdout and "cancel-requested" in r.stdout
    r = hotmesh("clean", "--dry-run", *st, "--set", "ops.state_retention_days=0", timeout=60)
    assert "would state" in r.stdout and (d.state / "jobs" / "cow").exists()
    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read())
    assert health["healthy"] and health["disk_ok"]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'hotmesh_jobs{state="done"} 1.0' in metrics and "hotmesh_stage_seconds_count" in metrics
    wait_for(lambda: len(webhooks.received) >= 2, 30, "two webhook calls")
    events = [json.loads(b)["state"] for _p, _h, b in webhooks.received]
    assert events == ["cancelled", "done"]
    for _p, headers, body in webhooks.received:
        assert ops.verify_webhook("k", headers, body)
    r = hotmesh("clean", *st, "--set", "ops.state_retention_days=0", timeout=60)
    assert not (d.state / "jobs" / "cow").exists()
    assert (d.outbox / "cow" / "mesh.glb").exists()  # outbox kept (outbox_retention_days < 0)
    shutil.rmtree(d.outbox / "cow")


def test_command_hook_gets_only_what_it_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOTMESH_OPS_WEBHOOK_SECRET", "canary-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-aws")
    paths = _paths(tmp_path)
    ledger = Ledger(paths.ledger)
    ledger.create_job("a", "fp")
    ledger.claim_next("w")
    ledger.finish("a", JobState.DONE)
    dump = tmp_path / "env.txt"
    n = ops.Notifier(OpsConfig(command_hook=f"env > {dump}"), paths.ledger, paths.outbox, sleep=lambda s: None)
    n.start()
    n.job_ended(ledger.get("a"))
    wait_for(lambda: any(e["kind"] == "notified" for e in ledger.events("a")), 20, "command hook")
    n.stop()
    seen = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert "canary" not in dump.read_text()
    assert seen["HOTMESH_JOB_ID"] == "a" and seen["HOTMESH_JOB_STATE"] == "done"
    assert seen["HOTMESH_JOB_OUTBOX"] == str(paths.outbox / "a") and seen["PATH"]
    # the shell adds a few of its own (PWD, SHLVL, _); nothing else of the daemon's environment arrives
    assert set(seen) - {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "PWD", "SHLVL", "_", "OLDPWD"} == {
        "HOTMESH_JOB_ID", "HOTMESH_JOB_STATE", "HOTMESH_JOB_OUTBOX"}


def test_job_log_takes_the_pipeline_modules_lines_of_its_own_thread_only(tmp_path: Path) -> None:
    """A pipeline module's line logged while a job runs reaches that job's log with its id; the same module's line
    from another thread (another job in the same process) does not, and after the job nothing does."""
    import logging
    import threading

    from daemon.worker import _job_logger, _pipeline_lines

    jlog, handler = _job_logger("cow", tmp_path)
    jlog.logger.propagate = False
    mod = logging.getLogger("pipeline.geometry.dense")
    before = logging.getLogger("pipeline").level
    with _pipeline_lines("cow", handler):
        mod.info("box %d", 1)
        other = threading.Thread(target=lambda: mod.info("box of another job"))
        other.start()
        other.join()
    mod.info("after the job")
    jlog.logger.removeHandler(handler)
    handler.close()
    text = (tmp_path / "job.log").read_text()
    assert "[job cow] geometry.dense: box 1" in text
    assert "another job" not in text and "after the job" not in text
    assert logging.getLogger("pipeline").level == before  # the level is given back
