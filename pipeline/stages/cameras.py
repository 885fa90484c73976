"""Stage 2, cameras: posed views at working resolution (undistorted), from the user's poses or structure from
motion; where SfM ran, its points and the object region (centre, size, up, support plane) for later stages."""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image

from pipeline.cameras.cameras import (FrameSpec, camera_centers, intrinsics_for_image, read_pose_source, scale_intrinsics,
                              undistort_image)
from pipeline.cameras.camera_files import PhotoCamera
from pipeline.context import InputError, JobContext, Laps
from pipeline.io.images import lens_of, load_rgba, photo_pool, resize, upright_jpeg
from pipeline.geometry.scene import (ObjectRegion, Similarity, normalizing_similarity, object_region, pose_errors,
                            region_from_cameras, umeyama)
from pipeline.settings import PipelineSettings
from pipeline.cameras.sfm import SfmResult, SfmSettings, run_sfm_isolated, turn_back
from pipeline.stages.base import Stage, stage_dir
from pipeline.stages.ingest import Manifest
from pipeline.stages.scaling import job_scale, to_metres


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

SMALL_SET_MIN = 8  # from this many views on, a set too small for every-Nth still holds one or two out


def holdout_flags(n: int, every: int) -> np.ndarray:
    """Views kept out of fitting, for the report's held-out numbers: (n,) bool.

    Every ``every``-th view (starting at the middle of the first block) from ``2 * every`` views on. Smaller sets of
    at least 8 views hold out one (two from 15 views), spread evenly, so that they still get a measured grade: a
    view fewer for the shape costs less than a grade resting on nothing. ``every`` <= 1: none."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    flags = np.zeros(n, dtype=bool)
    if every <= 1:
        return flags
    if n >= 2 * every:
        flags[every // 2::every] = True
    elif n >= SMALL_SET_MIN:
        k = 1 if n < 15 else 2
        flags[((np.arange(k) + 0.5) * n / k).astype(int)] = True
    return flags


@dataclass(frozen=True)
class Sparse:
    """SfM points in the views' world frame, and where each view observed them.

    points: (P, 3) float64; colors: (P, 3) uint8; object_points: (P,) bool; obs_view: (M,) index into Views;
    obs_point: (M,) index into points; obs_xy: (M, 2) float32 undistorted pixels at working resolution."""

    points: np.ndarray
    colors: np.ndarray
    object_points: np.ndarray
    obs_view: np.ndarray
    obs_point: np.ndarray
    obs_xy: np.ndarray
    center: np.ndarray
    radius: float
    up: np.ndarray
    support: tuple[np.ndarray, float] | None = None  # plane the object rests on or hangs from (n, d)

    @classmethod
    def load(cls, ctx: JobContext) -> "Sparse | None":
        path = stage_dir(ctx, CamerasStage.name) / "sparse.npz"
        if not path.exists():
            return None
        with np.load(path) as z:
            return cls(points=z["points"], colors=z["colors"], object_points=z["object_points"],
                       obs_view=z["obs_view"], obs_point=z["obs_point"], obs_xy=z["obs_xy"], center=z["center"],
                       radius=float(z["radius"]), up=z["up"],
                       support=(z["support_n"], float(z["support_d"])) if "support_n" in z else None)

    def region(self) -> ObjectRegion:
        return ObjectRegion(center=self.center, radius=self.radius, up=self.up, ground=self.support,
                            object_points=self.object_points)


def has_unmasked(manifest: Manifest) -> bool:
    """Some image has neither an alpha channel nor a masks/ file."""
    return any(not (f.has_alpha or f.mask_file) for f in manifest.frames)


def geometry_method(settings: PipelineSettings, manifest: Manifest) -> str:
    """``hull`` (silhouettes) or ``dense`` (multi-view stereo) for this job, from ``geometry.method``: ``auto`` picks
    the hull only when every image comes with a mask."""
    configured = settings.geometry.method
    if configured != "auto":
        return configured
    return "dense" if has_unmasked(manifest) else "hull"


def sfm_settings(ctx: JobContext) -> SfmSettings:
    return SfmSettings(**dataclasses.asdict(ctx.settings.sfm))  # same fields as the [sfm] config section


def _run_sfm(ctx: JobContext, manifest: Manifest, out_dir: Path) -> SfmResult:
    """SfM on copies of the images with orientation applied, at the feature size (COLMAP ignores EXIF)."""
    cfg = sfm_settings(ctx)
    img_dir = out_dir / "sfm_images"
    names = []
    t0 = time.monotonic()
    for fr in manifest.frames:
        (img_dir / (fr.name + ".jpg")).parent.mkdir(parents=True, exist_ok=True)
    # COLMAP shares one camera between photos of one size: portrait photos among landscape ones (or the reverse)
    # are read turned a quarter into the most common orientation, and turned back after SfM
    turned = quarter_turned(manifest.frames)
    if turned:
        ctx.log.info("SfM reads %d photo(s) of the other orientation turned a quarter: %s", len(turned),
                     ", ".join(sorted(turned)[:5]) + (" ..." if len(turned) > 5 else ""))

    def copy(fr: Any) -> tuple[tuple[int, int], tuple[str, ...]]:
        src, dst = manifest.path_of(fr, ctx), img_dir / (fr.name + ".jpg")
        upright_jpeg(src, dst, cfg.max_image_size, turn=fr.name in turned)
        with Image.open(dst) as im:
            return im.size, lens_of(src)

    cameras: dict[tuple, list[str]] = {}
    with photo_pool() as pool:
        for i, (fr, key) in enumerate(zip(manifest.frames, pool.map(copy, manifest.frames))):
            ctx.progress(0.1 * i / len(manifest.frames))
            names.append(fr.name + ".jpg")
            cameras.setdefault(key, []).append(names[-1])
    # one camera per size and lens (photos of two phones, or of a phone's 4:3 and 16:9 modes): COLMAP's single
    # camera skipped every photo of another size, and the job failed as if they did not overlap
    by_size = sorted(cameras.items(), key=lambda kv: -len(kv[1]))
    groups = [g for _, g in by_size]
    if len(groups) > 1:
        ctx.log.info("SfM gives the photos %d cameras (sizes and lenses): %s", len(groups),
                     "; ".join(f"{len(g)} of {k[0][0]}x{k[0][1]}{' ' + ' '.join(k[1]) if k[1] else ''}"
                               for k, g in by_size))
    t1 = time.monotonic()
    res = run_sfm_isolated(img_dir, names, out_dir / "sfm", cfg, ctx.log, check=lambda f: ctx.progress(0.1 + 0.6 * f),
                           groups=groups)
    # beside SfM's own steps: the copies, and the child process's start and hand-back (the rest of its wall time)
    own = res.stats.get("seconds") or {}
    seconds = {**own, "copies": round(t1 - t0, 2),
               "process": round(time.monotonic() - t1 - sum(float(v) for v in own.values()), 2)}
    res = dataclasses.replace(res, stats={**res.stats, "seconds": seconds})
    shutil.rmtree(img_dir, ignore_errors=True)  # copies; the model and database stay for inspection
    (out_dir / "sfm" / "database.db").unlink(missing_ok=True)
    strip = lambda n: n[:-4]  # noqa: E731  (".jpg" added above)
    res = dataclasses.replace(res, names=tuple(strip(n) for n in res.names),
                              unregistered=tuple(strip(n) for n in res.unregistered))
    if turned:
        res = turn_back(res, turned)
        res = dataclasses.replace(res, stats={**res.stats, "turned": sorted(turned)})
    return res


def quarter_turned(frames: Sequence[Any]) -> set[str]:
    """Names of the frames (each with ``name``, ``width``, ``height``) in the less common orientation, portrait or
    landscape; on a tie, those not in the first non-square frame's. Square frames count as either."""
    land = [fr for fr in frames if fr.width > fr.height]
    port = [fr for fr in frames if fr.height > fr.width]
    if not land or not port:
        return set()
    if len(land) != len(port):
        keep_land = len(land) > len(port)
    else:
        first = next(fr for fr in frames if fr.width != fr.height)
        keep_land = first.width > first.height
    return {fr.name for fr in (port if keep_land else land)}


