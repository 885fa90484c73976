"""Stage 4, geometry: the first closed surface of the object: dense multi-view stereo (:mod:`pipeline.geometry.dense`) for
photos without masks, a visual hull (:mod:`pipeline.geometry.carve`) where every view has a given mask."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from pipeline.geometry.carve import CarveResult, CarveSettings, carve, mask_coverage
from pipeline.context import JobContext
from pipeline.geometry.dense import DenseSettings, dense_geometry
from pipeline.geometry.scene import region_from_cameras
from pipeline.geometry.meshing import MeshingSettings, clean_mesh, marching_cubes
from pipeline.geometry.mvs import MvsSettings
from pipeline.geometry.poisson import PoissonSettings
from pipeline.geometry.silhouettes import SilhouetteSettings
from pipeline.settings import DenseConfig
from pipeline.stages.base import Stage, stage_dir
from pipeline.stages.cameras import Sparse, Views, geometry_method
from pipeline.stages.ingest import Manifest
from pipeline.stages.summaries import GeometrySummary
from pipeline.stages.masks import load_masks, masks_were_automatic


def outlier_views(configured: int, n_views: int, automatic_masks: bool) -> int:
    """Views allowed to veto "outside" for a voxel. -1 means automatic: 0 for masks the user gave (alpha channel or
    mask files), 3% of the views (rounded, at most 2) for automatic masks. Why 0 for given masks: a through-hole
    (a ring's opening, the gap under an arm) is often seen by only one or two steep views, and tolerating one
    outlier closed bob's ring with a membrane of spurious handles (genus 6 instead of 1; hull F@1% 0.905 -> 0.983
    with 0). Automatic masks do have the occasional bad view, which would otherwise bite a hole."""
    if configured >= 0:
        return configured
    if not automatic_masks:
        return 0
    return int(min(2, round(0.03 * n_views)))

STRICT_MIN_COVERAGE = 0.97  # median fraction of a given mask the strict hull must cover (consistent masks: ~1.0)


class GeometryStage(Stage):
    name = "geometry"
    sections = ("images", "geometry", "dense")

    def run(self, ctx: JobContext, out_dir: Path) -> dict[str, Any]:
        manifest = Manifest.load(stage_dir(ctx, "ingest"))
        method = geometry_method(ctx.settings, manifest)
        views = Views.load(ctx)
        if method == "dense":
            summary = dense_stage(ctx, views, load_masks(ctx), out_dir)
        else:
            summary = hull_stage(ctx, views, out_dir)
        out = summary.to_dict()
        (out_dir / "geometry.json").write_text(json.dumps(out))
        return out


def dense_settings(ctx: JobContext) -> DenseSettings:
    """The dense method's settings for the job's device: full resolution on a GPU, a coarse pass on the CPU."""
    cfg, geo = ctx.settings.dense, ctx.settings.geometry
    gpu = ctx.device == "cuda"
    mvs = MvsSettings(max_side=cfg.max_side if gpu else cfg.cpu_max_side, planes=cfg.planes if gpu else cfg.cpu_planes,
                      neighbours=cfg.neighbours, best_k=cfg.best_k, window=cfg.window,
                      refine_rounds=cfg.refine_rounds, min_score=cfg.min_score, min_consistent=cfg.min_consistent,
                      sparse_near=cfg.sparse_near, support_hypothesis=cfg.support_hypothesis,
                      support_min_score=cfg.support_min_score)
    poisson = PoissonSettings(depth=cfg.poisson_depth if gpu else cfg.cpu_poisson_depth,
                              trim_quantile=cfg.poisson_trim, silhouette_fraction=cfg.poisson_silhouette_fraction)
    return DenseSettings(mvs=mvs, resolution=cfg.resolution if gpu else cfg.cpu_resolution, max_faces=geo.max_faces,
                         field_blur=cfg.field_blur, close_size=cfg.close_size, mesher=cfg.mesher,
                         poisson=poisson,
                         solid_hidden=cfg.solid_hidden or None, foot_dissent=cfg.foot_dissent,
                         foot_dissent_length=cfg.foot_dissent_length,
                         support_full_weight=cfg.support_full_weight, unseen_facing=cfg.unseen_facing,
                         unseen_rim_views=cfg.unseen_rim_views, unseen_rim_max_down=cfg.unseen_rim_max_down,
                         unseen_island_vertices=cfg.unseen_island_vertices,
                         silhouettes=silhouette_settings(cfg, gpu))


def silhouette_settings(cfg: DenseConfig, gpu: bool) -> SilhouetteSettings:
    """The estimated silhouettes' settings of a job with the ``dense`` section ``cfg``. Without a GPU the edge is
    not cut again at the photo's size: the refinement there renders at ``refine.cpu_image_size`` (128 px), coarser
    than the silhouettes' working size, and the step would cost about 2 s of a 48-photo job on 2 cores."""
    return SilhouetteSettings(keep_measured=cfg.silhouettes_keep_measured,
                              base_margin_height=cfg.silhouettes_base_margin_height,
                              open_core=cfg.silhouettes_open_core, core_in_first=cfg.silhouettes_core_in_first,
                              base_open=cfg.silhouettes_base_open, foot_reach=cfg.silhouettes_foot_reach,
                              edge_band=cfg.silhouettes_edge_band if gpu else 0.0,
                              thin_near_scale=cfg.silhouettes_thin_near_scale)


