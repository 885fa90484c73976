"""Structure from motion with pycolmap (SIFT, exhaustive or sequential matching, incremental mapping).

Poses come back in the internal convention of :mod:`pipeline.cameras.cameras` (OpenCV, world-to-camera) with COLMAP's
OPENCV distortion, so later stages treat them exactly like a user's COLMAP model.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.context import InputError


@dataclass(frozen=True)
class SfmSettings:
    matcher: str = "auto"  # auto (exhaustive up to 30 images, else sequential) | exhaustive | sequential
    max_image_size: int = 1000  # long side the features are extracted at
    max_features: int = 8192  # SIFT features kept per photo (COLMAP's default)
    camera_model: str = "OPENCV"  # one shared camera: fx, fy, cx, cy, k1, k2, p1, p2
    guided_matching: bool = True  # measured: apple registers 20/20 with it, 13/20 without
    overlap: int = 10  # sequential matching: each photo with the photos 2^k on, k < overlap
    min_registered: float = 0.7  # fraction of the images that must register, else the job fails
    device: str = "auto"  # auto | cpu | cuda (pycolmap-cuda12 only)
    num_threads: int = -1
    mapper: str = "incremental"  # incremental (COLMAP) | global (GLOMAP's method, pycolmap.global_mapping)
    ba_global_ratio: float = 2.0  # incremental: global bundle adjustment when the model grew by this factor
    ba_global_iterations: int = 25  # incremental: iterations of a global bundle adjustment
    ba_refinements: int = 1  # incremental: refinement rounds of a local adjustment (twice that for a global one)
    ba_skip_redundant_points: bool = True  # incremental: global adjustments leave out points that add no coverage
    ba_local_images: int = 4  # incremental: photos of a local adjustment (the new one and its most connected)
    ba_local_iterations: int = 10  # incremental: iterations of a local adjustment
    # incremental: at most this many photos (every 2^k-th) are mapped; the others are placed by absolute pose against
    # the mapped points, so that mapping stops growing with the photos beyond it (0: every photo mapped)
    keyframes: int = 64


@dataclass(frozen=True)
class SfmResult:
    """names: registered images (as given); K: (N, 3, 3) pixels of (width, height); dist: (N, 4) OpenCV k1 k2 p1 p2;
    w2c: (N, 4, 4) float64 OpenCV; points: (P, 3) float64 world; colors: (P, 3) uint8;
    obs_image / obs_point: (M,) int index into names / points; obs_xy: (M, 2) float32 pixels of (width, height)."""

    names: tuple[str, ...]
    unregistered: tuple[str, ...]
    width: int
    height: int
    K: np.ndarray
    dist: np.ndarray
    w2c: np.ndarray
    points: np.ndarray
    colors: np.ndarray
    obs_image: np.ndarray
    obs_point: np.ndarray
    obs_xy: np.ndarray
    stats: dict
    per_image: tuple[dict, ...] = ()  # see image_counts; also in PER_IMAGE_FILE beside the model
    # (width, height) per registered image where they differ from (width, height): portrait photos among
    # landscape ones, turned back after SfM (:func:`turn_back`); empty: every image is (width, height)
    sizes: tuple[tuple[int, int], ...] = ()

    def size_of(self, k: int) -> tuple[int, int]:
        """(width, height) of registered image k, the pixels its K and observations are in."""
        return self.sizes[k] if self.sizes else (self.width, self.height)

    def view_sizes(self) -> np.ndarray:
        """(N, 2) int64 (width, height) of every registered image."""
        return np.array([self.size_of(k) for k in range(len(self.names))], dtype=np.int64).reshape(-1, 2)


# a photo turned a quarter counter-clockwise (np.rot90) has its camera rolled by this: camera coordinates
# (x, y, z) of the turned copy are (-y, x, z) in the photo's own
_QUARTER = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def turn_back(res: SfmResult, turned: set[str]) -> SfmResult:
    """``res`` of copies where the photos ``turned`` were turned a quarter counter-clockwise (``np.rot90``, so that
    portrait and landscape photos share one camera) -> the same in each photo's own orientation. A copy pixel
    (x', y') of a photo w wide (the copy's height) is the photo's (w - y', x'), so its K (fx, fy, cx, cy) becomes
    (fy, fx, w - cy, cx), its distortion (k1, k2, p1, p2) (k1, k2, p2, -p1) and its camera is rolled by a quarter."""
    if not turned.intersection(res.names):
        return res
    K, dist, w2c = res.K.copy(), res.dist.copy(), res.w2c.copy()
    xy = res.obs_xy.copy()
    sizes = []
    for k, name in enumerate(res.names):
        cw, ch = res.size_of(k)  # the copy's
        if name not in turned:
            sizes.append((cw, ch))
            continue
        w = ch  # the photo's width is the copy's height
        fx, fy, cx, cy = K[k, 0, 0], K[k, 1, 1], K[k, 0, 2], K[k, 1, 2]
        K[k] = np.array([[fy, 0.0, w - cy], [0.0, fx, cx], [0.0, 0.0, 1.0]])
        if dist.shape[1] >= 4:
            dist[k, 2], dist[k, 3] = res.dist[k, 3], -res.dist[k, 2]
        w2c[k, :3, :] = _QUARTER @ res.w2c[k, :3, :]
        m = res.obs_image == k
        xy[m] = np.stack([w - res.obs_xy[m, 1], res.obs_xy[m, 0]], axis=1)
        sizes.append((ch, cw))
    return dataclasses.replace(res, K=K, dist=dist, w2c=w2c, obs_xy=xy, sizes=tuple(sizes))


PER_IMAGE_FILE = "per_image.json"  # in run_sfm's work folder, written before SfM can fail: the failure report reads it


def image_counts(db_path: Path, names: list[str]) -> list[dict]:
    """Per image of ``names`` (database order aside), from the COLMAP database after matching: ``features`` (SIFT
    keypoints), ``matched_images`` (images it shares geometrically verified matches with) and ``matches`` (those
    verified correspondences, summed over its pairs). Images missing from the database get zeros."""
    import pycolmap

    db = pycolmap.Database.open(db_path)
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        features = {i: int(db.num_keypoints_for_image(i)) for i in ids.values()}
        matches = dict.fromkeys(ids.values(), 0)
        partners = dict.fromkeys(ids.values(), 0)
        pair_ids, inliers = db.read_two_view_geometry_num_inliers()
        for pid, n in zip(pair_ids, inliers):
            if n <= 0:
                continue
            for i in pycolmap.pair_id_to_image_pair(pid):
                if i in matches:
                    matches[i] += int(n)
                    partners[i] += 1
    finally:
        db.close()
    return [{"name": n, "features": features.get(ids.get(n, -1), 0), "matched_images": partners.get(ids.get(n, -1), 0),
             "matches": matches.get(ids.get(n, -1), 0)} for n in names]


def colmap_device(setting: str) -> tuple[object, str]:
    import pycolmap

    cuda = bool(getattr(pycolmap, "has_cuda", False))
    if setting == "cuda" and not cuda:
        raise InputError("sfm.device = cuda but this pycolmap build has no CUDA (install pycolmap-cuda12)")
    if setting == "cpu" or not cuda:
        return pycolmap.Device.cpu, "cpu"
    return pycolmap.Device.cuda, "cuda"


def incremental_options(cfg: SfmSettings) -> Any:
    """pycolmap.IncrementalPipelineOptions of ``cfg`` (the incremental mapper's settings)."""
    import pycolmap

    opt = pycolmap.IncrementalPipelineOptions()
    opt.num_threads = cfg.num_threads
    opt.random_seed = 0
    opt.min_model_size = 3
    # fewer and shorter global adjustments: COLMAP's (ratio 1.1, 2 / 5 refinement rounds) made the
    # mapper the step that grows fastest with the photos (measured, docs/benchmarks.md)
    opt.ba_global_frames_ratio = cfg.ba_global_ratio
    opt.ba_global_points_ratio = cfg.ba_global_ratio
    opt.ba_global_max_num_iterations = cfg.ba_global_iterations
    opt.ba_local_max_refinements = cfg.ba_refinements
    opt.ba_global_max_refinements = 2 * cfg.ba_refinements
    # a dense capture sees most points from many photos: the global adjustments, whose cost grows faster than the
    # photos, keep only the points that add coverage of some photo (COLMAP's redundant-point pruning)
    opt.mapper.ba_global_ignore_redundant_points3D = cfg.ba_skip_redundant_points
    # a registration with its local adjustment took 0.2-0.3 s, most of a 48-photo mapping: a smaller, shorter one
    opt.mapper.ba_local_num_images = cfg.ba_local_images
    opt.ba_local_max_num_iterations = cfg.ba_local_iterations
    return opt


def keyframe_stride(n: int, limit: int) -> int:
    """The stride k (a power of two) of the photos mapped when ``n`` photos in capture order are mapped at most
    ``limit`` at a time: 1 (all) when ``limit`` is 0 or ``n`` is within it. A power of two, because the sequential
    pairs join each photo with the photos 2^j on: every k-th photo then keeps its pairs among the mapped ones."""
    if n < 0 or limit < 0:
        raise ValueError(f"need n >= 0 and limit >= 0, got {n} and {limit}")
    k = 1
    while limit and -(-n // k) > limit:
        k *= 2
    return k


def map_cameras(db: Path, image_dir: Path, out: Path, cfg: SfmSettings,
                image_names: list[str] | None = None) -> dict[int, Any]:
    """Poses and points from a matched database with the mapper ``cfg.mapper`` -> pycolmap reconstructions by id.
    ``image_names``: map only these photos of the database (incremental mapper; default all)."""
    import pycolmap

    if cfg.mapper == "incremental":
        opt = incremental_options(cfg)
        if image_names is not None:
            opt.image_names = list(image_names)
        return pycolmap.incremental_mapping(db, image_dir, out, options=opt)
    if cfg.mapper == "global":
        gopt = pycolmap.GlobalPipelineOptions()
        gopt.num_threads = cfg.num_threads
        gopt.random_seed = 0
        return pycolmap.global_mapping(db, image_dir, out, options=gopt)
    raise ValueError(f"sfm.mapper must be incremental or global, got {cfg.mapper!r}")


@dataclass(frozen=True)
class PlacedPhoto:
    """A photo placed by absolute pose: cam_from_world (3, 4) float64; xy (M, 2) float32, the pixels of its keypoints
    that are inliers of the pose; point_ids (M,) int, the model's 3D points they observe."""

    cam_from_world: np.ndarray
    xy: np.ndarray
    point_ids: np.ndarray
    camera: Any = None  # the pycolmap camera it was placed with (its group's, as the model refined it)


def place_remaining(db_path: Path, rec: Any, names: list[str], min_inliers: int = 30) -> dict[str, PlacedPhoto]:
    """Place the photos ``names`` that the reconstruction ``rec`` lacks by absolute pose (LO-RANSAC and refinement,
    the model's camera held fixed) against its 3D points, through their verified matches with photos already
    placed -> {name: PlacedPhoto}. Photos are taken up in rounds, so that one whose matched photos are all left out
    of the model is placed through a neighbour placed in an earlier round; one with fewer than ``min_inliers``
    inliers stays out."""
    import pycolmap

    db = pycolmap.Database.open(db_path)
    try:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        name_of = {i: n for n, i in ids.items()}
        # the verified pairs, read once: asking the database pair by pair would grow as the photos squared
        partners: dict[str, list[str]] = {}
        for pair_id, count in zip(*db.read_two_view_geometry_num_inliers()):
            if count > 0:
                a, b = (name_of.get(int(i)) for i in pycolmap.pair_id_to_image_pair(pair_id))
                if a is not None and b is not None:
                    partners.setdefault(a, []).append(b)
                    partners.setdefault(b, []).append(a)
        # per placed photo: keypoint index -> 3D point id (the model's own, then each placed photo's inliers)
        seen: dict[str, dict[int, int]] = {}
        for i in rec.reg_image_ids():
            im = rec.image(i)
            seen[im.name] = {k: int(p.point3D_id) for k, p in enumerate(im.points2D) if p.has_point3D()}
        # each photo keeps its group's camera as the model refined it (one camera per group, CameraMode.SINGLE);
        # a photo whose group has no mapped photo has no refined camera and is left out
        mapped_camera = {rec.image(i).camera_id: rec.image(i).camera for i in rec.reg_image_ids()}
        camera_of = {im.name: mapped_camera.get(im.camera_id) for im in db.read_all_images()}
        est = pycolmap.AbsolutePoseEstimationOptions()
        ref = pycolmap.AbsolutePoseRefinementOptions()
        ref.refine_focal_length = False
        ref.refine_extra_params = False
        placed: dict[str, PlacedPhoto] = {}
        todo = [n for n in names if n not in seen and camera_of.get(n) is not None]
        while todo:
            left = []
            for n in todo:
                corr: dict[int, int] = {}
                for m in partners.get(n, ()):
                    known = seen.get(m)
                    if known is None:
                        continue
                    for f, g in np.asarray(db.read_two_view_geometry(ids[n], ids[m]).inlier_matches).reshape(-1, 2):
                        pid = known.get(int(g))
                        if pid is not None:
                            corr.setdefault(int(f), pid)
                if len(corr) < min_inliers:
                    left.append(n)
                    continue
                feats = np.fromiter(corr, dtype=np.int64, count=len(corr))
                pids = np.array([corr[f] for f in feats], dtype=np.int64)
                xy = np.asarray(db.read_keypoints(ids[n]), dtype=np.float64)[feats, :2]
                xyz = np.array([rec.points3D[p].xyz for p in pids], dtype=np.float64)
                r = pycolmap.estimate_and_refine_absolute_pose(xy, xyz, camera_of[n], est, ref)
                if r is None or int(r["num_inliers"]) < min_inliers:
                    left.append(n)
                    continue
                inl = np.asarray(r["inlier_mask"], dtype=bool)
                placed[n] = PlacedPhoto(np.asarray(r["cam_from_world"].matrix(), dtype=np.float64),
                                        xy[inl].astype(np.float32), pids[inl], camera_of[n])
                seen[n] = dict(zip(feats[inl].tolist(), pids[inl].tolist()))
            if len(left) == len(todo):
                break
            todo = left
    finally:
        db.close()
    return placed


def map_and_place(db: Path, image_dir: Path, out: Path, cfg: SfmSettings, names: list[str],
                  log: logging.LoggerAdapter | logging.Logger) -> tuple[dict[int, Any], dict[str, PlacedPhoto],
                                                                        dict[str, float]]:
    """Map the photos ``names`` (capture order) of a matched database: all of them, or with more than
    ``cfg.keyframes`` every 2^k-th (:func:`keyframe_stride`) and the rest placed by absolute pose against that model
    (:func:`place_remaining`) -> (reconstructions by id, placed photos by name, seconds of "map" and "place").

    A mapping's registrations grow with the photos and so does the cost of each (a point's track, which every local
    adjustment carries, gets longer as the photos get denser): 200 photos took 63 s against 7-9 s for 48. Placing a
    photo against fixed points costs about 25 ms. Where the model or the placing leaves more than a tenth of the
    photos out, every photo is mapped after all: slower, never less complete."""
    timings: dict[str, float] = {}
    stride = keyframe_stride(len(names), cfg.keyframes) if cfg.mapper == "incremental" else 1
    t0 = time.monotonic()
    recs = map_cameras(db, image_dir, out, cfg, image_names=names[::stride] if stride > 1 else None)
    timings["map"] = time.monotonic() - t0
    placed: dict[str, PlacedPhoto] = {}
    if stride == 1:
        return recs, placed, timings
    best = max(recs.values(), key=lambda r: r.num_reg_images()) if recs else None
    t0 = time.monotonic()
    if best is not None:
        placed = place_remaining(db, best, names)
    timings["place"] = time.monotonic() - t0
    done = (best.num_reg_images() if best is not None else 0) + len(placed)
    if done >= 0.9 * len(names):
        log.info("SfM: %d of %d photos mapped (every %d-th), %d placed by absolute pose", best.num_reg_images(),
                 len(names), stride, len(placed))
        return recs, placed, timings
    log.info("SfM: mapping every %d-th photo placed only %d of %d; mapping all of them", stride, done, len(names))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.monotonic()
    recs = map_cameras(db, image_dir, out, cfg)
    timings["map"] += time.monotonic() - t0
    return recs, {}, timings


def sequential_pairs(n: int, overlap: int) -> list[tuple[int, int]]:
    """The pairs of COLMAP's (4.2) sequential matcher with quadratic overlap, for ``n`` photos in capture order:
    each photo with the photos 1, 2, 4, ... 2^(``overlap`` - 1) on, which close the loop around the object
    -> sorted (i, j) index pairs, i < j."""
    if n < 0 or overlap < 1:
        raise ValueError(f"need n >= 0 and overlap >= 1, got {n} and {overlap}")
    return sorted((i, i + 2 ** k) for i in range(n) for k in range(overlap) if i + 2 ** k < n)


def match_features(db: Path, names: list[str], cfg: SfmSettings, device: Any) -> str:
    """Match the features of ``db`` (photos ``names``, in capture order) on ``device`` -> the matcher that ran."""
    import pycolmap

    mopt = pycolmap.FeatureMatchingOptions()
    mopt.num_threads = cfg.num_threads
    mopt.guided_matching = cfg.guided_matching
    matcher = cfg.matcher if cfg.matcher != "auto" else ("exhaustive" if len(names) <= 30 else "sequential")
    if matcher == "exhaustive":
        pycolmap.match_exhaustive(db, matching_options=mopt, device=device)
    elif matcher == "sequential":
        # COLMAP's sequential matcher verifies one photo's handful of pairs at a time, which leaves most cores idle (10 s
        # of 48 photos on the H200's 16 cores); the same pairs as a list are verified in blocks of 1225
        # (docs/benchmarks.md, SfM matching). Loop detection would need a vocabulary tree, i.e. a download.
        pairs = sequential_pairs(len(names), cfg.overlap)
        listing = db.parent / "pairs.txt"
        listing.write_text("".join(f"{names[i]} {names[j]}\n" for i, j in pairs))
        popt = pycolmap.ImportedPairingOptions()
        popt.match_list_path = listing
        pycolmap.match_image_pairs(db, matching_options=mopt, pairing_options=popt, device=device)
    else:
        raise ValueError(f"sfm.matcher must be auto, exhaustive or sequential, got {cfg.matcher!r}")
    return matcher


def check_groups(names: Sequence[str], groups: Sequence[Sequence[str]]) -> list[list[str]]:
    """``groups`` (photos that share one camera) as a partition of ``names``, in the order of ``names``; empty
    groups -> one group of all ``names``. Raises ValueError when the groups do not partition the names."""
    if not groups:
        return [list(names)]
    flat = [n for g in groups for n in g]
    if sorted(flat) != sorted(names) or len(set(flat)) != len(flat):
        raise ValueError("SfM camera groups must hold every image name exactly once")
    order = {n: k for k, n in enumerate(names)}
    return [sorted(g, key=order.__getitem__) for g in groups if g]


def run_sfm(image_dir: Path, names: list[str], work: Path, cfg: SfmSettings, log: logging.LoggerAdapter | logging.Logger,
            check: Callable[[float], None] = lambda f: None, groups: Sequence[Sequence[str]] = ()) -> SfmResult:
    """SfM on the images ``image_dir/<name>`` (orientation already applied). ``groups``: a partition of ``names``
    into photos of one camera (one size, one lens), each group sharing one camera's intrinsics; empty: one group."""
    import pycolmap

    if len(names) < 3:
        raise ValueError(f"SfM needs at least 3 images, got {len(names)}")
    pycolmap.logging.minloglevel = 2  # errors only: COLMAP's INFO lines would flood the job log
    pycolmap.set_random_seed(0)
    shutil.rmtree(work, ignore_errors=True)
    (work / "sparse").mkdir(parents=True)
    db = work / "database.db"
    device, device_name = colmap_device(cfg.device)
    timings: dict[str, float] = {}

    t0 = time.monotonic()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg.camera_model
    ext = pycolmap.FeatureExtractionOptions()
    ext.max_image_size = cfg.max_image_size
    ext.sift.max_num_features = cfg.max_features
    ext.num_threads = cfg.num_threads
    parts = check_groups(names, groups)

    def extract(dev: Any) -> None:
        # one extraction per group, each with one shared camera (CameraMode.SINGLE makes a camera per call): COLMAP
        # skips a photo whose size differs from its single camera's, so photos of another size or lens need their own
        for part in parts:
            pycolmap.extract_features(db, image_dir, image_names=list(part), camera_mode=pycolmap.CameraMode.SINGLE,
                                      reader_options=reader, extraction_options=ext, device=dev)

    try:
        extract(device)
    except (RuntimeError, ValueError) as e:
        if device_name != "cuda" or cfg.device == "cuda":
            raise
        # GPU SIFT can fail where the CUDA build meets an unsupported driver or card: the CPU is slower, not wrong
        log.warning("SfM: GPU feature extraction failed (%s); extracting on the CPU", e)
        device, device_name = pycolmap.Device.cpu, "cpu (GPU extraction failed)"
        db.unlink(missing_ok=True)
        extract(device)
    timings["extract"] = time.monotonic() - t0
    check(0.3)

    t0 = time.monotonic()
    matcher = match_features(db, list(names), cfg, device)
    timings["match"] = time.monotonic() - t0
    check(0.7)

    recs, placed, map_timings = map_and_place(db, image_dir, work / "sparse", cfg, list(names), log)
    timings.update(map_timings)
    best = max(recs.values(), key=lambda r: r.num_reg_images()) if recs else None
    check(0.95)
    per_image = image_counts(db, list(names))
    reg_points = {} if best is None else {best.image(i).name: int(best.image(i).num_points3D)
                                          for i in best.reg_image_ids()}
    reg_points.update({n: len(p.point_ids) for n, p in placed.items()})
    for row in per_image:
        row["registered"] = row["name"] in reg_points
        row["points"] = reg_points.get(row["name"], 0)
    (work / PER_IMAGE_FILE).write_text(json.dumps(per_image))
    if not recs:
        raise InputError(f"structure from motion found no camera poses in {len(names)} images: the photos do not "
                         "share enough matching features. Reshoot with more overlap between neighbouring photos "
                         "(about 60-70%), a textured surface, steady focus and no motion blur")
    rec = best
    by_name: dict[str, object] = {rec.image(i).name: rec.image(i) for i in rec.reg_image_ids()}
    reg_names = [n for n in names if n in by_name or n in placed]
    unregistered = tuple(n for n in names if n not in by_name and n not in placed)
    point_ids = sorted(rec.points3D)
    pindex = {pid: k for k, pid in enumerate(point_ids)}
    points = np.array([rec.points3D[p].xyz for p in point_ids], dtype=np.float64).reshape(-1, 3)
    colors = np.array([rec.points3D[p].color for p in point_ids], dtype=np.uint8).reshape(-1, 3)
    Ks, dists, w2cs = [], [], []
    oi, op, oxy = [], [], []
    sizes: list[tuple[int, int]] = []
    for k, name in enumerate(reg_names):
        im = by_name.get(name)
        cam = im.camera if im is not None else placed[name].camera
        sizes.append((int(cam.width), int(cam.height)))
        p = np.asarray(cam.params, dtype=np.float64)
        Ks.append(np.asarray(cam.calibration_matrix(), dtype=np.float64))
        dists.append(p[4:8] if cam.model_name == "OPENCV" else np.array([p[3] if len(p) > 3 else 0.0, 0, 0, 0]))
        w2c = np.eye(4)
        if im is None:  # placed by absolute pose: its inliers are its observations
            w2c[:3, :4] = placed[name].cam_from_world
            oi.extend([k] * len(placed[name].point_ids))
            op.extend(pindex[int(q)] for q in placed[name].point_ids)
            oxy.extend(placed[name].xy)
            w2cs.append(w2c)
            continue
        w2c[:3, :4] = np.asarray(im.cam_from_world().matrix(), dtype=np.float64)
        w2cs.append(w2c)
        for p2 in im.points2D:
            if p2.has_point3D():
                oi.append(k)
                op.append(pindex[p2.point3D_id])
                oxy.append(p2.xy)
    stats = {"registered": len(reg_names), "images": len(names), "models": len(recs),
             "mean_reprojection_error_px": round(float(rec.compute_mean_reprojection_error()), 3),
             "mean_track_length": round(float(rec.compute_mean_track_length()), 2),
             "points": int(len(point_ids)), "matcher": matcher, "mapper": cfg.mapper, "device": device_name,
             "camera_model": cfg.camera_model, "feature_size": cfg.max_image_size,
             "mapped": len(by_name), "placed": len(placed),
             "seconds": {k: round(v, 2) for k, v in timings.items()},
             "pycolmap": getattr(pycolmap, "__version__", "?")}
    log.info("SfM: %d/%d images registered, %d points, reprojection %.2f px, track %.2f (%s, %s) in %.1fs",
             len(reg_names), len(names), len(point_ids), stats["mean_reprojection_error_px"],
             stats["mean_track_length"], matcher, device_name, sum(timings.values()))
    # the most common size is the result's own; the others are listed per image
    (width, height), _ = Counter(sizes).most_common(1)[0] if sizes else ((0, 0), 0)
    stats["cameras"] = len(parts)
    return SfmResult(names=tuple(reg_names), unregistered=unregistered, width=width, height=height,
                     sizes=tuple(sizes) if len(set(sizes)) > 1 else (), K=np.array(Ks), dist=np.array(dists),
                     w2c=np.array(w2cs), points=points, colors=colors,
                     obs_image=np.array(oi, dtype=np.int32), obs_point=np.array(op, dtype=np.int32),
                     obs_xy=np.array(oxy, dtype=np.float32).reshape(-1, 2), stats=stats, per_image=tuple(per_image))


def _sfm_child(conn: Any, image_dir: Path, names: list[str], work: Path, cfg: SfmSettings,
               groups: Sequence[Sequence[str]] = ()) -> None:
    """run_sfm in a child process: sends ("ok", result, log lines) or ("error", exception, log lines)."""
    lines: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.levelname} {record.getMessage()}")

    log = logging.getLogger("hotmesh.sfm.child")
    log.setLevel(logging.INFO)
    log.addHandler(_Collect())
    try:
        conn.send(("ok", run_sfm(image_dir, names, work, cfg, log, groups=groups), lines))
    except Exception as e:  # InputError and the like: the parent raises it as if SfM had run there
        conn.send(("error", e, lines))
    finally:
        conn.close()


def run_sfm_isolated(image_dir: Path, names: list[str], work: Path, cfg: SfmSettings,
                     log: logging.LoggerAdapter | logging.Logger,
                     check: Callable[[float], None] = lambda f: None,
                     groups: Sequence[Sequence[str]] = ()) -> SfmResult:
    """:func:`run_sfm` in a child process (spawned, so it starts clean).

    COLMAP's native libraries (their own OpenMP runtime, CUDA 12 runtime and crash handlers in the CUDA build) must
    not share a process with torch: measured on an H200, the first multi-threaded torch CPU operation after GPU SfM
    in the same process crashed the worker. The child also keeps a COLMAP crash from taking the job's worker down.
    ``check`` is polled while it runs; when it raises (a CANCEL file, a shutdown) the child is killed."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_sfm_child, args=(send, image_dir, names, work, cfg, groups),
                       name="hotmesh-sfm")
    proc.start()
    send.close()
    t0 = time.monotonic()
    try:
        while True:
            # polled before every wait, so a cancel that is already pending stops the child even when SfM is quick;
            # progress is not reported from the child: time is the best guess (most SfM runs take 10-90 s)
            check(min(0.9, (time.monotonic() - t0) / 120.0))
            if recv.poll(0.5):
                break
            if not proc.is_alive() and not recv.poll(0):
                raise RuntimeError(f"structure from motion crashed (COLMAP's process ended with code "
                                   f"{proc.exitcode}); retry the job, and if it crashes again, run it with "
                                   f"sfm.device = cpu")
        status, payload, lines = recv.recv()
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.join(timeout=10)
        recv.close()
    for line in lines:
        level, _, msg = line.partition(" ")
        log.log(getattr(logging, level, logging.INFO), "%s", msg)
    if status == "error":
        raise payload
    return payload
