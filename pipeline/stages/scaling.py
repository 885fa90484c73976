"""The cameras stage's hook for real-world scale (see :mod:`pipeline.cameras.scale` for scale.json and the geometry).

Kept out of ``cameras.py`` so that stage calls it once: measure on the working views, and where the frame is
hotmesh's own (structure from motion, normalised to the unit cube) rescale it so that one unit is one metre.
A frame the user gave (transforms.json, COLMAP) is kept as given, so the mesh still overlays their poses; the
report then states how long one of their units is.
"""
from __future__ import annotations

import numpy as np

from pipeline.cameras.cameras import FrameSpec, intrinsics_for_image, undistort_points
from pipeline.context import JobContext
from pipeline.cameras.scale import NO_SCALE, ScaleResult, ViewGeometry, measure_scale, read_scale_spec
from pipeline.geometry.scene import ObjectRegion, Similarity
from pipeline.stages.ingest import Manifest


def job_scale(ctx: JobContext, manifest: Manifest, specs: dict[str, FrameSpec], names: list[str],
              views: list[np.ndarray], K: np.ndarray, w2c: np.ndarray, own_frame: bool) -> ScaleResult:
    """Scale of the job's working views (names (N,), undistorted (H, W, 3) images, K (N, 3, 3), w2c (N, 4, 4)).
    ``applied`` is set when ``own_frame`` (the caller then rescales with :func:`to_metres`)."""
    spec = read_scale_spec(ctx.input_dir)  # validated at ingest; a missing file means no scale
    if spec is None:
        if own_frame:
            return NO_SCALE
        return ScaleResult(None, None, "none", "the units of the given camera poses, whose length in metres is not "
                           "known; add a scale.json (printed marker or a known distance) to have it measured")
    frames = {f.name: f for f in manifest.frames}
    work = {n: (int(v.shape[1]), int(v.shape[0])) for n, v in zip(names, views)}

    def geometry(name: str) -> ViewGeometry | None:
        fr, sp = frames.get(name), specs.get(name)
        if fr is None or sp is None or name not in work:
            return None
        K0 = intrinsics_for_image(sp, fr.width, fr.height)
        return ViewGeometry(size=(fr.width, fr.height), work_size=work[name],
                            undistort=lambda xy: undistort_points(xy, K0, sp.camera_model, sp.dist))

    result = measure_scale(spec, names, views, K, w2c, geometry)
    if result.metres_per_unit is None:
        ctx.log.warning("scale.json: %s", result.detail)
        return result
    ctx.log.info("scale: 1 unit = %.6g m (±%.2g %%, %s)", result.metres_per_unit, 100 * (result.uncertainty or 0),
                 result.detail)
    return ScaleResult(**{**result.__dict__, "applied": own_frame})


def to_metres(sim: Similarity, region: ObjectRegion | None, w2c: np.ndarray,
              metres_per_unit: float) -> tuple[Similarity, ObjectRegion | None, np.ndarray]:
    """The normalising similarity, object region and cameras (N, 4, 4) of a frame, scaled about its origin so
    that one unit becomes one metre (the object stays centred, +Z stays up)."""
    m = float(metres_per_unit)
    grow = Similarity(m, np.eye(3), np.zeros(3))
    return (Similarity(sim.scale * m, sim.R, sim.t * m), grow.region(region) if region is not None else None,
            grow.w2c(np.asarray(w2c)))
