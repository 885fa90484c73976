"""Camera poses from transforms.json (NeRF / instant-ngp) or a COLMAP sparse model.

Internal convention (everywhere after this module): OpenCV pinhole, ``x_cam = R @ X + t``,
``pixel = K @ x_cam / z``, camera looks along +Z, +Y down. ``w2c``: (4, 4) float64 world-to-camera.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import cv2
import numpy as np

from pipeline.context import InputError
from pipeline.io.images import IMAGE_SUFFIXES, inside

TRANSFORMS_NAMES = ("transforms.json", "transforms_train.json")
_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


CAMERA_MODELS = ("PINHOLE", "OPENCV", "OPENCV_FISHEYE")  # nerfstudio's camera_model values we can undistort


@dataclass(frozen=True)
class FrameSpec:
    """One posed view as the input describes it (at the input's own pixel size)."""

    name: str  # path relative to the job folder
    K: np.ndarray  # (3, 3) float64, pixels of an image of size (width, height)
    w2c: np.ndarray  # (4, 4) float64, OpenCV convention
    width: int | None  # size the intrinsics refer to; None: the image's own size (camera_angle_x case)
    height: int | None
    dist: tuple[float, ...]  # distortion in OpenCV's order for camera_model; () when undistorted
    fov_x: float | None = None  # camera_angle_x: the focal length is resolved against the image width
    # how ``dist`` is read: OPENCV (k1, k2, p1, p2[, k3]; cv2.undistort) or OPENCV_FISHEYE (k1..k4; cv2.fisheye)
    camera_model: str = "OPENCV"
    mask_path: str | None = None  # the input names this frame's mask (nerfstudio mask_path), relative to the job


@dataclass(frozen=True)
class PoseSource:
    kind: str  # "transforms" | "colmap"
    path: Path
    frames: tuple[FrameSpec, ...]
    missing: tuple[str, ...]  # listed frames whose file does not exist
    missing_masks: tuple[str, ...] = ()  # listed mask_path files that do not exist (the frame is still used)


def c2w_gl_to_w2c_cv(c2w: np.ndarray) -> np.ndarray:
    """NeRF/Blender camera-to-world (OpenGL axes) -> OpenCV world-to-camera. (4, 4) -> (4, 4)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape == (3, 4):
        c2w = np.vstack([c2w, [0, 0, 0, 1]])
    if c2w.shape != (4, 4):
        raise ValueError(f"transform_matrix must be 4x4 or 3x4, got {c2w.shape}")
    return np.linalg.inv(c2w @ _GL_TO_CV)


def read_json(path: Path, error: type[Exception]) -> object:
    """A JSON file's content; an unreadable or invalid file raises ``error`` with a sentence naming the place."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path.name} cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise error(f"{path.name} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def w2c_cv_to_c2w_gl(w2c: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera -> NeRF/Blender camera-to-world (OpenGL axes); inverse of c2w_gl_to_w2c_cv."""
    return np.linalg.inv(np.asarray(w2c, dtype=np.float64)) @ _GL_TO_CV


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


# Frame files tried, in this order, for a file_path without an extension (NeRF-synthetic convention: .png).
_TRY_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".heic", ".heif",
                 ".PNG", ".JPG", ".JPEG", ".HEIC", ".HEIF")
_MAX_LISTED_PROBLEMS = 40


def _resolve_frame_file(base: Path, file_path: str) -> Path:
    p = base / file_path
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return p
    for suffix in _TRY_SUFFIXES:
        cand = p.with_name(p.name + suffix)
        if cand.exists():
            return cand
    return p.with_name(p.name + ".png")  # NeRF-synthetic convention: no extension means .png


def listed_path_problem(value: object, key: str) -> str | None:
    """Why a path written in an input file cannot be used, or None. Pure: looks at the text only.

    Paths must be relative and stay inside the job folder: an absolute path or a '..' would let a job read
    (and publish renders of) files that were never dropped into the inbox."""
    if not isinstance(value, str) or not value.strip():
        return f"'{key}' must be a non-empty string, got {value!r}"
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute() or PureWindowsPath(value).drive:
        return (f"'{key}' is an absolute path ({value}); paths must be relative to the job folder, e.g. "
                f"images/0001.jpg. Copy the file into the job folder and list it relative to it")
    if ".." in PurePosixPath(value.replace("\\", "/")).parts:
        return (f"'{key}' leaves the job folder ({value}); copy the file into the job folder and list it "
                f"relative to it")
    return None


