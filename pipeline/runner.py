"""Runs the stages of one job with checkpoints, then publishes; maps every way out to a JobOutcome."""
from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.context import Cancelled, Interrupted, JobContext, JobError
from pipeline.diagnostics import photo_diagnostics
from pipeline.failure import write_failure_report
from pipeline.publish import publish
from pipeline.stages.base import Stage, chain_hash, checkpoint_valid, commit_checkpoint, stage_dir
from pipeline.stages.cameras import CamerasStage
from pipeline.stages.geometry import GeometryStage
from pipeline.stages.ingest import IngestStage, Manifest
from pipeline.stages.masks import MasksStage
from pipeline.stages.refine import RefineStage
from pipeline.stages.report import EXTRA_FILES, TIMINGS_FILE, ReportStage, input_summary, read_timings
from pipeline.stages.texture import TextureStage

STAGES: tuple[Stage, ...] = (IngestStage(), CamerasStage(), MasksStage(), GeometryStage(), RefineStage(), TextureStage(),
                            ReportStage())
PUBLISH = "publish"
PUBLISH_WEIGHT = 5.0
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES) + (PUBLISH,)


def first_invalidated() -> dict[str, str]:
    """Config section -> first stage whose output it changes (that stage and all later ones rerun)."""
    out: dict[str, str] = {}
    for stage in STAGES:
        for section in stage.sections:
            out.setdefault(section, stage.name)
    return out


INVALIDATES = first_invalidated()
MESH_FILES = ("mesh.ply", "mesh.obj", "mesh.mtl", "mesh.glb", "report.html", "stats.json")


@dataclass(frozen=True)
class JobOutcome:
    state: str  # "done" | "failed" | "cancelled" | "interrupted"
    error: str | None = None
    stage: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)


