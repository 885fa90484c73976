"""The executor boundary: the daemon (intake + ledger) decides what runs next; an executor runs one job's
pipeline somewhere and reports back.

An executor is driven only from the daemon's main loop thread:

- ``free_slot()`` names a slot that can take a job now (or None); the daemon claims the next job in the ledger
  with that slot's label and hands it over with ``submit()``;
- ``poll()`` returns what happened since the last call (:class:`Finished`, :class:`Lost`); progress, timings and
  end states are in the ledger by then (the local worker writes them itself, the Ray executor writes what its
  remote tasks stream back);
- ``cancel()`` relays a user's CANCEL to a running job (remote hosts may not see the inbox);
- ``stop()`` asks running jobs to stop at their next checkpoint and waits ``grace`` seconds.

Two implementations: :class:`LocalExecutor` (child processes, one per visible GPU, here) and
``daemon.ray_executor.RayExecutor`` (Ray tasks that each ask for one GPU, anywhere in a cluster).
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Protocol

from daemon.config import Settings
from daemon.ledger import Job
from daemon.worker import Paths, worker_main

log = logging.getLogger("hotmesh.daemon")


@dataclass(frozen=True)
class Finished:
    """The job reached an end state (or was requeued after a clean shutdown); the ledger already says which,
    unless ``unrecorded`` holds the outcome: then whatever ran the job could not write the ledger (full disk) and
    the daemon writes it (``daemon.worker.apply_outcome``) as soon as it can."""

    job_id: str
    unrecorded: dict[str, Any] | None = None


@dataclass(frozen=True)
class Lost:
    """Whatever ran the job vanished (worker process killed, node lost) before recording an end state."""

    job_id: str
    reason: str


Event = Finished | Lost


class ExecutorUnavailable(RuntimeError):
    """The executor cannot start (Ray not installed, cluster unreachable): the daemon exits with this message."""


class SubmitError(Exception):
    """The executor cannot take this job at all (e.g. too big to ship to a remote node): fail it, clearly."""


class Executor(Protocol):
    name: str

    def start(self) -> None: ...
    def free_slot(self) -> str | None: ...
    def submit(self, slot: str, job: Job) -> None: ...
    def poll(self) -> list[Event]: ...
    def cancel(self, job_id: str) -> None: ...
    def running(self) -> dict[str, str]: ...  # job id -> slot
    def describe(self) -> list[dict[str, Any]]: ...  # for /health
    def stop(self, grace: float) -> None: ...


def detect_gpus(spec: str) -> list[str | None]:
    """Device slots from ``--gpus``: 'auto'/'all' (every visible NVIDIA GPU, else one CPU slot), 'cpu', or '0,1'."""
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
    unrecorded: dict[str, Any] | None = None  # the current job's outcome, when the worker could not write it


class LocalExecutor:
    """One long-lived child process per device slot (``CUDA_VISIBLE_DEVICES`` set per worker), one job at a time
    each. A worker that dies costs only its own job; it is restarted when there is work."""

    name = "local"

    def __init__(self, paths: Paths, settings: Settings, gpus: str, has_work: Any) -> None:
        self.paths = paths
        self.settings = settings
        self.gpu_spec = gpus
        self.has_work = has_work  # () -> bool: start workers only when something is queued
        self.ctx = mp.get_context("spawn")  # fresh interpreters: no inherited threads, locks or CUDA state
        self.stop_workers = self.ctx.Event()
        self.slots: list[Slot] = []

    def start(self) -> None:
        self.slots = [Slot(name=f"{'gpu' + g if g is not None else 'cpu'}", gpu=g) for g in detect_gpus(self.gpu_spec)]

    def describe(self) -> list[dict[str, Any]]:
        # ready: the slot's worker has loaded the pipeline and takes jobs (false while it starts, or with no worker)
        return [{"name": s.name, "job": s.job_id, "device": s.device, "ready": bool(s.proc is not None and s.ready)}
                for s in self.slots]

    def running(self) -> dict[str, str]:
        return {s.job_id: s.name for s in self.slots if s.job_id}

    def free_slot(self) -> str | None:
        for slot in self.slots:
            if slot.proc is None:
                if self.has_work():
                    self._start_worker(slot)
                continue
            if slot.ready and slot.job_id is None:
                return f"{socket.gethostname()}:{slot.name}:{slot.proc.pid}"
        return None

    def submit(self, slot_label: str, job: Job) -> None:
        name = slot_label.split(":")[1]
        slot = next(s for s in self.slots if s.name == name)
        slot.job_id, slot.since = job.id, time.monotonic()
        slot.conn.send(job.id)

    def cancel(self, job_id: str) -> None:
        pass  # the worker sees the CANCEL markers itself: same host, same folders

    def _start_worker(self, slot: Slot) -> None:
        parent_conn, child_conn = self.ctx.Pipe()
        proc = self.ctx.Process(target=worker_main, name=f"hotmesh-worker-{slot.name}",
                                args=(slot.name, slot.gpu, self.paths, json.dumps(self.settings.to_dict()),
                                      child_conn, self.stop_workers), daemon=False)
        proc.start()
        child_conn.close()
        slot.proc, slot.conn, slot.ready, slot.job_id = proc, parent_conn, False, None
        log.info("worker %s started (pid %d)", slot.name, proc.pid)

    def poll(self) -> list[Event]:
        events: list[Event] = []
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                while slot.conn.poll():
                    kind, a, b = slot.conn.recv()
                    if kind == "ready":
                        slot.ready, slot.device = True, b
                        log.info("worker %s ready on %s", slot.name, b)
                    elif kind == "unrecorded":
                        slot.unrecorded = b  # sent just before "finished"
                    elif kind in ("finished", "skipped"):
                        log.info("[job %s] worker %s reports %s", a, slot.name, b or kind)
                        slot.job_id = None
                        events.append(Finished(a, slot.unrecorded if kind == "finished" else None))
                        slot.unrecorded = None
                    elif kind == "retiring":
                        slot.ready = False  # exits by itself; replaced once it is gone
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
                    events.append(Lost(slot.job_id, reason))
                slot.proc, slot.conn, slot.job_id, slot.ready = None, None, None, False
        return events

    def stop(self, grace: float) -> None:
        self.stop_workers.set()
        deadline = time.monotonic() + grace
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
                            slot.name, grace)
                slot.proc.kill()
                slot.proc.join(timeout=5)
