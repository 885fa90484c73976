"""How far a running job's stage is and how long it has left, from what the ledger holds (its stage, its overall
percentage, when it started and when each finished stage ended). Light: the CLI draws it without the pipeline."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from pipeline.stage_names import stage_span

if TYPE_CHECKING:
    from daemon.ledger import Job

# below this share of a stage, or this many seconds into it, an extrapolation is mostly noise
MIN_FRACTION = 0.02
MIN_SECONDS = 2.0


@dataclass(frozen=True)
class StageProgress:
    stage: str
    fraction: float  # 0..1 of the stage
    elapsed: float  # seconds since the stage began
    left: float | None  # estimated seconds until the stage ends; None while too early to tell


def stage_progress(stage: str | None, percent: float, started: float | None,
                   timings: Mapping[str, Mapping[str, Any]], now: float) -> StageProgress | None:
    """The current stage's own progress and time left. ``percent``: the job's 0..100; ``timings``: the ledger's
    per-stage records, whose "ended" stamps say when the current stage began (the latest of them, or the job's
    start). The estimate assumes the rest of the stage runs at the pace so far: elapsed * (1 - f) / f."""
    if not stage:
        return None
    try:
        lo, hi = stage_span(stage)
    except (KeyError, ValueError):
        return None
    fraction = min(max((percent - lo) / (hi - lo), 0.0), 1.0) if hi > lo else 0.0
    began = max([started or 0.0] + [float(t.get("ended") or 0.0) for t in timings.values()])
    elapsed = max(0.0, now - began) if began > 0 else 0.0
    left = None
    if fraction >= 1.0:
        left = 0.0
    elif fraction >= MIN_FRACTION and elapsed >= MIN_SECONDS:
        left = elapsed * (1.0 - fraction) / fraction
    return StageProgress(stage, fraction, elapsed, left)


def clock(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on."""
    m, s = divmod(int(round(max(0.0, seconds))), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def describe(p: StageProgress | None) -> str:
    """'geometry 62 %, about 0:32 left' (or 'estimating…' while too early)."""
    if p is None:
        return ""
    left = "estimating time left" if p.left is None else f"about {clock(p.left)} left"
    return f"{p.stage} {100 * p.fraction:3.0f} %, {clock(p.elapsed)} in, {left}"


class ProgressPrinter:
    """Turns a job's successive states into lines for a terminal: one whenever the state or stage changes, and
    one every ``every`` seconds in between (with the stage's progress and time left), so a long stage is never
    silent and a fast one is not a flood."""

    def __init__(self, emit: Callable[[str], None], every: float = 3.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.emit, self.every, self.monotonic = emit, every, monotonic
        self._key: tuple[str, str] | None = None
        self._at = float("-inf")
        self._last: tuple[str, str | None, float, float | None, Mapping[str, Mapping[str, Any]]] | None = None
        self._lock = threading.Lock()  # show() is called by the job's progress and by heartbeat()

    def heartbeat(self, stop: threading.Event) -> None:
        """Until ``stop`` is set: every ``every`` seconds, the last state again with its elapsed time brought up to
        date, so a step that reports no progress (an atlas, a mesh clean-up) still prints. Run in a thread."""
        while not stop.wait(self.every):
            last = self._last
            if last is not None:
                self.show(*last, time.time())

    def update(self, job: Job) -> None:
        """From a ledger row (hotmesh process)."""
        self.show(job.state.value, job.stage, job.progress, job.started, job.timings, time.time())

    def update_status(self, status: Mapping[str, Any], now: float) -> None:
        """From a status file's content (outbox/_status/<job>.json; {} before it exists)."""
        self.show(status.get("state") or "waiting", status.get("stage"), float(status.get("progress") or 0.0),
                  status.get("started"), status.get("timings") or {}, now)

    def show(self, state: str, stage: str | None, percent: float, started: float | None,
             timings: Mapping[str, Mapping[str, Any]], now: float) -> None:
        key = (state, stage or "")
        with self._lock:
            self._last = (state, stage, percent, started, timings)
            if key == self._key and self.monotonic() - self._at < self.every:
                return
            self._key, self._at = key, self.monotonic()
        line = f"{state} {stage or ''} {percent:.0f}%".replace("  ", " ")
        if state == "running" and not stage:
            line = "running: the worker is loading the pipeline"  # claimed, no stage begun yet
        elif state == "running":
            detail = describe(stage_progress(stage, percent, started, timings, now))
            line += f" ({detail})" if detail else ""
        self.emit(line)
