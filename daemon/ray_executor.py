"""Ray executor: each job is one Ray task asking for ``executor.gpus_per_job`` GPUs, anywhere in a cluster.

The SQLite ledger stays on the daemon's host and remains the only record of job state: remote tasks never open
it. They stream stage, progress and timings to a small control actor that lives with the daemon (the driver);
the daemon drains it every loop turn and writes the ledger. The same actor carries the daemon's requests the
other way: cancel one job (relayed from the user's CANCEL marker) or stop everything at the next checkpoint.

Paths. With ``executor.shared_paths = true`` (the default) every node mounts inbox, outbox and state at the same
paths (NFS, a cluster file system, or one host): a task reads its input in place, checkpoints under
``state/jobs/<id>/`` and publishes into the outbox with the usual atomic rename, so a job requeued after a node
loss resumes from its last checkpoint on whichever node picks it up. Without shared paths the input folder is
packed into Ray's object store (at most ``executor.max_transfer_mb``), unpacked into a temporary folder on the
node, and the published result comes back the same way; checkpoints then live on that node only, so a job
requeued after a node loss starts again from its first stage.

Failure model. Ray does not retry (``max_retries=0``): a task whose worker process or node dies surfaces here as
a Ray error and the daemon requeues the job, counted as an attempt, exactly like a crashed local worker.
If the daemon dies, Ray ends the tasks it owns and the ledger's crash recovery requeues them at the next start.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.config import Settings, settings_from_json
from daemon.executors import Event, ExecutorUnavailable, Finished, Lost, SubmitError
from daemon.ledger import Job, Ledger, LedgerError
from daemon.worker import Paths, outcome_dict, pick_device, record_outcome, run_pipeline, write_status

log = logging.getLogger("hotmesh.daemon")

CONTROL_POLL_SECONDS = 0.5  # how often a remote task asks the control actor about cancel/stop


class JobControl:
    """The control actor (one per daemon, on the daemon's node). Plain class; wrapped by ``ray.remote``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []
        self.cancelled: set[str] = set()
        self.stopping = False

    def report(self, job_id: str, kind: str, payload: Any) -> None:
        self.events.append((job_id, kind, payload))

    def drain(self) -> list[tuple[str, str, Any]]:
        out, self.events = self.events, []
        return out

    def cancel(self, job_id: str) -> None:
        self.cancelled.add(job_id)

    def stop_all(self) -> None:
        self.stopping = True

    def ask(self, job_id: str) -> str | None:
        """What the task should do now: "cancel", "stop" or nothing."""
        if job_id in self.cancelled:
            return "cancel"
        return "stop" if self.stopping else None


def _pack(folder: Path, limit_bytes: int, what: str) -> bytes:
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    if size > limit_bytes:
        raise ValueError(f"{what} is {size / 2**20:.0f} MB, over executor.max_transfer_mb "
                         f"({limit_bytes / 2**20:.0f} MB) for the object store; use shared paths")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname=folder.name)
    return buf.getvalue()


