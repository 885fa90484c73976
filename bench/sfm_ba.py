"""The incremental mapper's bundle-adjustment settings compared on one matched database per set: seconds of mapping
and camera accuracy, COLMAP's defaults against hotmesh's (``sfm.ba_global_ratio`` and friends).

    python bench/sfm_ba.py SET [SET ...] [--variants colmap hotmesh hotmesh-gpu hotmesh-kf32 ...]
                           [--match-device cpu|cuda] [--work DIR] [--tag TAG] [--out DIR]

Features and matches are computed once per set on the CPU (hotmesh's SfM settings: SIFT at 1000 px, sequential
matching with quadratic overlap, guided), then each variant maps the same database, so that only the mapper
differs. Cameras are compared with the set's true poses (``<set>.poses.json`` beside it, or its
``transforms.json``) after a similarity fit (:func:`bench.scoring.alignment`); sets without either give the
registered count only. ``hotmesh-gpu`` is the pipeline's own options with Ceres' bundle adjustment on the GPU
(``ba_use_gpu``; a CPU build of pycolmap warns and runs it on the CPU). Rows are written as they finish.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run_bench import card, poses_file, resolve_set  # noqa: E402
from bench.scoring import read_nerf_cameras  # noqa: E402
from bench.sfm_speed import camera_row  # noqa: E402

# the baseline: COLMAP's ratios and refinement rounds (1.1, 2 local / 5 global) with 50 global iterations (pycolmap's
# own default, -1, leaves the cap to its solver); "hotmesh" is the pipeline's own mapper call with its settings
BASELINE = {"ba_global_ratio": 1.1, "ba_global_iterations": 50, "ba_local_refinements": 2, "ba_global_refinements": 5}
# "kfN": the pipeline's own call with sfm.keyframes=N (a 48-photo set maps 24 photos with 32, 12 with 16)
VARIANTS = {"colmap": BASELINE, "hotmesh": None, "hotmesh-gpu": "gpu", "hotmesh-all": "all",
            "hotmesh-kf32": "kf32", "hotmesh-kf16": "kf16"}


def match(folder: Path, names: list[str], db: Path, device: str = "cpu") -> float:
    """Features and matches as run_sfm computes them for this many photos, on ``device``, into ``db``."""
    import pycolmap

    from pipeline.cameras.sfm import SfmSettings

    cfg = SfmSettings()
    t0 = time.monotonic()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg.camera_model
    ext = pycolmap.FeatureExtractionOptions()
    ext.max_image_size = cfg.max_image_size
    pycolmap.extract_features(db, folder / "images", image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                              reader_options=reader, extraction_options=ext, device=getattr(pycolmap.Device, device))
    mopt = pycolmap.FeatureMatchingOptions()
    mopt.guided_matching = cfg.guided_matching
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap, pairing.quadratic_overlap, pairing.loop_detection = 10, True, False
    pycolmap.match_sequential(db, matching_options=mopt, pairing_options=pairing,
                              device=getattr(pycolmap.Device, device))
    return time.monotonic() - t0


def map_once(db: Path, folder: Path, out: Path, variant: dict | str | None,
             names: list[str]) -> tuple[float, object, dict]:
    """Map ``db``: as the pipeline does (:func:`pipeline.cameras.sfm.map_and_place`, ``variant`` None; ``"all"``:
    every photo mapped), with its options and the bundle adjustment on the GPU (``"gpu"``), or with its options but
    the bundle adjustment of ``variant`` -> (seconds, the largest model, photos placed beside it)."""
    import logging

    import pycolmap

    from pipeline.cameras.sfm import SfmSettings, incremental_options, map_and_place

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pycolmap.set_random_seed(0)
    t0 = time.monotonic()
    placed: dict = {}
    if variant is None or variant == "all" or (isinstance(variant, str) and variant.startswith("kf")):
        cfg = SfmSettings(keyframes={None: SfmSettings().keyframes, "all": 0}.get(variant) or int(variant[2:]))
        recs, placed, _ = map_and_place(db, folder / "images", out, cfg, names, logging.getLogger("sfm_ba"))
    elif variant == "gpu":
        opt = incremental_options(SfmSettings())
        opt.ba_use_gpu, opt.ba_gpu_index = True, "0"
        recs = pycolmap.incremental_mapping(db, folder / "images", out, options=opt)
    else:
        opt = pycolmap.IncrementalPipelineOptions()
        opt.random_seed, opt.min_model_size = 0, 3  # as map_cameras
        opt.ba_global_frames_ratio = opt.ba_global_points_ratio = variant["ba_global_ratio"]
        opt.ba_global_max_num_iterations = variant["ba_global_iterations"]
        opt.ba_local_max_refinements = variant["ba_local_refinements"]
        opt.ba_global_max_refinements = variant["ba_global_refinements"]
        recs = pycolmap.incremental_mapping(db, folder / "images", out, options=opt)
    return time.monotonic() - t0, max(recs.values(), key=lambda r: r.num_reg_images()), placed


def main() -> None:
    import pycolmap

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--match-device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hotmesh-sfm-ba"))
    ap.add_argument("--tag", default="sfm-ba")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    pycolmap.logging.minloglevel = 2
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.tag}.json"
    rows: list[dict] = []
    for name in args.sets:
        folder = resolve_set(name)
        names = sorted(p.name for p in (folder / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        truth_path = poses_file(folder) or ((folder / "transforms.json") if (folder / "transforms.json").exists()
                                            else None)
        truth = read_nerf_cameras(truth_path, folder / "images") if truth_path else None
        work = args.work / f"{folder.parent.name}-{folder.name}"  # two sets of one name (view counts) apart
        work.mkdir(parents=True, exist_ok=True)
        db = work / "database.db"
        matched = None if db.exists() else round(match(folder, names, db, args.match_device), 2)
        for label in args.variants:
            variant = VARIANTS[label]
            seconds, rec, placed = map_once(db, folder, work / label, variant, names)
            settings = variant if isinstance(variant, dict) else \
                "sfm defaults" + {"gpu": ", ba_use_gpu", "all": ", every photo mapped"}.get(
                    variant or "", f", sfm.keyframes={variant[2:]}" if variant else "")
            row = {"set": folder.name, "variant": label, "settings": settings, "images": len(names),
                   **camera_row(rec, truth, placed), "map_seconds": round(seconds, 2), "match_seconds": matched}
            rows.append(row)
            print(json.dumps(row), flush=True)
            path.write_text(json.dumps({"card": card(), "date": time.strftime("%Y-%m-%d"), "results": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
