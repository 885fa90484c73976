"""Stage 6, texture: vertex colours, then a UV atlas baked from the photos and fitted to their pixels."""
from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import trimesh

from pipeline.appearance.colors import vertex_colors
from pipeline.context import JobContext
from pipeline.report.gates import apply_gates
from pipeline.geometry.meshing import decimate
from pipeline.imaging.raster import coverage_masks
from pipeline.settings import TextureConfig
from pipeline.stages.base import Stage, stage_dir
from pipeline.stages.cameras import Views
from pipeline.stages.geometry import load_mesh
from pipeline.stages.masks import load_masks, mask_sheet
from pipeline.appearance.atlas_ahead import AHEAD_FILE, AtlasKey, load_layout
from pipeline.appearance.texture import (Atlas, FitSettings, TextureSettings, atlas_pieces, bake, build_atlas,
                                         fit_texture, pad_seams, pixel_samples_nvdiffrast, pixel_samples_raycast)


class TextureStage(Stage):
    name = "texture"
    sections = ("texture",)

    def run(self, ctx: JobContext, out_dir: Path) -> dict[str, Any]:
        t_start = time.monotonic()
        views = Views.load(ctx)
        masks = load_masks(ctx)
        method = json.loads((stage_dir(ctx, "masks") / "masks.json").read_text()).get("method", "hull")
        mesh, gates = apply_gates(load_mesh(ctx, "refine"))
        mesh.export(out_dir / "mesh.ply")
        # where no mask was given, the final mesh's own silhouette: published for users to check (masks.zip)
        t_gates = time.monotonic()
        projected = publish_projected_masks(ctx, mesh, views, masks, out_dir)
        t_masks = time.monotonic()
        if method == "dense":
            # every photo colours what it sees of the mesh (the depth test decides visibility, no mask needed)
            idx = [int(i) for i in views.train]
            tmasks = [masks[i] if masks[i] is not None else np.ones(views.rgb[i].shape[:2], bool) for i in idx]
        else:
            idx = [i for i in views.train if masks[i] is not None]
            tmasks = [masks[i] for i in idx]
        images = [views.rgb[i] for i in idx]
        colors, seen = vertex_colors(mesh, images, tmasks, views.K[idx], views.w2c[idx],
                                     check=lambda f: ctx.progress(0.3 * f), device=ctx.device)
        np.save(out_dir / "colors.npy", colors)
        # where the seconds before the atlas went (load and gates, the published masks, the vertex colours)
        first = {"gates": round(t_gates - t_start, 2), "masks": round(t_masks - t_gates, 2),
                 "colors": round(time.monotonic() - t_masks, 2)}
        summary: dict[str, Any] = {"method": "vertex colours (visibility + view-angle weighted)",
                                   "projected_masks": len(projected),
                                   "seen_fraction": float((seen > 0).mean()),
                                   "mean_views_per_vertex": float(seen.mean()),
                                   "gates": [g.to_dict() for g in gates], "seconds": first}
        cfg = ctx.settings.texture
        if not cfg.enabled:
            return summary
        s = texture_settings(cfg, ctx.device == "cuda")
        t0 = time.monotonic()
        low = decimate(mesh, s.max_faces)
        # the layout unwrapped while the refinement's last level ran, where it was made for this very mesh
        layout = load_layout(stage_dir(ctx, "refine") / AHEAD_FILE, low.faces, len(low.vertices),
                             atlas_key(s, len(low.faces)))
        atlas = build_atlas(low, s, None if layout is None else (layout.vmap, layout.faces, layout.uv), ctx.device,
                            ctx.work_dir.parent.parent / "torch_extensions")
        if atlas.texels_by.startswith("cv2 ("):
            ctx.log.warning("texture atlas: %s", atlas.texels_by)
        ctx.progress(0.4)
        t_atlas = time.monotonic() - t0
        tex, bake_info = bake(atlas, low, images, tmasks, views.K[idx], views.w2c[idx], s,
                              check=lambda f: ctx.progress(0.4 + 0.3 * f), device=ctx.device)
        t_bake = time.monotonic() - t0 - t_atlas
        fit_info: dict[str, Any] = {"skipped": "texture.fit = false: baked only" if not cfg.fit else
                                    "no GPU and texture.cpu_fit_views = 0: baked only"}
        if s.fit is not None:
            tex, fit_info = fit_bake(ctx, atlas, tex, images, tmasks, views.K[idx], views.w2c[idx], s, s.fit)
        cv2.imwrite(str(out_dir / "texture.png"), cv2.cvtColor((np.clip(tex, 0, 1) * 255).round().astype(np.uint8),
                                                               cv2.COLOR_RGB2BGR))
        np.savez(out_dir / "atlas.npz", vertices=atlas.vertices, faces=atlas.faces, uv=atlas.uv)
        summary.update({"method": "UV texture (xatlas atlas, baked from the photos with visibility and view-angle "
                                  "weights" + (", then least-squares fitted to the photo pixels)" if "rmse_after" in fit_info
                                               else ")"),
                        "texture_size": s.size, "textured_faces": int(len(atlas.faces)),
                        "atlas": "laid out during the refinement" if layout is not None else "unwrapped here",
                        "texels": atlas.texels_by,
                        "seconds": {**first, "atlas": round(t_atlas, 2), "bake": round(t_bake, 2),
                                    "fit": round(time.monotonic() - t0 - t_atlas - t_bake, 2)},
                        "bake": bake_info, "fit": fit_info})
        return summary


