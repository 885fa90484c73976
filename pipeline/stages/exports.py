"""The report stage's outputs for other tools: the photos (images/), transforms.json, the COLMAP model
(sparse/0/), points.ply, and the light web copy of the mesh (mesh_web.glb) with its poster (thumbnail.jpg).

The outbox opens as it is in nerfstudio (``ns-train ... --data outbox/<job>``), gsplat and COLMAP: every image the
cameras name is in it, under the name they use.
"""
from __future__ import annotations

import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import trimesh

from pipeline.cameras.camera_files import PhotoCamera, colmap_text, transforms_json
from pipeline.cameras.colmap_model import export_sfm_model
from pipeline.context import JobContext
from pipeline.io.photos import IMAGES_DIR, export_photos
from pipeline.stages.base import read_summary, stage_dir
from pipeline.stages.ingest import Manifest

COLMAP_DIR = "sparse/0"  # COLMAP's own layout beside images/: what nerfstudio's and gsplat's COLMAP readers look for
POINTS_FILE = "points.ply"
MAX_MODEL_POINTS = 20_000  # points3D.txt of given poses (no tracks): an initial cloud for gsplat, not a model


@dataclass(frozen=True)
class Exports:
    """What was published for other tools (stats.json ``exports``)."""

    images: int  # photos named by the cameras
    images_written: bool  # in images/ (export.images)
    points_source: str | None  # "dense points" | "SfM points" | "mesh surface samples"
    points: int
    colmap: dict[str, Any] = field(default_factory=dict)  # writer, cameras, images, points, observations
    reencoded: tuple[str, ...] = ()  # photos written upright as JPEG/PNG instead of copied

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def images_relative(path: str) -> str:
    """images/a/b.jpg -> a/b.jpg: COLMAP names images relative to its image folder."""
    p = PurePosixPath(path)
    return str(PurePosixPath(*p.parts[1:])) if p.parts and p.parts[0] == IMAGES_DIR else path


