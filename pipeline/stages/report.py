"""Stage 6: export the mesh files, measure their quality, write stats.json and report.html."""
from __future__ import annotations

import base64
import contextlib
import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import trimesh

from pipeline import __version__
from pipeline.cameras.cameras import camera_centers, camera_up
from pipeline.cameras.colmap_model import start_exporter
from pipeline.context import JobContext, Laps
from pipeline.report.evaluate import gt_scores, held_out_scores, mesh_stats
from pipeline.io.export import estimate_up, export_all, read_seen, vertex_color_web_glb, web_glb
from pipeline.report.grade import build_checks, grade_checks, what_to_know
from pipeline.report.quality import (base_gap, border_cuts, camera_spread, coverage_share, horizontal_basis,
                                     missed_points, resting_vertices, side_name, unseen_direction, vertex_areas,
                                     visibility_counts, within_footprint)
from pipeline.io.redact import redact_mapping
from pipeline.imaging.raster import mesh_renderer
from pipeline.imaging.render import look_at, reduced_camera, render, shade
from pipeline.cameras.scale import NO_SCALE
from pipeline.report.html import camera_scene, complete_stats, config_rows, data_uri, hatch, render_report
from pipeline.settings import PipelineSettings, ReportConfig
from pipeline.stages.base import Stage, read_summary, stage_dir
from pipeline.stages.cameras import Sparse, Views
from pipeline.stages.exports import write_camera_files, writes_sfm_model
from pipeline.stages.geometry import load_mesh
from pipeline.stages.ingest import Manifest
from pipeline.stages.masks import load_masks
from pipeline.stages.texture import load_colors, load_textured
from pipeline.report.viewer import NoViewer, Viewer, make_viewer

TIMINGS_FILE = "timings.json"
# optional outputs of the texture stage, published when present: the projected masks and the texture
EXTRA_FILES = ("masks_preview.jpg", "masks.zip", "texture.png")
# the outputs for other tools (pipeline.stages.exports) and the web copy, published when the stage made them
EXPORT_FILES = ("mesh_web.glb", "thumbnail.jpg", "transforms.json", "points.ply")
EXPORT_DIRS = ("images", "sparse")
HELD_PX = 160  # side of a held-out photo, render and error map in the report, as shown
TILE_PX = 180  # side of a render in the report, as shown: renders are cropped to the object and stored this size
CROP_MARGIN = 0.08  # around the object in a cropped render, share of its larger side


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


def orbit_cameras(mesh: trimesh.Trimesh, views: Views, up: np.ndarray, size: int,
                  frames: int = 8) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """A turntable around the object at the cameras' median distance and elevation, starting at the first photo's
    azimuth: K (3, 3) for ``size``^2 px and ``frames`` (w2c (4, 4), viewing direction (3,))."""
    centers = camera_centers(views.w2c)
    target = mesh.bounds.mean(axis=0)
    rel = centers - target
    dist = float(np.median(np.linalg.norm(rel, axis=1)))
    elev = float(np.median(np.arcsin(np.clip((rel @ up) / np.linalg.norm(rel, axis=1), -1, 1))))
    e1, e2 = horizontal_basis(up)
    az0 = float(np.arctan2(rel[0] @ e2, rel[0] @ e1))
    fx_rel = float(np.median(views.K[:, 0, 0] / np.array([im.shape[1] for im in views.rgb])))
    K = np.array([[fx_rel * size, 0, size / 2], [0, fx_rel * size, size / 2], [0, 0, 1.0]])
    out = []
    for k in range(frames):
        az = az0 + 2 * np.pi * k / frames
        d = np.cos(elev) * (np.cos(az) * e1 + np.sin(az) * e2) + np.sin(elev) * up
        out.append((look_at(target + dist * d, target, up), d))
    return K, out


