"""The daemon: intake -> ledger -> one worker process per device slot -> outbox.

Threads: the main loop (scan, dispatch, supervise), watchdog's observer (wakes the main loop), apscheduler
(periodic rescan). All ledger writes from this process happen on the main loop's thread.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import time
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from daemon.config import Settings
from daemon.intake import Settler
from daemon.ops import Notifier, apply_retention, check_disk, estimate_job_bytes, plan_retention, serve_http
from daemon.ledger import Job, Ledger
from daemon.states import JobState
from daemon.executors import Executor, Finished, LocalExecutor, Lost, SubmitError
from daemon.worker import Paths, write_status
from pipeline.context import CANCEL_MARKER

log = logging.getLogger("hotmesh.daemon")


class AlreadyRunning(RuntimeError):
    pass


class Daemon:
    def __init__(self, paths: Paths, settings: Settings, gpus: str = "auto") -> None:
        self.paths = paths
        self.settings = settings
        self.gpu_spec = gpus
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.executor: Executor | None = None
        self._relayed: set[str] = set()  # running jobs whose CANCEL was passed to the executor
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
        self.executor = self._make_executor()
        self.executor.start()
        slots = [s["name"] for s in self.executor.describe()]
        log.info("watching %s -> %s (state %s), executor %s, slot(s): %s", self.paths.inbox, self.paths.outbox,
                 self.paths.state, self.executor.name, ", ".join(slots) or "(from the cluster)")
        self.ledger.event(None, "daemon", f"daemon started (pid {os.getpid()})",
                          {"executor": self.executor.name, "slots": slots})

    def _make_executor(self) -> Executor:
        kind = self.settings.executor.kind
        if kind == "local":
            return LocalExecutor(self.paths, self.settings, self.gpu_spec,
                                 has_work=lambda: bool(self.ledger.jobs(JobState.QUEUED)))
        if kind == "ray":
            from daemon.ray_executor import RayExecutor

            return RayExecutor(self.paths, self.settings, self.ledger)
        raise ValueError(f"executor.kind must be 'local' or 'ray', got {kind!r}")

    def stop(self) -> None:
        self.scheduler.shutdown(wait=False)
        self.observer.stop()
        if self.executor is not None:
            self.executor.stop(self.settings.jobs.shutdown_grace_seconds)
            for ev in self.executor.poll():  # end states that arrived while stopping
                self._handle(ev)
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
                "executor": self.executor.name if self.executor else None,
                "slots": self.executor.describe() if self.executor else []}

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
        self._relay_cancels()
        for ev in self.executor.poll() if self.executor else []:
            self._handle(ev)
        self._dispatch()
        if self.retention_due.is_set():
            self.retention_due.clear()
            self.clean()
        self.last_tick = time.monotonic()

    def clean(self) -> None:
        actions = plan_retention(self.ledger.jobs(), self.settings.ops, self.paths, time.time())
        busy = set(self.executor.running()) if self.executor else set()
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

    def _relay_cancels(self) -> None:
        """A CANCEL dropped into a running job's folder goes to the executor too: a remote host may not see the
        inbox. The job stops at its next check, as it does locally."""
        running = self.executor.running() if self.executor else {}
        self._relayed &= set(running)
        for job_id in running:
            if job_id in self._relayed:
                continue
            job = self.ledger.get(job_id)
            if job is None:
                continue
            if ((self.paths.inbox / job.folder / CANCEL_MARKER).exists()
                    or (self.paths.work_dir(job_id) / CANCEL_MARKER).exists()):
                log.info("[job %s] CANCEL found; relaying to the %s executor", job_id, self.executor.name)
                self.executor.cancel(job_id)
                self._relayed.add(job_id)

    def _handle(self, ev: Finished | Lost) -> None:
        if isinstance(ev, Lost):
            self._worker_lost(ev.job_id, ev.reason)
        else:
            self._notify(ev.job_id)

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
        if self.stopping.is_set() or self.executor is None:
            return
        while True:
            slot = self.executor.free_slot()
            if slot is None or not self._disk_allows_next():
                return
            job = self.ledger.claim_next(worker=slot)
            if job is None:
                return
            write_status(self.paths, job)
            log.info("[job %s] dispatched to %s (attempt %d)", job.id, slot, job.attempts)
            try:
                self.executor.submit(slot, job)
            except SubmitError as e:
                log.error("[job %s] %s", job.id, e)
                self._publish_failure(job, str(e), state=JobState.FAILED)
                self.ledger.finish(job.id, JobState.FAILED, error=str(e))
                self._notify(job.id)

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

        from pipeline.diagnostics import photo_diagnostics
        from pipeline.redact import scrub

        tmp = self.paths.state / "tmp" / job.id
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            end = (state or job.state).value
            timings = [t for t in job.timings.values()]
            log_file = self.paths.work_dir(job.id) / "job.log"
            # failed without its worker (crashed, lost): the photos may tell why; a queued cancel needs nothing
            photos = []
            if end == "failed":
                try:
                    photos = photo_diagnostics(self.paths.inbox / job.folder, self.paths.work_dir(job.id))
                except Exception as e:  # the diagnosis is a courtesy: it must never take the daemon down
                    log.warning("[job %s] photo diagnostics failed: %s", job.id, e)
            files = write_failure_report(tmp, job.id, job.folder, end, scrub(message, self.settings.secrets()),
                                         job.stage, None, timings, self.settings.pipeline.to_dict(), "n/a",
                                         photos=photos, published={"job.log"} if log_file.exists() else set())
            if log_file.exists():
                files["job.log"] = log_file
            publish(files, self.paths.outbox, job.id)
        except OSError as e:
            log.error("[job %s] could not publish its report: %s", job.id, e)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class _WakeHandler(FileSystemEventHandler):
    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.wake.set()
