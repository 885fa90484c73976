"""Real-world scale: metres per scene unit from printed markers of known size or from a known distance.

Photos alone fix a scene only up to scale. A user who wants millimetres drops a ``scale.json`` into the job folder,
in one of two forms::

    {"marker_size_m": 0.05, "dictionary": "DICT_4X4_50"}          # printed ArUco / AprilTag markers
    {"marker_size_m": 0.05, "dictionary": "DICT_APRILTAG_36h11", "marker_ids": [3, 7]}

    {"distance_m": 0.30,                                          # two points a known distance apart,
     "a": [["IMG_0001.jpg", 1520, 980], ["IMG_0004.jpg", 1210, 1002]],   # each clicked in two or more photos
     "b": [["IMG_0001.jpg", 2210, 990], ["IMG_0004.jpg", 1985, 1040]]}   # (pixels of the photo as displayed)

``marker_size_m`` is the side of the black square (the marker's outer edge), ``dictionary`` any of OpenCV's
predefined ArUco dictionaries (``cv2.aruco.DICT_*``, AprilTag families included); markers are found in the
undistorted working-resolution views, their corners triangulated with the posed cameras, and every edge and
diagonal of every marker seen in at least two views gives one estimate of metres per unit (median, with the
spread as uncertainty). Known-distance points are triangulated the same way; the uncertainty assumes one pixel
of clicking error.

The functions below are pure (arrays in, frozen results out) except :func:`read_scale_spec`, which reads the file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from pipeline.cameras.cameras import read_json
from pipeline.context import InputError

SCALE_FILE = "scale.json"
MIN_RAY_ANGLE_DEG = 1.0  # rays closer than this to parallel do not fix depth: such corners are skipped
MAX_REPROJ_PX = 3.0  # a triangulated corner that misses one of its detections by more is a wrong detection


class ScaleFileError(InputError):
    """scale.json cannot be used; the message lists every problem and what to write instead."""


@dataclass(frozen=True)
class MarkerSpec:
    marker_size_m: float  # side of the printed black square, metres
    dictionary: str  # name of a cv2.aruco predefined dictionary, e.g. DICT_4X4_50
    marker_ids: tuple[int, ...] | None = None  # only these ids (None: every marker of the dictionary)


@dataclass(frozen=True)
class PointObs:
    image: str  # frame name as in the job folder (e.g. images/IMG_0001.jpg or IMG_0001.jpg)
    x: float  # pixels of the photo as displayed (EXIF orientation applied), full resolution
    y: float


@dataclass(frozen=True)
class DistanceSpec:
    distance_m: float
    a: tuple[PointObs, ...]
    b: tuple[PointObs, ...]


ScaleSpec = MarkerSpec | DistanceSpec


@dataclass(frozen=True)
class ScaleResult:
    """What the report says about units. ``metres_per_unit`` None: the scale is arbitrary (``detail`` says why)."""

    metres_per_unit: float | None
    uncertainty: float | None  # relative, one standard deviation (0.01 = 1 %)
    method: str  # "markers" | "distance" | "none"
    detail: str  # one sentence for the report
    samples: int = 0  # independent estimates combined (marker edges/diagonals, or 1 for a distance)
    applied: bool = False  # the outputs were rescaled so that one unit is one metre

    @property
    def units(self) -> str:
        if self.metres_per_unit is None:
            return "arbitrary"
        return "metres" if self.applied else f"scene units (1 unit = {self.metres_per_unit:.6g} m)"

    def to_dict(self) -> dict[str, Any]:
        return {"units": self.units, "metres_per_unit": self.metres_per_unit, "uncertainty": self.uncertainty,
                "method": self.method, "detail": self.detail, "samples": self.samples, "applied": self.applied}


NO_SCALE = ScaleResult(None, None, "none", f"no {SCALE_FILE} in the job folder, so sizes are relative: one unit "
                                           f"has no fixed length. Add a {SCALE_FILE} (printed marker or a known "
                                           f"distance) for metres")


# -- scale.json -----------------------------------------------------------------------------------------------


def _aruco_dictionaries() -> list[str]:
    return sorted(n for n in dir(cv2.aruco) if n.startswith("DICT_") and isinstance(getattr(cv2.aruco, n), int))


def _positive(d: dict, key: str, problems: list[str]) -> float | None:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        problems.append(f"'{key}' must be a positive number of metres, got {v!r}")
        return None
    return float(v)


def _observations(d: dict, key: str, problems: list[str]) -> tuple[PointObs, ...]:
    items = d.get(key)
    if not isinstance(items, list) or len(items) < 2:
        problems.append(f"'{key}' must list the point in at least two photos, as [[\"image\", x, y], ...]")
        return ()
    out = []
    for k, it in enumerate(items):
        ok = (isinstance(it, list) and len(it) == 3 and isinstance(it[0], str)
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in it[1:]))
        if not ok:
            problems.append(f"'{key}'[{k}] must be [\"image name\", x, y] with pixel numbers, got {it!r}")
            continue
        out.append(PointObs(it[0], float(it[1]), float(it[2])))
    if len({o.image for o in out}) < len(out):
        problems.append(f"'{key}' names one photo twice; give the point once per photo, in different photos")
    return tuple(out)


def parse_scale_spec(data: object) -> ScaleSpec:
    """A :class:`MarkerSpec` or :class:`DistanceSpec` from scale.json's content; every problem is listed in one
    :class:`ScaleFileError`."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ScaleFileError(f"{SCALE_FILE} must be a JSON object, got {type(data).__name__}")
    if "marker_size_m" in data and "distance_m" in data:
        raise ScaleFileError(f"{SCALE_FILE} gives both marker_size_m and distance_m; keep one of the two forms")
    if "marker_size_m" in data:
        unknown = set(data) - {"marker_size_m", "dictionary", "marker_ids"}
        size = _positive(data, "marker_size_m", problems)
        name = data.get("dictionary", "DICT_4X4_50")
        if not isinstance(name, str) or name not in _aruco_dictionaries():
            problems.append(f"'dictionary' {name!r} is not an OpenCV ArUco dictionary; use one of "
                            f"{', '.join(_aruco_dictionaries())}")
        ids = data.get("marker_ids")
        if ids is not None and not (isinstance(ids, list) and ids
                                    and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)):
            problems.append(f"'marker_ids' must be a non-empty list of marker numbers, got {ids!r}")
        spec: ScaleSpec | None = (MarkerSpec(size, name, tuple(ids) if ids else None)
                                  if size is not None and not problems else None)
    elif "distance_m" in data:
        unknown = set(data) - {"distance_m", "a", "b"}
        dist = _positive(data, "distance_m", problems)
        a, b = _observations(data, "a", problems), _observations(data, "b", problems)
        spec = DistanceSpec(dist, a, b) if dist is not None and not problems else None
    else:
        raise ScaleFileError(f"{SCALE_FILE} needs either marker_size_m (printed markers, with 'dictionary') or "
                             f"distance_m with points 'a' and 'b'; e.g. {{\"marker_size_m\": 0.05, "
                             f"\"dictionary\": \"DICT_4X4_50\"}}")
    if unknown:
        problems.append(f"unknown key(s) {sorted(unknown)}")
    if problems or spec is None:
        raise ScaleFileError(f"{SCALE_FILE} has {len(problems)} problem(s) to fix:\n- " + "\n- ".join(problems))
    return spec


