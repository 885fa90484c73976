"""Stage 5, refine: differentiable-rendering refinement of the first surface (see pipeline.appearance.refine)."""
from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from pipeline.appearance.atlas_ahead import AHEAD_FILE, AtlasAhead
from pipeline.context import JobContext, JobError, Laps
from pipeline.geometry.meshing import decimate, main_components
from pipeline.imaging.raster import coverage_masks, make_rasterizer
from pipeline.appearance.refine import (REMESH_MODES, RefineSettings, cut_to_outline, outline_target, refine,
                                        silhouette_targets, support_floor)
from pipeline.settings import RefineConfig
from pipeline.stages.base import Stage
from pipeline.stages.cameras import Sparse, Views
from pipeline.stages.geometry import load_mesh, shape_masks
from pipeline.stages.summaries import RefineSummary
from pipeline.stages.texture import atlas_key, texture_settings


def refine_settings(cfg: RefineConfig, on_gpu: bool) -> RefineSettings:
    common = dict(lam=cfg.smoothness, lr=cfg.step, w_photo=cfg.photometric_weight, w_silhouette=cfg.silhouette_weight,
                  w_normal=cfg.normal_weight, w_laplacian=cfg.laplacian_weight, w_edge=cfg.edge_weight,
                  lam_decay=cfg.smoothness_decay, remesh=cfg.remesh, remesh_iterations=cfg.remesh_iterations,
                  lr_final=cfg.lr_final, pair_views=cfg.pair_views,
                  pair_radius=cfg.pair_radius, pair_blur=cfg.pair_blur, pair_first_level=cfg.pair_first_level,
                  pair_last_level=cfg.pair_last_level,
                  views_per_step=cfg.views_per_step)
    if on_gpu:
        sizes = [max(64, cfg.image_size // 2 ** (cfg.levels - 1 - i)) for i in range(cfg.levels)]
        return RefineSettings(levels=tuple((sz, cfg.iterations) for sz in sizes), max_faces=cfg.max_faces,
                              start_faces=cfg.start_faces, crop=cfg.crop, **common)
    # the CPU preview renders whole photos: a window that the object fills took 1.6x as long for the same F-score
    # (a 320x240 capture, 40 steps; measured with pytorch3d's own backward pass, whose cost grew with the covered
    # pixels, before raster.soft_fragments)
    return RefineSettings(levels=((cfg.cpu_image_size, cfg.cpu_iterations),), max_faces=cfg.cpu_faces,
                          start_faces=cfg.cpu_faces, **common)


def smoothness(cfg: RefineConfig, estimated: bool) -> float:
    """largesteps' lambda: ``refine.estimated_smoothness`` where any silhouette was estimated from the photos, else
    ``refine.smoothness``. Measured only on photos without masks, so the given masks' jobs keep theirs."""
    return float(cfg.estimated_smoothness if estimated else cfg.smoothness)


def pair_weight(cfg: RefineConfig, estimated: bool, on_gpu: bool) -> float:
    """The photo-consistency term's weight: ``refine.pair_weight`` where ``refine.pair`` is on, or auto on a GPU job
    with estimated silhouettes (given masks already place the outline; the CPU preview's 128 px renders are too
    coarse for 5x5-pixel windows to place anything), else 0."""
    on = cfg.pair == "on" or (cfg.pair == "auto" and estimated and on_gpu)
    return float(cfg.pair_weight) if on else 0.0


def outline_cut(ctx: JobContext, masks: list[np.ndarray], estimated: list[bool], start: trimesh.Trimesh,
                Ks: np.ndarray, w2cs: np.ndarray, grow_px: float) -> tuple[list[np.ndarray], float | None]:
    """The estimated ones of ``masks`` (N (H, W) bool) cut to ``start``'s outline grown by ``grow_px`` photo pixels
    (:func:`cut_to_outline`), given ones as they are; Ks (N, 3, 3), w2cs (N, 4, 4). -> (masks, the share of the
    estimated masks' pixels cut, or None where nothing was to cut: grow_px 0 or no estimated mask)."""
    todo = [j for j, e in enumerate(estimated) if e]
    if grow_px <= 0 or not todo:
        return masks, None
    sizes = [(masks[j].shape[1], masks[j].shape[0]) for j in todo]
    covers = coverage_masks(start.vertices, start.faces, Ks[todo], w2cs[todo], sizes, ctx.device,
                            ctx.work_dir.parent.parent / "torch_extensions")
    out = list(masks)
    before = after = 0
    for j, cover in zip(todo, covers):
        out[j] = cut_to_outline(masks[j], cover, grow_px)
        before += int(np.count_nonzero(masks[j]))
        after += int(np.count_nonzero(out[j]))
    return out, round(1.0 - after / max(before, 1), 5)


OUTLINE_TARGETS = {"outline": "the fused surface's outline where the silhouettes were estimated",
                   "agree": "where the estimated silhouettes and the fused surface's outline agree (0.5 elsewhere)"}


def outline_sources(ctx: JobContext, masks: list[np.ndarray], estimated: list[bool], mesh: trimesh.Trimesh,
                    Ks: np.ndarray, w2cs: np.ndarray, source: str) -> tuple[list[np.ndarray], float | None]:
    """The estimated ones of ``masks`` (N (H, W) bool) replaced by :func:`outline_target` of ``mesh``'s outline in
    the same view (the fused surface, before decimation), given ones as they are; Ks (N, 3, 3), w2cs (N, 4, 4).
    -> (targets, the share of the estimated masks' pixels whose target changed, or None for "photos" or where no
    mask was estimated)."""
    todo = [j for j, e in enumerate(estimated) if e]
    if source == "photos" or not todo:
        return masks, None
    sizes = [(masks[j].shape[1], masks[j].shape[0]) for j in todo]
    covers = coverage_masks(np.asarray(mesh.vertices), np.asarray(mesh.faces), Ks[todo], w2cs[todo], sizes,
                            ctx.device, ctx.work_dir.parent.parent / "torch_extensions")
    out = list(masks)
    changed = total = 0
    for j, cover in zip(todo, covers):
        out[j] = outline_target(masks[j], cover, source)
        changed += int(np.count_nonzero(masks[j] != cover))
        total += int(np.count_nonzero(masks[j]))
    return out, round(changed / max(total, 1), 5)


def _atlas_ahead(ctx: JobContext, on_gpu: bool) -> contextlib.AbstractContextManager[AtlasAhead | None]:
    """The texture atlas's child, started now where the texture stage will want an atlas of the refined mesh
    (texture.atlas_ahead; auto: on a GPU); where it cannot be started, none (the texture stage unwraps)."""
    cfg = ctx.settings.texture
    if not cfg.enabled or cfg.atlas_ahead == "off" or (cfg.atlas_ahead == "auto" and not on_gpu):
        return contextlib.nullcontext()
    s = texture_settings(cfg, ctx.device == "cuda")
    try:
        return AtlasAhead(lambda n_faces: atlas_key(s, n_faces), ctx.log)
    except Exception as e:  # noqa: BLE001 - only the head start is lost
        ctx.log.warning("could not start the texture atlas's child ahead (%s: %s)", type(e).__name__, e)
        return contextlib.nullcontext()


def refined_mesh(vertices: np.ndarray, faces: np.ndarray) -> trimesh.Trimesh:
    """The refinement's result as the stage publishes it: its main pieces, holes filled where any are open, normals
    outward. vertices (V, 3), faces (F, 3), as :func:`pipeline.appearance.refine.refine` returns them.

    The vertices are not merged: the refinement keeps its start mesh's connectivity, which is closed, and merging
    two vertices that the optimisation or the floor brought onto one point welds their edges to a shared
    neighbour into edges of four faces, which no hole filling closes (an open final mesh from a closed dense one)."""
    out = main_components(trimesh.Trimesh(vertices, faces, process=False))
    if not out.is_watertight:
        trimesh.repair.fill_holes(out)
    out.fix_normals()
    return out


class RefineStage(Stage):
    """Differentiable-rendering refinement of the hull (see pipeline.appearance.refine); a pass-through when
    disabled."""

    name = "refine"
    sections = ("images", "geometry", "dense", "refine")

    def run(self, ctx: JobContext, out_dir: Path) -> dict[str, Any]:
        t0 = time.monotonic()
        lap = Laps(t0, digits=2)  # where the prepare step's seconds go
        cfg = ctx.settings.refine
        mesh = load_mesh(ctx, "geometry")
        on_gpu = ctx.device == "cuda"
        if cfg.enabled not in ("auto", "on", "off"):
            raise JobError(f"refine.enabled must be auto, on or off, not {cfg.enabled!r}")
        if cfg.remesh not in REMESH_MODES:
            raise JobError(f"refine.remesh must be one of {', '.join(REMESH_MODES)}, not {cfg.remesh!r}")
        reason = None
        if cfg.enabled == "off":
            reason = "disabled (refine.enabled = off)"
        elif cfg.enabled == "auto" and not on_gpu:
            reason = "skipped: no GPU (set refine.enabled = on for a coarse CPU preview)"
        rasterizer = None
        lap("mesh")
        if reason is None:
            rasterizer, backend = make_rasterizer(ctx.device, ctx.work_dir.parent.parent / "torch_extensions")
            if rasterizer is None:
                reason = f"skipped: {backend}"
        if reason is not None or rasterizer is None:
            ctx.log.info("refinement %s", reason)
            mesh.export(out_dir / "mesh.ply")
            return RefineSummary(method=f"none — {reason}", faces=int(len(mesh.faces))).to_dict()
        lap("rasterizer")
        views = Views.load(ctx)
        masks, estimated = shape_masks(ctx)
        lap("views")
        idx = [i for i in views.train if masks[i] is not None]
        on_gpu = rasterizer.name == "nvdiffrast"
        settings = refine_settings(cfg, on_gpu)
        gains = cfg.view_gains == "on" or (cfg.view_gains == "auto" and bool(estimated))
        settings = dataclasses.replace(settings, view_gains=gains, w_pair=pair_weight(cfg, bool(estimated), on_gpu),
                                       lam=smoothness(cfg, bool(estimated)),
                                       max_move=cfg.estimated_max_move if estimated else 0.0)
        start = decimate(mesh, settings.start_faces)
        lap("decimate")
        ctx.log.info("refining %d faces with %s over %d views, levels %s", len(start.faces), backend, len(idx),
                     settings.levels)
        sil = [masks[i] for i in idx]
        sil, cut = outline_cut(ctx, sil, [i in estimated for i in idx], start, views.K[idx], views.w2c[idx],
                               cfg.estimated_outline_px)
        sil, changed = outline_sources(ctx, sil, [i in estimated for i in idx], mesh, views.K[idx], views.w2c[idx],
                                       cfg.estimated_silhouettes)
        if cfg.alpha_coverage:
            sil = silhouette_targets(sil, [views.alpha[i] for i in idx])
        soft = sum(1 for t in sil if t.dtype != bool and ((t > 0) & (t < 1)).any())
        # silhouettes estimated from the photos pull less than the user's own masks
        sil_weight = np.array([cfg.estimated_silhouette_weight if i in estimated else 1.0 for i in idx])
        # photos without masks: the base stays on the table (the estimated silhouettes hold its contact shadow)
        sparse = Sparse.load(ctx) if estimated else None
        floor = None if sparse is None or sparse.support is None else support_floor(sparse.support,
                                                                                    np.asarray(mesh.vertices))
        lap("targets")
        t1 = time.monotonic()
        with _atlas_ahead(ctx, on_gpu) as ahead:
            result = refine(np.asarray(start.vertices), np.asarray(start.faces), [views.rgb[i] for i in idx],
                            sil, views.K[idx], views.w2c[idx], rasterizer, settings,
                            "cuda" if on_gpu else "cpu", check=ctx.progress, silhouette_weights=sil_weight,
                            floor=floor, on_last_level=None if ahead is None else ahead.submit)
            t2 = time.monotonic()
            out = refined_mesh(result.vertices, result.faces)
            out.export(out_dir / "mesh.ply")
            if ahead is not None:
                ctx.log.info("texture atlas laid out ahead: %s",
                             ahead.save(out.faces, len(out.vertices), out_dir / AHEAD_FILE, ctx.check))
        return RefineSummary(
            method=f"differentiable rendering ({backend}, largesteps)", faces=int(len(out.faces)), ran=True,
            backend=backend, watertight=bool(out.is_watertight), losses=[round(x, 5) for x in result.losses],
            levels=[list(lv) for lv in settings.levels], views_per_step=result.views_per_step, smoothness=settings.lam,
            regularisers=result.regularisers, remesh=result.remesh,
            silhouette_target=(OUTLINE_TARGETS[cfg.estimated_silhouettes] if changed is not None
                               else f"alpha coverage in {soft} of {len(sil)} views" if soft else "binary masks"),
            estimated_silhouettes=len([i for i in idx if i in estimated]), view_gains=result.view_gains,
            outline_cut=cut, outline_source=None if changed is None else cfg.estimated_silhouettes,
            outline_changed=changed,
            floor=None if floor is None else [round(float(x), 6) for x in (*floor[0], floor[1])],
            window_share=result.window_share,
            seconds_per_level=[round(x, 2) for x in result.seconds_per_level],
            setup_seconds_per_level=[round(x, 2) for x in result.setup_seconds_per_level],
            mesh_seconds_per_level=[round(x, 2) for x in result.mesh_seconds_per_level],
            pair_share_per_level=list(result.pair_share_per_level) or None,
            seconds={"prepare": round(t1 - t0, 2), "levels": round(t2 - t1, 2),
                     "finish": round(time.monotonic() - t2, 2),
                     **{f"prepare.{k}": v for k, v in lap.seconds.items()}}).to_dict()