def dense_stage(ctx: JobContext, views: Views, masks: list[np.ndarray | None], out_dir: Path) -> GeometrySummary:
    """Multi-view stereo on the training views; writes mesh.ply, points.ply and the silhouettes it closed with."""
    sparse = Sparse.load(ctx)
    idx = [int(i) for i in views.train]
    s = dense_settings(ctx)
    if sparse is None:
        # a posed capture with a mask for every photo runs no SfM: the cameras bound the object, the masks cut it
        sizes = [(views.rgb[i].shape[1], views.rgb[i].shape[0]) for i in idx]
        region = region_from_cameras(views.w2c[idx], views.K[idx], sizes)
        observations = None
        ctx.log.info("dense geometry: no SfM points (posed photos with masks); the object is located from the "
                     "cameras")
    else:
        remap = np.full(len(views.names), -1)
        remap[idx] = np.arange(len(idx))
        obs = remap[sparse.obs_view] >= 0
        region = sparse.region()
        observations = (sparse.points, remap[sparse.obs_view[obs]], sparse.obs_point[obs])
    ctx.log.info("dense geometry: %d views, depth maps at %d px, %d planes, %s (device %s)", len(idx),
                 s.mvs.max_side, s.mvs.planes,
                 {"tsdf": f"TSDF {s.resolution} voxels", "poisson": f"Poisson depth {s.poisson.depth}",
                  "hybrid": f"TSDF {s.resolution} voxels + Poisson depth {s.poisson.depth}"}[s.mesher],
                 ctx.device)
    res = dense_geometry([views.rgb[i] for i in idx], [masks[i] for i in idx], views.K[idx], views.w2c[idx],
                         region, s, device=ctx.device, sparse=observations, check=ctx.progress)
    res.mesh.export(out_dir / "mesh.ply")
    trimesh.PointCloud(res.points, colors=res.colors).export(out_dir / "points.ply")
    # the silhouettes the shape was closed with: later stages fit to them where the user gave none
    np.savez_compressed(out_dir / "silhouettes.npz", **{f"mask_{i}": m for i, m in zip(idx, res.masks)},
                        estimated=np.array([idx[k] for k, e in enumerate(res.estimated) if e], dtype=np.int64))
    st = res.stats
    detail = (f"{len(idx)} views; depth maps {st['depth_size'][0]}x{st['depth_size'][1]} px, {st['planes']} depth "
              f"hypotheses, {st['neighbours']} neighbours each; "
              + (f"TSDF grid {'x'.join(map(str, st['grid']))}; " if st['grid'] else "")
              + (f"screened Poisson, octree depth {s.poisson.depth}; " if st["mesher"] != "tsdf" else "")
              + f"{st['estimated_silhouettes']} silhouettes estimated from the photos")
    note = None
    if ctx.device != "cuda":
        note = ("coarse result: without a GPU the depth maps are computed at "
                f"{s.mvs.max_side} px and the surface at {s.resolution} voxels; a full-resolution "
                "result of this capture needs the GPU path")
    fused = {"tsdf": "TSDF fusion", "poisson": "screened Poisson",
             "hybrid": "TSDF fusion + screened Poisson"}[st["mesher"]]
    return GeometrySummary(method=f"dense multi-view stereo (plane sweep + {fused})", detail=detail,
                           views_used=len(idx), faces=int(len(res.mesh.faces)),
                           watertight=bool(res.mesh.is_watertight), note=note, dense=st)


