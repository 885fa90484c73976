"""Worker side: runs one job at a time for one device slot, in its own process.

The worker writes progress, timings and the final state to the ledger itself, so what the user sees never
depends on the daemon's memory. The daemon only notices when a worker process dies mid-job.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from daemon.config import Settings, settings_from_json
from daemon.ledger import Job, Ledger
from daemon.states import JobState

if TYPE_CHECKING:
    from pipeline.runner import JobOutcome

log = logging.getLogger("hotmesh.worker")


@dataclass(frozen=True)
class Paths:
    inbox: Path
    outbox: Path
    state: Path

    @property
    def ledger(self) -> Path:
        return self.state / "ledger.db"

    def work_dir(self, job_id: str) -> Path:
        return self.state / "jobs" / job_id

    def status_file(self, job_id: str) -> Path:
        return self.outbox / "_status" / f"{job_id}.json"


def write_status(paths: Paths, job: Job) -> None:
    """The per-job status JSON, replaced atomically, for people and tools that do not use the CLI."""
    from pipeline.publish import write_atomic

    d = job.to_dict()
    d.pop("fingerprint", None)
    write_atomic(paths.status_file(job.id), json.dumps(d, indent=1))


def pick_device(setting: str) -> str:
    if setting == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if setting == "cuda":
        raise RuntimeError("jobs.device = cuda but no CUDA GPU is visible")
    return "cpu"


def _job_logger(job_id: str, work_dir: Path, secrets: tuple[str, ...] = ()) -> tuple[logging.LoggerAdapter, logging.Handler]:
    from pipeline.context import JobLogAdapter
    from pipeline.redact import install_scrubber

    work_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(work_dir / "job.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    install_scrubber([handler], secrets)  # job.log is published next to the report
    logger = logging.getLogger(f"hotmesh.job.{job_id}")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return JobLogAdapter(logger, {"job_id": job_id}), handler


def run_pipeline(paths: Paths, job: Job, settings: Settings, device: str,
                 on_progress: Callable[[str, float], None], on_timing: Callable[[str, dict[str, Any]], None],
                 stop_reason: Callable[[], str | None] = lambda: None,
                 cancel_requested: Callable[[], bool] = lambda: False) -> "JobOutcome":
    """Run one job's stages and publish into ``paths.outbox``; no ledger access, so it runs anywhere
    (a local worker process or a Ray task on another host). Progress and timings go to the callbacks."""
    from pipeline.context import JobContext
    from pipeline.runner import run_job

    work = paths.work_dir(job.id)
    jlog, handler = _job_logger(job.id, work, settings.secrets())
    jlog.info("attempt %d on %s (pid %d, host %s), input %s", job.attempts, device, os.getpid(),
              socket.gethostname(), paths.inbox / job.folder)
    limit = settings.ops.max_runtime_seconds
    ctx = JobContext(job_id=job.id, input_dir=paths.inbox / job.folder, work_dir=work, settings=settings.pipeline,
                     device=device, log=jlog, stop_reason=stop_reason, cancel_requested=cancel_requested,
                     on_progress=on_progress, deadline=time.monotonic() + limit if limit > 0 else None)
    try:
        return run_job(ctx, job.fingerprint, paths.outbox, on_timing=on_timing)
    finally:
        jlog.logger.removeHandler(handler)
        handler.close()


def record_outcome(ledger: Ledger, paths: Paths, job_id: str, outcome: "JobOutcome") -> str:
    """Write a finished pipeline run's end state to the ledger (and the status file). Returns the state."""
    if outcome.state == "interrupted":
        # a clean shutdown is not a failed attempt
        ledger.requeue(job_id, f"daemon stopping during stage {outcome.stage!r}; will resume from the last checkpoint",
                       count_attempt=False)
    else:
        ledger.finish(job_id, JobState(outcome.state), error=outcome.error, outputs=outcome.outputs,
                      progress=100.0 if outcome.state == "done" else None)
    final = ledger.get(job_id)
    if final is not None:
        write_status(paths, final)
    return outcome.state


def ledger_progress(ledger: Ledger, paths: Paths, job_id: str) -> Callable[[str, float], None]:
    def on_progress(stage: str, pct: float) -> None:
        ledger.set_progress(job_id, stage, pct)
        current = ledger.get(job_id)
        if current is not None:
            write_status(paths, current)

    return on_progress


def execute(ledger: Ledger, paths: Paths, job: Job, settings: Settings, device: str,
            stop_reason: Callable[[], str | None] = lambda: None) -> str:
    """Run ``job`` (already claimed: state running) to an end state, recorded in the ledger. Returns it."""
    outcome = run_pipeline(paths, job, settings, device, ledger_progress(ledger, paths, job.id),
                           lambda stage, timing: ledger.record_timing(job.id, stage, timing), stop_reason)
    return record_outcome(ledger, paths, job.id, outcome)


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the daemon dies (kill -9 included), so no orphan keeps a job half-run."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def worker_main(slot: str, gpu: str | None, paths: Paths, settings_json: str, conn: Any, stop_event: Any) -> None:
    """Entry point of a worker process: receive job ids, run them, answer with the end state."""
    _die_with_parent()
    parent = os.getppid()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before torch is imported
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when to stop (via stop_event)
    signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s worker[{slot}] %(message)s")
    settings = settings_from_json(settings_json)
    if settings.ops.json_logs:
        from daemon.ops import JsonFormatter

        for h in logging.getLogger().handlers:
            h.setFormatter(JsonFormatter())
    from pipeline.redact import install_scrubber

    install_scrubber(logging.getLogger().handlers, settings.secrets())
    device = pick_device(settings.jobs.device)
    if device == "cuda":
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(paths.state / "torch_extensions"))
    ledger = Ledger(paths.ledger)
    conn.send(("ready", slot, device))
    stop_reason = lambda: "daemon shutting down" if stop_event.is_set() else None  # noqa: E731
    jobs_run = 0
    while not stop_event.is_set():
        if os.getppid() != parent:
            return
        if not conn.poll(0.5):
            continue
        msg = conn.recv()
        if msg is None:
            return
        job = ledger.get(msg)
        if job is None or job.state != JobState.RUNNING:
            conn.send(("skipped", msg, None))
            continue
        t0 = time.monotonic()
        state = execute(ledger, paths, job, settings, device, stop_reason)
        jobs_run += 1
        log.info("[job %s] %s in %.1fs", job.id, state, time.monotonic() - t0)
        retire = jobs_run >= settings.jobs.worker_max_jobs > 0
        if retire:  # announced before "finished", so the daemon never hands this worker another job
            log.info("retiring after %d jobs; the daemon starts a fresh worker", jobs_run)
            conn.send(("retiring", slot, None))
        conn.send(("finished", job.id, state))
        if retire:
            return
