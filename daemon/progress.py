"""How far a running job's stage is and how long it has left, from what the ledger holds (its stage, its overall
percentage, when it started and when each finished stage ended). Light: the CLI draws it without the pipeline."""
from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from pipeline.stage_names import stage_span

if TYPE_CHECKING:
    from daemon.folders import Folders
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


# -- status --watch: the live view ------------------------------------------------------------------------------

def progress_bar(percent: float, width: int = 30) -> str:
    """A text bar for 0..100 percent, ``width`` characters."""
    filled = int(round(max(0.0, min(100.0, percent)) / 100.0 * width))
    return "█" * filled + "░" * (width - filled)


def _elapsed(seconds: float) -> str:
    m, s = divmod(int(max(0, seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def render_watch(jobs: list[Job], now: float, width: int = 30) -> list[str]:
    """Lines of the live view: a summary, one bar per running job, the queue, the last few finished jobs."""
    by_state: dict[str, list[Job]] = {}
    for j in jobs:
        by_state.setdefault(j.state.value, []).append(j)
    counts = "  ".join(f"{k}: {len(v)}" for k, v in sorted(by_state.items())) or "no jobs"
    lines = [f"hotmesh  {time.strftime('%H:%M:%S', time.localtime(now))}  {counts}", ""]
    for j in by_state.get("running", []):
        since = now - (j.started or j.updated)
        stage = describe(stage_progress(j.stage, j.progress, j.started, j.timings, now))
        lines.append(f"{j.id[:28]:28} {(j.stage or '-')[:9]:9} {progress_bar(j.progress, width)} {j.progress:5.1f}%  "
                     f"{_elapsed(since)}" + (f"  ({stage})" if stage else ""))
    if not by_state.get("running"):
        lines.append("(no job running)")
    queued = by_state.get("queued", [])
    if queued:
        lines.append(f"queued: {', '.join(j.id for j in queued[:8])}{' …' if len(queued) > 8 else ''}")
    ended = sorted((j for j in jobs if j.state.terminal), key=lambda j: j.finished or j.updated)[-5:]
    for j in reversed(ended):
        note = (j.error or "").splitlines()[0][:60] if j.error else j.outputs.get("report", "")
        lines.append(f"{j.id[:28]:28} {j.state.value:9} {note}")
    return lines


def watch_status(folders: Folders, interval: float, once: bool) -> int:
    """Redraw the live view every ``interval`` seconds until Ctrl-C (or once)."""
    from daemon.ledger import Ledger

    clear = sys.stdout.isatty() and not once
    # Ctrl-C sets a flag instead of raising: a KeyboardInterrupt raised inside sqlite or a finaliser can be swallowed
    # there ("Exception ignored in ..."), and the view would then never end
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda _sig, _frame: stop.set())
    ledger = None
    try:
        while not stop.is_set():
            if ledger is None and folders.ledger.exists():
                ledger = Ledger(folders.ledger)
            lines = (render_watch(ledger.jobs(), time.time()) if ledger is not None
                     else [f"waiting for a ledger at {folders.ledger} ({folders.origin['state']})"])
            if clear:
                sys.stdout.write("\x1b[H\x1b[2J")  # home + clear: redraw in place
            print("\n".join(lines), flush=True)
            if once:
                return 0
            stop.wait(interval)
        print()
        return 0
    finally:
        signal.signal(signal.SIGINT, previous)
        if ledger is not None:
            ledger.close()
