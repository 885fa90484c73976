"""Report for a job that failed or was cancelled: what happened, where, what to do, and what the photos looked like.

Kept free of torch/trimesh imports so the daemon can write it cheaply (e.g. for a job cancelled while queued).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.report.diagnostics import PhotoDiag
from pipeline.io.redact import redact_mapping
from pipeline.report.html import complete_stats, config_rows, render_report
from pipeline.settings import PipelineSettings
from pipeline.stage_names import STAGE_NAMES as STAGE_ORDER

WHAT_TO_DO = {
    "ingest": "Fix or add the files named above and drop the folder into the inbox again (or run "
              "`hotmesh retry {job}`).",
    "cameras": "The photos could not be placed in 3-D. The table below shows which ones: photos with few features "
               "or no matches with the others are the problem. Reshoot with more overlap between neighbouring photos "
               "(60-70 %: a step of 10-15° around the object), the object sharp and evenly lit, and a textured, still "
               "background; or give the camera poses (transforms.json or a COLMAP model).",
    "masks": "The object could not be separated from the background. Add one mask per photo as "
             "masks/<photo name>.png (white = object), or use photos with a transparent background, and submit again.",
    "publish": "The results could not be written to the outbox: check its free space and permissions, then run "
               "`hotmesh retry {job}`.",
}
INTERNAL = ("This stage failed on this job's data or ran out of resources; {log} has the details. Lower "
            "geometry.voxel_resolution or images.max_side and run `hotmesh retry {job}`; if it fails again, report it "
            "with {log}.")
CANCELLED = "Nothing to fix: the job was cancelled on request. `hotmesh retry {job}` runs it again from its checkpoints."


def what_to_do(state: str, stage: str | None, job_id: str, has_log: bool) -> str:
    """Plain advice for a failed or cancelled job; names job.log only when it is published (``has_log``)."""
    if state == "cancelled":
        return CANCELLED.format(job=job_id)
    log = "job.log" if has_log else f"the daemon's log (`hotmesh logs {job_id}`)"
    return WHAT_TO_DO.get(stage or "", INTERNAL).format(job=job_id, log=log)


def stage_strip(stage: str | None, state: str, timings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every stage in order with what happened to it: done (with seconds), failed/cancelled, or not run."""
    by = {t.get("stage"): t for t in timings}
    out = []
    reached = stage is None
    for name in STAGE_ORDER:
        if name == stage:
            out.append({"stage": name, "status": "failed" if state == "failed" else state, "seconds": None})
            reached = True
        elif name in by and not reached:
            t = by[name]
            out.append({"stage": name, "status": "checkpoint" if t.get("skipped") else "done",
                        "seconds": t.get("seconds")})
        else:
            out.append({"stage": name, "status": "not run", "seconds": None})
    return out


def photos_summary(photos: list[PhotoDiag]) -> dict[str, Any]:
    placed = [p for p in photos if p.registered is not None]
    return {"shown": len(photos), "with_sfm": len(placed), "placed": sum(1 for p in placed if p.registered),
            "flagged": sum(1 for p in photos if p.flags)}


def write_failure_report(out_dir: Path, job_id: str, folder: str, state: str, error: str, stage: str | None,
                         input_summary: dict[str, Any] | None, timings: list[dict[str, Any]],
                         config: dict[str, Any], device: str, photos: list[PhotoDiag] | None = None,
                         published: set[str] | None = None) -> dict[str, Path]:
    """Write report.html and stats.json for a failed/cancelled job into ``out_dir``; returns the files.

    ``photos``: per-photo diagnostics (pipeline.report.diagnostics); ``published``: the other files that will sit next to
    the report (e.g. job.log): the page mentions no file outside that set."""
    job = {"id": job_id, "folder": folder, "state": state, "error": error, "stage": stage, "version": __version__,
           "device": device, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
    photos = photos or []
    config = redact_mapping(config)
    files = {"report.html", "stats.json"} | set(published or ())
    failure = {"what_to_do": what_to_do(state, stage, job_id, "job.log" in files),
               "stages": stage_strip(stage, state, timings),
               "photos": photos_summary(photos)}
    stats: dict[str, Any] = {"job": job, "input": input_summary, "timings": timings, "config": config,
                             "failure": failure, "photos": [p.to_dict() for p in photos]}
    complete_stats(stats)
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=1))
    render_report({"job": job, "stats": stats, "renders": [], "heldout": [], "scene": None, "masks_preview": None,
                   "viewer": None, "no_viewer": None, "timings": timings, "config": config,
                   "config_rows": config_rows(config, PipelineSettings().to_dict()), "published": sorted(files),
                   "photos": photos, "failure": failure}, out_dir / "report.html")
    return {"report.html": out_dir / "report.html", "stats.json": out_dir / "stats.json"}