def publish_projected_masks(ctx: JobContext, mesh: trimesh.Trimesh, views: Views, masks: list[np.ndarray | None],
                            out_dir: Path) -> list[int]:
    """masks.zip and masks_preview.jpg of the final mesh's silhouettes in the views that have no given mask (their
    indices are returned; none written when every view has one)."""
    todo = [i for i, m in enumerate(masks) if m is None]
    if not todo:
        return []
    sil = coverage_masks(mesh.vertices, mesh.faces, views.K[todo], views.w2c[todo],
                         [(views.rgb[i].shape[1], views.rgb[i].shape[0]) for i in todo], ctx.device,
                         ctx.work_dir.parent.parent / "torch_extensions")
    sheet = mask_sheet([views.rgb[i] for i in todo], sil, [views.names[i] for i in todo])
    cv2.imwrite(str(out_dir / "masks_preview.jpg"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 85])
    with zipfile.ZipFile(out_dir / "masks.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for i, m in zip(todo, sil):
            ok, png = cv2.imencode(".png", m.astype(np.uint8) * 255)
            if ok:
                z.writestr(f"masks/{Path(views.names[i]).stem}.png", png.tobytes())
    return todo


def texture_settings(cfg: TextureConfig, on_gpu: bool) -> TextureSettings:
    """The atlas, bake and fit settings of a job on a GPU or on the CPU."""
    return TextureSettings(size=cfg.size if on_gpu else cfg.cpu_size,
                           max_faces=cfg.max_faces if on_gpu else cfg.cpu_max_faces,
                           atlas_pieces=cfg.atlas_pieces, fit=fit_settings(cfg, on_gpu),
                           view_weight_power=cfg.view_weight_power)


def atlas_key(s: TextureSettings, n_faces: int) -> AtlasKey:
    """What the layout of an ``n_faces`` mesh depends on besides the mesh, under these settings."""
    return AtlasKey(size=s.size, padding=s.padding, pieces=atlas_pieces(n_faces, s.atlas_pieces))


def fit_settings(cfg: TextureConfig, on_gpu: bool) -> FitSettings | None:
    """The texture fit's settings from the config, or None where it does not run (off, or CPU without
    ``cpu_fit_views``)."""
    if not cfg.fit or not (on_gpu or cfg.cpu_fit_views > 0):
        return None
    return FitSettings(iterations=cfg.fit_iterations, prior=cfg.fit_prior, smooth=cfg.fit_smooth,
                       view_power=cfg.fit_view_power, max_views=0 if on_gpu else cfg.cpu_fit_views)


def fit_bake(ctx: JobContext, atlas: Atlas, tex: np.ndarray, images: list[np.ndarray], masks: list[np.ndarray],
             Ks: np.ndarray, w2cs: np.ndarray, s: TextureSettings, fs: FitSettings) -> tuple[np.ndarray, dict[str, Any]]:
    """Least-squares fit of the bake ``tex`` (S, S, 3) to the photos (pipeline.appearance.texture.fit_texture), seams padded
    again: pixels found by nvdiffrast on a GPU, by ray casting (in ``fs.max_views`` views) on the CPU or where
    nvdiffrast does not load. A CUDA OOM keeps the bake. Returns the texture and a summary for the stage."""
    pick = np.arange(len(images))
    if fs.max_views and len(pick) > fs.max_views:
        pick = np.unique(np.linspace(0, len(pick) - 1, fs.max_views).round().astype(int))
    imgs, ms = [images[i] for i in pick], [masks[i] for i in pick]
    t0 = time.monotonic()
    samples = None
    how = "ray casting"
    if ctx.device == "cuda":
        try:
            samples = pixel_samples_nvdiffrast(atlas, imgs, ms, Ks[pick], w2cs[pick], s.size, fs.view_power,
                                               build_dir=ctx.work_dir.parent.parent / "torch_extensions")
            how = "nvdiffrast"
        except (ImportError, RuntimeError, OSError) as e:
            ctx.log.warning("nvdiffrast unavailable for the texture fit (%s); ray casting instead", e)
    if samples is None:
        samples = pixel_samples_raycast(atlas, imgs, ms, Ks[pick], w2cs[pick], s.size, fs.view_power,
                                        check=lambda f: ctx.progress(0.7 + 0.15 * f))
    t_samples = time.monotonic() - t0
    try:
        out, info = fit_texture(tex, samples, atlas.face_of_texel >= 0, fs, device=ctx.device,
                                check=lambda f: ctx.progress(0.85 + 0.15 * f))
    except torch.cuda.OutOfMemoryError:
        # the fit only polishes the bake: without the memory for it (idx/weights are ~48 bytes a pixel) the
        # job keeps the baked texture rather than failing
        ctx.log.warning("texture fit: out of GPU memory for %d pixels; keeping the baked texture", len(samples.uv))
        torch.cuda.empty_cache()
        return tex, {"skipped": f"out of GPU memory for {len(samples.uv)} pixels: baked only"}
    out = pad_seams(out, atlas.face_of_texel >= 0, s.dilate, device=ctx.device)
    info.update({"views": int(len(pick)), "pixels_from": how, "sample_seconds": round(t_samples, 2)})
    ctx.log.info("texture fit: RMSE %.4f -> %.4f over %d pixels of %d views", info.get("rmse_before", 0),
                 info.get("rmse_after", 0), info.get("samples", 0), len(pick))
    return out, info


def load_colors(ctx: JobContext) -> np.ndarray:
    return np.load(stage_dir(ctx, TextureStage.name) / "colors.npy")


def load_textured(ctx: JobContext) -> tuple[trimesh.Trimesh, np.ndarray, np.ndarray] | None:
    """The textured (decimated) mesh, its UVs (V, 2) and texture (S, S, 3) uint8, if the stage made one."""
    d = stage_dir(ctx, TextureStage.name)
    if not (d / "atlas.npz").exists():
        return None
    with np.load(d / "atlas.npz") as z:
        mesh = trimesh.Trimesh(z["vertices"], z["faces"], process=False)
        uv = z["uv"]
    tex = cv2.cvtColor(cv2.imread(str(d / "texture.png")), cv2.COLOR_BGR2RGB)
    return mesh, uv, tex
