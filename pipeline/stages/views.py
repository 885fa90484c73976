"""Stages 2 and 3: posed views at working resolution (undistorted), then one silhouette mask per view."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.cameras import camera_centers, intrinsics_for_image, read_pose_source, scale_intrinsics
from pipeline.context import InputError, JobContext
from pipeline.images import load_gray, load_rgba, resize
from pipeline.stages.base import Stage, stage_dir
from pipeline.stages.ingest import Manifest


@dataclass(frozen=True)
class Views:
    """Posed input views at working resolution.

    rgb: N arrays (H_i, W_i, 3) uint8; alpha: N arrays (H_i, W_i) uint8 or None;
    K: (N, 3, 3) float64 pixels; w2c: (N, 4, 4) float64 OpenCV; holdout: (N,) bool (not used for fitting).
    """

    names: tuple[str, ...]
    rgb: tuple[np.ndarray, ...]
    alpha: tuple[np.ndarray | None, ...]
    K: np.ndarray
    w2c: np.ndarray
    holdout: np.ndarray

    @classmethod
    def load(cls, ctx: JobContext) -> "Views":
        d = stage_dir(ctx, CamerasStage.name)
        meta = json.loads((d / "views.json").read_text())
        with np.load(d / "views.npz") as z:
            n = len(meta["names"])
            rgb = tuple(z[f"rgb_{i}"] for i in range(n))
            alpha = tuple(z[f"alpha_{i}"] if f"alpha_{i}" in z else None for i in range(n))
            return cls(names=tuple(meta["names"]), rgb=rgb, alpha=alpha, K=z["K"], w2c=z["w2c"], holdout=z["holdout"])

    @property
    def train(self) -> np.ndarray:
        return np.nonzero(~self.holdout)[0]


def holdout_flags(n: int, every: int) -> np.ndarray:
    """Every ``every``-th view (starting at the middle of the first block) is held out; none if too few."""
    flags = np.zeros(n, dtype=bool)
    if every > 1 and n >= 2 * every:
        flags[every // 2::every] = True
    return flags


class CamerasStage(Stage):
    name = "cameras"
    weight = 10
    sections = ("images",)

    def run(self, ctx: JobContext, out_dir: Path) -> dict[str, Any]:
        manifest = Manifest.load(stage_dir(ctx, "ingest"))
        source = read_pose_source(ctx.input_dir)
        if source is None:
            raise InputError("the camera poses disappeared from the job folder while it was processed")
        specs = {f.name: f for f in source.frames}
        max_side = ctx.settings.images.max_side
        arrays: dict[str, np.ndarray] = {}
        Ks, w2cs, names = [], [], []
        for i, fr in enumerate(manifest.frames):
            ctx.progress(i / len(manifest.frames))
            spec = specs[fr.name]
            rgb, alpha = load_rgba(ctx.input_dir / fr.name)
            H, W = rgb.shape[:2]
            K = intrinsics_for_image(spec, W, H)
            if spec.dist:
                # undistort once here so every later stage can use a plain pinhole model
                dist = np.array(spec.dist, dtype=np.float64)
                rgb = cv2.undistort(rgb, K, dist)
                if alpha is not None:
                    alpha = cv2.undistort(alpha, K, dist)
            s = min(1.0, max_side / max(H, W))
            w, h = max(1, round(W * s)), max(1, round(H * s))
            arrays[f"rgb_{i}"] = resize(rgb, (w, h))
            if alpha is not None:
                arrays[f"alpha_{i}"] = resize(alpha, (w, h))
            Ks.append(scale_intrinsics(K, w / W, h / H))
            w2cs.append(spec.w2c)
            names.append(fr.name)
        holdout = holdout_flags(len(names), ctx.settings.images.holdout_every)
        np.savez(out_dir / "views.npz", K=np.array(Ks), w2c=np.array(w2cs), holdout=holdout, **arrays)
        (out_dir / "views.json").write_text(json.dumps({"names": names}))
        centers = camera_centers(np.array(w2cs))
        return {"views": len(names), "holdout": int(holdout.sum()), "working_size": [int(arrays["rgb_0"].shape[1]), int(arrays["rgb_0"].shape[0])],
                "camera_spread": float(np.linalg.norm(centers - centers.mean(0), axis=1).mean())}


def load_masks(ctx: JobContext) -> list[np.ndarray | None]:
    d = stage_dir(ctx, MasksStage.name)
    meta = json.loads((d / "masks.json").read_text())
    with np.load(d / "masks.npz") as z:
        return [z[f"mask_{i}"] if f"mask_{i}" in z else None for i in range(meta["count"])]


class MasksStage(Stage):
    name = "masks"
    weight = 5
    sections = ("images",)

    def run(self, ctx: JobContext, out_dir: Path) -> dict[str, Any]:
        manifest = Manifest.load(stage_dir(ctx, "ingest"))
        views = Views.load(ctx)
        source = read_pose_source(ctx.input_dir)
        specs = {f.name: f for f in source.frames} if source else {}
        masks: dict[str, np.ndarray] = {}
        coverage: list[float | None] = []
        dropped: list[str] = []
        for i, fr in enumerate(manifest.frames):
            ctx.progress(i / len(manifest.frames))
            h, w = views.rgb[i].shape[:2]
            m: np.ndarray | None = None
            if fr.mask_file:  # an explicit masks/ file wins over the alpha channel
                raw = load_gray(ctx.input_dir / fr.mask_file)
                spec = specs.get(fr.name)
                if spec is not None and spec.dist:
                    K = intrinsics_for_image(spec, raw.shape[1], raw.shape[0])
                    raw = cv2.undistort(raw, K, np.array(spec.dist))
                m = resize(raw, (w, h), nearest=True) > 127
            elif views.alpha[i] is not None:
                m = views.alpha[i] > 127
            if m is not None:
                frac = float(m.mean())
                # an all-opaque alpha or an empty mask carries no silhouette
                if frac < 1e-4 or frac > 0.98:
                    dropped.append(fr.name)
                    m = None
            coverage.append(None if m is None else float(m.mean()))
            if m is not None:
                masks[f"mask_{i}"] = m
        usable_train = sum(1 for i in views.train if f"mask_{i}" in masks)
        if usable_train < 2:
            raise InputError(f"only {usable_train} view(s) have a usable mask (empty or all-object masks were "
                             f"dropped: {', '.join(dropped[:10])}); the shape needs masks that outline the object")
        np.savez_compressed(out_dir / "masks.npz", **masks)
        (out_dir / "masks.json").write_text(json.dumps({"count": len(manifest.frames), "coverage": coverage,
                                                         "dropped": dropped}))
        for name in dropped:
            ctx.log.warning("mask of %s is empty or covers the whole image; view not used for the shape", name)
        return {"masked_views": len(masks), "dropped": dropped}
