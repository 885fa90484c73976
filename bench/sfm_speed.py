"""Where structure from motion spends its time on this machine, and what faster matching or mapping settings cost in
registration and camera accuracy.

    python bench/sfm_speed.py SET [SET ...] [--work DIR] [--tag TAG] [--out DIR]

Per set, features are extracted once (on the GPU when pycolmap has CUDA), as the pipeline extracts them. Each
matching variant then matches a copy of that database and maps it with the pipeline's mapper; each mapping variant
maps the database matched with the pipeline's own settings. Cameras are compared with the set's true poses
(``<set>.poses.json`` beside it, or its ``transforms.json``) after a similarity fit (:func:`bench.scoring.alignment`).
Rows are written as they finish; run one set at a time for timings (nothing else on the machine).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run_bench import card, poses_file, resolve_set  # noqa: E402
from bench.scoring import TrueCameras, alignment, read_nerf_cameras  # noqa: E402

# matching variants: changes to SfmSettings ("hotmesh" = the pipeline's own); "colmap-sequential" is COLMAP's own
# sequential matcher on the same pairs (what the pipeline ran before it listed the pairs itself)
MATCHING: dict[str, dict[str, Any] | None] = {"hotmesh": {}, "colmap-sequential": None,
                                              "unguided": {"guided_matching": False}}
# extraction variants: SIFT options (FeatureExtractionOptions.sift) changed, then matched and mapped as the pipeline
# does
EXTRACTION: dict[str, dict[str, Any]] = {"features-4096": {"max_num_features": 4096},
                                         "features-2048": {"max_num_features": 2048}}
# mapping variants: attributes of pycolmap.IncrementalPipelineOptions set on top of the pipeline's
MAPPING: dict[str, dict[str, Any]] = {"ba-gpu": {"ba_use_gpu": True},
                                      "ba-threads-5k": {"ba_min_num_residuals_for_cpu_multi_threading": 5000}}
# keyframe variants: sfm.keyframes, mapped as the pipeline maps (every 2^k-th photo, the rest placed by absolute
# pose: pipeline.cameras.sfm.map_and_place) on hotmesh's database
KEYFRAMES: dict[str, int] = {"keyframes-32": 32, "keyframes-16": 16}


def colmap_sequential(db: Path, cfg: Any, device: Any) -> None:
    """COLMAP's sequential matcher with the pipeline's options (quadratic overlap, no loop detection)."""
    import pycolmap

    mopt = pycolmap.FeatureMatchingOptions()
    mopt.num_threads = cfg.num_threads
    mopt.guided_matching = cfg.guided_matching
    pairing = pycolmap.SequentialPairingOptions()
    pairing.overlap, pairing.quadratic_overlap, pairing.loop_detection = cfg.overlap, True, False
    pycolmap.match_sequential(db, matching_options=mopt, pairing_options=pairing, device=device)


def camera_row(rec: Any, truth: TrueCameras | None, placed: dict[str, Any] | None = None) -> dict[str, Any]:
    """A reconstruction's registered photos, points and reprojection error, and with ``truth`` its camera centres'
    RMS against the true ones after a similarity fit (of the cameras' spread) and the misplaced cameras. ``placed``:
    photos placed beside the model (:func:`pipeline.cameras.sfm.place_remaining`), counted and compared too."""
    import numpy as np

    placed = placed or {}
    row: dict[str, Any] = {"registered": rec.num_reg_images() + len(placed), "points": rec.num_points3D(),
                           "reprojection_px": round(rec.compute_mean_reprojection_error(), 3)}
    if placed:
        row["placed"] = len(placed)
    if truth is not None:
        ims = [im for im in rec.images.values() if im.has_pose]
        cams = [rec.cameras[im.camera_id] for im in ims]
        shared = cams[0]
        names = tuple(im.name for im in ims) + tuple(placed)
        w2c = np.stack([np.vstack([im.cam_from_world().matrix(), [0, 0, 0, 1]]) for im in ims]
                       + [np.vstack([p.cam_from_world, [0, 0, 0, 1]]) for p in placed.values()])
        cams += [shared] * len(placed)
        Ks = np.stack([c.calibration_matrix() for c in cams])
        al = alignment(TrueCameras(names, Ks, w2c, tuple((c.width, c.height) for c in cams)), truth)
        row.update(centre_rms_of_spread=round(al.residual, 6), misplaced_cameras=list(al.misplaced))
    return row


def main() -> None:
    import pycolmap

    from pipeline.cameras.sfm import SfmSettings, colmap_device, incremental_options, map_and_place, match_features

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hotmesh-sfm-speed"))
    ap.add_argument("--tag", default="sfm-speed")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    variants = list(MATCHING) + list(EXTRACTION) + list(MAPPING) + list(KEYFRAMES)
    ap.add_argument("--variants", nargs="+", default=None, help=f"a subset of {variants}")
    args = ap.parse_args()
    keep = set(args.variants or variants)
    pycolmap.logging.minloglevel = 2
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.tag}.json"
    rows: list[dict] = []
    base = SfmSettings()
    device, device_name = colmap_device(base.device)

    def save(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        path.write_text(json.dumps({"card": card(), "date": time.strftime("%Y-%m-%d"), "colmap_device": device_name,
                                    "results": rows}, indent=1))

    def mapped(db: Path, images: Path, out: Path, extra: dict[str, Any]) -> tuple[float, Any]:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        opt = incremental_options(base)
        for k, v in extra.items():
            setattr(opt, k, v)
        pycolmap.set_random_seed(0)
        t0 = time.monotonic()
        recs = pycolmap.incremental_mapping(db, images, out, options=opt)
        return time.monotonic() - t0, max(recs.values(), key=lambda r: r.num_reg_images())

    for name in args.sets:
        folder = resolve_set(name)
        images = folder / "images"
        names = sorted(p.name for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        truth_path = poses_file(folder) or ((folder / "transforms.json") if (folder / "transforms.json").exists()
                                            else None)
        truth = read_nerf_cameras(truth_path, images) if truth_path else None
        work = args.work / folder.name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)

        def extract(db: Path, sift: dict[str, Any]) -> float:
            reader = pycolmap.ImageReaderOptions()
            reader.camera_model = base.camera_model
            ext = pycolmap.FeatureExtractionOptions()
            ext.max_image_size = base.max_image_size
            ext.sift.max_num_features = base.max_features
            for k, v in sift.items():
                setattr(ext.sift, k, v)
            t0 = time.monotonic()
            pycolmap.extract_features(db, images, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                                      reader_options=reader, extraction_options=ext, device=device)
            return round(time.monotonic() - t0, 2)

        extracted = work / "extracted.db"
        extract_s = extract(extracted, {})
        for label, change in MATCHING.items():
            if label not in keep and label != "hotmesh":  # the mapping variants map hotmesh's database
                continue
            db = work / f"{label}.db"
            shutil.copy2(extracted, db)
            cfg = dataclasses.replace(base, matcher="sequential", **(change or {}))
            t0 = time.monotonic()
            if change is None:
                colmap_sequential(db, cfg, device)
            else:
                match_features(db, names, cfg, device)
            match_s = time.monotonic() - t0
            map_s, rec = mapped(db, images, work / label, {})
            save({"set": folder.name, "images": len(names), "variant": label, "kind": "matching",
                  "settings": "COLMAP's sequential matcher" if change is None else change,
                  "extract_seconds": extract_s, "match_seconds": round(match_s, 2), "map_seconds": round(map_s, 2),
                  **camera_row(rec, truth)})
        for label, sift in EXTRACTION.items():
            if label not in keep:
                continue
            db = work / f"{label}.db"
            ext_s = extract(db, sift)
            t0 = time.monotonic()
            match_features(db, names, dataclasses.replace(base, matcher="sequential"), device)
            match_s = time.monotonic() - t0
            map_s, rec = mapped(db, images, work / label, {})
            save({"set": folder.name, "images": len(names), "variant": label, "kind": "extraction", "settings": sift,
                  "extract_seconds": ext_s, "match_seconds": round(match_s, 2), "map_seconds": round(map_s, 2),
                  **camera_row(rec, truth)})
        for label, extra in MAPPING.items():
            if label not in keep:
                continue
            map_s, rec = mapped(work / "hotmesh.db", images, work / label, extra)
            save({"set": folder.name, "images": len(names), "variant": label, "kind": "mapping", "settings": extra,
                  "map_seconds": round(map_s, 2), **camera_row(rec, truth)})
        for label, limit in KEYFRAMES.items():
            if label not in keep:
                continue
            out = work / label
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            pycolmap.set_random_seed(0)
            t0 = time.monotonic()
            recs, placed, timings = map_and_place(work / "hotmesh.db", images, out,
                                                  dataclasses.replace(base, keyframes=limit), names,
                                                  logging.getLogger("sfm_speed"))
            total = time.monotonic() - t0
            rec = max(recs.values(), key=lambda r: r.num_reg_images())
            save({"set": folder.name, "images": len(names), "variant": label, "kind": "keyframes",
                  "settings": {"keyframes": limit}, "map_seconds": round(total, 2),
                  "place_seconds": round(timings.get("place", 0.0), 2), **camera_row(rec, truth, placed)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