def _unpack(blob: bytes, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
        tar.extractall(into, filter="data")  # "data": no absolute paths, links out or device files


class _Asker:
    """Throttled questions to the control actor from inside a task. If the daemon (and with it the actor) is
    gone, the task stops at its next checkpoint; the ledger requeues the job when the daemon comes back."""

    def __init__(self, control: Any, job_id: str) -> None:
        self.control, self.job_id = control, job_id
        self.last, self.answer = 0.0, None

    def __call__(self) -> str | None:
        import ray

        now = time.monotonic()
        if now - self.last >= CONTROL_POLL_SECONDS and self.answer is None:
            self.last = now
            try:
                self.answer = ray.get(self.control.ask.remote(self.job_id), timeout=30)
            except Exception:  # actor dead or unreachable: the daemon is gone
                self.answer = "stop"
        return self.answer


def run_remote(spec: dict[str, Any], control: Any, input_blob: bytes | None) -> dict[str, Any]:
    """Body of the Ray task: run one job's pipeline on this node; returns the outcome (and, without shared
    paths, the published folder packed as a tar)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s ray-task %(message)s")
    settings: Settings = settings_from_json(spec["settings"])
    job: Job = spec["job"]
    device = pick_device(settings.jobs.device)
    tmp: Path | None = None
    if spec["shared"]:
        paths = Paths(Path(spec["inbox"]), Path(spec["outbox"]), Path(spec["state"]))
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f"hotmesh-{job.id}-"))
        paths = Paths(tmp / "inbox", tmp / "outbox", tmp / "state")
        _unpack(input_blob or b"", paths.inbox)
    if device == "cuda":
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(paths.state / "torch_extensions"))
    where = f"ray:{socket.gethostname()}:{os.getpid()}"
    control.report.remote(job.id, "started", {"worker": where, "device": device,
                                              "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", "")})
    asker = _Asker(control, job.id)
    try:
        outcome = run_pipeline(
            paths, job, settings, device,
            on_progress=lambda stage, pct: control.report.remote(job.id, "progress", [stage, pct]),
            on_timing=lambda stage, timing: control.report.remote(job.id, "timing", [stage, timing]),
            stop_reason=lambda: "daemon shutting down" if asker() == "stop" else None,
            cancel_requested=lambda: asker() == "cancel", under_daemon=True)
        result: dict[str, Any] = {"state": outcome.state, "error": outcome.error, "stage": outcome.stage,
                                  "outputs": outcome.outputs, "worker": where}
        if tmp is not None:
            published = paths.outbox / job.id
            if published.exists():
                result["result_tar"] = _pack(published, int(spec["max_transfer_mb"] * 2**20), "the result")
        return result
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class _Running:
    job: Job
    ref: Any  # ray.ObjectRef
    since: float
    worker: str = ""


class RayExecutor:
    name = "ray"

    def __init__(self, paths: Paths, settings: Settings, ledger: Ledger) -> None:
        self.paths, self.settings, self.ledger = paths, settings, ledger
        self.cfg = settings.executor
        self.jobs: dict[str, _Running] = {}
        self._capacity = (0.0, 0)  # (monotonic time read, value)
        self._seq = 0

    # -- set-up -------------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            import ray
        except ImportError:
            raise ExecutorUnavailable("executor.kind = ray needs the ray package: pip install 'hotmesh[ray]'") from None
        address = self.cfg.ray_address
        if ":" in address:  # HOST:PORT: a quick probe, since ray.init retries an unreachable address for minutes
            host, _, port = address.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=10).close()
            except (OSError, ValueError) as e:
                raise ExecutorUnavailable(f"cannot connect to the Ray cluster at {address!r}: {e}. Start it with "
                                          f"`ray start --head --port {port}` or fix --ray-address") from None
        kwargs: dict[str, Any] = {"namespace": "hotmesh", "ignore_reinit_error": True, "log_to_driver": False}
        try:
            if address == "local":
                ray.init(num_gpus=self.cfg.local_gpus, include_dashboard=False, **kwargs)
            else:
                ray.init(address=None if address in ("", "auto") and not os.environ.get("RAY_ADDRESS") else address,
                         **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ExecutorUnavailable(f"cannot connect to the Ray cluster at {address!r}: "
                                      f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # the control actor sits on the daemon's node: it lives and dies with the daemon
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.control = ray.remote(num_cpus=0, scheduling_strategy=here)(JobControl).remote()
        # max_calls: Ray's default for GPU tasks is a fresh worker process per task (measured: +3 s per job,
        # mostly importing torch); reuse workers and replace them after jobs.worker_max_jobs, as locally
        self.task = ray.remote(max_retries=0, num_gpus=self.cfg.gpus_per_job, num_cpus=self.cfg.cpus_per_job,
                               max_calls=max(self.settings.jobs.worker_max_jobs, 0))(run_remote)
        ray.get(self.control.drain.remote(), timeout=60)  # fail at start-up, not at the first job
        res = ray.cluster_resources()
        log.info("ray cluster: %d node(s), %.0f CPU, %.0f GPU; %s paths", len(ray.nodes()), res.get("CPU", 0),
                 res.get("GPU", 0), "shared" if self.cfg.shared_paths else "object-store")

    def capacity(self) -> int:
        """Jobs that may run at once: what the cluster's resources allow now (nodes may join or leave)."""
        import ray

        t, cap = self._capacity
        if time.monotonic() - t > 5.0:
            res = ray.cluster_resources()
            if self.cfg.gpus_per_job > 0:
                cap = int(res.get("GPU", 0) // self.cfg.gpus_per_job)
            else:
                cap = int(res.get("CPU", 0) // max(self.cfg.cpus_per_job, 0.01))
            if self.cfg.max_in_flight > 0:
                cap = min(cap, self.cfg.max_in_flight)
            if cap == 0 and self._capacity[1] != 0 or (cap == 0 and t == 0.0):
                log.warning("the ray cluster offers no slot for a job (GPU %.0f, CPU %.0f; executor.gpus_per_job=%g): "
                            "jobs wait until a GPU node joins", res.get("GPU", 0), res.get("CPU", 0),
                            self.cfg.gpus_per_job)
            self._capacity = (time.monotonic(), cap)
        return cap

    # -- the Executor interface ---------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": r.worker or "ray", "job": j, "device": "ray"} for j, r in self.jobs.items()]

    def running(self) -> dict[str, str]:
        return {j: r.worker or "ray" for j, r in self.jobs.items()}

    def free_slot(self) -> str | None:
        if len(self.jobs) >= self.capacity():
            return None
        self._seq += 1
        return f"ray:pending:{self._seq}"

    def submit(self, slot: str, job: Job) -> None:
        import ray

        shared = self.cfg.shared_paths
        spec = {"job": job, "settings": json.dumps(self.settings.to_dict()), "shared": shared,
                "inbox": str(self.paths.inbox), "outbox": str(self.paths.outbox), "state": str(self.paths.state),
                "max_transfer_mb": self.cfg.max_transfer_mb}
        blob_ref = None
        if not shared:
            try:
                blob_ref = ray.put(_pack(self.paths.inbox / job.folder, int(self.cfg.max_transfer_mb * 2**20),
                                         f"input folder {job.folder!r}"))
            except (ValueError, OSError) as e:
                raise SubmitError(str(e)) from None
        ref = self.task.remote(spec, self.control, blob_ref)
        self.jobs[job.id] = _Running(job, ref, time.monotonic())

    def cancel(self, job_id: str) -> None:
        self.control.cancel.remote(job_id)

    def poll(self) -> list[Event]:
        import ray

        events: list[Event] = []
        self._drain()
        if not self.jobs:
            return events
        refs = {r.ref: j for j, r in self.jobs.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        if ready:
            self._drain()  # the task's last progress and timings before its end state
        for ref in ready:
            job_id = refs[ref]
            run = self.jobs.pop(job_id)
            try:
                result = ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                events.append(Lost(job_id, "ray task cancelled (ran past ops.max_runtime_seconds)"))
                continue
            except ray.exceptions.RayError as e:  # worker process or node died, object lost, ...
                first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                events.append(Lost(job_id, f"ray task lost ({type(e).__name__}: {first})"))
                continue
            events.append(self._record(run.job, result))
        self._kill_runaways()
        return events

    def stop(self, grace: float) -> None:
        import ray

        if self.jobs:
            self.control.stop_all.remote()
            deadline = time.monotonic() + grace
            while self.jobs and time.monotonic() < deadline:
                ready, _ = ray.wait([r.ref for r in self.jobs.values()], num_returns=1, timeout=0.5)
                if ready:
                    for ev in self.poll():
                        if isinstance(ev, Lost):  # the daemon is stopping; recovery at start requeues it
                            log.warning("[job %s] %s while stopping", ev.job_id, ev.reason)
            for job_id, run in self.jobs.items():
                log.warning("[job %s] ray task did not stop within %.0fs; cancelling (resumes at the next start)",
                            job_id, grace)
                ray.cancel(run.ref, force=True)
        self._drain()
        ray.shutdown()

    # -- internals ----------------------------------------------------------------------------------

    def _drain(self) -> None:
        import ray

        try:
            events = ray.get(self.control.drain.remote(), timeout=30)
        except ray.exceptions.RayError as e:
            log.error("ray control actor unreachable: %s", e)
            return
        for job_id, kind, payload in events:
            if kind == "started" and job_id in self.jobs:
                self.jobs[job_id].worker = payload["worker"]
            try:
                self._write_report(job_id, kind, payload)
            except LedgerError as e:  # progress is best effort; the end state is retried by the daemon
                log.warning("[job %s] %s not recorded: %s", job_id, kind, e)

    def _write_report(self, job_id: str, kind: str, payload: Any) -> None:
        if kind == "progress":
            self.ledger.set_progress(job_id, payload[0], payload[1])
            current = self.ledger.get(job_id)
            if current is not None:
                write_status(self.paths, current)
        elif kind == "timing":
            self.ledger.record_timing(job_id, payload[0], payload[1])
        elif kind == "started":
            self.ledger.set_worker(job_id, payload["worker"], payload)

    def _record(self, job: Job, result: dict[str, Any]) -> Finished:
        from pipeline.io.publish import publish
        from pipeline.runner import JobOutcome

        outputs = dict(result.get("outputs") or {})
        if "result_tar" in result:
            # object-store mode: the published folder comes back as a tar; publish it here, atomically
            staging = Path(tempfile.mkdtemp(prefix=f".hotmesh-{job.id}-", dir=self.paths.state))
            try:
                _unpack(result["result_tar"], staging)
                root = staging / job.id
                files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
                final = publish(files, self.paths.outbox, job.id)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            if "outbox" in outputs:
                outputs["outbox"] = str(final)
            if "report" in outputs:
                outputs["report"] = str(final / "report.html")
        outcome = JobOutcome(result["state"], error=result.get("error"), stage=result.get("stage"), outputs=outputs)
        try:
            record_outcome(self.ledger, self.paths, job.id, outcome)
        except LedgerError as e:
            log.error("[job %s] %s; the end state is kept and written when the ledger can be written", job.id, e)
            return Finished(job.id, outcome_dict(outcome))
        return Finished(job.id)

    def _kill_runaways(self) -> None:
        import ray

        limit = self.settings.ops.max_runtime_seconds
        if limit <= 0:
            return
        for job_id, run in self.jobs.items():
            if time.monotonic() - run.since > limit + 120:
                log.error("[job %s] still running 120 s past ops.max_runtime_seconds; cancelling its ray task", job_id)
                ray.cancel(run.ref, force=True)