def surface_samples(mesh: trimesh.Trimesh, colors: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points spread over the mesh by area (fixed seed), each with its face's mean vertex colour (uint8)."""
    pts, face = trimesh.sample.sample_surface(mesh, int(n), seed=0)
    cols = np.clip(np.asarray(colors)[np.asarray(mesh.faces)[face]].mean(axis=1), 0, 1)
    return np.asarray(pts), (cols * 255).round().astype(np.uint8)


def read_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    cloud = trimesh.load(path, process=False)
    pts = np.asarray(cloud.vertices)
    cols = getattr(getattr(cloud, "visual", None), "vertex_colors", None)
    cols = np.asarray(cols)[:, :3].astype(np.uint8) if cols is not None and len(cols) == len(pts) else np.full(
        (len(pts), 3), 200, np.uint8)
    return pts, cols


def publish_points(ctx: JobContext, out_dir: Path, mesh: trimesh.Trimesh, colors: np.ndarray) -> tuple[str, int]:
    """points.ply: the fused dense points, else the SfM points, else samples of the final mesh's surface (a masked
    job has neither, and nerfstudio's splatfacto and gsplat start from a point cloud). -> (source, count)."""
    dense = stage_dir(ctx, "geometry") / POINTS_FILE
    if dense.exists():
        shutil.copy2(dense, out_dir / POINTS_FILE)
        return "dense points", len(read_points(dense)[0])
    sparse = stage_dir(ctx, "cameras") / "sparse.npz"
    if sparse.exists():
        with np.load(sparse) as z:
            pts, cols = z["points"], z["colors"]
        if len(pts):
            trimesh.PointCloud(pts, colors=cols).export(out_dir / POINTS_FILE)
            return "SfM points", len(pts)
    pts, cols = surface_samples(mesh, colors, ctx.settings.export.surface_points)
    trimesh.PointCloud(pts, colors=cols).export(out_dir / POINTS_FILE)
    return "mesh surface samples", len(pts)


def sfm_model(ctx: JobContext) -> tuple[Path, np.ndarray] | None:
    """Where SfM left its reconstruction and the similarity into the mesh's frame; None when the cameras were
    given (or SfM left no model)."""
    cameras = read_summary(stage_dir(ctx, "cameras"))
    model_root = stage_dir(ctx, "cameras") / "sfm" / "sparse"
    matrix = (cameras.get("normalization") or {}).get("matrix")
    if cameras.get("source") != "sfm" or not model_root.is_dir() or matrix is None:
        return None
    return model_root, np.array(matrix)


def read_cameras(ctx: JobContext) -> list[PhotoCamera] | None:
    """The published cameras (the cameras stage's photos.json); None when it left no photo list."""
    photos = stage_dir(ctx, "cameras") / "photos.json"
    if not photos.exists():
        return None
    return [PhotoCamera.from_json(d) for d in json.loads(photos.read_text())]


def writes_sfm_model(ctx: JobContext) -> bool:
    """Whether :func:`write_camera_files` writes SfM's own reconstruction with pycolmap: SfM placed the photos, left
    its model, and every photo has one size (the model describes SfM's copies, one camera for all)."""
    cams = read_cameras(ctx)
    return cams is not None and sfm_model(ctx) is not None and len({(c.width, c.height) for c in cams}) == 1


def write_colmap(ctx: JobContext, out_dir: Path, cams: list[PhotoCamera], names: dict[str, str],
                 exporter: ProcessPoolExecutor | None = None) -> dict[str, Any]:
    """sparse/0/{cameras,images,points3D}.txt. Where SfM placed the photos: COLMAP's reconstruction itself, written
    by pycolmap (shared camera, keypoints, point tracks). Given poses: hotmesh's writer (cameras shared by equal
    intrinsics, the published points without tracks). ``names``: camera name -> name relative to images/.
    ``exporter``: pycolmap's child process, started ahead (:func:`pipeline.cameras.colmap_model.start_exporter`)."""
    dst = out_dir / COLMAP_DIR
    dst.mkdir(parents=True, exist_ok=True)
    cameras = read_summary(stage_dir(ctx, "cameras"))
    sizes = {(c.width, c.height) for c in cams}
    model = sfm_model(ctx)
    if model is not None and len(sizes) == 1:
        model_root, matrix = model
        # SfM read copies named <photo>.jpg at the feature size (pipeline.stages.cameras._run_sfm)
        sfm_names = {c.name + ".jpg": names.get(c.name, c.name) for c in cams}
        try:
            summary = export_sfm_model(model_root, dst, matrix, sfm_names, sizes.pop(), exporter=exporter)
            return {"writer": "pycolmap (the SfM reconstruction)", **summary.to_dict()}
        except Exception as e:  # noqa: BLE001 (any pycolmap failure): the model of the cameras alone still helps
            ctx.log.warning("the SfM model could not be written with pycolmap (%s); writing the cameras without "
                            "point tracks", e)
    pts, cols = np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
    if (out_dir / POINTS_FILE).exists():
        pts, cols = read_points(out_dir / POINTS_FILE)
        if len(pts) > MAX_MODEL_POINTS:
            keep = np.random.default_rng(0).choice(len(pts), MAX_MODEL_POINTS, replace=False)
            pts, cols = pts[np.sort(keep)], cols[np.sort(keep)]
    files = colmap_text(cams, pts, cols, names=names)
    for name, text in files.items():
        (dst / name).write_text(text)
    n_cams = len([ln for ln in files["cameras.txt"].splitlines() if ln and not ln.startswith("#")])
    # SfM's own model describes the copies it read: with photos of several sizes (portrait ones it read turned a
    # quarter, or another camera's or mode's) they are described here as they are, one camera per size and lens
    writer = ("hotmesh (photos of several sizes)" if cameras.get("source") == "sfm"
              and len(sizes) > 1 else "hotmesh (given poses)")
    return {"writer": writer, "cameras": n_cams, "images": len(cams), "points": len(pts), "observations": 0}


def write_camera_files(ctx: JobContext, out_dir: Path, mesh: trimesh.Trimesh, colors: np.ndarray,
                       exporter: ProcessPoolExecutor | None = None) -> Exports | None:
    """images/, transforms.json, sparse/0/ and points.ply, all in the mesh's frame. None when the cameras stage
    left no photo list (nothing to describe). ``exporter``: as :func:`write_colmap`'s."""
    cams = read_cameras(ctx)
    if cams is None:
        return None
    manifest = Manifest.load(stage_dir(ctx, "ingest"))
    frames = {fr.name: fr for fr in manifest.frames}
    sources = {c.name: manifest.path_of(frames[c.name], ctx) for c in cams if c.name in frames}
    written = export_photos(sources, out_dir, write=ctx.settings.export.images)
    paths = {p.name: p.path for p in written}
    source, count = publish_points(ctx, out_dir, mesh, colors)
    (out_dir / "transforms.json").write_text(transforms_json(cams, paths, ply=POINTS_FILE))
    colmap = write_colmap(ctx, out_dir, cams, {n: images_relative(p) for n, p in paths.items()}, exporter)
    ctx.log.info("exports: %d photo(s)%s, points.ply from %s (%d), COLMAP model by %s", len(written),
                 " in images/" if ctx.settings.export.images else " named, not copied (export.images = false)",
                 source, count, colmap["writer"])
    return Exports(images=len(written), images_written=ctx.settings.export.images, points_source=source,
                   points=count, colmap=colmap, reencoded=tuple(p.name for p in written if not p.copied))