def _job_file(job_dir: Path, value: object, key: str, problems: list[str], where: str,
              resolve_suffix: bool = False) -> Path | None:
    """The file a listed path names, inside ``job_dir``; None (and a problem recorded) when it is not allowed."""
    problem = listed_path_problem(value, key)
    if problem is None:
        file = _resolve_frame_file(job_dir, str(value)) if resolve_suffix else job_dir / str(value)
        if inside(file, job_dir):
            return file
        problem = f"'{key}' ({value}) resolves outside the job folder through a symbolic link; copy the file in"
    problems.append(f"{where}: {problem}")
    return None


@dataclass(frozen=True)
class _Intrinsics:
    """What one JSON object (the top level or a frame) says about the camera; fields None when not given."""

    K: np.ndarray | None
    width: int | None
    height: int | None
    fov_x: float | None
    camera_model: str | None
    coeffs: dict[str, float]  # distortion coefficients given here (k1..k4, p1, p2), zeros included

    @property
    def has_camera(self) -> bool:
        return self.K is not None or self.fov_x is not None


_COEFF_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


def _intrinsics(meta: dict, where: str, problems: list[str]) -> _Intrinsics:
    """Intrinsics of one JSON object; every invalid value is recorded in ``problems`` (and treated as absent)."""
    def num(key: str) -> float | None:
        v = meta.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            problems.append(f"{where}: '{key}' must be a finite number, got {v!r}")
            return None
        return float(v)

    model = meta.get("camera_model")
    if model is not None and model not in CAMERA_MODELS:
        problems.append(f"{where}: camera_model {model!r} is not supported; use one of {', '.join(CAMERA_MODELS)} "
                        f"(or undistort the images first, e.g. with ns-process-data, and use PINHOLE)")
        model = None
    coeffs = {k: v for k in _COEFF_KEYS if (v := num(k)) is not None}
    w, h = num("w"), num("h")
    fx, fy, cx, cy = num("fl_x"), num("fl_y"), num("cx"), num("cy")
    angle_x = num("camera_angle_x")
    if fx is not None:
        if fx <= 0 or (fy is not None and fy <= 0):
            problems.append(f"{where}: focal lengths fl_x/fl_y must be positive, got {fx}, {fy}")
            return _Intrinsics(None, None, None, None, model, coeffs)
        fy = fy if fy is not None else fx
        if w is None or h is None:
            if cx is None or cy is None:
                problems.append(f"{where}: fl_x is given but neither w/h nor cx/cy; cannot place the principal point")
                return _Intrinsics(None, None, None, None, model, coeffs)
            w, h = 2 * cx, 2 * cy
        if w < 1 or h < 1:
            problems.append(f"{where}: image size w={w}, h={h} must be at least 1 pixel")
            return _Intrinsics(None, None, None, None, model, coeffs)
        cx = cx if cx is not None else w / 2
        cy = cy if cy is not None else h / 2
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
        return _Intrinsics(K, int(round(w)), int(round(h)), None, model, coeffs)
    if angle_x is not None:
        if not 0 < angle_x < math.pi:
            problems.append(f"{where}: camera_angle_x={angle_x} is not an angle in radians between 0 and pi")
            angle_x = None
        return _Intrinsics(None, None, None, angle_x, model, coeffs)
    return _Intrinsics(None, None, None, None, model, coeffs)


