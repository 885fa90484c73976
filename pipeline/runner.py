"""Runs the stages of one job with checkpoints, then publishes; maps every way out to a JobOutcome."""
from __future__ import annotations

import errno
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
from pipeline.report.diagnostics import photo_diagnostics
from pipeline.report.failure import write_failure_report
from pipeline.stage_names import CHECKPOINTED_STAGES, PUBLISH, STAGE_NAMES, stage_span  # noqa: F401 (STAGE_NAMES: re-exported)
from pipeline.io.publish import PUBLISH_RETRY_SECONDS, publish, publish_built
from pipeline.stages.base import Stage, chain_hash, checkpoint_valid, commit_checkpoint, read_summary, stage_dir
from pipeline.stages.cameras import CamerasStage
from pipeline.stages.geometry import GeometryStage
from pipeline.stages.ingest import IngestStage, Manifest
from pipeline.stages.masks import MasksStage
from pipeline.stages.refine import RefineStage
from pipeline.stages.report import EXPORT_DIRS, EXPORT_FILES, EXTRA_FILES, TIMINGS_FILE, ReportStage, input_summary, read_timings
from pipeline.stages.texture import TextureStage
from pipeline.warmup import start_warm_up

STAGES: tuple[Stage, ...] = (IngestStage(), CamerasStage(), MasksStage(), GeometryStage(), RefineStage(), TextureStage(),
                            ReportStage())
if tuple(s.name for s in STAGES) != CHECKPOINTED_STAGES:  # the light list the CLI reads must name these stages
    raise RuntimeError(f"pipeline.stage_names.CHECKPOINTED_STAGES {CHECKPOINTED_STAGES} does not match the runner's "
                       f"stages {tuple(s.name for s in STAGES)}")


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
    # "done" | "failed" | "cancelled" | "interrupted" (clean shutdown: resume, attempt given back) | "retry" (a
    # full disk: resume from the last checkpoint once there is space, the attempt counted)
    state: str
    error: str | None = None
    stage: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)


