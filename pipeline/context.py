"""What a stage gets to work with, and the exceptions that end a job."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.settings import PipelineSettings

CANCEL_MARKER = "CANCEL"
READY_MARKER = "READY"


def during_stage(stage: str | None) -> str:
    """"during stage 'geometry'", or "before any stage started" for a job stopped before its first stage (the
    stage name is empty then: "during stage ''" said nothing)."""
    return f"during stage {stage!r}" if stage else "before any stage started"


class Laps:
    """Seconds per named step, for a stage's stats: each call records the time since the previous call (or since
    ``start``, default now) under ``name``, rounded to ``digits`` (None: as measured). ``seconds`` keeps call order."""

    def __init__(self, start: float | None = None, digits: int | None = 3) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.monotonic() if start is None else start
        self._digits = digits

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        d = now - self._t
        self.seconds[name] = d if self._digits is None else round(d, self._digits)
        self._t = now


class JobError(Exception):
    """A failure the user can act on; its message goes verbatim into the report and ledger."""


class InputError(JobError):
    """The job folder's content cannot be processed (bad or missing files)."""


class JobTimeout(JobError):
    """The job ran longer than ops.max_runtime_seconds."""


class GpuMemoryError(JobError, MemoryError):
    """The configured work cannot fit in the GPU's free memory; refused before anything is allocated."""


class Cancelled(Exception):
    """The user dropped a CANCEL file into the job folder."""


class Interrupted(Exception):
    """The daemon is shutting down: stop at the next check, keep the checkpoints, resume later."""


class JobLogAdapter(logging.LoggerAdapter):
    def process(self, msg, kwargs):  # type: ignore[override]
        return f"[job {self.extra['job_id']}] {msg}", kwargs


@dataclass
class JobContext:
    """Per-job state shared by the stages. Stages read inputs only through their typed loaders."""

    job_id: str
    input_dir: Path
    work_dir: Path
    settings: PipelineSettings
    device: str  # "cpu" or "cuda"
    log: logging.LoggerAdapter
    stop_reason: Callable[[], str | None] = lambda: None  # daemon shutdown flag
    # a cancel relayed by the daemon (remote executors, where the inbox may not be visible)
    cancel_requested: Callable[[], bool] = lambda: False
    on_progress: Callable[[str, float], None] = lambda stage, pct: None
    deadline: float | None = None  # time.monotonic() after which the job fails (ops.max_runtime_seconds)
    stage: str = ""
    _stage_lo: float = 0.0
    _stage_hi: float = 0.0
    _last_report: float = field(default=0.0, repr=False)

    @property
    def cancel_path(self) -> Path:
        return self.input_dir / CANCEL_MARKER

    def check(self) -> None:
        """Raise if the job must stop now. Cheap (two stats); call it inside every long loop."""
        # `hotmesh cancel` also drops the marker into the job's state folder (the inbox may be read-only)
        if (self.cancel_path.exists() or (self.work_dir / CANCEL_MARKER).exists()
                or self.cancel_requested()):
            raise Cancelled(f"cancelled by a {CANCEL_MARKER} file {during_stage(self.stage)}")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise JobTimeout(f"the job exceeded its maximum runtime (ops.max_runtime_seconds) "
                             f"{during_stage(self.stage)}; its log and checkpoints are kept. Raise the limit or lower "
                             f"geometry.voxel_resolution / images.max_side, then `hotmesh retry`")
        reason = self.stop_reason()
        if reason:
            raise Interrupted(reason)

    def begin_stage(self, name: str, lo: float, hi: float) -> None:
        self.stage, self._stage_lo, self._stage_hi = name, lo, hi
        self.on_progress(name, lo)

    def progress(self, fraction: float) -> None:
        """Progress inside the current stage (0..1); also checks for cancel. Throttled to 2 Hz writes."""
        self.check()
        now = time.monotonic()
        if now - self._last_report >= 0.5 or fraction >= 1.0:
            self._last_report = now
            f = min(max(fraction, 0.0), 1.0)
            self.on_progress(self.stage, self._stage_lo + f * (self._stage_hi - self._stage_lo))