@dataclass(frozen=True)
class WorkingView:
    """One photo at working size: rgb (h, w, 3) uint8, alpha (h, w) uint8 or None, undistorted; width / height and K
    (3, 3) of the photo as taken; K_working (3, 3) of the working size."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    width: int
    height: int
    K: np.ndarray
    K_working: np.ndarray


def working_view(path: Path, spec: FrameSpec, max_side: int) -> WorkingView:
    """Read the photo at ``path`` for the camera ``spec``: undistorted once, so that every later stage can use a plain
    pinhole model, then scaled so that its long side is at most ``max_side``."""
    rgb, alpha = load_rgba(path)
    H, W = rgb.shape[:2]
    K = intrinsics_for_image(spec, W, H)
    if spec.dist:
        rgb = undistort_image(rgb, K, spec.camera_model, spec.dist)
        if alpha is not None:
            alpha = undistort_image(alpha, K, spec.camera_model, spec.dist)
    s = min(1.0, max_side / max(H, W))
    w, h = max(1, round(W * s)), max(1, round(H * s))
    return WorkingView(rgb=resize(rgb, (w, h)), alpha=None if alpha is None else resize(alpha, (w, h)), width=W,
                       height=H, K=K, K_working=scale_intrinsics(K, w / W, h / H))


def check_registration(res: SfmResult, total: int, cfg: SfmSettings, min_images: int) -> list[str]:
    """Raise when too few images registered (naming them); else warnings for the ones left out."""
    need = max(min_images, int(np.ceil(cfg.min_registered * total)))
    if len(res.names) < need:
        raise InputError(
            f"structure from motion placed only {len(res.names)} of {total} images (at least {need} needed). "
            f"Not registered: {', '.join(res.unregistered[:30])}{' ...' if len(res.unregistered) > 30 else ''}. "
            "Reshoot those views with more overlap with their neighbours (about 60-70%; move 10-15 degrees between "
            "photos), keep the object sharp and well lit, and avoid plain, shiny or moving backgrounds")
    if res.unregistered:
        return [f"{len(res.unregistered)} image(s) could not be placed by structure from motion and are not used: "
                f"{', '.join(res.unregistered[:20])}"]
    return []


class CamerasStage(Stage):
    name = "cameras"
    sections = ("images", "sfm", "masks")

    def run(self, ctx: JobContext, out_dir: Path) -> dict[str, Any]:
        manifest = Manifest.load(stage_dir(ctx, "ingest"))
        summary: dict[str, Any] = {"source": manifest.pose_kind}
        # seconds per step, in the summary: the stage's time beyond SfM's own extract / match / map (the photo
        # copies, the SfM child process, the working-size arrays) is where a slow stage's rest goes
        lap = Laps()

        sfm: SfmResult | None = None
        # SfM also runs for posed photos without masks: its points locate the object (region, support plane)
        if manifest.pose_kind == "sfm":
            sfm = _run_sfm(ctx, manifest, out_dir)
            summary["sfm"] = dict(sfm.stats, unregistered=list(sfm.unregistered))
        elif has_unmasked(manifest):
            try:
                sfm = _run_sfm(ctx, manifest, out_dir)
                summary["sfm"] = dict(sfm.stats, unregistered=list(sfm.unregistered))
            except InputError as e:
                # the poses are given: SfM only helps to find the object, and the cameras alone still bound it
                ctx.log.warning("SfM found no usable points in the posed photos (%s); the object is located from the "
                                "cameras alone", e)
                summary["sfm"] = {"failed": str(e)}
        lap("sfm")
        sim: Similarity | None = None
        region: ObjectRegion | None = None  # in the views' world frame
        if sfm is not None and manifest.pose_kind == "sfm":
            warnings = check_registration(sfm, len(manifest.frames), sfm_settings(ctx), ctx.settings.limits.min_images)
            sizes = sfm.view_sizes()
            found = object_region(sfm.points, sfm.K, sfm.w2c, sizes[:, 0], sizes[:, 1])
            # no units or frame from the user: object centre at the origin, up = +Z, object inside the unit cube
            sim = normalizing_similarity(found)
            region = sim.region(found)
            specs = {n: FrameSpec(name=n, K=sfm.K[k], w2c=sim.w2c(sfm.w2c[k:k + 1])[0], width=int(sizes[k, 0]),
                                  height=int(sizes[k, 1]), dist=tuple(float(x) for x in sfm.dist[k]))
                     for k, n in enumerate(sfm.names)}
            summary["normalization"] = {"scale": sim.scale, "matrix": sim.matrix().tolist()}
        else:
            source = read_pose_source(ctx.input_dir)
            if source is None:
                raise InputError("the camera poses disappeared from the job folder while it was processed")
            specs = {f.name: f for f in source.frames}
            warnings = []
            if sfm is not None:
                # SfM ran only to find the object (mask seeds): bring its points into the user's frame
                common = [k for k, n in enumerate(sfm.names) if n in specs]
                if len(common) >= 3 and len(sfm.points) >= 10:
                    given = np.array([specs[sfm.names[k]].w2c for k in common])
                    sim = umeyama(camera_centers(sfm.w2c[common]), camera_centers(given))
                    summary["sfm"]["pose_error_vs_input"] = pose_errors(sfm.w2c[common], given)
                    sizes = sfm.view_sizes()
                    region = object_region(sim.points(sfm.points), sfm.K, sim.w2c(sfm.w2c), sizes[:, 0],
                                           sizes[:, 1])
                else:
                    ctx.log.warning("SfM placed only %d of the posed photos; the object is located from the cameras "
                                    "alone", len(common))
                    sfm = None
        max_side = ctx.settings.images.max_side
        arrays: dict[str, np.ndarray] = {}
        Ks, w2cs, names = [], [], []
        photos: list[tuple[int, int, np.ndarray, tuple[float, ...], str]] = []  # as taken: for the camera files
        frames = [fr for fr in manifest.frames if fr.name in specs]
        scale_of: dict[str, tuple[float, float]] = {}
        # decoding, undistorting and resizing release the GIL: the photos are read on threads, in order
        with photo_pool() as pool:
            loaded = pool.map(lambda fr: working_view(manifest.path_of(fr, ctx), specs[fr.name], max_side), frames)
            for i, (fr, view) in enumerate(zip(frames, loaded)):
                ctx.progress(0.7 + 0.25 * i / len(frames))
                spec = specs[fr.name]
                photos.append((view.width, view.height, view.K, tuple(spec.dist), spec.camera_model))
                k = len(names)
                arrays[f"rgb_{k}"] = view.rgb
                if view.alpha is not None:
                    arrays[f"alpha_{k}"] = view.alpha
                Ks.append(view.K_working)
                w2cs.append(spec.w2c)
                names.append(fr.name)
                scale_of[fr.name] = (view.rgb.shape[1], view.rgb.shape[0])
        lap("views")
        # ---- real-world scale (scale.json: printed markers or a known distance; pipeline/stages/scaling.py) ----
        scale = job_scale(ctx, manifest, specs, names, [arrays[f"rgb_{k}"] for k in range(len(names))],
                          np.array(Ks), np.array(w2cs), own_frame=manifest.pose_kind == "sfm")
        if scale.applied and sim is not None:  # our own normalised frame becomes metres; a user's frame is kept
            sim, region, w2cs = to_metres(sim, region, np.array(w2cs), scale.metres_per_unit)
            summary["normalization"] = {"scale": sim.scale, "matrix": sim.matrix().tolist()}
        summary["scale"] = scale.to_dict()
        # ---------------------------------------------------------------------------------------------------------
        lap("scale")
        holdout = holdout_flags(len(names), ctx.settings.images.holdout_every)
        np.savez(out_dir / "views.npz", K=np.array(Ks), w2c=np.array(w2cs), holdout=holdout, **arrays)
        (out_dir / "views.json").write_text(json.dumps({"names": names, "warnings": warnings}))
        cams = [PhotoCamera(name=n, width=W, height=H, K=K, dist=dist, model=model, w2c=w2c).to_json()
                for n, (W, H, K, dist, model), w2c in zip(names, photos, w2cs)]
        (out_dir / "photos.json").write_text(json.dumps(cams))
        if sfm is not None and sim is not None and region is not None:
            self._save_sparse(out_dir, sfm, sim, region, names, scale_of)
        elif has_unmasked(manifest) and manifest.pose_kind != "sfm":
            sizes = [(arrays[f"rgb_{k}"].shape[1], arrays[f"rgb_{k}"].shape[0]) for k in range(len(names))]
            found = region_from_cameras(np.array(w2cs), np.array(Ks), sizes)
            summary["region"] = "from the cameras alone (no SfM points)"
            np.savez(out_dir / "sparse.npz", points=np.zeros((0, 3)), colors=np.zeros((0, 3), np.uint8),
                     object_points=found.object_points, obs_view=np.zeros(0, np.int32),
                     obs_point=np.zeros(0, np.int32), obs_xy=np.zeros((0, 2), np.float32), center=found.center,
                     radius=found.radius, up=found.up)
        for w_ in warnings:
            ctx.log.warning("%s", w_)
        lap("save")
        centers = camera_centers(np.array(w2cs))
        summary.update({"seconds": lap.seconds, "views": len(names), "holdout": int(holdout.sum()),
                        "working_size": [int(arrays["rgb_0"].shape[1]), int(arrays["rgb_0"].shape[0])],
                        "camera_spread": float(np.linalg.norm(centers - centers.mean(0), axis=1).mean()),
                        "warnings": warnings})
        return summary

    @staticmethod
    def _save_sparse(out_dir: Path, sfm: SfmResult, sim: Similarity, region: ObjectRegion, names: list[str],
                     size_of: dict[str, tuple[float, float]]) -> None:
        """SfM points moved into the views' frame by ``sim``, their observations at working resolution, and the
        object ``region`` (already in that frame): the seeds for automatic masks."""
        points = sim.points(sfm.points)
        view_of = {n: k for k, n in enumerate(names)}
        ov, op, oxy = [], [], []
        for k, n in enumerate(sfm.names):
            if n not in view_of:
                continue
            m = sfm.obs_image == k
            if not m.any():
                continue
            xy = cv2.undistortPoints(sfm.obs_xy[m].reshape(-1, 1, 2).astype(np.float64), sfm.K[k], sfm.dist[k],
                                     P=sfm.K[k]).reshape(-1, 2)
            w, h = size_of[n]
            sw, sh = sfm.size_of(k)
            xy *= np.array([w / sw, h / sh])
            ov.append(np.full(int(m.sum()), view_of[n], dtype=np.int32))
            op.append(sfm.obs_point[m])
            oxy.append(xy.astype(np.float32))
        support = {} if region.ground is None else {"support_n": region.ground[0], "support_d": region.ground[1]}
        np.savez(out_dir / "sparse.npz", points=points, colors=sfm.colors, object_points=region.object_points,
                 obs_view=np.concatenate(ov), obs_point=np.concatenate(op), obs_xy=np.concatenate(oxy),
                 center=region.center, radius=region.radius, up=region.up, **support)
