"""Report for a job that failed or was cancelled: what happened, where, and what the input looked like.

Kept free of torch/trimesh imports so the daemon can write it cheaply (e.g. for a job cancelled while queued).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.report_html import complete_stats, render_report


def write_failure_report(out_dir: Path, job_id: str, folder: str, state: str, error: str, stage: str | None,
                         input_summary: dict[str, Any] | None, timings: list[dict[str, Any]],
                         config: dict[str, Any], device: str) -> dict[str, Path]:
    """Write report.html and stats.json for a failed/cancelled job into ``out_dir``; returns the files."""
    job = {"id": job_id, "folder": folder, "state": state, "error": error, "stage": stage, "version": __version__,
           "device": device, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
    stats: dict[str, Any] = {"job": job, "input": input_summary, "timings": timings, "config": config}
    complete_stats(stats)
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=1))
    render_report({"job": job, "stats": stats, "renders": [], "heldout": [], "cam_views": [], "masks_preview": None, "viewer": None, "timings": timings,
                   "config": config}, out_dir / "report.html")
    return {"report.html": out_dir / "report.html", "stats.json": out_dir / "stats.json"}
