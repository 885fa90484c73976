"""The daemon: intake -> ledger -> one worker process per device slot -> outbox.

Threads: the main loop (scan, dispatch, supervise), watchdog's observer (wakes the main loop), apscheduler
(periodic rescan). All ledger writes from this process happen on the main loop's thread.

The daemon survives a ledger it cannot write (full state disk, read-only remount): its changes go through
:class:`daemon.kept_writes.KeptWrites`, which keeps them in order until the ledger takes writes again. Meanwhile
nothing new is claimed or queued; running jobs go on.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from typing import Any, Callable

from apscheduler.schedulers.background import BackgroundScheduler
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from daemon.config import Settings
from daemon.finished_folders import FinishedFolders
from daemon.intake import (Decision, Settler, changed_within, fingerprint, linked_folder_message, redrop_notice, shown,
                           snapshot)
from daemon.ops import Notifier, apply_retention, check_disk, estimate_job_bytes, plan_retention, serve_http
from daemon.locks import DaemonLocks
from daemon.kept_writes import KeptWrites, LaterFiles
from daemon.ledger import FolderJob, Job, Ledger, LedgerError
from daemon.states import JobState
from daemon.failure_reports import failure_report_builder
from daemon.executors import Event, Executor, Finished, LocalExecutor, Lost, SubmitError
from daemon.worker import Paths, apply_outcome, write_status
from pipeline.context import CANCEL_MARKER, during_stage

log = logging.getLogger("hotmesh.daemon")
DAEMON_STATUS = "_daemon.json"


class Daemon:
    def __init__(self, paths: Paths, settings: Settings, gpus: str = "auto") -> None:
        self.paths = paths
        self.settings = settings
        self.gpu_spec = gpus
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.executor: Executor | None = None
        self._relayed: set[str] = set()  # running jobs whose CANCEL was passed to the executor
        self.locks = DaemonLocks(paths.state, paths.inbox)
        self.retention_due = threading.Event()
        self.last_tick = time.monotonic()
        self.disk_ok = True
        self.disk_message = "ok"
        self._estimates: dict[str, int] = {}
        self.http: Any = None
        # the ledger cannot be written: changes waiting (in order), the jobs' states meanwhile, and why
        self.kept = KeptWrites(lambda: self.ledger, self._daemon_status, self._status)
        self._unhandled: list[Event] = []  # executor events not handled yet (the ledger could not be read)
        # files to write again later (status files, reports) while the outbox refuses writes: key -> attempt
        self._later = LaterFiles()
        # finished jobs' folders: which to compare at a scan, and content already answered for
        self.finished = FinishedFolders(settings.intake.rescan_seconds)
        self._links_told: set[str] = set()  # inbox links to folders already refused (log line + ledger event)

    # -- life cycle ---------------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        log.info("stop requested: finishing at the next checkpoint")
        self.stopping.set()
        self.wake.set()

    def start(self) -> None:
        """Everything but the loop: lock, ledger, crash recovery, watchers, scheduler, notifier, HTTP."""
        for d in (self.paths.inbox, self.paths.outbox, self.paths.state):
            d.mkdir(parents=True, exist_ok=True)
        self.locks.acquire()
        try:  # where the CLI (cancel, retry, logs, clean) finds this daemon's folders
            (self.paths.state / "paths.json").write_text(json.dumps({"inbox": str(self.paths.inbox),
                                                                     "outbox": str(self.paths.outbox)}))
        except OSError as e:
            log.warning("could not write %s (the CLI then needs --outbox): %s", self.paths.state / "paths.json", e)
        self.ledger = Ledger(self.paths.ledger)
        self._recover()
        self._backup()
        self._remember_refusals()
        self.settler = Settler(self.settings.intake.settle_seconds, self.settings.intake.missing_files_seconds)
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
        msg = f"daemon started (pid {os.getpid()})"
        data = {"executor": self.executor.name, "slots": slots}
        self.kept.write("start event", None, lambda ledger: ledger.event(None, "daemon", msg, data))

    def _make_executor(self) -> Executor:
        kind = self.settings.executor.kind
        if kind == "local":
            return LocalExecutor(self.paths, self.settings, self.gpu_spec, has_work=self._has_work)
        if kind == "ray":
            from daemon.ray_executor import RayExecutor

            return RayExecutor(self.paths, self.settings, self.ledger)
        raise ValueError(f"executor.kind must be 'local' or 'ray', got {kind!r}")

    def _has_work(self) -> bool:
        if self.kept.pending:
            return False  # nothing is claimed while the ledger cannot be written
        try:
            return bool(self.ledger.jobs(JobState.QUEUED))
        except LedgerError:
            return False

    def stop(self) -> None:
        self.scheduler.shutdown(wait=False)
        self.observer.stop()
        if self.executor is not None:
            self.executor.stop(self.settings.jobs.shutdown_grace_seconds)
            self._handle_events(self.executor.poll())  # end states that arrived while stopping
        self.observer.join(timeout=5)
        self.notifier.stop()
        if self.http is not None:
            self.http.shutdown()
        msg = f"daemon stopped (pid {os.getpid()})"
        self.kept.write("stop event", None, lambda ledger: ledger.event(None, "daemon", msg))
        self.kept.flush()
        self._later.retry()
        if self.kept.pending:
            log.error("stopping with %d ledger change(s) not written (%s): %s. The ledger still holds the earlier "
                      "state; at the next start, jobs it shows running resume from their last checkpoint",
                      len(self.kept.pending), self.kept.problem, self.kept.describe())
        self.ledger.close()
        self.locks.release()  # the state folder (for `hotmesh ledger rebuild`, or a new daemon) and the inbox
        log.info("stopped")

    def run(self) -> None:
        self.start()
        try:
            while not self.stopping.is_set():
                try:
                    self.tick()
                except LedgerError as e:  # the ledger could not even be read: try again next turn, never exit
                    self.kept.down(e)
                self.wake.wait(timeout=self.settings.jobs.cancel_poll_seconds)
                self.wake.clear()
        finally:
            self.stop()

    def health(self) -> dict[str, Any]:
        age = time.monotonic() - self.last_tick
        return {"healthy": age < max(30.0, 5 * self.settings.jobs.cancel_poll_seconds), "pid": os.getpid(),
                "loop_age_seconds": round(age, 2), "disk_ok": self.disk_ok, "disk": self.disk_message,
                "ledger_ok": self.kept.problem is None, "ledger": self.kept.problem or "ok",
                "pending_writes": len(self.kept.pending),
                "executor": self.executor.name if self.executor else None,
                "slots": self.executor.describe() if self.executor else []}

    def _recover(self) -> None:
        from pipeline.io.publish import remove_stale_partials

        self.kept.write("crash recovery", None, self._recover_orphans)
        for name in remove_stale_partials(self.paths.outbox):  # no worker runs yet: every partial is stale
            log.warning("removed unfinished publish folder %s", name)

    def _recover_orphans(self, ledger: Ledger) -> None:
        for job_id, action in ledger.recover_orphans(self.settings.jobs.max_attempts):
            log.warning("[job %s] left running by a previous daemon: %s", job_id, action)
            job = ledger.get(job_id)
            if job is not None:
                if action == "failed":
                    self._publish_failure(job, job.error or "failed")
                self._status(job)

    def _remember_refusals(self) -> None:
        """Re-drops already answered (ledger events) are not logged again after a restart."""
        by_id = {j.id: (folder, j.fingerprint) for folder, j in self.ledger.folders().items()}
        # inbox links already refused (by an earlier start): told again only if removed and made again
        self._links_told = {d.get("folder") for d in self.ledger.daemon_event_data("link-refused")}
        for job_id, data in self.ledger.latest_events("redrop-ignored").items():
            if job_id in by_id and data.get("fingerprint"):
                folder, fp = by_id[job_id]
                self.finished.acknowledge(folder, fp, data["fingerprint"])

    def _backup(self) -> None:
        """Keep a copy of the ledger for `hotmesh ledger rebuild --from-backup` (at start and with retention)."""
        try:
            path = self.ledger.backup()
            log.debug("ledger backed up to %s", path)
        except (OSError, LedgerError) as e:
            log.warning("could not back the ledger up (the last backup stays): %s", e)

    def _change(self, what: str, view: Job, apply: Callable[[Ledger], Any]) -> None:
        """A job's state change: into the ledger, or kept until it can be; either way the status file shows it."""
        current = self.kept.change(what, view, apply)
        if current is not None:
            self._status(current)

    # -- files written again later ------------------------------------------------------------------

    def _status(self, job: Job, notice: str | None = None) -> None:
        if write_status(self.paths, job, notice):
            self._later.drop(f"status:{job.id}")
            return
        key = f"status:{job.id}"
        if key not in self._later:
            log.warning("[job %s] cannot write its status file %s now; trying again every few seconds", job.id,
                        self.paths.status_file(job.id))

        def again() -> bool:
            current = self.kept.job(job.id)
            return current is None or write_status(self.paths, current, notice)

        self._later.keep(key, again)

    def _daemon_status(self) -> bool:
        """outbox/_status/_daemon.json: the disk guard's and the ledger's state, for people and monitoring."""
        from pipeline.io.publish import write_atomic

        body = json.dumps({"disk_ok": self.disk_ok, "message": self.disk_message,
                           "ledger_ok": self.kept.problem is None, "ledger": self.kept.problem or "ok",
                           "pending_writes": len(self.kept.pending), "updated": time.time()})
        try:
            write_atomic(self.paths.outbox / "_status" / DAEMON_STATUS, body)
        except OSError:
            self._later.keep("status:_daemon", self._daemon_status)
            return False
        return True

    # -- one turn of the main loop ------------------------------------------------------------------

    def tick(self) -> None:
        self.kept.flush()
        self._later.retry()
        writable = not self.kept.pending  # while changes wait, nothing new is queued or claimed
        if writable:
            self._intake()
            self._cancel_queued()
        self._relay_cancels()
        self._handle_events(self.executor.poll() if self.executor else [])
        if not self.kept.pending:
            self._dispatch()
        if self.retention_due.is_set() and not self.kept.pending:
            self.retention_due.clear()
            self.clean()
            self._backup()
        self.last_tick = time.monotonic()

    def _handle_events(self, new: list[Event]) -> None:
        events, self._unhandled = self._unhandled + list(new), []
        for i, ev in enumerate(events):
            try:
                self._handle(ev)
            except LedgerError as e:  # could not even read: keep the rest for the next turn
                self.kept.down(e)
                self._unhandled = events[i:]
                return

    def clean(self) -> None:
        try:
            actions = plan_retention(self.ledger.jobs(), self.settings.ops, self.paths, time.time())
            busy = set(self.executor.running()) if self.executor else set()
            actions = [a for a in actions if a.job_id not in busy]  # never a running job's files
            if actions:
                log.info("retention: %d action(s)", len(actions))
                apply_retention(self.ledger, actions, self.paths)
        except LedgerError as e:
            self.kept.down(e)  # the rest waits for the next retention run

    def _notify(self, job_id: str) -> None:
        job = self.kept.job(job_id)
        if job is not None and job.state.terminal:
            self.notifier.job_ended(job)

    def _intake(self) -> None:
        try:
            jobs = self.ledger.folders()
        except LedgerError as e:
            self.kept.down(e)
            return
        baselines = self.finished.baselines(self.paths.inbox, jobs, self.settler.pending)
        decisions = self.settler.scan(self.paths.inbox, set(jobs), baselines=baselines)
        self._refuse_links(self.settler.linked)
        for d in decisions:
            if d.changed:
                self._folder_changed(jobs[d.folder], d)
                continue
            try:
                job, created = self.ledger.create_job(d.folder, d.fingerprint)
            except LedgerError as e:  # the folder settles again and is offered again once the ledger is back
                self.kept.down(e)
                return
            self.kept.works()
            if not created:
                continue
            if d.cancelled:
                self._cancel_before_start(job, "cancelled by a CANCEL file before processing started")
                continue
            log.info("[job %s] queued from %s", job.id, shown(d.folder))
            self._status(job)

    def _refuse_links(self, linked: set[str]) -> None:
        """Inbox entries that are links to folders are never jobs: say so once per link (log line and ledger
        event, with what to do); a link removed and made again is told again."""
        self._links_told &= linked
        for name in sorted(linked - self._links_told):
            message = linked_folder_message(name)
            log.warning("%s", message)
            self.kept.write("link event", None,
                        lambda ledger, m=message, n=name: ledger.event(None, "link-refused", m, {"folder": n}))
            self._links_told.add(name)  # written now or kept in order: either way, told once

    def _folder_changed(self, job: FolderJob, d: Decision) -> None:
        """A finished job's inbox folder has new content (settled). Failed: run it again with that content (a
        slow copy that failed at ingest, or a fix). Done or cancelled: never reprocessed by itself (one folder,
        one job); say so, once per content, with what to do."""
        self.finished.acknowledge(d.folder, job.fingerprint, d.fingerprint)
        if job.state == JobState.FAILED and not d.cancelled:
            reason = f"the inbox folder {shown(d.folder)} changed after the job failed; running it again with the new content"
            current = self.ledger.get(job.id)
            if current is None:
                return
            log.info("[job %s] %s", job.id, reason)
            self._estimates.pop(job.id, None)
            self._change("retry", dataclasses.replace(current, state=JobState.QUEUED, attempts=0, error=None,
                                                       finished=None, fingerprint=d.fingerprint),
                         lambda ledger: ledger.retry(job.id, reason, fingerprint=d.fingerprint, kind="input-changed"))
            self.finished.forget(d.folder)
            return
        if d.cancelled:
            return  # a CANCEL in a finished job's folder: nothing to do
        if job.state == JobState.DONE and self._rerun_grown(job, d):
            return
        notice = redrop_notice(job.id, job.state.value, d.folder)
        log.warning("[job %s] %s", job.id, notice)
        self.kept.write("re-drop event", job.id,
                    lambda ledger: ledger.event(job.id, "redrop-ignored", notice, {"fingerprint": d.fingerprint}))
        current = self.kept.job(job.id)
        if current is not None:
            self._status(current, notice=notice)

    def _rerun_grown(self, job: FolderJob, d: Decision) -> bool:
        """A done job whose folder changed while it ran, or within intake.settle_seconds after it ended, ran on
        part of a copy that was still going on (an unposed folder has no list of files to wait for): its result
        does not describe the folder. Run it again with the whole folder, which has settled by now, rather than
        refuse the rest as a re-drop. Bounded by jobs.max_attempts such reruns, so a folder something keeps
        writing into cannot loop; after that the re-drop notice says what to do."""
        current = self.kept.job(job.id)
        events = self.ledger.events(job.id)
        claims = [e["ts"] for e in events if e["kind"] == "claimed"]
        if current is None or current.finished is None or not claims:
            return False
        # from the start of the attempt that produced the result (the job's `started` is its first attempt's)
        window = (max(claims), current.finished + self.settings.intake.settle_seconds)
        if not changed_within(self.paths.inbox / d.folder, *window):
            return False  # changed only after the job had ended: a re-drop
        if sum(1 for e in events if e["kind"] == "input-grew") >= self.settings.jobs.max_attempts:
            return False
        reason = (f"the inbox folder {shown(d.folder)} gained or changed files while its job ran (a copy still going "
                  f"on when it started), so the result covered only part of it; running it again with the whole "
                  f"folder")
        log.warning("[job %s] %s", job.id, reason)
        self._estimates.pop(job.id, None)
        self._change("rerun", dataclasses.replace(current, state=JobState.QUEUED, attempts=0, error=None, finished=None,
                                                   fingerprint=d.fingerprint),
                     lambda ledger: ledger.retry(job.id, reason, fingerprint=d.fingerprint, kind="input-grew"))
        self.finished.forget(d.folder)
        return True

    def _cancel_queued(self) -> None:
        for job in self.ledger.jobs(JobState.QUEUED):
            if self.kept.kept(job.id):
                continue
            if ((self.paths.inbox / job.folder / CANCEL_MARKER).exists()
                    or (self.paths.work_dir(job.id) / CANCEL_MARKER).exists()):
                self._cancel_before_start(job, "cancelled by a CANCEL file while queued")

    def _cancel_before_start(self, job: Job, reason: str) -> None:
        """Report first, then the ledger: whoever sees 'cancelled' also finds the report. Only this thread
        claims jobs, so the queued job cannot start in between."""
        self._publish_failure(job, reason, state=JobState.CANCELLED)
        log.info("[job %s] %s", job.id, reason)
        self._change("cancel", dataclasses.replace(job, state=JobState.CANCELLED, error=reason, finished=time.time()),
                     lambda ledger: ledger.cancel_if_queued(job.id, reason))
        self._notify(job.id)

    def _relay_cancels(self) -> None:
        """A CANCEL dropped into a running job's folder goes to the executor too: a remote host may not see the
        inbox. The job stops at its next check, as it does locally."""
        running = self.executor.running() if self.executor else {}
        self._relayed &= set(running)
        for job_id in running:
            if job_id in self._relayed:
                continue
            job = self.kept.job(job_id)
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
            return
        if ev.unrecorded is not None:
            self._record_for_worker(ev.job_id, ev.unrecorded)
        else:
            current = self.kept.job(ev.job_id)
            if current is not None:
                self._status(current)  # again: the worker's own write may have met an unwritable outbox
        self._notify(ev.job_id)

    def _record_for_worker(self, job_id: str, outcome: dict[str, Any]) -> None:
        """The worker finished the job but could not write the ledger: keep its outcome and write it later."""
        job = self.kept.job(job_id)
        if job is None:
            return
        if outcome["state"] == "interrupted":
            view = dataclasses.replace(job, state=JobState.QUEUED, worker=None, attempts=max(job.attempts - 1, 0))
        elif outcome["state"] == "retry":
            view = dataclasses.replace(job, state=JobState.QUEUED, worker=None)
        else:
            view = dataclasses.replace(job, state=JobState(outcome["state"]), error=outcome["error"],
                                       outputs=outcome["outputs"] or job.outputs, finished=time.time(),
                                       progress=100.0 if outcome["state"] == "done" else job.progress)
        log.info("[job %s] worker ended it (%s) without writing the ledger; the daemon writes it", job_id, view.state.value)
        self._change(f"end state {view.state.value}", view, lambda ledger: apply_outcome(ledger, job_id, outcome))

    def _worker_lost(self, job_id: str, reason: str) -> None:
        from pipeline.io.publish import remove_stale_partials

        job = self.kept.job(job_id)
        if job is None or job.state != JobState.RUNNING:
            return  # the worker had already recorded an end state
        # a worker killed while publishing leaves a hidden half-built folder (or the previous result moved aside)
        for name in remove_stale_partials(self.paths.outbox, job_id):
            log.warning("[job %s] removed unfinished publish folder %s", job_id, name)
        if job.attempts < self.settings.jobs.max_attempts:
            why = (f"{reason} {during_stage(job.stage)}; retrying from the last checkpoint "
                   f"(attempt {job.attempts} of {self.settings.jobs.max_attempts})")
            self._change("requeue", dataclasses.replace(job, state=JobState.QUEUED, worker=None),
                         lambda ledger: ledger.requeue(job_id, why, expect=JobState.RUNNING))
        else:
            msg = (f"{reason} {during_stage(job.stage)}, {job.attempts} times; giving up "
                   f"(jobs.max_attempts={self.settings.jobs.max_attempts}). See `hotmesh logs {job_id}` for what "
                   f"killed it (out of memory?), then `hotmesh retry {job_id}`")
            self._publish_failure(job, msg, state=JobState.FAILED)  # report before the state: whoever sees 'failed' finds it
            self._change("finish failed", dataclasses.replace(job, state=JobState.FAILED, error=msg, finished=time.time()),
                         lambda ledger: ledger.finish(job_id, JobState.FAILED, error=msg, expect=JobState.RUNNING))
            self._notify(job_id)

    def _dispatch(self) -> None:
        if self.stopping.is_set() or self.executor is None:
            return
        while True:
            slot = self.executor.free_slot()
            if slot is None or not self._disk_allows_next():
                return
            try:
                job = self.ledger.claim_next(worker=slot)
            except LedgerError as e:  # nothing was claimed; try again when the ledger takes writes
                self.kept.down(e)
                return
            self.kept.works()
            if job is None:
                return
            job = self._refresh_fingerprint(job)
            self._status(job)
            log.info("[job %s] dispatched to %s (attempt %d)", job.id, slot, job.attempts)
            try:
                self.executor.submit(slot, job)
            except SubmitError as e:
                log.error("[job %s] %s", job.id, e)
                self._publish_failure(job, str(e), state=JobState.FAILED)
                self._change("finish failed", dataclasses.replace(job, state=JobState.FAILED, error=str(e)),
                             lambda ledger, job_id=job.id, msg=str(e): ledger.finish(job_id, JobState.FAILED, error=msg))
                self._notify(job.id)

    def _refresh_fingerprint(self, job: Job) -> Job:
        """A job runs on its folder as it is when it starts, which may not be what it was when it was queued (a
        copy still going on behind a long queue). Its fingerprint keys the first checkpoint and is the baseline
        for changes after the job ends, so it must describe that content."""
        folder = self.paths.inbox / job.folder
        if not folder.is_dir():
            return job
        now = fingerprint(snapshot(folder))
        if now == job.fingerprint:
            return job
        try:
            self.ledger.set_fingerprint(job.id, now)
        except LedgerError as e:
            self.kept.down(e)
            return job
        return dataclasses.replace(job, fingerprint=now)

    def _gpu_jobs(self) -> bool:
        """Whether jobs will run on a GPU (bigger meshes and textures): for the disk guard's estimate."""
        if self.settings.jobs.device == "cpu":
            return False
        if self.settings.executor.kind == "ray":
            return self.settings.executor.gpus_per_job > 0
        return any(str(s.get("name", "")).startswith("gpu") for s in (self.executor.describe() if self.executor else []))

    def _disk_allows_next(self) -> bool:
        """Disk guard: claim the next job only if the state and outbox volumes can hold it."""
        queued = self.ledger.jobs(JobState.QUEUED)
        if not queued:
            return True
        job = queued[0]
        if job.id not in self._estimates:
            self._estimates[job.id] = estimate_job_bytes(self.paths.inbox / job.folder, self.settings.pipeline,
                                                         gpu=self._gpu_jobs())
        check = check_disk([self.paths.state, self.paths.outbox], self._estimates[job.id], self.settings.ops.min_free_mb)
        changed = check.ok != self.disk_ok
        self.disk_ok, self.disk_message = check.ok, check.message
        if changed:  # log and record transitions only, not every tick
            if check.ok:
                log.info("disk space is back; resuming")
                self.kept.write("disk event", None, lambda ledger: ledger.event(None, "disk", "disk space is back; resuming"))
            else:
                log.warning("%s", check.message)
                self.kept.write("disk event", job.id, lambda ledger: ledger.event(job.id, "disk", check.message))
            self._daemon_status()
        return check.ok

    def _publish_failure(self, job: Job, message: str, state: JobState | None = None) -> None:
        """Report for a job that ended without a worker (cancelled while queued, crashed worker). Built in the
        outbox (the state volume may be the full one); an outbox that refuses writes gets it later, unless the
        job has moved on by then."""
        from pipeline.io.publish import publish_built

        end = state or job.state
        build = failure_report_builder(self.paths, self.settings, job, message, end)

        def attempt() -> bool:
            current = self.kept.job(job.id)
            if current is not None and current.state not in (end, job.state):
                return True  # retried or rerun since: this report is out of date
            publish_built(build, self.paths.outbox, job.id)
            return True

        try:
            attempt()
        except OSError as e:
            log.error("[job %s] could not publish its report (%s); trying again every few seconds", job.id, e)
            self._later.keep(f"report:{job.id}", attempt)


class _WakeHandler(FileSystemEventHandler):
    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.wake.set()
