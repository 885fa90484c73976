"""The incremental mapper's bundle-adjustment settings compared on one matched database per set: seconds of mapping
and camera accuracy, COLMAP's defaults against hotmesh's (``sfm.ba_global_ratio`` and friends).

    python bench/sfm_ba.py SET [SET ...] [--work DIR] [--tag TAG] [--out DIR]

Features and matches are computed once per set on the CPU (hotmesh's SfM settings: SIFT at 1000 px, sequential
matching with quadratic overlap, guided), then each variant maps the same database, so that only the mapper
differs. Cameras are compared with the set's true poses (``<set>.poses.json`` beside it, or its
``transforms.json``) after a similarity fit (:func:`bench.scoring.alignment`); sets without either give the
registered count only. Rows are written as they finish.
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
from bench.scoring import TrueCameras, alignment, read_nerf_cameras  # noqa: E402

# (global ratio, global iterations, local refinements, global refinements)
VARIANTS = {"colmap": (1.1, 50, 2, 5), "hotmesh": (1.4, 25, 1, 2)}


def match(folder: Path, names: list[str], db: Path) -> float:
    import pycolmap

    t0 = time.monotonic()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "OPENCV"
    ext = pycolmap.FeatureExtractionOptions()
    ext.max_image_size = 1000
    pycolmap.extract_features(db, folder / "images", image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                              reader_options=reader, extraction_options=ext, device=pycolmap.Device.cpu)
    mopt = pycolmap.FeatureMatchingOptions()
    mopt.guided_matching = True
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap, pairing.quadratic_overlap, pairing.loop_detection = 10, True, False
    pycolmap.match_sequential(db, matching_options=mopt, pairing_options=pairing, device=pycolmap.Device.cpu)
    return time.monotonic() - t0


def map_once(db: Path, folder: Path, out: Path, variant: tuple[float, int, int, int]) -> tuple[float, object]:
    import pycolmap

    ratio, iterations, local_ref, global_ref = variant
    opt = pycolmap.IncrementalPipelineOptions()
    opt.random_seed, opt.min_model_size = 0, 3
    opt.ba_global_frames_ratio = opt.ba_global_points_ratio = ratio
    opt.ba_global_max_num_iterations = iterations
    opt.ba_local_max_refinements, opt.ba_global_max_refinements = local_ref, global_ref
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pycolmap.set_random_seed(0)
    t0 = time.monotonic()
    recs = pycolmap.incremental_mapping(db, folder / "images", out, options=opt)
    return time.monotonic() - t0, max(recs.values(), key=lambda r: r.num_reg_images())


def main() -> None:
    import numpy as np
    import pycolmap

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hotmesh-sfm-ba"))
    ap.add_argument("--tag", default="sfm-ba")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    pycolmap.logging.minloglevel = 2
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
        matched = None if db.exists() else round(match(folder, names, db), 2)
        for label, variant in VARIANTS.items():
            seconds, rec = map_once(db, folder, work / label, variant)
            row = {"set": folder.name, "variant": label, "settings": variant, "images": len(names),
                   "registered": rec.num_reg_images(), "points": rec.num_points3D(),
                   "reprojection_px": round(rec.compute_mean_reprojection_error(), 3),
                   "map_seconds": round(seconds, 2), "match_seconds": matched}
            if truth is not None:
                ims = [im for im in rec.images.values() if im.has_pose]
                w2c = np.stack([np.vstack([im.cam_from_world().matrix(), [0, 0, 0, 1]]) for im in ims])
                cams = [rec.cameras[im.camera_id] for im in ims]
                al = alignment(TrueCameras(tuple(im.name for im in ims), np.stack([c.calibration_matrix() for c in cams]),
                                           w2c, tuple((c.width, c.height) for c in cams)), truth)
                row.update(centre_rms_of_spread=round(al.residual, 6), misplaced_cameras=list(al.misplaced))
            rows.append(row)
            print(json.dumps(row), flush=True)
            path.write_text(json.dumps({"card": card(), "date": time.strftime("%Y-%m-%d"), "results": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