def read_scale_spec(job_dir: Path) -> ScaleSpec | None:
    """The job's scale.json, parsed; None when there is none. Raises :class:`ScaleFileError`."""
    path = job_dir / SCALE_FILE
    if not path.is_file():
        return None
    return parse_scale_spec(read_json(path, ScaleFileError))


# -- geometry -------------------------------------------------------------------------------------------------


def triangulate(K: np.ndarray, w2c: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, float]:
    """Linear (DLT) triangulation of one point seen in M >= 2 pinhole views.

    K: (M, 3, 3); w2c: (M, 4, 4); xy: (M, 2) pixels. Returns the point (3,) and the largest angle between two of
    its viewing rays in degrees (near 0: the depth is not determined)."""
    rows = []
    rays = []
    for Ki, Ti, p in zip(K, w2c, xy):
        n = np.linalg.solve(Ki, np.array([p[0], p[1], 1.0]))  # normalised camera coordinates
        P = Ti[:3, :4]
        rows.append(n[0] * P[2] - P[0])
        rows.append(n[1] * P[2] - P[1])
        d = Ti[:3, :3].T @ (n / np.linalg.norm(n))  # ray direction in the world
        rays.append(d)
    _, _, vt = np.linalg.svd(np.array(rows))
    X = vt[-1]
    X = X[:3] / X[3] if abs(X[3]) > 1e-12 else np.full(3, np.nan)
    R = np.array(rays)
    cos = np.clip(R @ R.T, -1.0, 1.0)
    return X, float(np.degrees(np.arccos(cos.min())))