def hull_stage(ctx: JobContext, views: Views, out_dir: Path) -> GeometrySummary:
    """Visual hull from the masks (given, or automatic where masks.auto allows)."""
    masks = load_masks(ctx)
    idx = [i for i in views.train if masks[i] is not None]
    cfg = ctx.settings.geometry
    auto_masks = masks_were_automatic(ctx)
    resolution = cfg.cpu_voxel_resolution if ctx.device != "cuda" and cfg.cpu_voxel_resolution else cfg.voxel_resolution
    settings = CarveSettings(resolution=resolution,
                             outlier_views=outlier_views(cfg.outlier_views, len(idx), auto_masks))
    ctx.log.info("visual hull from %d views at %d voxels (device %s, %d outlier views tolerated)",
                 len(idx), settings.resolution, ctx.device, settings.outlier_views)
    sparse = Sparse.load(ctx)
    bounds = support = None
    if sparse is not None and auto_masks:
        # automatic masks often touch the image border; the SfM object region closes the hull there
        r = 1.3 * sparse.radius
        bounds, support = (sparse.center - r, sparse.center + r), sparse.support
    Ks, w2cs, vmasks = views.K[idx], views.w2c[idx], [masks[i] for i in idx]
    meshing = MeshingSettings(smoothing_iterations=cfg.smoothing_iterations, max_faces=cfg.max_faces)

    def hull(cs: CarveSettings, p0: float, p1: float) -> tuple[CarveResult, trimesh.Trimesh, trimesh.Trimesh]:
        # the carve is most of the work; marching cubes and the clean-up take the last tenth
        res = carve(Ks, w2cs, vmasks, cs, device=ctx.device,
                    check=lambda f: ctx.progress(p0 + 0.9 * (p1 - p0) * f), bounds=bounds, support=support)
        raw_ = marching_cubes(res.field, res.origin, res.voxel)
        ctx.progress(p0 + 0.95 * (p1 - p0))
        return res, raw_, clean_mesh(raw_, meshing)

    result, raw, mesh = hull(settings, 0.0, 0.6)
    note = None
    if cfg.outlier_views < 0 and not auto_masks:
        # strict hull for given masks: check that it still covers the masks; if a bad mask cut part of the
        # object away, most other views show it, and the tolerant hull is used instead
        cover = float(np.median(mask_coverage(mesh, Ks, w2cs, vmasks)))
        if cover < STRICT_MIN_COVERAGE:
            settings = CarveSettings(resolution=resolution,
                                     outlier_views=outlier_views(-1, len(idx), automatic_masks=True))
            note = (f"the strict hull covers only {cover:.1%} of the median mask: a given mask is probably "
                    f"wrong, so {settings.outlier_views} outlier view(s) were tolerated")
            ctx.log.warning("%s", note)
            result, raw, mesh = hull(settings, 0.6, 0.9)
    ctx.progress(0.95)
    mesh.export(out_dir / "mesh.ply")
    return GeometrySummary(method="visual hull (silhouette distance field)",
                           detail=f"{resolution} voxels, {len(idx)} views", views_used=len(idx),
                           faces=int(len(mesh.faces)), watertight=bool(mesh.is_watertight), note=note,
                           resolution=resolution, voxel_size=float(result.voxel),
                           grid=[int(n) for n in result.field.shape], outlier_views=settings.outlier_views,
                           raw_faces=int(len(raw.faces)))


def shape_masks(ctx: JobContext) -> tuple[list[np.ndarray | None], set[int]]:
    """Per view, the silhouette the shape was made with: the user's mask (masks stage) or, for the dense method,
    the estimated one (geometry stage); and the indices of the estimated ones."""
    masks = load_masks(ctx)
    path = stage_dir(ctx, GeometryStage.name) / "silhouettes.npz"
    if not path.exists():
        return masks, set()
    with np.load(path) as z:
        estimated = {int(i) for i in z["estimated"]}
        for i in estimated:
            masks[i] = z[f"mask_{i}"]
    return masks, estimated


def load_mesh(ctx: JobContext, stage: str = "geometry") -> trimesh.Trimesh:
    return trimesh.load(stage_dir(ctx, stage) / "mesh.ply", process=False, force="mesh")