def crop_box(mask: np.ndarray, margin: float = CROP_MARGIN) -> tuple[int, int, int, int]:
    """The square (x0, y0, x1, y1) around the True pixels of ``mask`` (H, W) with ``margin`` of its side; may
    reach past the image (see :func:`crop`). The whole image when the mask is empty."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return 0, 0, mask.shape[1], mask.shape[0]
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    half = max(xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) * (0.5 + margin)
    return int(np.floor(cx - half)), int(np.floor(cy - half)), int(np.ceil(cx + half)), int(np.ceil(cy + half))


def crop(img: np.ndarray, box: tuple[int, int, int, int], fill: int = 255) -> np.ndarray:
    """``img`` (H, W, 3) uint8 cut to ``box``, padded with ``fill`` where the box leaves the image."""
    x0, y0, x1, y1 = box
    out = np.full((y1 - y0, x1 - x0, img.shape[2]), fill, dtype=img.dtype)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(img.shape[1], x1), min(img.shape[0], y1)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out


def scaled_box(box: tuple[int, int, int, int], sx: float, sy: float) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return int(np.floor(x0 * sx)), int(np.floor(y0 * sy)), int(np.ceil(x1 * sx)), int(np.ceil(y1 * sy))


def textured_render(mesh: trimesh.Trimesh, colors: np.ndarray, K: np.ndarray, w2c: np.ndarray, size: int,
                    textured: tuple[trimesh.Trimesh, np.ndarray, np.ndarray] | None,
                    render: Callable[..., Any] = render) -> tuple[np.ndarray, Any]:
    """Colour render on white (H, W, 3) uint8 (the textured mesh when there is one) and the plain render."""
    r = render(mesh, K, w2c, size, size, colors)
    if textured is not None:
        rt = render(textured[0], K, w2c, size, size, uv=textured[1], texture=textured[2])
        col = np.where(rt.mask[..., None], rt.rgb, 1.0)
    else:
        col = np.where(r.mask[..., None], r.rgb, 1.0)
    return (col * 255).round().astype(np.uint8), r


def poster(mesh: trimesh.Trimesh, colors: np.ndarray, views: Views, up: np.ndarray, size: int,
           textured: tuple[trimesh.Trimesh, np.ndarray, np.ndarray] | None,
           render: Callable[..., Any] = render) -> np.ndarray:
    """thumbnail.jpg: the textured mesh from the first photo's side, cropped to it, ``size``^2 px on white."""
    # rendered at twice the size: the object fills only part of the frame, and the crop is then scaled down
    K, cams = orbit_cameras(mesh, views, up, 2 * size, frames=8)
    img, r = textured_render(mesh, colors, K, cams[0][0], 2 * size, textured, render)
    from PIL import Image

    cut = crop(img, crop_box(r.mask))
    return np.asarray(Image.fromarray(cut).resize((size, size), Image.Resampling.LANCZOS))


def orbit_renders(mesh: trimesh.Trimesh, colors: np.ndarray, views: Views, up: np.ndarray, size: int,
                  textured: tuple[trimesh.Trimesh, np.ndarray, np.ndarray] | None = None,
                  frames: int = 8, covered: np.ndarray | None = None,
                  silhouettes: list[np.ndarray] | None = None,
                  check: Callable[[float], None] = lambda f: None,
                  render: Callable[..., Any] = render) -> list[dict[str, Any]]:
    """A turntable (:func:`orbit_cameras`), each with shaded geometry and the input photo whose direction is
    closest, all cropped to the object and stored at the size the page shows them (TILE_PX). ``covered`` (V,) bool
    of ``mesh``: surface seen by enough photos; the rest is hatched in both renders, since its colour and shape are
    guesses. ``silhouettes``: the mesh's silhouette in every photo (any size), to crop the photos alike."""
    centers = camera_centers(views.w2c)
    rel = centers - mesh.bounds.mean(axis=0)
    dirs_in = rel / np.linalg.norm(rel, axis=1, keepdims=True)
    K, cams = orbit_cameras(mesh, views, up, size, frames)
    flag = None if covered is None else np.repeat(covered.astype(np.float32)[:, None], 3, axis=1)
    out = []
    for k, (w2c, d) in enumerate(cams):
        label = f"{360 * k // frames}°"
        col8, r = textured_render(mesh, colors, K, w2c, size, textured, render)
        shaded = shade(r, d + 0.5 * up)
        unseen = 0.0
        if flag is not None:
            fl = render(mesh, K, w2c, size, size, flag)
            where = fl.mask & (fl.rgb[..., 0] < 0.5)
            unseen = float(where.sum() / max(1, fl.mask.sum()))
            col8, shaded = hatch(col8, where), hatch(shaded, where)
        box = crop_box(r.mask)
        col8, shaded = crop(col8, box), crop(shaded, box)
        nearest = int(np.argmax(dirs_in @ d))
        angle = float(np.degrees(np.arccos(np.clip(dirs_in[nearest] @ d, -1, 1))))
        # a photo nearest to several angles is stored once; the later figures point to the first (photo_ref)
        first = next((j for j, o in enumerate(out) if o["photo_name"] == views.names[nearest]), None)
        photo_uri = None
        if first is None:
            photo = on_white(views, nearest)
            if silhouettes is not None and silhouettes[nearest].any():
                sil = silhouettes[nearest]
                photo = crop(photo, scaled_box(crop_box(sil), photo.shape[1] / sil.shape[1],
                                               photo.shape[0] / sil.shape[0]))
            photo_uri = data_uri(photo, max_side=TILE_PX)
        out.append({"label": label, "render": data_uri(col8, max_side=TILE_PX),
                    "shaded": data_uri(shaded, max_side=TILE_PX), "photo": photo_uri,
                    "photo_ref": first if first is not None else k, "photo_name": views.names[nearest],
                    "angle": angle, "unseen": unseen})
        check((k + 1) / frames)
    return out


