"""Camera poses from transforms.json (NeRF / instant-ngp) or a COLMAP sparse model.

Internal convention (everywhere after this module): OpenCV pinhole, ``x_cam = R @ X + t``,
``pixel = K @ x_cam / z``, camera looks along +Z, +Y down. ``w2c``: (4, 4) float64 world-to-camera.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.context import InputError
from pipeline.images import IMAGE_SUFFIXES

TRANSFORMS_NAMES = ("transforms.json", "transforms_train.json")
_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class FrameSpec:
    """One posed view as the input describes it (at the input's own pixel size)."""

    name: str  # path relative to the job folder
    K: np.ndarray  # (3, 3) float64, pixels of an image of size (width, height)
    w2c: np.ndarray  # (4, 4) float64, OpenCV convention
    width: int | None  # size the intrinsics refer to; None: the image's own size (camera_angle_x case)
    height: int | None
    dist: tuple[float, ...]  # OpenCV distortion (k1, k2, p1, p2[, k3]); () when undistorted
    fov_x: float | None = None  # camera_angle_x: the focal length is resolved against the image width


@dataclass(frozen=True)
class PoseSource:
    kind: str  # "transforms" | "colmap"
    path: Path
    frames: tuple[FrameSpec, ...]
    missing: tuple[str, ...]  # listed frames whose file does not exist


def c2w_gl_to_w2c_cv(c2w: np.ndarray) -> np.ndarray:
    """NeRF/Blender camera-to-world (OpenGL axes) -> OpenCV world-to-camera. (4, 4) -> (4, 4)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape == (3, 4):
        c2w = np.vstack([c2w, [0, 0, 0, 1]])
    if c2w.shape != (4, 4):
        raise ValueError(f"transform_matrix must be 4x4 or 3x4, got {c2w.shape}")
    return np.linalg.inv(c2w @ _GL_TO_CV)


def camera_centers(w2c: np.ndarray) -> np.ndarray:
    """(N, 4, 4) -> (N, 3) camera centres in world units."""
    R, t = w2c[:, :3, :3], w2c[:, :3, 3]
    return -np.einsum("nji,nj->ni", R, t)


def camera_forward(w2c: np.ndarray) -> np.ndarray:
    """(N, 4, 4) -> (N, 3) unit viewing directions (+Z of the camera) in world coordinates."""
    return w2c[:, 2, :3].copy()


def camera_up(w2c: np.ndarray) -> np.ndarray:
    """(N, 4, 4) -> (N, 3) the cameras' up directions (-Y of an OpenCV camera) in world coordinates."""
    return -w2c[:, 1, :3].copy()


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K for an image resized by (sx, sy); pixel centres at +0.5 stay consistent."""
    S = np.diag([sx, sy, 1.0])
    return S @ K


def find_pose_source(job_dir: Path) -> Path | None:
    for name in TRANSFORMS_NAMES:
        if (job_dir / name).is_file():
            return job_dir / name
    for cand in (job_dir / "sparse" / "0", job_dir / "sparse", job_dir / "colmap" / "sparse" / "0", job_dir):
        if (cand / "cameras.bin").is_file() or (cand / "cameras.txt").is_file():
            return cand
    return None


def _resolve_frame_file(job_dir: Path, base: Path, file_path: str) -> Path:
    p = (base / file_path)
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return p
    for suffix in (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".PNG", ".JPG", ".JPEG"):
        cand = p.with_name(p.name + suffix)
        if cand.exists():
            return cand
    return p.with_name(p.name + ".png")  # NeRF-synthetic convention: no extension means .png


def _intrinsics(meta: dict, where: str) -> tuple[np.ndarray | None, int | None, int | None, float | None, tuple[float, ...]]:
    def num(key: str) -> float | None:
        v = meta.get(key)
        if v is None:
            return None
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"{where}: '{key}' must be a finite number, got {v!r}")
        return float(v)

    w, h = num("w"), num("h")
    fx, fy, cx, cy = num("fl_x"), num("fl_y"), num("cx"), num("cy")
    angle_x = num("camera_angle_x")
    dist = tuple(num(k) or 0.0 for k in ("k1", "k2", "p1", "p2"))
    if num("k3"):
        dist = dist + (num("k3") or 0.0,)
    if not any(dist):
        dist = ()
    if fx is not None:
        fy = fy if fy is not None else fx
        if w is None or h is None:
            if cx is None or cy is None:
                raise InputError(f"{where}: fl_x is given but neither w/h nor cx/cy; cannot place the principal point")
            w, h = 2 * cx, 2 * cy
        cx = cx if cx is not None else w / 2
        cy = cy if cy is not None else h / 2
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
        return K, int(round(w)), int(round(h)), None, dist
    if angle_x is not None:
        if not 0 < angle_x < math.pi:
            raise InputError(f"{where}: camera_angle_x={angle_x} is not an angle in radians between 0 and pi")
        return None, None, None, angle_x, dist
    return None, None, None, None, dist


def read_transforms(path: Path) -> PoseSource:
    """Parse a NeRF / instant-ngp transforms file; frame-level intrinsics override the shared ones."""
    job_dir = path.parent
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path.name} cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path.name} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise InputError(f"{path.name} has no 'frames' list; expected the NeRF / instant-ngp transforms format")
    K0, w0, h0, ax0, dist0 = _intrinsics(meta, path.name)
    frames: list[FrameSpec] = []
    missing: list[str] = []
    for i, fr in enumerate(meta["frames"]):
        where = f"{path.name} frame {i}"
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise InputError(f"{where}: needs 'file_path' and 'transform_matrix'")
        try:
            w2c = c2w_gl_to_w2c_cv(np.array(fr["transform_matrix"], dtype=np.float64))
        except (ValueError, TypeError, np.linalg.LinAlgError) as e:
            raise InputError(f"{where}: transform_matrix is not an invertible 4x4 matrix ({e})") from None
        if not np.all(np.isfinite(w2c)):
            raise InputError(f"{where}: transform_matrix contains NaN or infinity")
        K, w, h, ax, dist = _intrinsics(fr, where)
        if K is None and ax is None:
            K, w, h, ax = K0, w0, h0, ax0
        dist = dist or dist0
        if K is None and ax is None:
            raise InputError(f"{path.name}: no intrinsics; give camera_angle_x or fl_x/fl_y/cx/cy (shared or per frame)")
        file = _resolve_frame_file(job_dir, job_dir, str(fr["file_path"]))
        rel = str(file.relative_to(job_dir)) if file.is_relative_to(job_dir) else str(fr["file_path"])
        if not file.exists():
            missing.append(rel)
            continue
        frames.append(FrameSpec(name=rel, K=K if K is not None else np.eye(3), w2c=w2c, width=w, height=h,
                                dist=dist, fov_x=ax))
    return PoseSource(kind="transforms", path=path, frames=tuple(frames), missing=tuple(missing))


_COLMAP_DIST = {
    "SIMPLE_PINHOLE": lambda p: (),
    "PINHOLE": lambda p: (),
    "SIMPLE_RADIAL": lambda p: (p[3], 0.0, 0.0, 0.0),
    "RADIAL": lambda p: (p[3], p[4], 0.0, 0.0),
    "OPENCV": lambda p: tuple(p[4:8]),
    "FULL_OPENCV": lambda p: (p[4], p[5], p[6], p[7], p[8]) if not any(p[9:12]) else None,
}


def read_colmap(model_dir: Path, job_dir: Path) -> PoseSource:
    """Parse a COLMAP sparse model (text or binary) with pycolmap; images are looked up under images/."""
    import pycolmap  # heavy import, only when a COLMAP model is given

    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except Exception as e:  # pycolmap raises plain RuntimeError/ValueError for broken files
        raise InputError(f"the COLMAP model in {model_dir.relative_to(job_dir) if model_dir != job_dir else '.'} cannot be read: {e}") from None
    image_root = job_dir / "images" if (job_dir / "images").is_dir() else job_dir
    frames: list[FrameSpec] = []
    missing: list[str] = []
    for image_id in sorted(rec.images):
        img = rec.images[image_id]
        if not img.has_pose:
            continue
        cam = rec.cameras[img.camera_id]
        model = cam.model.name
        params = list(cam.params)
        dist_fn = _COLMAP_DIST.get(model)
        dist = dist_fn(params) if dist_fn else None
        if dist is None:
            raise InputError(f"COLMAP camera model {model} is not supported; undistort the images first "
                             f"(colmap image_undistorter) or use PINHOLE/SIMPLE_RADIAL/RADIAL/OPENCV")
        if not any(dist):
            dist = ()
        pose = img.cam_from_world()
        w2c = np.eye(4)
        w2c[:3, :4] = np.asarray(pose.matrix(), dtype=np.float64)
        file = image_root / img.name
        rel = str(file.relative_to(job_dir))
        if not file.exists():
            missing.append(rel)
            continue
        frames.append(FrameSpec(name=rel, K=np.asarray(cam.calibration_matrix(), dtype=np.float64), w2c=w2c,
                                width=int(cam.width), height=int(cam.height), dist=tuple(float(d) for d in dist)))
    if not frames and not missing:
        raise InputError("the COLMAP model has no registered images")
    return PoseSource(kind="colmap", path=model_dir, frames=tuple(frames), missing=tuple(missing))


def read_pose_source(job_dir: Path) -> PoseSource | None:
    src = find_pose_source(job_dir)
    if src is None:
        return None
    if src.is_file():
        return read_transforms(src)
    return read_colmap(src, job_dir)


def intrinsics_for_image(frame: FrameSpec, width: int, height: int) -> np.ndarray:
    """K for the actual decoded image size; rejects an aspect ratio that does not match the poses."""
    if frame.fov_x is not None:
        f = 0.5 * width / math.tan(0.5 * frame.fov_x)
        return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    if frame.width is None or frame.height is None:
        return frame.K
    sx, sy = width / frame.width, height / frame.height
    if abs(sx - sy) > 0.02 * max(sx, sy):
        raise InputError(f"{frame.name}: image is {width}x{height} but its intrinsics describe "
                         f"{frame.width}x{frame.height} (different aspect ratio); was it cropped or rotated?")
    return scale_intrinsics(frame.K, sx, sy)