def distortion_for(model: str, coeffs: dict[str, float], where: str, problems: list[str]) -> tuple[float, ...]:
    """OpenCV-ordered coefficients for ``model`` from nerfstudio's keys; () when all are zero.

    OPENCV: (k1, k2, p1, p2[, k3]); OPENCV_FISHEYE: (k1, k2, k3, k4); PINHOLE: none. A coefficient the model
    does not have is a problem rather than silently dropped: the images would be undistorted wrongly."""
    given = {k for k, v in coeffs.items() if v != 0.0}
    allowed = {"PINHOLE": set(), "OPENCV": {"k1", "k2", "k3", "p1", "p2"},
               "OPENCV_FISHEYE": {"k1", "k2", "k3", "k4"}}[model]
    extra = sorted(given - allowed)
    if extra:
        hint = {"PINHOLE": "use camera_model OPENCV (or OPENCV_FISHEYE) to have the images undistorted",
                "OPENCV": "k4 belongs to OPENCV_FISHEYE; set camera_model accordingly",
                "OPENCV_FISHEYE": "the fisheye model has no tangential terms; use OPENCV"}[model]
        problems.append(f"{where}: camera_model {model} has no {', '.join(extra)}; {hint}")
    c = lambda k: float(coeffs.get(k, 0.0))  # noqa: E731
    if model == "OPENCV_FISHEYE":
        dist: tuple[float, ...] = (c("k1"), c("k2"), c("k3"), c("k4"))
    elif model == "OPENCV":
        dist = (c("k1"), c("k2"), c("p1"), c("p2")) + ((c("k3"),) if c("k3") else ())
    else:
        dist = ()
    return dist if any(dist) else ()


def _index_list(indices: list[int], limit: int = 12) -> str:
    shown = ", ".join(map(str, indices[:limit]))
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def _problems_error(source: str, problems: list[str]) -> InputError:
    shown = problems[:_MAX_LISTED_PROBLEMS]
    more = f"\n- … and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return InputError(f"{source} has {len(problems)} problem(s) to fix:\n- " + "\n- ".join(shown) + more)


def read_transforms(path: Path) -> PoseSource:
    """Parse a NeRF / instant-ngp / nerfstudio transforms file; frame-level intrinsics override the shared ones.

    Every problem of the file is collected and raised together as one :class:`InputError`, so a user fixes
    the file in one go rather than one error per attempt."""
    job_dir = path.parent
    meta = read_json(path, InputError)
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise InputError(f"{path.name} has no 'frames' list; expected the NeRF / instant-ngp transforms format")
    problems: list[str] = []
    shared = _intrinsics(meta, path.name, problems)
    shared_model = shared.camera_model or "OPENCV"
    shared_dist = distortion_for(shared_model, shared.coeffs, path.name, problems)
    no_camera: list[int] = []
    frames: list[FrameSpec] = []
    missing: list[str] = []
    missing_masks: list[str] = []
    for i, fr in enumerate(meta["frames"]):
        where = f"{path.name} frame {i}"
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            problems.append(f"{where}: needs 'file_path' and 'transform_matrix'")
            continue
        n_before = len(problems)
        try:
            w2c = c2w_gl_to_w2c_cv(np.array(fr["transform_matrix"], dtype=np.float64))
            if not np.all(np.isfinite(w2c)):
                problems.append(f"{where}: transform_matrix contains NaN or infinity")
        except (ValueError, TypeError, np.linalg.LinAlgError) as e:
            problems.append(f"{where}: transform_matrix is not an invertible 4x4 matrix ({e})")
        own = _intrinsics(fr, where, problems)
        cam = own if own.has_camera else shared
        if own.camera_model is None and not any(own.coeffs.values()):
            model, dist = shared_model, shared_dist  # checked once above, not once per frame
        else:
            model = own.camera_model or shared_model
            dist = distortion_for(model, own.coeffs if any(own.coeffs.values()) else shared.coeffs, where, problems)
        if not cam.has_camera:
            no_camera.append(i)
        file = _job_file(job_dir, fr["file_path"], "file_path", problems, where, resolve_suffix=True)
        mask = None
        if fr.get("mask_path") is not None:
            mask = _job_file(job_dir, fr["mask_path"], "mask_path", problems, where)
        if len(problems) > n_before or file is None:
            continue
        rel = str(file.relative_to(job_dir))
        if not file.exists():
            missing.append(rel)
            continue
        mask_rel = None
        if mask is not None:
            if mask.is_file():
                mask_rel = str(mask.relative_to(job_dir))
            else:
                missing_masks.append(str(fr["mask_path"]))
        frames.append(FrameSpec(name=rel, K=cam.K if cam.K is not None else np.eye(3), w2c=w2c, width=cam.width,
                                height=cam.height, dist=dist, fov_x=cam.fov_x, camera_model=model,
                                mask_path=mask_rel))
    if no_camera:
        problems.append(f"{path.name}: no intrinsics for frame(s) {_index_list(no_camera)}; give camera_angle_x "
                        f"or fl_x/fl_y/cx/cy (shared at the top level or per frame)")
    if problems:
        raise _problems_error(path.name, problems)
    return PoseSource(kind="transforms", path=path, frames=tuple(frames), missing=tuple(missing),
                      missing_masks=tuple(missing_masks))


