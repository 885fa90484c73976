"""Stage 6: export the mesh files, measure their quality, write stats.json and report.html."""
from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from pipeline import __version__
from pipeline.cameras import camera_centers, camera_forward, camera_up
from pipeline.context import JobContext
from pipeline.evaluate import gt_scores, held_out_scores, mesh_stats
from pipeline.export import estimate_up, export_all
from pipeline.render import look_at, render, shade
from pipeline.scale import NO_SCALE
from pipeline.report_html import camera_plot, complete_stats, data_uri, render_report
from pipeline.stages.base import Stage, read_summary, stage_dir
from pipeline.stages.cameras import Views
from pipeline.stages.geometry import load_mesh
from pipeline.stages.ingest import Manifest
from pipeline.stages.masks import load_masks
from pipeline.stages.texture import load_colors, load_textured
from pipeline.viewer import make_viewer

TIMINGS_FILE = "timings.json"
EXTRA_FILES = ("masks_preview.jpg", "masks.zip", "texture.png")  # optional outputs, published when present


def read_timings(ctx: JobContext) -> list[dict[str, Any]]:
    try:
        return json.loads((ctx.work_dir / TIMINGS_FILE).read_text())
    except (OSError, ValueError):
        return []


def input_summary(manifest: Manifest) -> dict[str, Any]:
    return {"pose_kind": manifest.pose_kind, "pose_path": manifest.pose_path, "images": len(manifest.frames),
            "rejected": [{"file": r.file, "reason": r.reason} for r in manifest.rejected],
            "missing": list(manifest.missing), "warnings": list(manifest.warnings),
            "total_bytes": manifest.total_bytes, "gt_mesh": manifest.gt_mesh,
            "videos": [dict(v.__dict__) for v in manifest.videos]}


def on_white(views: Views, i: int) -> np.ndarray:
    """Input photo i for display, (H, W, 3) uint8; a transparent background is shown white."""
    a = views.alpha[i]
    if a is None:
        return views.rgb[i]
    w = a.astype(np.float32)[..., None] / 255.0
    return (views.rgb[i] * w + 255 * (1 - w)).astype(np.uint8)


def orbit_renders(mesh: trimesh.Trimesh, colors: np.ndarray, views: Views, up: np.ndarray, size: int,
                  textured: tuple[trimesh.Trimesh, np.ndarray, np.ndarray] | None = None,
                  frames: int = 8) -> list[dict[str, Any]]:
    """A turntable: ``frames`` views around the object at the cameras' median distance and elevation (the
    textured mesh when there is one), each with shaded geometry and the input photo whose direction is closest."""
    centers = camera_centers(views.w2c)
    target = mesh.bounds.mean(axis=0)
    rel = centers - target
    dist = float(np.median(np.linalg.norm(rel, axis=1)))
    elev = float(np.median(np.arcsin(np.clip((rel @ up) / np.linalg.norm(rel, axis=1), -1, 1))))
    a = np.array([1.0, 0, 0]) if abs(up[0]) < 0.9 else np.array([0, 1.0, 0])
    e1 = np.cross(up, a)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    az0 = float(np.arctan2(rel[0] @ e2, rel[0] @ e1))
    fx_rel = float(np.median(views.K[:, 0, 0] / np.array([im.shape[1] for im in views.rgb])))
    K = np.array([[fx_rel * size, 0, size / 2], [0, fx_rel * size, size / 2], [0, 0, 1.0]])
    dirs_in = rel / np.linalg.norm(rel, axis=1, keepdims=True)
    out = []
    for k in range(frames):
        label = f"{360 * k // frames}°"
        az = az0 + 2 * np.pi * k / frames
        d = np.cos(elev) * (np.cos(az) * e1 + np.sin(az) * e2) + np.sin(elev) * up
        w2c = look_at(target + dist * d, target, up)
        r = render(mesh, K, w2c, size, size, colors)
        if textured is not None:
            rt = render(textured[0], K, w2c, size, size, uv=textured[1], texture=textured[2])
            col = np.where(rt.mask[..., None], rt.rgb, 1.0)
        else:
            col = np.where(r.mask[..., None], r.rgb, 1.0)
        nearest = int(np.argmax(dirs_in @ d))
        angle = float(np.degrees(np.arccos(np.clip(dirs_in[nearest] @ d, -1, 1))))
        out.append({"label": label, "render": data_uri((col * 255).astype(np.uint8)),
                    "shaded": data_uri(shade(r, d + 0.5 * up)), "photo": data_uri(on_white(views, nearest)),
                    "photo_name": views.names[nearest], "angle": angle})
    return out