def photo_silhouettes(mesh: trimesh.Trimesh, views: Views, max_side: int, check: Any = lambda f: None,
                      render: Callable[..., Any] = render) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """The final mesh rendered into every photo's camera at ``max_side`` px: depth maps (h, w) float32, silhouettes
    (h, w) bool and the matching intrinsics (N, 3, 3). One small render per photo serves both visibility and the
    border check."""
    depths, masks, Ks = [], [], []
    for i, (K, w2c, img) in enumerate(zip(views.K, views.w2c, views.rgb)):
        Kr, w, h = reduced_camera(K, img.shape[1], img.shape[0], max_side)
        r = render(mesh, Kr, w2c, w, h)
        depths.append(r.depth)
        masks.append(r.mask)
        Ks.append(Kr)
        check((i + 1) / len(views.names))
    return depths, masks, np.array(Ks)


def measure_quality(mesh: trimesh.Trimesh, counts: np.ndarray, masks: list[np.ndarray], views: Views,
                    up: np.ndarray, cfg: ReportConfig) -> dict[str, Any]:
    """stats.json's quality.coverage, quality.camera_spread and quality.border from the written mesh, its per-vertex
    photo counts (V,) and the silhouettes of the mesh in every photo."""
    V, F, normals = np.asarray(mesh.vertices), np.asarray(mesh.faces), np.asarray(mesh.vertex_normals)
    centres = camera_centers(views.w2c)
    target = mesh.bounds.mean(axis=0)
    front = np.mean((centres - target) / np.linalg.norm(centres - target, axis=1, keepdims=True), axis=0)
    areas = vertex_areas(V, F)
    resting = resting_vertices(V, normals, up, centres)
    keep = ~resting
    k = cfg.coverage_min_views
    share = coverage_share(areas, counts, k, exclude=resting)
    total = float(areas[keep].sum()) or 1.0
    direction = unseen_direction(normals, areas, (counts < k) & keep)
    spread = camera_spread(centres, target, up)
    cuts = border_cuts(masks)
    return {
        "coverage": {"share": share, "min_views": k, "max_angle_deg": cfg.coverage_max_angle_deg,
                     "mean_views": float((areas * counts)[keep].sum() / total),
                     "never_seen_share": float(areas[keep & (counts == 0)].sum() / total),
                     "resting_share": float(areas[resting].sum() / max(float(areas.sum()), 1e-12)),
                     "unseen_side": None if direction is None or share >= 0.999 else side_name(direction, front, up)},
        "camera_spread": dict(spread.to_dict(), gap_side=side_name(np.array(spread.gap_direction), front, up),
                              gap_photos=[views.names[i] for i in spread.gap_between if i >= 0], views=len(centres)),
        "border": cuts.to_dict(list(views.names)),
    }


def measured_base(ctx: JobContext, vertices: np.ndarray) -> dict[str, Any] | None:
    """quality.base: where the mesh ends against the lowest part of the object the photos measured (SfM object
    points and the fused stereo points, above the support plane); None without a support plane."""
    sparse = Sparse.load(ctx)
    if sparse is None or sparse.support is None:
        return None
    points = [sparse.points[sparse.object_points]]
    fused = stage_dir(ctx, "geometry") / "points.ply"
    if fused.exists():
        points.append(np.asarray(trimesh.load(fused, process=False).vertices))
    gap = base_gap(vertices, np.concatenate(points), sparse.support)
    return None if gap is None else gap.to_dict()