# COLMAP camera model -> (our camera_model, OpenCV-ordered coefficients from the params); None: unsupported.
# COLMAP's fisheye models are the same equidistant polynomial as OpenCV's fisheye module.
_COLMAP_DIST = {
    "SIMPLE_PINHOLE": lambda p: ("OPENCV", ()),
    "PINHOLE": lambda p: ("OPENCV", ()),
    "SIMPLE_RADIAL": lambda p: ("OPENCV", (p[3], 0.0, 0.0, 0.0)),
    "RADIAL": lambda p: ("OPENCV", (p[3], p[4], 0.0, 0.0)),
    "OPENCV": lambda p: ("OPENCV", tuple(p[4:8])),
    "FULL_OPENCV": lambda p: ("OPENCV", (p[4], p[5], p[6], p[7], p[8])) if not any(p[9:12]) else None,
    "SIMPLE_RADIAL_FISHEYE": lambda p: ("OPENCV_FISHEYE", (p[3], 0.0, 0.0, 0.0)),
    "RADIAL_FISHEYE": lambda p: ("OPENCV_FISHEYE", (p[3], p[4], 0.0, 0.0)),
    "OPENCV_FISHEYE": lambda p: ("OPENCV_FISHEYE", tuple(p[4:8])),
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
    problems: list[str] = []
    for image_id in sorted(rec.images):
        img = rec.images[image_id]
        if not img.has_pose:
            continue
        cam = rec.cameras[img.camera_id]
        model = cam.model.name
        params = [float(x) for x in cam.params]
        dist_fn = _COLMAP_DIST.get(model)
        got = dist_fn(params) if dist_fn else None
        if got is None:
            problems.append(f"image {img.name}: COLMAP camera model {model} is not supported; undistort the images "
                            f"first (colmap image_undistorter) or use one of {', '.join(_COLMAP_DIST)} "
                            f"(FULL_OPENCV without thin-prism terms)")
            continue
        camera_model, dist = got
        file = _job_file(image_root, img.name, "image name", problems, f"image {img.name}")
        if file is None:
            continue
        pose = img.cam_from_world()
        w2c = np.eye(4)
        w2c[:3, :4] = np.asarray(pose.matrix(), dtype=np.float64)
        rel = str(file.relative_to(job_dir))
        if not file.exists():
            missing.append(rel)
            continue
        frames.append(FrameSpec(name=rel, K=np.asarray(cam.calibration_matrix(), dtype=np.float64), w2c=w2c,
                                width=int(cam.width), height=int(cam.height),
                                dist=tuple(dist) if any(dist) else (), camera_model=camera_model))
    if problems:
        raise _problems_error("the COLMAP model", problems)
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


def undistort_image(img: np.ndarray, K: np.ndarray, camera_model: str, dist: tuple[float, ...]) -> np.ndarray:
    """(H, W[, C]) image -> the same size as a pinhole camera with the same ``K`` would have seen it.

    The cameras stage undistorts once, so every later stage uses a plain pinhole model."""
    if not dist:
        return img
    D = np.asarray(dist, dtype=np.float64)
    if camera_model == "OPENCV_FISHEYE":
        h, w = img.shape[:2]
        return cv2.fisheye.undistortImage(img, K, D.reshape(4, 1), Knew=K, new_size=(w, h))
    return cv2.undistort(img, K, D)


def undistort_points(xy: np.ndarray, K: np.ndarray, camera_model: str, dist: tuple[float, ...]) -> np.ndarray:
    """(N, 2) pixels of the distorted image -> (N, 2) pixels of its undistorted copy (same ``K``)."""
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 1, 2)
    if not dist:
        return pts.reshape(-1, 2)
    D = np.asarray(dist, dtype=np.float64)
    if camera_model == "OPENCV_FISHEYE":
        return cv2.fisheye.undistortPoints(pts, K, D.reshape(4, 1), P=K).reshape(-1, 2)
    return cv2.undistortPoints(pts, K, D, P=K).reshape(-1, 2)