def _check(name: str, value: float | None, pass_at: float, warn_at: float) -> dict[str, Any]:
    status = "n/a" if value is None else "pass" if value >= pass_at else "warn" if value >= warn_at else "fail"
    return {"name": name, "value": value, "pass_at": pass_at, "warn_at": warn_at, "status": status}


def grade(stats: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """One summary grade: the worst of the held-out checks (with their thresholds) and the mesh gates."""
    held = (stats.get("quality") or {}).get("heldout") or {}
    checks = [_check("held-out mask IoU", held.get("mask_iou_mean"), cfg.grade_iou_pass, cfg.grade_iou_warn),
              _check("held-out PSNR (dB)", held.get("psnr_mean"), cfg.grade_psnr_pass, cfg.grade_psnr_warn)]
    for g in (stats.get("texture") or {}).get("gates", []):
        checks.append({"name": f"gate: {g['name']}", "value": None, "pass_at": None, "warn_at": None,
                       "status": "pass" if g["status"] == "fixed" else g["status"], "detail": g["detail"]})
    order = {"fail": 2, "warn": 1, "pass": 0, "n/a": 0}
    worst = max((c["status"] for c in checks), key=lambda st: order[st], default="pass")
    return {"grade": "pass" if worst == "n/a" else worst, "checks": checks}


class ReportStage(Stage):
    name = "report"
    weight = 15
    sections = ("report",)

    def run(self, ctx: JobContext, out_dir: Path) -> dict[str, Any]:
        t0 = time.monotonic()
        parts: dict[str, float] = {}  # seconds per step, in stats.json: tells where a slow report spends its time

        clock = t0

        def lap(name: str) -> None:
            nonlocal clock
            now = time.monotonic()
            parts[name] = round(now - clock, 3)
            clock = now

        manifest = Manifest.load(stage_dir(ctx, "ingest"))
        views = Views.load(ctx)
        masks = load_masks(ctx)
        mesh = load_mesh(ctx, "texture")  # after the quality gates
        colors = load_colors(ctx)
        textured = load_textured(ctx)
        up = estimate_up(camera_up(views.w2c))
        lap("load")
        files = export_all(mesh, colors, up, out_dir, textured)
        lap("export")
        ctx.progress(0.1)
        # every number below is read from the files just written, so the report matches what users get
        written = trimesh.load(out_dir / files["ply"], process=False, force="mesh")
        stats: dict[str, Any] = {"input": input_summary(manifest), "cameras": read_summary(stage_dir(ctx, "cameras")),
                                 "geometry": read_summary(stage_dir(ctx, "geometry")),
                                 "refine": read_summary(stage_dir(ctx, "refine")),
                                 "texture": read_summary(stage_dir(ctx, "texture")),
                                 "masks": read_summary(stage_dir(ctx, "masks")),
                                 "mesh": mesh_stats(written), "up": [float(x) for x in up]}
        # units of every length in the report and the mesh files (measured in the cameras stage)
        stats["scale"] = stats["cameras"].get("scale") or NO_SCALE.to_dict()
        held = [i for i in np.nonzero(views.holdout)[0] if masks[i] is not None]
        heldout = held_out_scores(written, colors, [views.names[i] for i in held], [views.rgb[i] for i in held],
                                  [masks[i] for i in held], views.K[held], views.w2c[held],
                                  check=lambda f: ctx.progress(0.1 + 0.4 * f), textured=textured)
        lap("heldout")
        quality: dict[str, Any] = {"heldout": heldout.to_dict(), "gt": None}
        if manifest.gt_mesh:
            gt = trimesh.load(ctx.input_dir / manifest.gt_mesh, force="mesh")
            quality["gt"] = gt_scores(written, gt, ctx.settings.report.gt_samples, ctx.settings.report.fscore_tau)
            quality["gt"]["file"] = manifest.gt_mesh
        stats["quality"] = quality
        lap("gt")
        ctx.progress(0.6)
        renders = orbit_renders(written, colors, views, up, ctx.settings.report.render_size, textured)
        lap("orbit")
        ctx.progress(0.85)
        gallery = [{"name": views.names[i], "photo": data_uri(views.rgb[i] * masks[i][..., None]),
                    "render": data_uri(r), "heat": data_uri(hm), "iou": s.mask_iou, "psnr": s.psnr, "ssim": s.ssim}
                   for i, r, hm, s in list(zip(held, heldout.renders, heldout.heatmaps, heldout.views))[:6]]
        stats["grade"] = grade(stats, ctx.settings.report)
        sub = np.asarray(written.vertices)[:: max(1, len(written.vertices) // 400)]
        cam_views = camera_plot(camera_centers(views.w2c), camera_forward(views.w2c), views.holdout, up, sub)
        timings = read_timings(ctx) + [{"stage": self.name, "seconds": time.monotonic() - t0, "skipped": False,
                                        "peak_rss_mb": None, "peak_vram_mb": None}]
        stats["timings"] = timings
        masks_dir = stage_dir(ctx, "masks")
        masks_preview = None
        for extra in EXTRA_FILES:  # published with the mesh when the stage made them
            if (masks_dir / extra).exists():
                shutil.copy2(masks_dir / extra, out_dir / extra)
        if (out_dir / "masks_preview.jpg").exists():
            masks_preview = "data:image/jpeg;base64," + base64.b64encode((out_dir / "masks_preview.jpg").read_bytes()).decode()
        stats["files"] = {f: (out_dir / f).stat().st_size for f in sorted(set(files.values()) | {
            e for e in EXTRA_FILES if (out_dir / e).exists()})}
        context = report_context(ctx, "done", None, None, stats, renders=renders, heldout=gallery, cam_views=cam_views)
        context["masks_preview"] = masks_preview
        context["viewer"] = make_viewer(out_dir / "mesh.glb")
        lap("viewer")
        stats["job"] = context["job"]
        stats["config"] = ctx.settings.to_dict()
        render_report(context, out_dir / "report.html")
        lap("html")
        stats["report_seconds"] = parts
        (out_dir / "stats.json").write_text(json.dumps(stats, indent=1))
        return {"faces": stats["mesh"]["faces"], "heldout_iou": heldout.mean_iou, "heldout_psnr": heldout.mean_psnr,
                "fscore": quality["gt"]["fscore"] if quality["gt"] else None}


def report_context(ctx: JobContext, state: str, error: str | None, failed_stage: str | None,
                   stats: dict[str, Any], renders: list | None = None, heldout: list | None = None,
                   cam_views: list | None = None) -> dict[str, Any]:
    complete_stats(stats)
    return {
        "job": {"id": ctx.job_id, "folder": ctx.input_dir.name, "state": state, "error": error, "stage": failed_stage,
                "version": __version__, "device": ctx.device,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())},
        "stats": stats, "renders": renders or [], "heldout": heldout or [], "cam_views": cam_views or [],
        "timings": stats.get("timings") or read_timings(ctx), "config": ctx.settings.to_dict(), "masks_preview": None, "viewer": None,
    }
