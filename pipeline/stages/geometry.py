"""Stages 4 and 5: visual-hull geometry, then visibility-aware vertex colours."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from pipeline.carve import CarveSettings, carve
from pipeline.colors import vertex_colors
from pipeline.context import JobContext
from pipeline.meshing import MeshingSettings, clean_mesh, marching_cubes
from pipeline.stages.base import Stage, stage_dir
from pipeline.stages.views import Views, load_masks


def outlier_views(configured: int, n_views: int) -> int:
    """-1 means automatic: 3% of the views (rounded), at most 2; clean masks want 0, real ones need slack."""
    if configured >= 0:
        return configured
    return int(min(2, round(0.03 * n_views)))


class GeometryStage(Stage):
    name = "geometry"
    weight = 45
    sections = ("images", "geometry")

    def run(self, ctx: JobContext, out_dir: Path) -> dict[str, Any]:
        views = Views.load(ctx)
        masks = load_masks(ctx)
        idx = [i for i in views.train if masks[i] is not None]
        cfg = ctx.settings.geometry
        settings = CarveSettings(resolution=cfg.voxel_resolution, outlier_views=outlier_views(cfg.outlier_views, len(idx)))
        ctx.log.info("visual hull from %d views at %d voxels (device %s, %d outlier views tolerated)",
                     len(idx), settings.resolution, ctx.device, settings.outlier_views)
        result = carve(views.K[idx], views.w2c[idx], [masks[i] for i in idx], settings, device=ctx.device,
                       check=lambda f: ctx.progress(0.85 * f))
        raw = marching_cubes(result.field, result.origin, result.voxel)
        ctx.progress(0.9)
        mesh = clean_mesh(raw, MeshingSettings(smoothing_iterations=cfg.smoothing_iterations, max_faces=cfg.max_faces))
        mesh.export(out_dir / "mesh.ply")
        summary = {"views_used": len(idx), "resolution": cfg.voxel_resolution, "voxel_size": result.voxel,
                   "grid": list(result.field.shape), "outlier_views": settings.outlier_views,
                   "raw_faces": int(len(raw.faces)), "faces": int(len(mesh.faces)),
                   "watertight": bool(mesh.is_watertight), "method": "visual hull (silhouette distance field)"}
        (out_dir / "geometry.json").write_text(json.dumps(summary))
        return summary


def load_mesh(ctx: JobContext, stage: str = "geometry") -> trimesh.Trimesh:
    return trimesh.load(stage_dir(ctx, stage) / "mesh.ply", process=False, force="mesh")


class TextureStage(Stage):
    name = "texture"
    weight = 15
    sections = ()

    def run(self, ctx: JobContext, out_dir: Path) -> dict[str, Any]:
        views = Views.load(ctx)
        masks = load_masks(ctx)
        mesh = load_mesh(ctx)
        idx = [i for i in views.train if masks[i] is not None]
        colors, seen = vertex_colors(mesh, [views.rgb[i] for i in idx], [masks[i] for i in idx],
                                     views.K[idx], views.w2c[idx], check=ctx.progress)
        np.save(out_dir / "colors.npy", colors)
        return {"method": "vertex colours (visibility + view-angle weighted)",
                "seen_fraction": float((seen > 0).mean()), "mean_views_per_vertex": float(seen.mean())}


def load_colors(ctx: JobContext) -> np.ndarray:
    return np.load(stage_dir(ctx, TextureStage.name) / "colors.npy")
