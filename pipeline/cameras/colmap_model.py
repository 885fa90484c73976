"""The SfM reconstruction published as a COLMAP text model with pycolmap's own writer: shared cameras, 2-D
keypoints and 3-D point tracks as COLMAP made them, moved into the mesh's frame, at the photos' original size and
under the names the outbox gives the photos.

pycolmap runs in a spawned child process, for the reason pipeline.cameras.sfm gives: COLMAP's native libraries
must not share a process with torch.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.children import start_child, stop_children


@dataclass(frozen=True)
class ModelSummary:
    cameras: int
    images: int
    points: int
    observations: int

    def to_dict(self) -> dict[str, int]:
        return {"cameras": self.cameras, "images": self.images, "points": self.points,
                "observations": self.observations}


def split_similarity(matrix: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """4x4 (or 3x4) similarity [sR | t] -> (s, R (3, 3), t (3,))."""
    M = np.asarray(matrix, dtype=np.float64)
    s = float(np.cbrt(np.linalg.det(M[:3, :3])))
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"not a similarity (scale {s})")
    return s, M[:3, :3] / s, M[:3, 3].copy()


def _export(model_root: str, dst: str, matrix: list, names: dict[str, str], size: tuple[int, int]) -> dict[str, int]:
    """In the child: the largest model under ``model_root`` (as SfM chose it), moved by ``matrix`` (SfM frame ->
    mesh frame), cameras and keypoints rescaled to ``size`` (the photos' width, height), images renamed by
    ``names`` (SfM name -> name relative to images/), written as text to ``dst``."""
    import pycolmap

    folders = [d for d in Path(model_root).iterdir() if (d / "images.bin").exists() or (d / "images.txt").exists()]
    if not folders:
        raise FileNotFoundError(f"no COLMAP model under {model_root}")
    rec = max((pycolmap.Reconstruction(str(d)) for d in folders), key=lambda r: r.num_reg_images())
    s, R, t = split_similarity(np.array(matrix))
    rec.transform(pycolmap.Sim3d(s, pycolmap.Rotation3d(R), t))
    W, H = size
    scale: dict[int, tuple[float, float]] = {}
    for cid, cam in rec.cameras.items():
        scale[cid] = (W / cam.width, H / cam.height)
        cam.rescale(W, H)
    for iid in rec.reg_image_ids():
        im = rec.image(iid)
        sx, sy = scale[im.camera_id]
        for p in im.points2D:  # the list holds the image's own points: edited in place
            p.xy = np.array([p.xy[0] * sx, p.xy[1] * sy])
        im.name = names.get(im.name, im.name)
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    rec.write_text(str(out))
    return ModelSummary(cameras=rec.num_cameras(), images=rec.num_reg_images(), points=rec.num_points3D(),
                        observations=int(rec.compute_num_observations())).to_dict()


def _load() -> bool:
    import pycolmap  # noqa: F401

    return True


def start_exporter() -> ProcessPoolExecutor:
    """The child process that :func:`export_sfm_model` writes with, started now: its spawn and pycolmap's import
    (0.3-0.5 s on 2 CPU cores, more for the CUDA build) then run while the caller does other work. The caller shuts
    it down (``with start_exporter() as exporter:``)."""
    # pycolmap failing to load shows again, with its reason, when the model is written
    return start_child(_load)


def export_sfm_model(model_root: Path, dst: Path, matrix: np.ndarray, names: dict[str, str],
                     size: tuple[int, int], timeout: float = 300.0,
                     exporter: ProcessPoolExecutor | None = None) -> ModelSummary:
    """:func:`_export` in a spawned child (``exporter``, from :func:`start_exporter`, or one of its own); raises
    what it raised (a missing model, a pycolmap error, a child that died)."""
    if exporter is None:
        with start_exporter() as own:
            return export_sfm_model(model_root, dst, matrix, names, size, timeout, own)
    future = exporter.submit(_export, str(model_root), str(dst), np.asarray(matrix).tolist(), dict(names),
                             (int(size[0]), int(size[1])))
    try:
        d = future.result(timeout=timeout)
    except FutureTimeout:
        # a hung writer: stopped, or the caller's shutdown (a with block's exit) would wait for it for ever
        stop_children(exporter)
        raise
    return ModelSummary(**d)
