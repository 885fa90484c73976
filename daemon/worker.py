"""Worker side: runs one job at a time for one device slot, in its own process.

The worker writes progress, timings and the final state to the ledger itself, so what the user sees never
depends on the daemon's memory. The daemon only notices when a worker process dies mid-job.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from daemon.config import Settings, settings_from_json
from daemon.ledger import Job, Ledger, LedgerError
from daemon.states import JobState
from pipeline.context import during_stage
from pipeline.io.files import printable

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


def status_dict(job: Job, notice: str | None = None) -> dict[str, Any]:
    d = job.to_dict()
    d.pop("fingerprint", None)
    if notice:
        d["notice"] = notice  # e.g. why a re-dropped folder was not processed again
    return d


def write_status(paths: Paths, job: Job, notice: str | None = None) -> bool:
    """The per-job status JSON, replaced atomically, for people and tools that do not use the CLI.

    Never raises for the file system: a status file is a view of the ledger, and an outbox that is briefly
    unwritable (permissions, immutable, full) must not end a job. Returns False when it could not be written;
    the daemon writes it again later."""
    from pipeline.io.publish import write_atomic

    try:
        write_atomic(paths.status_file(job.id), json.dumps(status_dict(job, notice), indent=1))
        return True
    except OSError as e:
        log.debug("[job %s] status file not written: %s", job.id, e)
        return False


def pick_device(setting: str) -> str:
    if setting == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if setting == "cuda":
        raise RuntimeError("jobs.device = cuda but no CUDA GPU is visible")
    return "cpu"


class _JobLogHandler(logging.FileHandler):
    """job.log. On a full or failing disk logging would print a traceback per line to the daemon's terminal;
    this says it once and drops the lines (they still reach the daemon's own log)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, delay=True)
        self.failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if not self.failed:
            self.failed = True
            log.warning("cannot write %s (disk full or not writable); this job's log lines go to the daemon's "
                        "log only", self.baseFilename)

    def close(self) -> None:
        # the buffered tail is written at close: on a full disk that raises, and must not end the worker
        try:
            super().close()
        except OSError:
            self.handleError(None)  # type: ignore[arg-type]


def _job_logger(job_id: str, work_dir: Path, secrets: tuple[str, ...] = ()) -> tuple[logging.LoggerAdapter, logging.Handler]:
    from pipeline.context import JobLogAdapter
    from pipeline.io.redact import install_scrubber

    work_dir.mkdir(parents=True, exist_ok=True)
    handler = _JobLogHandler(work_dir / "job.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    install_scrubber([handler], secrets)  # job.log is published next to the report
    logger = logging.getLogger(f"hotmesh.job.{job_id}")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return JobLogAdapter(logger, {"job_id": job_id}), handler


class _PipelineLines(logging.Handler):
    """The pipeline modules' own log lines (``pipeline.*`` loggers: the dense method's boxes, decimation's choices)
    into job.log, with the job's id and the module's name. Only lines logged from the thread that runs the job:
    threads of another job in the same process (a benchmark's parallel jobs) stay out of this job's log."""

    def __init__(self, job_id: str, target: logging.Handler) -> None:
        super().__init__(logging.INFO)
        self.job_id, self.target, self.thread = job_id, target, threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        line = logging.makeLogRecord(record.__dict__)
        line.msg, line.args = f"[job {self.job_id}] {record.name.removeprefix('pipeline.')}: {record.getMessage()}", None
        self.target.handle(line)


@contextlib.contextmanager
def _pipeline_lines(job_id: str, target: logging.Handler) -> Iterator[None]:
    """:class:`_PipelineLines` on the ``pipeline`` logger while the job runs (INFO and up: a process that never
    configured logging would drop them before any handler)."""
    logger = logging.getLogger("pipeline")
    forward, level = _PipelineLines(job_id, target), logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(forward)
    try:
        yield
    finally:
        logger.removeHandler(forward)
        logger.setLevel(level)


def run_pipeline(paths: Paths, job: Job, settings: Settings, device: str,
                 on_progress: Callable[[str, float], None], on_timing: Callable[[str, dict[str, Any]], None],
                 stop_reason: Callable[[], str | None] = lambda: None,
                 cancel_requested: Callable[[], bool] = lambda: False, under_daemon: bool = False) -> "JobOutcome":
    """Run one job's stages and publish into ``paths.outbox``; no ledger access, so it runs anywhere
    (a local worker process or a Ray task on another host). Progress and timings go to the callbacks.
    ``under_daemon``: a daemon requeues the job if the disk fills (attempts left), so that ends in "retry"."""
    from pipeline.context import JobContext
    from pipeline.runner import run_job

    work = paths.work_dir(job.id)
    jlog, handler = _job_logger(job.id, work, settings.secrets())
    jlog.info("attempt %d on %s (pid %d, host %s), input %s", job.attempts, device, os.getpid(),
              socket.gethostname(), printable(str(paths.inbox / job.folder)))  # a name may hold a newline
    limit = settings.ops.max_runtime_seconds
    ctx = JobContext(job_id=job.id, input_dir=paths.inbox / job.folder, work_dir=work, settings=settings.pipeline,
                     device=device, log=jlog, stop_reason=stop_reason, cancel_requested=cancel_requested,
                     on_progress=on_progress, deadline=time.monotonic() + limit if limit > 0 else None)
    try:
        with _pipeline_lines(job.id, handler):
            return run_job(ctx, job.fingerprint, paths.outbox, on_timing=on_timing,
                           retry_disk_full=under_daemon and job.attempts < settings.jobs.max_attempts)
    finally:
        jlog.logger.removeHandler(handler)
        handler.close()


def outcome_dict(outcome: "JobOutcome") -> dict[str, Any]:
    """A JobOutcome as plain data: what a worker hands the daemon when it could not write it itself (the daemon
    never imports the pipeline's heavy modules)."""
    return {"state": outcome.state, "error": outcome.error, "stage": outcome.stage, "outputs": outcome.outputs}


def apply_outcome(ledger: Ledger, job_id: str, outcome: dict[str, Any]) -> bool:
    """Write a pipeline run's end state to the ledger, if the job is still running (a write retried late must
    not undo a newer change). Raises LedgerError when the ledger cannot be written."""
    if outcome["state"] == "interrupted":
        # a clean shutdown is not a failed attempt
        return ledger.requeue(job_id, f"daemon stopping {during_stage(outcome['stage'])}; will resume from the last "
                                      f"checkpoint", count_attempt=False, expect=JobState.RUNNING)
    if outcome["state"] == "retry":  # a full disk: the attempt counts; the disk guard holds the job until space
        return ledger.requeue(job_id, f"{outcome['error']}. Queued again: it resumes from its last checkpoint once "
                                      f"the disk guard sees enough space", count_attempt=True, expect=JobState.RUNNING)
    return ledger.finish(job_id, JobState(outcome["state"]), error=outcome["error"], outputs=outcome["outputs"],
                         progress=100.0 if outcome["state"] == "done" else None, expect=JobState.RUNNING)


def record_outcome(ledger: Ledger, paths: Paths, job_id: str, outcome: "JobOutcome") -> str:
    """Write a finished pipeline run's end state to the ledger (and the status file). Returns the state.
    Raises LedgerError when the ledger cannot be written (the caller hands the outcome on, or reports it)."""
    apply_outcome(ledger, job_id, outcome_dict(outcome))
    final = ledger.get(job_id)
    if final is not None:
        write_status(paths, final)
    return outcome.state


def ledger_progress(ledger: Ledger, paths: Paths, job_id: str,
                    on_job: Callable[[Job], None] | None = None) -> Callable[[str, float], None]:
    """Progress into the ledger and the status file, best effort: neither a full state disk (ledger) nor an
    unwritable outbox (status file) may end the job; the end state is what must be recorded, and that is
    retried by the daemon."""
    warned: set[str] = set()

    def on_progress(stage: str, pct: float) -> None:
        try:
            ledger.set_progress(job_id, stage, pct)
            current = ledger.get(job_id)
        except LedgerError as e:
            if "ledger" not in warned:
                warned.add("ledger")
                log.warning("[job %s] progress not recorded (the job goes on): %s", job_id, e)
            return
        if current is not None and on_job is not None:
            on_job(current)  # e.g. hotmesh process prints it
        if current is not None and not write_status(paths, current) and "status" not in warned:
            warned.add("status")
            log.warning("[job %s] cannot write its status file %s (the job goes on; it is written again later)",
                        job_id, paths.status_file(job_id))

    return on_progress


def ledger_timing(ledger: Ledger, job_id: str) -> Callable[[str, dict[str, Any]], None]:
    """Stage timings into the ledger, best effort (they are also in the job's timings.json and report)."""
    def on_timing(stage: str, timing: dict[str, Any]) -> None:
        try:
            ledger.record_timing(job_id, stage, timing)
        except LedgerError as e:
            log.warning("[job %s] timing of stage %s not recorded: %s", job_id, stage, e)

    return on_timing


def execute(ledger: Ledger, paths: Paths, job: Job, settings: Settings, device: str,
            stop_reason: Callable[[], str | None] = lambda: None, on_job: Callable[[Job], None] | None = None) -> str:
    """Run ``job`` (already claimed: state running) to an end state, recorded in the ledger. Returns it.
    ``on_job`` sees the job's row after each progress update. Raises LedgerError when the end state cannot be
    written."""
    outcome = run_pipeline(paths, job, settings, device, ledger_progress(ledger, paths, job.id, on_job),
                           ledger_timing(ledger, job.id), stop_reason)
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
    from pipeline.io.redact import install_scrubber

    install_scrubber(logging.getLogger().handlers, settings.secrets())
    device = pick_device(settings.jobs.device)
    if device == "cuda":
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(paths.state / "torch_extensions"))
    try:
        ledger = Ledger(paths.ledger)
    except LedgerError as e:  # the daemon notices the worker gone; its own messages say what to do
        log.error("worker %s cannot open the ledger: %s", slot, e)
        return
    from pipeline.warmup import preload

    # before "ready" (the daemon hands a worker a job only once it is ready): its first job then starts like every
    # later one, instead of spending its first seconds importing torch
    log.info("worker %s loaded the pipeline on %s in %.1fs", slot, device, preload(device))
    try:
        _serve(slot, paths, settings, device, ledger, conn, stop_event, parent)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        # the pipe broke: the daemon was killed (this process gets SIGKILL too, a moment later). Nothing to
        # answer to; the next daemon's crash recovery requeues whatever ran here
        return


def _serve(slot: str, paths: Paths, settings: Settings, device: str, ledger: Ledger, conn: Any, stop_event: Any,
           parent: int) -> None:
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
        try:
            job = ledger.get(msg)
        except LedgerError as e:  # exit: the daemon sees the worker gone and requeues the job
            log.error("[job %s] cannot read the job from the ledger: %s", msg, e)
            return
        if job is None or job.state != JobState.RUNNING:
            conn.send(("skipped", msg, None))
            continue
        t0 = time.monotonic()
        outcome = run_pipeline(paths, job, settings, device, ledger_progress(ledger, paths, job.id),
                               ledger_timing(ledger, job.id), stop_reason, under_daemon=True)
        state = outcome.state
        try:
            record_outcome(ledger, paths, job.id, outcome)
        except LedgerError as e:
            # the job's work is done (and published); only its record is missing: the daemon keeps it and
            # writes it when the ledger can be written again
            log.error("[job %s] %s; the daemon records the end state (%s) when it can", job.id, e, state)
            conn.send(("unrecorded", job.id, outcome_dict(outcome)))
        jobs_run += 1
        log.info("[job %s] %s in %.1fs", job.id, state, time.monotonic() - t0)
        retire = jobs_run >= settings.jobs.worker_max_jobs > 0
        if retire:  # announced before "finished", so the daemon never hands this worker another job
            log.info("retiring after %d jobs; the daemon starts a fresh worker", jobs_run)
            conn.send(("retiring", slot, None))
        conn.send(("finished", job.id, state))
        if retire:
            return