def reprojection_px(K: np.ndarray, w2c: np.ndarray, X: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(M,) pixel distances between the projections of X (3,) and the observations xy (M, 2)."""
    cam = np.einsum("mij,j->mi", w2c[:, :3, :3], X) + w2c[:, :3, 3]
    proj = np.einsum("mij,mj->mi", K, cam)
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = proj[:, :2] / proj[:, 2:3]
    err = np.linalg.norm(uv - xy, axis=1)
    return np.where(cam[:, 2] > 0, err, np.inf)


def detect_markers(gray: np.ndarray, dictionary: str) -> dict[int, np.ndarray]:
    """ArUco / AprilTag markers in a (H, W) uint8 image: id -> (4, 2) corner pixels (sub-pixel refined), in the
    dictionary's corner order (top-left, top-right, bottom-right, bottom-left of the printed marker)."""
    params = cv2.aruco.DetectorParameters()
    params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
    detector = cv2.aruco.ArucoDetector(cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, dictionary)), params)
    corners, ids, _ = detector.detectMarkers(gray)
    out: dict[int, np.ndarray] = {}
    if ids is None:
        return out
    for c, i in zip(corners, ids.ravel()):
        if int(i) in out:  # the same id twice in one photo: ambiguous, use neither
            out[int(i)] = np.full((4, 2), np.nan)
            continue
        out[int(i)] = c.reshape(4, 2).astype(np.float64)
    return {i: c for i, c in out.items() if np.all(np.isfinite(c))}


def _robust_combine(values: np.ndarray) -> tuple[float, float]:
    """Median of (N,) estimates and its relative uncertainty (scaled MAD / sqrt(N), at least 0.1 %)."""
    med = float(np.median(values))
    if len(values) < 2:
        return med, float("nan")
    mad = 1.4826 * float(np.median(np.abs(values - med)))
    return med, max(1e-3, mad / abs(med) / math.sqrt(len(values)))


def marker_scale(views: list[np.ndarray], K: np.ndarray, w2c: np.ndarray, spec: MarkerSpec) -> ScaleResult:
    """Metres per scene unit from markers of ``spec.marker_size_m`` seen in posed, undistorted views.

    views: N (H_i, W_i, 3) uint8 or (H_i, W_i) uint8 images; K: (N, 3, 3); w2c: (N, 4, 4)."""
    seen: dict[int, dict[int, np.ndarray]] = {}  # marker id -> view index -> (4, 2) corners
    for v, img in enumerate(views):
        gray = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        for mid, corners in detect_markers(gray, spec.dictionary).items():
            if spec.marker_ids is None or mid in spec.marker_ids:
                seen.setdefault(mid, {})[v] = corners
    if not seen:
        return ScaleResult(None, None, "markers", f"no {spec.dictionary} marker was found in any photo, so the scale "
                           "is arbitrary. Check the dictionary in scale.json, print the marker larger or move closer, "
                           "and keep it flat, sharp and unoccluded in at least two photos")
    estimates: list[float] = []
    used: list[int] = []
    once = sorted(m for m, vs in seen.items() if len(vs) < 2)
    diag = math.sqrt(2.0)
    for mid, by_view in sorted(seen.items()):
        if len(by_view) < 2:
            continue
        vs = sorted(by_view)
        X = []
        for c in range(4):
            xy = np.array([by_view[v][c] for v in vs])
            P, angle = triangulate(K[vs], w2c[vs], xy)
            ok = angle >= MIN_RAY_ANGLE_DEG and np.all(np.isfinite(P)) and \
                np.all(reprojection_px(K[vs], w2c[vs], P, xy) < MAX_REPROJ_PX)
            X.append(P if ok else None)
        for i, j, factor in ((0, 1, 1.0), (1, 2, 1.0), (2, 3, 1.0), (3, 0, 1.0), (0, 2, diag), (1, 3, diag)):
            if X[i] is not None and X[j] is not None:
                length = float(np.linalg.norm(X[i] - X[j]))
                if length > 0:
                    estimates.append(spec.marker_size_m * factor / length)
        if any(x is not None for x in X):
            used.append(mid)
    if not estimates:
        why = (f"marker(s) {', '.join(map(str, once))} were each seen in only one photo" if once and len(once) == len(seen)
               else "the marker corners could not be triangulated (too little camera movement between the photos "
                    "that show them, or inconsistent detections)")
        return ScaleResult(None, None, "markers", f"{why}, so the scale is arbitrary; a marker must be visible in "
                           "at least two photos taken from different positions")
    m, unc = _robust_combine(np.array(estimates))
    views_with = sorted({v for mid in used for v in seen[mid]})
    return ScaleResult(m, unc, "markers", f"{len(used)} {spec.dictionary} marker(s) of {spec.marker_size_m * 1000:g} mm "
                       f"(id {', '.join(map(str, used))}) seen in {len(views_with)} photo(s)", samples=len(estimates))