def _os_error_in_chain(exc: BaseException, codes: set[int]) -> OSError | None:
    """The first OSError with one of ``codes`` in ``exc``'s cause/context chain (libraries often wrap them)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in codes:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def named_error(exc: BaseException, stage: str) -> str | None:
    """Conditions the code can name (out of memory, full disk, no permission) -> a message a user can act on;
    None for anything else (a bug: its traceback is what helps)."""
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
    full = _os_error_in_chain(exc, {errno.ENOSPC, errno.EDQUOT})
    if full is not None:
        where = f" ({full.filename})" if full.filename else ""
        return (f"the disk is full{where} in stage {stage!r}: free space on the state or outbox volume, then "
                f"`hotmesh retry` the job (finished stages are reused)")
    denied = _os_error_in_chain(exc, {errno.EACCES, errno.EPERM, errno.EROFS})
    if denied is not None:
        return (f"cannot write {denied.filename or 'a file'} in stage {stage!r} ({denied.strerror}): make the state "
                f"and outbox folders writable for the user running hotmesh, then `hotmesh retry` the job")
    return None


def readable_error(exc: BaseException, stage: str) -> str:
    """Named exceptions -> messages a user can act on; anything else as an internal error."""
    return named_error(exc, stage) or f"internal error in stage {stage!r}: {type(exc).__name__}: {exc} (details in job.log)"


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
    key = ""
    for i, stage in enumerate(STAGES):
        ctx.check()
        key = chain_hash(key, stage, ctx, fingerprint if i == 0 else "")
        ctx.begin_stage(stage.name, *stage_span(stage.name))
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
    ctx.begin_stage(PUBLISH, *stage_span(PUBLISH))


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


def _publish_terminal(ctx: JobContext, outbox: Path, state: str, error: str, stage: str | None) -> dict[str, Any]:
    """Publish the report of a failed or cancelled job; returns the outputs to record ({} when it could not
    be published: the job still ends, with its error in the ledger). Built straight in the outbox: the state
    volume may be the full one."""
    log_file = ctx.work_dir / "job.log"
    # a failed job's report shows each photo with what went wrong with it; a cancelled one needs no diagnosis
    photos = (photo_diagnostics(ctx.input_dir, ctx.work_dir, _photo_names(ctx), limits=ctx.settings.limits)
              if state == "failed" else [])

    def build(out: Path) -> None:
        write_failure_report(out, ctx.job_id, ctx.input_dir.name, state, error, stage, _input_summary_if_any(ctx),
                             read_timings(ctx), ctx.settings.to_dict(), ctx.device, photos=photos,
                             published={"job.log"} if log_file.exists() else set())
        if log_file.exists():
            shutil.copy2(log_file, out / "job.log")

    try:
        final = publish_built(build, outbox, ctx.job_id, retry_seconds=PUBLISH_RETRY_SECONDS)
    except Exception as e:
        named = named_error(e, PUBLISH)
        ctx.log.error("could not publish the %s job's report: %s", state, named or traceback.format_exc())
        return {}
    return {"report": str(final / "report.html")}


def evaluation(report_summary: dict[str, Any], cameras_summary: dict[str, Any],
               holdout_every: int) -> dict[str, Any]:
    """Whether the mesh was checked against held-out photos, for the ledger and the status file: a job without
    a held-out view must say "not evaluated", not look like one that passed."""
    if report_summary.get("heldout_iou") is not None or report_summary.get("heldout_psnr") is not None:
        return {"evaluated": True, "evaluation": f"evaluated on {cameras_summary.get('holdout', '?')} held-out view(s)"}
    views = cameras_summary.get("views")
    if not cameras_summary.get("holdout"):
        why = (f"no held-out view: {views} views, and one is held out only from 8 views on" if holdout_every > 1
               else f"no held-out view (images.holdout_every = {holdout_every})")
    else:
        why = "no held-out view has a usable mask"
    return {"evaluated": False, "evaluation": f"not evaluated: {why}"}


def is_disk_full(exc: BaseException) -> bool:
    return _os_error_in_chain(exc, {errno.ENOSPC, errno.EDQUOT}) is not None


def run_job(ctx: JobContext, fingerprint: str, outbox: Path,
            on_timing: Callable[[str, dict[str, Any]], None] = lambda s, t: None,
            retry_disk_full: bool = False) -> JobOutcome:
    """Run, publish, and turn every exit (success, bad input, cancel, shutdown, crash) into an outcome.
    ``retry_disk_full``: a full disk ends this attempt as "retry" (the daemon requeues the job, and its disk
    guard holds it until there is space) instead of failing the job; the last attempt fails, with its report."""
    log = ctx.log
    # torch's first optimiser step imports seconds of modules: taken on a thread while the first stages run
    start_warm_up()
    try:
        run_stages(ctx, fingerprint, on_timing)
        ctx.check()  # last cancel point: nothing has reached the outbox yet
        t0 = time.monotonic()
        report_dir = stage_dir(ctx, ReportStage.name)
        files = {name: report_dir / name for name in MESH_FILES}
        files.update({name: report_dir / name for name in EXTRA_FILES + EXPORT_FILES if (report_dir / name).exists()})
        for folder in EXPORT_DIRS:  # the photos (images/) and the COLMAP model (sparse/0/)
            files.update({p.relative_to(report_dir).as_posix(): p for p in sorted((report_dir / folder).rglob("*"))
                          if p.is_file()})
        log.info("publishing to %s", outbox / ctx.job_id)
        for h in logging.getLogger().handlers + log.logger.handlers:
            h.flush()
        files["job.log"] = ctx.work_dir / "job.log"
        # an outbox that refuses writes for a moment is waited for (a CANCEL still stops the job meanwhile)
        final = publish(files, outbox, ctx.job_id, retry_seconds=PUBLISH_RETRY_SECONDS, check=ctx.check)
        on_timing(PUBLISH, {"stage": PUBLISH, "seconds": round(time.monotonic() - t0, 3), "skipped": False,
                            "peak_rss_mb": None, "peak_vram_mb": None})
        summary = json.loads((report_dir / "_done.json").read_text())["summary"]
        checked = evaluation(summary, read_summary(stage_dir(ctx, "cameras")), ctx.settings.images.holdout_every)
        return JobOutcome("done", outputs={"outbox": str(final), "report": str(final / "report.html"), **summary,
                                           **checked})
    except Cancelled as e:
        log.warning("%s", e)
        stage = ctx.stage
        outputs = _publish_terminal(ctx, outbox, "cancelled", str(e), stage)
        # scratch goes; the published report keeps the log
        shutil.rmtree(ctx.work_dir / "stages", ignore_errors=True)
        return JobOutcome("cancelled", error=str(e), stage=stage, outputs=outputs)
    except Interrupted as e:
        log.warning("interrupted in stage %s (%s); checkpoints kept for resume", ctx.stage, e)
        return JobOutcome("interrupted", error=str(e), stage=ctx.stage)
    except JobError as e:
        log.error("failed in stage %s: %s", ctx.stage, e)
        outputs = _publish_terminal(ctx, outbox, "failed", str(e), ctx.stage)
        return JobOutcome("failed", error=str(e), stage=ctx.stage, outputs=outputs)
    except Exception as e:  # the daemon must survive anything a stage does; the user gets a readable line
        named = named_error(e, ctx.stage)
        if retry_disk_full and is_disk_full(e):  # passes by itself once space is freed: not the job's fault
            log.warning("stopped in stage %s: %s; queued again, it resumes from its last checkpoint when there is "
                        "space", ctx.stage, named)
            return JobOutcome("retry", error=named, stage=ctx.stage)
        if named is None:  # a bug: the traceback is what helps
            log.error("crashed in stage %s:\n%s", ctx.stage, traceback.format_exc())
        else:  # a condition with a name (full disk, no permission): the sentence says it all
            log.error("failed in stage %s: %s", ctx.stage, named)
        msg = readable_error(e, ctx.stage)
        return JobOutcome("failed", error=msg, stage=ctx.stage,
                          outputs=_publish_terminal(ctx, outbox, "failed", msg, ctx.stage))
