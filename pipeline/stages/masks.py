"""Stage 3, masks: the silhouettes the user gave (alpha channel or masks/ files). For the visual-hull method, views
without one get an automatic GrabCut mask; the dense method needs none (the published masks are then the final
mesh's projection, made by the texture stage)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.geometry.automask import AutoMaskSettings, auto_masks
from pipeline.cameras.cameras import intrinsics_for_image, read_pose_source, undistort_image
from pipeline.context import InputError, JobContext
from pipeline.io.images import load_gray, resize
from pipeline.stages.base import Stage, stage_dir
from pipeline.stages.cameras import Sparse, Views, geometry_method
from pipeline.stages.ingest import Manifest


def masks_were_automatic(ctx: JobContext) -> bool:
    meta = json.loads((stage_dir(ctx, MasksStage.name) / "masks.json").read_text())
    return bool(meta.get("auto"))


def load_masks(ctx: JobContext) -> list[np.ndarray | None]:
    d = stage_dir(ctx, MasksStage.name)
    meta = json.loads((d / "masks.json").read_text())
    with np.load(d / "masks.npz") as z:
        return [z[f"mask_{i}"] if f"mask_{i}" in z else None for i in range(meta["count"])]


def mask_size_mismatch(mask_w: int, mask_h: int, image_w: int, image_h: int) -> bool:
    """A masks/ file must match its image's aspect ratio (1 %); a smaller or larger copy of the right shape is
    resized, one of another shape would be stretched over the wrong pixels."""
    return abs(mask_w * image_h - mask_h * image_w) > 0.01 * image_w * mask_h


def mask_sheet(rgbs: list[np.ndarray], masks: list[np.ndarray | None], names: list[str], tile: int = 180,
               columns: int = 8) -> np.ndarray:
    """Contact sheet for checking masks by eye: background darkened, outline in green. -> (H, W, 3) uint8."""
    tiles = []
    for rgb, m in zip(rgbs, masks):
        f = tile / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f)))
        t = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        if m is not None:
            mm = cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
            t = t.copy()
            t[~mm] = (t[~mm] * 0.3).astype(np.uint8)
            edge = mm ^ (cv2.erode(mm.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
            t[edge] = (0, 255, 0)
        canvas = np.zeros((tile, tile, 3), dtype=np.uint8)
        canvas[:t.shape[0], :t.shape[1]] = t
        tiles.append(canvas)
    rows = [np.hstack(tiles[i:i + columns] + [np.zeros_like(tiles[0])] * (columns - len(tiles[i:i + columns])))
            for i in range(0, len(tiles), columns)]
    return np.vstack(rows)


class MasksStage(Stage):
    name = "masks"
    sections = ("images", "masks", "geometry")

    def run(self, ctx: JobContext, out_dir: Path) -> dict[str, Any]:
        manifest = Manifest.load(stage_dir(ctx, "ingest"))
        method = geometry_method(ctx.settings, manifest)
        frames = {f.name: f for f in manifest.frames}
        views = Views.load(ctx)
        source = read_pose_source(ctx.input_dir)
        specs = {f.name: f for f in source.frames} if source else {}
        masks: dict[str, np.ndarray] = {}
        coverage: list[float | None] = []
        dropped: list[str] = []
        wrong_size: list[str] = []  # masks/ files whose shape is not their image's (named in the error)
        missing: list[int] = []
        for i, name in enumerate(views.names):
            fr = frames[name]
            ctx.progress(0.1 * i / len(views.names))
            h, w = views.rgb[i].shape[:2]
            m: np.ndarray | None = None
            if fr.mask_file:  # an explicit masks/ file wins over the alpha channel
                raw = load_gray(ctx.input_dir / fr.mask_file)
                if mask_size_mismatch(raw.shape[1], raw.shape[0], fr.width, fr.height):
                    wrong_size.append(f"{fr.mask_file} is {raw.shape[1]}x{raw.shape[0]} but {fr.name} is "
                                      f"{fr.width}x{fr.height}")
                    continue
                spec = specs.get(fr.name)
                if spec is not None and spec.dist:
                    K = intrinsics_for_image(spec, raw.shape[1], raw.shape[0])
                    raw = undistort_image(raw, K, spec.camera_model, spec.dist)
                m = resize(raw, (w, h), nearest=True) > 127
            elif views.alpha[i] is not None:
                m = views.alpha[i] > 127
            else:
                missing.append(i)
            if m is not None:
                frac = float(m.mean())
                # an all-opaque alpha or an empty mask carries no silhouette
                if frac < 1e-4 or frac > 0.98:
                    dropped.append(fr.name)
                    m = None
            if m is not None:
                masks[f"mask_{i}"] = m
        auto: list[str] = []
        sparse = Sparse.load(ctx)
        if missing and method == "hull" and ctx.settings.masks.auto != "off":
            if sparse is None:
                raise InputError("automatic masks need the structure-from-motion points, which are missing")
            cfg = ctx.settings.masks
            ctx.log.info("automatic masks for %d view(s) (GrabCut seeded by %d object points of %d)", len(missing),
                         int(sparse.object_points.sum()), len(sparse.points))
            found = auto_masks([views.rgb[i] for i in range(len(views.names))], views.K, views.w2c, sparse.region(),
                               sparse.points, sparse.obs_view, sparse.obs_point, sparse.obs_xy,
                               AutoMaskSettings(work_size=cfg.work_size, iterations=cfg.iterations),
                               device=ctx.device, check=lambda f: ctx.progress(0.1 + 0.85 * f))
            for i in missing:
                frac = float(found[i].mean())
                if frac < 1e-4 or frac > 0.98:
                    dropped.append(views.names[i])
                    continue
                masks[f"mask_{i}"] = found[i]
                auto.append(views.names[i])
        coverage = [float(masks[f"mask_{i}"].mean()) if f"mask_{i}" in masks else None for i in range(len(views.names))]
        usable_train = sum(1 for i in views.train if f"mask_{i}" in masks)
        for what in wrong_size:
            ctx.log.warning("mask %s; view not used for the shape", what)
        if method == "hull" and usable_train < 2:
            reasons = []
            if wrong_size:
                reasons.append(f"masks of the wrong size (a mask must have its image's width and height, or at "
                               f"least its aspect ratio): {'; '.join(wrong_size[:10])}")
            if dropped:
                reasons.append(f"empty or all-object masks were dropped: {', '.join(dropped[:10])}")
            raise InputError(f"only {usable_train} view(s) have a usable mask ({'; '.join(reasons) or 'no masks'}); "
                             f"the shape needs masks that outline the object")
        np.savez_compressed(out_dir / "masks.npz", **masks)
        (out_dir / "masks.json").write_text(json.dumps({"count": len(views.names), "coverage": coverage,
                                                         "dropped": dropped, "auto": auto, "method": method}))
        for name in dropped:
            ctx.log.warning("mask of %s is empty or covers the whole image; view not used for the shape", name)
        return {"masked_views": len(masks), "dropped": dropped, "auto": len(auto), "wrong_size": wrong_size,
                "method": method}
