"""The cameras of a job as files other tools read, in the mesh's frame: nerfstudio/NeRF ``transforms.json`` and a
COLMAP text model (``sparse/0/cameras.txt``, ``images.txt``, ``points3D.txt``).

Both describe the user's original photos (original size, EXIF orientation applied, with the lens distortion that
SfM estimated or the input gave). The outbox carries those photos under ``images/`` (pipeline.io.photos), so
nerfstudio, gsplat or COLMAP open the outbox as it is: ``transforms.json`` names them ``images/<name>`` and the
COLMAP model names them relative to ``images/``, as COLMAP's own layout does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from pipeline.cameras.cameras import w2c_cv_to_c2w_gl

# our distortion models -> COLMAP camera model names and how many coefficients they take
COLMAP_MODELS = {"PINHOLE": ("PINHOLE", 0), "OPENCV": ("OPENCV", 4), "OPENCV_FISHEYE": ("OPENCV_FISHEYE", 4)}


@dataclass(frozen=True)
class PhotoCamera:
    """One photo as taken: name (relative to the job folder), size, K (3, 3) at that size, distortion in OpenCV's
    order for ``model`` (() when none), w2c (4, 4) OpenCV in the mesh's frame."""

    name: str
    width: int
    height: int
    K: np.ndarray
    dist: tuple[float, ...]
    model: str
    w2c: np.ndarray

    def to_json(self) -> dict:
        return {"name": self.name, "width": self.width, "height": self.height, "K": np.asarray(self.K).tolist(),
                "dist": list(self.dist), "model": self.model, "w2c": np.asarray(self.w2c).tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "PhotoCamera":
        return cls(name=d["name"], width=int(d["width"]), height=int(d["height"]), K=np.array(d["K"]),
                   dist=tuple(d["dist"]), model=d["model"], w2c=np.array(d["w2c"]))


def _model(cam: PhotoCamera) -> tuple[str, list[float]]:
    """COLMAP model name and its distortion coefficients for a camera (k3 is dropped: COLMAP's OPENCV has 4)."""
    if not cam.dist or not any(cam.dist):
        return "PINHOLE", []
    name, n = COLMAP_MODELS.get(cam.model, ("OPENCV", 4))
    coeffs = [float(x) for x in cam.dist[:n]] + [0.0] * max(0, n - len(cam.dist))
    return name, coeffs


def transforms_json(cams: list[PhotoCamera], paths: dict[str, str] | None = None, ply: str | None = None) -> str:
    """nerfstudio ``transforms.json``: per-frame intrinsics and distortion, camera-to-world with OpenGL axes.
    ``paths``: camera name -> file path relative to the outbox (default: the name); ``ply``: a point cloud beside it
    (nerfstudio's ``ply_file_path``, splatfacto's initial points)."""
    frames = []
    for c in cams:
        model, coeffs = _model(c)
        fr = {"file_path": (paths or {}).get(c.name, c.name), "transform_matrix": w2c_cv_to_c2w_gl(c.w2c).tolist(),
              "fl_x": float(c.K[0, 0]), "fl_y": float(c.K[1, 1]), "cx": float(c.K[0, 2]), "cy": float(c.K[1, 2]),
              "w": c.width, "h": c.height,
              # nerfstudio reads a pinhole camera as OPENCV with zero distortion
              "camera_model": "OPENCV_FISHEYE" if model == "OPENCV_FISHEYE" else "OPENCV"}
        keys = ("k1", "k2", "k3", "k4") if model == "OPENCV_FISHEYE" else ("k1", "k2", "p1", "p2")
        fr.update({k: v for k, v in zip(keys, coeffs)})
        frames.append(fr)
    models = {f["camera_model"] for f in frames}
    out: dict = {"camera_model": models.pop() if len(models) == 1 else "OPENCV", "frames": frames}
    if ply:
        out["ply_file_path"] = ply
    return json.dumps(out, indent=1)


def _qvec(R: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) -> unit quaternion (w, x, y, z), w >= 0 (COLMAP's order)."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(R).as_quat()
    q = np.array([w, x, y, z])
    return q if q[0] >= 0 else -q

def camera_key(c: PhotoCamera) -> tuple:
    """Photos with the same size, intrinsics and distortion share one COLMAP camera (one lens, one setting)."""
    model, coeffs = _model(c)
    return (model, c.width, c.height, *np.round(np.asarray(c.K)[[0, 1, 0, 1], [0, 1, 2, 2]], 6),
            *np.round(coeffs, 9))


def colmap_text(cams: list[PhotoCamera], points: np.ndarray, colors: np.ndarray,
                names: dict[str, str] | None = None) -> dict[str, str]:
    """The three files of a COLMAP text model for cameras that were given (no SfM observations to keep). Photos
    with identical intrinsics share a camera; points (P, 3) and colors (P, 3) uint8 become 3-D points without
    tracks. ``names``: camera name -> image name in the model (relative to images/; default: the name).
    -> {"cameras.txt": ..., "images.txt": ..., "points3D.txt": ...}"""
    if len(points) != len(colors):
        raise ValueError("colmap_text: one colour per point")
    ids: dict[tuple, int] = {}
    for c in cams:
        ids.setdefault(camera_key(c), len(ids) + 1)
    cam_lines = ["# Camera list with one line of data per camera:",
                 "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]", f"# Number of cameras: {len(ids)}"]
    img_lines = ["# Image list with two lines of data per image:",
                 "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
                 "#   POINTS2D[] as (X, Y, POINT3D_ID)", f"# Number of images: {len(cams)}"]
    written: set[int] = set()
    for i, c in enumerate(cams, start=1):
        cid = ids[camera_key(c)]
        if cid not in written:
            written.add(cid)
            model, coeffs = _model(c)
            params = [c.K[0, 0], c.K[1, 1], c.K[0, 2], c.K[1, 2], *coeffs]
            cam_lines.append(f"{cid} {model} {c.width} {c.height} " + " ".join(f"{p:.10g}" for p in params))
        q = _qvec(c.w2c[:3, :3])
        t = c.w2c[:3, 3]
        img_lines.append(f"{i} " + " ".join(f"{x:.12g}" for x in (*q, *t)) + f" {cid} {(names or {}).get(c.name, c.name)}")
        img_lines.append("")
    pt_lines = ["# 3D point list with one line of data per point:",
                "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
                f"# Number of points: {len(points)}"]
    for k, (p, c) in enumerate(zip(points, colors), start=1):
        pt_lines.append(f"{k} {p[0]:.8g} {p[1]:.8g} {p[2]:.8g} {int(c[0])} {int(c[1])} {int(c[2])} 0")
    return {"cameras.txt": "\n".join(cam_lines) + "\n", "images.txt": "\n".join(img_lines) + "\n",
            "points3D.txt": "\n".join(pt_lines) + "\n"}