def heldout_points(ctx: JobContext, views: Views, vertices: np.ndarray, silhouettes: list[np.ndarray],
                   Ks_small: np.ndarray, up: np.ndarray) -> dict[str, Any] | None:
    """quality.heldout_points: the SfM observations of object points in the held-out photos that fall outside the
    final mesh's silhouettes there (:func:`missed_points`), counting only points over or under the mesh
    (:func:`within_footprint`); None without SfM points or held-out photos. vertices: (V, 3) of the written mesh.
    Heights are above the support plane where there is one, else along the cameras' up."""
    sparse = Sparse.load(ctx)
    held = np.nonzero(views.holdout)[0]
    if sparse is None or len(held) == 0 or not sparse.object_points.any() or len(vertices) < 3:
        return None
    if sparse.support is not None:
        n, d = sparse.support
        up, height = n / np.linalg.norm(n), sparse.points @ (n / np.linalg.norm(n)) - d / np.linalg.norm(n)
    else:
        height = sparse.points @ up
    # object points beside the mesh are mostly clutter the object region let in (measured: 10-30 % of the diagonal
    # from the surface); a missing part lies over or under what the mesh has, so only those points are counted
    over = within_footprint(sparse.points, vertices, up, 0.02 * float(np.linalg.norm(np.ptp(vertices, axis=0))))
    remap = np.full(len(views.names), -1, dtype=np.int64)
    remap[held] = np.arange(len(held))
    counted = sparse.object_points & over
    sel = (remap[sparse.obs_view] >= 0) & counted[sparse.obs_point]
    found = missed_points([silhouettes[i] for i in held], Ks_small[held], views.K[held],
                          remap[sparse.obs_view[sel]], sparse.obs_xy[sel], height[sparse.obs_point[sel]],
                          height[counted])
    return None if found is None else found.to_dict()


def _exporter(ctx: JobContext) -> contextlib.AbstractContextManager[ProcessPoolExecutor | None]:
    """pycolmap's child for SfM's COLMAP model, started ahead, where the report will write that model; where it
    cannot be started, none (the model is then written as before: its own child, or hotmesh's writer)."""
    if not writes_sfm_model(ctx):
        return contextlib.nullcontext()
    try:
        return start_exporter()
    except Exception as e:  # noqa: BLE001 - only a head start is lost
        ctx.log.warning("could not start the COLMAP model's writer ahead (%s: %s)", type(e).__name__, e)
        return contextlib.nullcontext()


