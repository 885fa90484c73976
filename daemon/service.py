"""The daemon: intake -> ledger -> one worker process per device slot -> outbox.

Threads: the main loop (scan, dispatch, supervise), watchdog's observer (wakes the main loop), apscheduler
(periodic rescan). All ledger writes from this process happen on the main loop's thread.
"""
from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from daemon.config import Settings
from daemon.intake import Settler
from daemon.ops import Notifier, apply_retention, check_disk, estimate_job_bytes, plan_retention, serve_http
from daemon.ledger import Job, Ledger
from daemon.states import JobState
from daemon.worker import Paths, worker_main, write_status
from pipeline.context import CANCEL_MARKER

log = logging.getLogger("hotmesh.daemon")


class AlreadyRunning(RuntimeError):
    pass


def detect_gpus(spec: str) -> list[str | None]:
    """Device slots from ``--gpus``: 'auto' (every visible NVIDIA GPU, else one CPU slot), 'cpu', or '0,1'."""
    if spec in ("cpu", "none", ""):
        return [None]
    if spec in ("auto", "all"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            ids = [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
            return list(ids) or [None]
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return [None]
        ids = [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]
        return list(ids) or [None]
    return [g.strip() for g in spec.split(",") if g.strip()]


def describe_exit(code: int | None) -> str:
    if code is None:
        return "worker process vanished"
    if code < 0:
        sig = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        hint = " — usually the out-of-memory killer (exit 137)" if -code == signal.SIGKILL else ""
        return f"worker process killed by {sig}{hint}"
    return f"worker process exited with code {code}"


@dataclass
class Slot:
    name: str
    gpu: str | None
    proc: Any = None  # multiprocessing.Process
    conn: Any = None
    job_id: str | None = None
    device: str | None = None
    ready: bool = False
    since: float = 0.0  # monotonic time the current job was dispatched


class Daemon:
    def __init__(self, paths: Paths, settings: Settings, gpus: str = "auto") -> None:
        self.paths = paths
        self.settings = settings
        self.gpu_spec = gpus
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.ctx = mp.get_context("spawn")  # fresh interpreters: no inherited threads, locks or CUDA state
        self.stop_workers = self.ctx.Event()
        self.slots: list[Slot] = []
        self._lock_fh: Any = None
        self.retention_due = threading.Event()
        self.last_tick = time.monotonic()
        self.disk_ok = True
        self.disk_message = "ok"
        self._estimates: dict[str, int] = {}
        self.http: Any = None

    # -- life cycle ---------------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        self.paths.state.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.paths.state / "daemon.lock", "a+")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(f"another hotmesh daemon already uses the state folder {self.paths.state}") from None
        self._lock_fh.seek(0)
        self._lock_fh.truncate()
        self._lock_fh.write(str(os.getpid()))
        self._lock_fh.flush()

    def request_stop(self, *_: Any) -> None:
        log.info("stop requested: finishing at the next checkpoint")
        self.stopping.set()
        self.wake.set()

    def start(self) -> None:
        """Everything but the loop: lock, ledger, crash recovery, watchers, scheduler, notifier, HTTP."""
        for d in (self.paths.inbox, self.paths.outbox, self.paths.state):
            d.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        # where the CLI (cancel, retry, logs, clean) finds this daemon's folders
        (self.paths.state / "paths.json").write_text(json.dumps({"inbox": str(self.paths.inbox),
                                                                 "outbox": str(self.paths.outbox)}))
        self.ledger = Ledger(self.paths.ledger)
        self._recover()
        self.settler = Settler(self.settings.intake.settle_seconds)
        self.observer = Observer()
        # top level only: a new folder is what needs a prompt look; changes inside folders are caught by the
        # settle snapshots and the 1 s loop. Recursive watching cost ~19 KB and one inotify watch per
        # directory left in the inbox (5.7 MB for 300 job folders, measured) and can exhaust
        # fs.inotify.max_user_watches on a large inbox.
        self.observer.schedule(_WakeHandler(self.wake), str(self.paths.inbox), recursive=False)
        self.observer.start()
        self.scheduler = BackgroundScheduler(daemon=True)
        self.scheduler.add_job(self.wake.set, "interval", seconds=self.settings.intake.rescan_seconds, id="rescan")
        # retention runs on the main loop's thread (the ledger connection belongs to it); the scheduler only asks
        self.scheduler.add_job(lambda: (self.retention_due.set(), self.wake.set()), "interval",
                               seconds=self.settings.ops.retention_interval_seconds, id="retention")
        self.scheduler.start()
        self.notifier = Notifier(self.settings.ops, self.paths.ledger, self.paths.outbox)
        self.notifier.start()
        if self.settings.ops.http_port:
            self.http = serve_http(self.settings.ops.http_host, self.settings.ops.http_port, self.paths.ledger,
                                   self.health)
        self.slots = [Slot(name=f"{'gpu' + g if g is not None else 'cpu'}", gpu=g) for g in detect_gpus(self.gpu_spec)]
        log.info("watching %s -> %s (state %s), %d worker slot(s): %s", self.paths.inbox, self.paths.outbox,
                 self.paths.state, len(self.slots), ", ".join(s.name for s in self.slots))
        self.ledger.event(None, "daemon", f"daemon started (pid {os.getpid()})", {"slots": [s.name for s in self.slots]})

    def stop(self) -> None:
        self.scheduler.shutdown(wait=False)
        self.observer.stop()
        self._shutdown_workers()
        self.observer.join(timeout=5)
        self.notifier.stop()
        if self.http is not None:
            self.http.shutdown()
        self.ledger.event(None, "daemon", f"daemon stopped (pid {os.getpid()})")
        self.ledger.close()
        log.info("stopped")

    def run(self) -> None:
        self.start()
        try:
            while not self.stopping.is_set():
                self.tick()
                self.wake.wait(timeout=self.settings.jobs.cancel_poll_seconds)
                self.wake.clear()
        finally:
            self.stop()

    def health(self) -> dict[str, Any]:
        age = time.monotonic() - self.last_tick
        return {"healthy": age < max(30.0, 5 * self.settings.jobs.cancel_poll_seconds), "pid": os.getpid(),
                "loop_age_seconds": round(age, 2), "disk_ok": self.disk_ok, "disk": self.disk_message,
                "slots": [{"name": s.name, "job": s.job_id, "device": s.device} for s in self.slots]}

    def _recover(self) -> None:
        from pipeline.publish import remove_stale_partials

        for job_id, action in self.ledger.recover_orphans(self.settings.jobs.max_attempts):
            log.warning("[job %s] left running by a previous daemon: %s", job_id, action)
            job = self.ledger.get(job_id)
            if job is not None and action == "failed":
                self._publish_failure(job, job.error or "failed")
        for name in remove_stale_partials(self.paths.outbox):
            log.warning("removed unfinished publish folder %s", name)

    # -- one turn of the main loop ------------------------------------------------------------------

    def tick(self) -> None:
        self._intake()
        self._cancel_queued()
        self._supervise()
        self._dispatch()
        if self.retention_due.is_set():
            self.retention_due.clear()
            self.clean()
        self.last_tick = time.monotonic()

    def clean(self) -> None:
        actions = plan_retention(self.ledger.jobs(), self.settings.ops, self.paths, time.time())
        busy = {s.job_id for s in self.slots if s.job_id}
        actions = [a for a in actions if a.job_id not in busy]  # never a running job's files
        if actions:
            log.info("retention: %d action(s)", len(actions))
            apply_retention(self.ledger, actions, self.paths)

    def _notify(self, job_id: str) -> None:
        job = self.ledger.get(job_id)
        if job is not None and job.state.terminal:
            self.notifier.job_ended(job)

    def _intake(self) -> None:
        for d in self.settler.scan(self.paths.inbox, self.ledger.known_folders()):
            job, created = self.ledger.create_job(d.folder, d.fingerprint)
            if not created:
                continue
            if d.cancelled:
                self._cancel_before_start(job, "cancelled by a CANCEL file before processing started")
                continue
            log.info("[job %s] queued from %s", job.id, d.folder)
            write_status(self.paths, job)

    def _cancel_queued(self) -> None:
        for job in self.ledger.jobs(JobState.QUEUED):
            if ((self.paths.inbox / job.folder / CANCEL_MARKER).exists()
                    or (self.paths.work_dir(job.id) / CANCEL_MARKER).exists()):
                self._cancel_before_start(job, "cancelled by a CANCEL file while queued")

    def _cancel_before_start(self, job: Job, reason: str) -> None:
        """Report first, then the ledger: whoever sees 'cancelled' also finds the report. Only this thread
        claims jobs, so the queued job cannot start in between."""
        self._publish_failure(job, reason, state=JobState.CANCELLED)
        if self.ledger.cancel_if_queued(job.id, reason):
            log.info("[job %s] %s", job.id, reason)
            cancelled = self.ledger.get(job.id)
            if cancelled is not None:
                write_status(self.paths, cancelled)
            self._notify(job.id)

    def _start_worker(self, slot: Slot) -> None:
        parent_conn, child_conn = self.ctx.Pipe()
        proc = self.ctx.Process(target=worker_main, name=f"hotmesh-worker-{slot.name}",
                                args=(slot.name, slot.gpu, self.paths, json.dumps(self.settings.to_dict()),
                                      child_conn, self.stop_workers), daemon=False)
        proc.start()
        child_conn.close()
        slot.proc, slot.conn, slot.ready, slot.job_id = proc, parent_conn, False, None
        log.info("worker %s started (pid %d)", slot.name, proc.pid)

    def _supervise(self) -> None:
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                while slot.conn.poll():
                    kind, a, b = slot.conn.recv()
                    if kind == "ready":
                        slot.ready, slot.device = True, b
                        log.info("worker %s ready on %s", slot.name, b)
                    elif kind in ("finished", "skipped"):
                        log.info("[job %s] worker %s reports %s", a, slot.name, b or kind)
                        slot.job_id = None
                        self._notify(a)
                    elif kind == "retiring":
                        slot.ready = False  # exits by itself; replaced below once it is gone
            except (EOFError, OSError):
                pass
            limit = self.settings.ops.max_runtime_seconds
            runaway = (limit > 0 and slot.job_id is not None and slot.proc.is_alive()
                       and time.monotonic() - slot.since > limit + 120)
            if runaway:
                # the worker checks the limit itself; this is for a stage stuck where it cannot check
                log.error("[job %s] still running 120 s past ops.max_runtime_seconds; killing worker %s",
                          slot.job_id, slot.name)
                slot.proc.kill()
                slot.proc.join(timeout=10)
            if not slot.proc.is_alive():
                slot.proc.join(timeout=1)
                reason = describe_exit(slot.proc.exitcode)
                if runaway:
                    reason = "exceeded ops.max_runtime_seconds and did not stop; worker killed"
                if slot.proc.exitcode == 0 and slot.job_id is None:
                    log.info("worker %s retired", slot.name)
                else:
                    log.error("worker %s died: %s", slot.name, reason)
                if slot.job_id is not None:
                    self._worker_lost(slot.job_id, reason)
                slot.proc, slot.conn, slot.job_id, slot.ready = None, None, None, False

    def _worker_lost(self, job_id: str, reason: str) -> None:
        job = self.ledger.get(job_id)
        if job is None or job.state != JobState.RUNNING:
            return  # the worker had already recorded an end state
        if job.attempts < self.settings.jobs.max_attempts:
            self.ledger.requeue(job_id, f"{reason} during stage {job.stage!r}; retrying from the last checkpoint "
                                        f"(attempt {job.attempts} of {self.settings.jobs.max_attempts})")
        else:
            msg = (f"{reason} during stage {job.stage!r}, {job.attempts} times; giving up "
                   f"(jobs.max_attempts={self.settings.jobs.max_attempts})")
            self._publish_failure(job, msg, state=JobState.FAILED)  # report before the state: whoever sees 'failed' finds it
            self.ledger.finish(job_id, JobState.FAILED, error=msg)
            self._notify(job_id)
        current = self.ledger.get(job_id)
        if current is not None:
            write_status(self.paths, current)

    def _dispatch(self) -> None:
        if self.stopping.is_set():
            return
        host = socket.gethostname()
        for slot in self.slots:
            if slot.proc is None:
                if self.ledger.jobs(JobState.QUEUED):
                    self._start_worker(slot)
                continue
            if not slot.ready or slot.job_id is not None:
                continue
            if not self._disk_allows_next():
                return
            job = self.ledger.claim_next(worker=f"{host}:{slot.name}:{slot.proc.pid}")
            if job is None:
                return
            slot.job_id, slot.since = job.id, time.monotonic()
            write_status(self.paths, job)
            log.info("[job %s] dispatched to %s (attempt %d)", job.id, slot.name, job.attempts)
            slot.conn.send(job.id)

    def _disk_allows_next(self) -> bool:
        """Disk guard: claim the next job only if the state and outbox volumes can hold it."""
        queued = self.ledger.jobs(JobState.QUEUED)
        if not queued:
            return True
        job = queued[0]
        if job.id not in self._estimates:
            self._estimates[job.id] = estimate_job_bytes(self.paths.inbox / job.folder)
        check = check_disk([self.paths.state, self.paths.outbox], self._estimates[job.id], self.settings.ops.min_free_mb)
        if check.ok != self.disk_ok:  # log and record transitions only, not every tick
            if check.ok:
                log.info("disk space is back; resuming")
                self.ledger.event(None, "disk", "disk space is back; resuming")
            else:
                log.warning("%s", check.message)
                self.ledger.event(job.id, "disk", check.message)
            from pipeline.publish import write_atomic

            write_atomic(self.paths.outbox / "_status" / "_daemon.json",
                         json.dumps({"disk_ok": check.ok, "message": check.message, "updated": time.time()}))
        self.disk_ok, self.disk_message = check.ok, check.message
        return check.ok

    def _publish_failure(self, job: Job, message: str, state: JobState | None = None) -> None:
        """Report for a job that ended without a worker (cancelled while queued, crashed worker)."""
        from pipeline.failure import write_failure_report
        from pipeline.publish import publish

        tmp = self.paths.state / "tmp" / job.id
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            timings = [t for t in job.timings.values()]
            files = write_failure_report(tmp, job.id, job.folder, (state or job.state).value, message, job.stage, None, timings,
                                         self.settings.to_dict(), "n/a")
            log_file = self.paths.work_dir(job.id) / "job.log"
            if log_file.exists():
                files["job.log"] = log_file
            publish(files, self.paths.outbox, job.id)
        except OSError as e:
            log.error("[job %s] could not publish its report: %s", job.id, e)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _shutdown_workers(self) -> None:
        self.stop_workers.set()
        deadline = time.monotonic() + self.settings.jobs.shutdown_grace_seconds
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                slot.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
            slot.proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if slot.proc.is_alive():
                log.warning("worker %s did not stop within %.0fs; terminating (its job resumes at the next start)",
                            slot.name, self.settings.jobs.shutdown_grace_seconds)
                slot.proc.kill()
                slot.proc.join(timeout=5)


class _WakeHandler(FileSystemEventHandler):
    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.wake.set()