def distance_scale(K: np.ndarray, w2c: np.ndarray, a: np.ndarray, b: np.ndarray, a_views: list[int],
                   b_views: list[int], distance_m: float, pixel_sigma: np.ndarray | None = None) -> ScaleResult:
    """Metres per unit from two points a known ``distance_m`` apart.

    a, b: (Ma, 2), (Mb, 2) undistorted pixels in the views ``a_views`` / ``b_views`` (indices into K (N, 3, 3),
    w2c (N, 4, 4)); pixel_sigma: (Ma + Mb,) clicking error of each observation in these pixels (default 1)."""
    sig = np.ones(len(a) + len(b)) if pixel_sigma is None else np.asarray(pixel_sigma, dtype=np.float64)

    def length(pa: np.ndarray, pb: np.ndarray) -> tuple[float, float]:
        A, ang_a = triangulate(K[a_views], w2c[a_views], pa)
        B, ang_b = triangulate(K[b_views], w2c[b_views], pb)
        return float(np.linalg.norm(A - B)), min(ang_a, ang_b)

    d, angle = length(a, b)
    if not math.isfinite(d) or d <= 0 or angle < MIN_RAY_ANGLE_DEG:
        return ScaleResult(None, None, "distance", "the two points of scale.json could not be placed in 3-D (the "
                           "photos that show them were taken from nearly the same position), so the scale is "
                           "arbitrary; mark each point in photos taken from clearly different directions")
    # one pixel of clicking error per observation, propagated by central differences
    grads = []
    pts = np.vstack([a, b]).astype(np.float64)
    for k in range(len(pts)):
        for axis in range(2):
            hi, lo = pts.copy(), pts.copy()
            hi[k, axis] += 0.5
            lo[k, axis] -= 0.5
            grads.append((length(hi[:len(a)], hi[len(a):])[0] - length(lo[:len(a)], lo[len(a):])[0]) * sig[k])
    unc = float(np.sqrt(np.sum(np.square(grads)))) / d
    return ScaleResult(distance_m / d, unc, "distance", f"a known distance of {distance_m * 1000:g} mm between two "
                       f"points marked in {len(set(a_views) | set(b_views))} photo(s)", samples=1)


# -- the job's scale ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewGeometry:
    """How to take a pixel of an input photo to its working view: the photo's own K and distortion, its size
    (as displayed) and the working size. ``undistort`` maps (N, 2) photo pixels to undistorted photo pixels."""

    size: tuple[int, int]  # (width, height) of the photo as displayed
    work_size: tuple[int, int]
    undistort: Callable[[np.ndarray], np.ndarray]


def measure_scale(spec: ScaleSpec | None, names: list[str], views: list[np.ndarray], K: np.ndarray, w2c: np.ndarray,
                  geometry: Callable[[str], ViewGeometry | None]) -> ScaleResult:
    """The job's scale from its scale.json ``spec`` and its posed working views (names (N,), undistorted images,
    K (N, 3, 3), w2c (N, 4, 4)); ``geometry(name)`` describes a view's source photo (known-distance points are
    given in photo pixels)."""
    if spec is None:
        return NO_SCALE
    if isinstance(spec, MarkerSpec):
        return marker_scale(views, K, w2c, spec)
    index = {n: i for i, n in enumerate(names)}
    by_base: dict[str, list[str]] = {}
    for n in names:
        by_base.setdefault(Path(n).name, []).append(n)

    def lookup(image: str) -> str | None:
        if image in index:
            return image
        cands = by_base.get(Path(image).name, [])
        return cands[0] if len(cands) == 1 else None  # "IMG_1.jpg" may name images/IMG_1.jpg

    pts: dict[str, tuple[list[np.ndarray], list[int], list[float]]] = {}
    dropped: list[str] = []
    for key, obs in (("a", spec.a), ("b", spec.b)):
        xy, vs, sig = [], [], []
        for o in obs:
            name = lookup(o.image)
            geo = geometry(name) if name is not None else None
            if name is None or geo is None:
                dropped.append(o.image)
                continue
            sx, sy = geo.work_size[0] / geo.size[0], geo.work_size[1] / geo.size[1]
            u = geo.undistort(np.array([[o.x, o.y]]))[0]
            xy.append(np.array([u[0] * sx, u[1] * sy]))
            vs.append(index[name])
            sig.append(0.5 * (sx + sy))
        pts[key] = (xy, vs, sig)
    if len(pts["a"][0]) < 2 or len(pts["b"][0]) < 2:
        return ScaleResult(None, None, "distance", "each point of scale.json must be marked in at least two photos "
                           f"that are used as views; not usable: {', '.join(sorted(set(dropped))) or 'none'}, so the "
                           "scale is arbitrary")
    return distance_scale(K, w2c, np.array(pts["a"][0]), np.array(pts["b"][0]), pts["a"][1], pts["b"][1],
                          spec.distance_m, np.array(pts["a"][2] + pts["b"][2]))