def readable_error(exc: BaseException, stage: str) -> str:
    """Named exceptions -> messages a user can act on."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return (f"the GPU ran out of memory in stage {stage!r}. Lower geometry.voxel_resolution or "
                    f"images.max_side in the config, or free the GPU, then retry")
    except ImportError:
        pass
    if isinstance(exc, MemoryError):
        return (f"the machine ran out of memory in stage {stage!r}. Lower geometry.voxel_resolution or "
                f"images.max_side, or give the worker more memory")
    if isinstance(exc, OSError) and exc.errno == 28:
        return f"the disk is full (stage {stage!r}): free space on the state or outbox volume and retry"
    return f"internal error in stage {stage!r}: {type(exc).__name__}: {exc} (details in job.log)"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cuda_peak(reset: bool) -> float | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        if reset:
            torch.cuda.reset_peak_memory_stats()
            return None
        return torch.cuda.max_memory_allocated() / 2**20
    except Exception:  # no torch or no driver: GPU figures are simply absent
        return None


def _save_timing(ctx: JobContext, timing: dict[str, Any]) -> None:
    timings = [t for t in read_timings(ctx) if t["stage"] != timing["stage"]] + [timing]
    (ctx.work_dir / TIMINGS_FILE).write_text(json.dumps(timings))


def run_profiled(stage: Stage, ctx: JobContext, out_dir: Path) -> dict[str, Any]:
    """``stage.run``, under cProfile when HOTMESH_PROFILE=FILE names this stage in HOTMESH_PROFILE_STAGES
    (comma-separated, default all): the 30 costliest calls are appended to FILE. For finding where a stage spends
    its time on a production machine without another tool installed there."""
    target = os.environ.get("HOTMESH_PROFILE")
    wanted = {x.strip() for x in os.environ.get("HOTMESH_PROFILE_STAGES", "").split(",") if x.strip()}
    if not target or (wanted and stage.name not in wanted):
        return stage.run(ctx, out_dir)
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    try:
        return prof.runcall(stage.run, ctx, out_dir)
    finally:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
        with open(target, "a") as fh:
            fh.write(f"==== job {ctx.job_id} stage {stage.name} ====\n{buf.getvalue()}\n")


def run_stages(ctx: JobContext, fingerprint: str, on_timing: Callable[[str, dict[str, Any]], None]) -> None:
    """Run every stage not already checkpointed under the same inputs and config."""
    total = sum(s.weight for s in STAGES) + PUBLISH_WEIGHT
    done_w = 0.0
    key = ""
    for i, stage in enumerate(STAGES):
        ctx.check()
        key = chain_hash(key, stage, ctx, fingerprint if i == 0 else "")
        lo, hi = 100 * done_w / total, 100 * (done_w + stage.weight) / total
        done_w += stage.weight
        ctx.begin_stage(stage.name, lo, hi)
        final = stage_dir(ctx, stage.name)
        if checkpoint_valid(final, key):
            ctx.log.info("stage %s: valid checkpoint, skipped", stage.name)
            timing = {"stage": stage.name, "seconds": 0.0, "skipped": True, "peak_rss_mb": None, "peak_vram_mb": None}
            _save_timing(ctx, timing)
            on_timing(stage.name, timing)
            continue
        tmp = final.with_name(stage.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        ctx.log.info("stage %s: started", stage.name)
        _cuda_peak(reset=True)
        t0 = time.monotonic()
        summary = run_profiled(stage, ctx, tmp)
        seconds = time.monotonic() - t0
        commit_checkpoint(tmp, final, key, summary)
        timing = {"stage": stage.name, "seconds": round(seconds, 3), "skipped": False,
                  "peak_rss_mb": round(_peak_rss_mb(), 1), "peak_vram_mb": _cuda_peak(reset=False)}
        _save_timing(ctx, timing)
        on_timing(stage.name, timing)
        ctx.log.info("stage %s: done in %.2fs %s", stage.name, seconds, summary)
    ctx.begin_stage(PUBLISH, 100 * done_w / total, 100.0)


def _input_summary_if_any(ctx: JobContext) -> dict[str, Any] | None:
    try:
        return input_summary(Manifest.load(stage_dir(ctx, "ingest")))
    except (OSError, ValueError, KeyError):
        return None


def _photo_names(ctx: JobContext) -> list[str] | None:
    try:
        return [f.name for f in Manifest.load(stage_dir(ctx, "ingest")).frames]
    except (OSError, ValueError, KeyError):
        return None  # ingest did not finish: every image in the folder


def _publish_terminal(ctx: JobContext, outbox: Path, state: str, error: str, stage: str | None) -> Path:
    out = ctx.work_dir / "terminal"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = ctx.work_dir / "job.log"
    # a failed job's report shows each photo with what went wrong with it; a cancelled one needs no diagnosis
    photos = photo_diagnostics(ctx.input_dir, ctx.work_dir, _photo_names(ctx)) if state == "failed" else []
    files = write_failure_report(out, ctx.job_id, ctx.input_dir.name, state, error, stage, _input_summary_if_any(ctx),
                                 read_timings(ctx), ctx.settings.to_dict(), ctx.device, photos=photos,
                                 published={"job.log"} if log.exists() else set())
    if log.exists():
        files["job.log"] = log
    return publish(files, outbox, ctx.job_id)


def run_job(ctx: JobContext, fingerprint: str, outbox: Path,
            on_timing: Callable[[str, dict[str, Any]], None] = lambda s, t: None) -> JobOutcome:
    """Run, publish, and turn every exit (success, bad input, cancel, shutdown, crash) into an outcome."""
    log = ctx.log
    try:
        run_stages(ctx, fingerprint, on_timing)
        ctx.check()  # last cancel point: nothing has reached the outbox yet
        t0 = time.monotonic()
        report_dir = stage_dir(ctx, ReportStage.name)
        files = {name: report_dir / name for name in MESH_FILES}
        files.update({name: report_dir / name for name in EXTRA_FILES if (report_dir / name).exists()})
        log.info("publishing to %s", outbox / ctx.job_id)
        for h in logging.getLogger().handlers + log.logger.handlers:
            h.flush()
        files["job.log"] = ctx.work_dir / "job.log"
        final = publish(files, outbox, ctx.job_id)
        on_timing(PUBLISH, {"stage": PUBLISH, "seconds": round(time.monotonic() - t0, 3), "skipped": False,
                            "peak_rss_mb": None, "peak_vram_mb": None})
        summary = json.loads((report_dir / "_done.json").read_text())["summary"]
        return JobOutcome("done", outputs={"outbox": str(final), "report": str(final / "report.html"), **summary})
    except Cancelled as e:
        log.warning("%s", e)
        stage = ctx.stage
        final = _publish_terminal(ctx, outbox, "cancelled", str(e), stage)
        # scratch goes; the published report keeps the log
        shutil.rmtree(ctx.work_dir / "stages", ignore_errors=True)
        return JobOutcome("cancelled", error=str(e), stage=stage, outputs={"report": str(final / "report.html")})
    except Interrupted as e:
        log.warning("interrupted in stage %s (%s); checkpoints kept for resume", ctx.stage, e)
        return JobOutcome("interrupted", error=str(e), stage=ctx.stage)
    except JobError as e:
        log.error("failed in stage %s: %s", ctx.stage, e)
        final = _publish_terminal(ctx, outbox, "failed", str(e), ctx.stage)
        return JobOutcome("failed", error=str(e), stage=ctx.stage, outputs={"report": str(final / "report.html")})
    except Exception as e:  # the daemon must survive anything a stage does; the user gets a readable line
        log.error("crashed in stage %s:\n%s", ctx.stage, traceback.format_exc())
        msg = readable_error(e, ctx.stage)
        try:
            final = _publish_terminal(ctx, outbox, "failed", msg, ctx.stage)
            outputs = {"report": str(final / "report.html")}
        except Exception:
            log.error("could not write the failure report:\n%s", traceback.format_exc())
            outputs = {}
        return JobOutcome("failed", error=msg, stage=ctx.stage, outputs=outputs)