class ReportStage(Stage):
    name = "report"
    sections = ("report", "export")

    def run(self, ctx: JobContext, out_dir: Path) -> dict[str, Any]:
        # SfM's COLMAP model is written by pycolmap in a child process: started now, its start (spawn and import, up
        # to a second or two) runs beside the renders instead of before the model is written
        with _exporter(ctx) as exporter:
            return self._report(ctx, out_dir, exporter)

    def _report(self, ctx: JobContext, out_dir: Path, exporter: ProcessPoolExecutor | None) -> dict[str, Any]:
        t0 = time.monotonic()
        lap = Laps(t0)  # seconds per step, in stats.json: tells where a slow report spends its time

        cfg = ctx.settings.report
        manifest = Manifest.load(stage_dir(ctx, "ingest"))
        views = Views.load(ctx)
        masks = load_masks(ctx)
        mesh = load_mesh(ctx, "texture")  # after the quality gates
        colors = load_colors(ctx)
        textured = load_textured(ctx)
        up = estimate_up(camera_up(views.w2c))
        render = mesh_renderer(ctx.device)  # nvdiffrast on a GPU
        lap("load")
        # what the photos saw of the final surface (all photos, held-out ones too: they were taken)
        depths, silhouettes, Kv = photo_silhouettes(mesh, views, cfg.visibility_size,
                                                    check=lambda f: ctx.progress(0.1 * f), render=render)
        tol = 0.01 * float(np.linalg.norm(mesh.extents))
        counts = visibility_counts(np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals), depths, Kv, views.w2c,
                                   cfg.coverage_max_angle_deg, tol)
        lap("visibility")
        ex = ctx.settings.export
        # the files on a thread while this one makes the light copy for the web (and the report's 3-D view) and its
        # poster: their PNG and zlib encodings release the GIL (3.5 s one after the other on the H200). The web copy's
        # decimation stays on the job's thread: pymeshlab off the main thread corrupted the heap (pipeline.warmup)
        with ThreadPoolExecutor(1, thread_name_prefix="hotmesh-export") as pool:
            exported = pool.submit(export_all, mesh, colors, up, out_dir, textured, seen=counts)
            (out_dir / "mesh_web.glb").write_bytes(
                web_glb(textured[0], textured[1], textured[2], up, ex.web_faces, ex.web_texture_size)
                if textured is not None else vertex_color_web_glb(mesh, colors, up, ex.web_faces))
            thumb = poster(mesh, colors, views, up, ex.thumbnail_size, textured, render)
            files = exported.result()
        from PIL import Image

        Image.fromarray(thumb).save(out_dir / "thumbnail.jpg", quality=85)
        lap("export")
        ctx.progress(0.15)
        # every number below is read from the files just written, so the report matches what users get
        written = trimesh.load(out_dir / files["ply"], process=False, force="mesh")
        seen = read_seen(out_dir / files["ply"])
        if seen is None or len(seen) != len(written.vertices):
            raise RuntimeError("mesh.ply was written without its per-vertex 'seen' counts")
        stats: dict[str, Any] = {"input": input_summary(manifest), "cameras": read_summary(stage_dir(ctx, "cameras")),
                                 "geometry": read_summary(stage_dir(ctx, "geometry")),
                                 "refine": read_summary(stage_dir(ctx, "refine")),
                                 "texture": read_summary(stage_dir(ctx, "texture")),
                                 "masks": read_summary(stage_dir(ctx, "masks")),
                                 "mesh": mesh_stats(written), "up": [float(x) for x in up]}
        # units of every length in the report and the mesh files (measured in the cameras stage)
        stats["scale"] = stats["cameras"].get("scale") or NO_SCALE.to_dict()
        held = [int(i) for i in np.nonzero(views.holdout)[0]]
        heldout = held_out_scores(written, colors, [views.names[i] for i in held], [views.rgb[i] for i in held],
                                  [masks[i] for i in held], views.K[held], views.w2c[held],
                                  check=lambda f: ctx.progress(0.15 + 0.35 * f), textured=textured, render=render)
        lap("heldout")
        quality: dict[str, Any] = {"heldout": heldout.to_dict(), "gt": None}
        if manifest.gt_mesh and manifest.pose_kind == "sfm":
            # our SfM frame is not the ground truth's: comparing them would only measure the frame difference
            quality["gt_skipped"] = (f"{manifest.gt_mesh} was not compared: hotmesh placed the cameras itself, so "
                                     "the mesh is not in the ground truth's frame; give the poses (transforms.json) "
                                     "to score against it")
        elif manifest.gt_mesh:
            gt = trimesh.load(ctx.input_dir / manifest.gt_mesh, force="mesh")
            quality["gt"] = gt_scores(written, gt, cfg.gt_samples, cfg.fscore_tau)
            quality["gt"]["file"] = manifest.gt_mesh
        quality.update(measure_quality(written, seen, silhouettes, views, up, cfg))
        quality["base"] = measured_base(ctx, np.asarray(written.vertices))
        quality["heldout_points"] = heldout_points(ctx, views, np.asarray(written.vertices), silhouettes, Kv, up)
        stats["quality"] = quality
        lap("gt")
        ctx.progress(0.6)
        covered = seen >= cfg.coverage_min_views
        renders = orbit_renders(written, colors, views, up, cfg.render_size, textured, covered=covered,
                                silhouettes=silhouettes, check=lambda f: ctx.progress(0.6 + 0.25 * f),
                                render=render)
        lap("orbit")
        ctx.progress(0.85)
        gallery = [{"name": views.names[i],
                    "photo": data_uri(views.rgb[i] if masks[i] is None else views.rgb[i] * masks[i][..., None],
                                      max_side=HELD_PX),
                    "render": data_uri(r, max_side=HELD_PX), "heat": data_uri(hm, max_side=HELD_PX),
                    "iou": s.mask_iou, "psnr": s.psnr, "ssim": s.ssim}
                   for i, r, hm, s in list(zip(held, heldout.renders, heldout.heatmaps, heldout.views))[:6]]
        stride = max(1, len(written.vertices) // 1500)
        cut_of = {c["name"]: c["sides"] for c in quality["border"]["cut_photos"]}
        scene = camera_scene(views.K, views.w2c, [(im.shape[1], im.shape[0]) for im in views.rgb], list(views.names),
                             views.holdout, up, np.asarray(written.vertices)[::stride], covered[::stride],
                             notes=[("cut off: " + ", ".join(cut_of[n])) if n in cut_of else "" for n in views.names])
        timings = read_timings(ctx) + [{"stage": self.name, "seconds": time.monotonic() - t0, "skipped": False,
                                        "peak_rss_mb": None, "peak_vram_mb": None}]
        stats["timings"] = timings
        masks_dir = stage_dir(ctx, "texture")
        masks_preview = None
        for extra in EXTRA_FILES:  # published with the mesh when the stage made them
            if (masks_dir / extra).exists():
                shutil.copy2(masks_dir / extra, out_dir / extra)
        exports = write_camera_files(ctx, out_dir, written, colors, exporter)
        stats["exports"] = exports.to_dict() if exports is not None else None
        stats["points"] = None if exports is None else {"source": exports.points_source, "count": exports.points}
        lap("cameras")
        if (out_dir / "masks_preview.jpg").exists():
            masks_preview = "data:image/jpeg;base64," + base64.b64encode((out_dir / "masks_preview.jpg").read_bytes()).decode()
        stats["files"] = output_files(out_dir)
        published = set(stats["files"]) | {"report.html", "stats.json", "job.log"}  # job.log: the runner adds it
        graded = grade_checks(build_checks(stats, cfg))
        stats["grade"] = graded.to_dict()
        stats["what_to_know"] = what_to_know(stats, graded, published)
        context = report_context(ctx, "done", None, None, stats, renders=renders, heldout=gallery, scene=scene,
                                 published=published)
        context["masks_preview"] = masks_preview
        viewer = make_viewer(out_dir / "mesh_web.glb")
        context["poster"] = data_uri(thumb, max_side=ex.thumbnail_size)
        context["viewer"] = viewer if isinstance(viewer, Viewer) else None
        context["no_viewer"] = viewer.reason if isinstance(viewer, NoViewer) else None
        stats["viewer"] = ({"version": viewer.version, "origin": viewer.origin} if isinstance(viewer, Viewer)
                           else {"unavailable": viewer.reason})
        lap("viewer")
        stats["job"] = context["job"]
        stats["config"] = context["config"]
        render_report(context, out_dir / "report.html")
        lap("html")
        stats["report_seconds"] = lap.seconds
        (out_dir / "stats.json").write_text(json.dumps(stats, indent=1))
        return {"faces": stats["mesh"]["faces"], "heldout_iou": heldout.mean_iou, "heldout_psnr": heldout.mean_psnr,
                "fscore": quality["gt"]["fscore"] if quality["gt"] else None, "grade": graded.grade,
                "coverage": quality["coverage"]["share"]}


def output_files(out_dir: Path) -> dict[str, int]:
    """Every file of the outbox so far with its size in bytes, by path relative to it; the photos in images/ as one
    entry ``images/`` (their total), since a report listing hundreds of photos helps nobody."""
    files: dict[str, int] = {}
    for p in sorted(out_dir.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(out_dir).as_posix()
        key = "images/" if rel.startswith("images/") else rel
        files[key] = files.get(key, 0) + p.stat().st_size
    return files


def report_context(ctx: JobContext, state: str, error: str | None, failed_stage: str | None,
                   stats: dict[str, Any], renders: list | None = None, heldout: list | None = None,
                   scene: dict[str, Any] | None = None, published: set[str] | None = None) -> dict[str, Any]:
    complete_stats(stats)
    config = redact_mapping(ctx.settings.to_dict())
    return {
        "job": {"id": ctx.job_id, "folder": ctx.input_dir.name, "state": state, "error": error, "stage": failed_stage,
                "version": __version__, "device": ctx.device,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())},
        "stats": stats, "renders": renders or [], "heldout": heldout or [], "scene": scene,
        "timings": stats.get("timings") or read_timings(ctx), "config": config,
        "config_rows": config_rows(config, PipelineSettings().to_dict()), "masks_preview": None, "viewer": None,
        "no_viewer": None, "published": sorted(published or ()), "photos": [], "failure": None, "poster": None,
    }
